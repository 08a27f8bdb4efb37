//! The pushdown matrix shared by the SQL sources' tests: each query runs with pushdown and
//! without (DataFusion computing everything), and must give the same answer; each row
//! also says whether it must reach the source, so a rule that silently stops pushing is
//! caught as well as one that pushes wrongly.

use tributary::Engine;

use crate::common::run;

/// The result of `sql` on both engines, as text (an error counts as the result
/// `ERROR`: both engines must fail, not one), plus the pushed engine's plan.
async fn both(pushed: &Engine, local: &Engine, sql: &str) -> (String, String, String) {
    let plan = pushed
        .explain(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (
        outcome(pushed, sql).await,
        outcome(local, sql).await,
        plan.to_string(),
    )
}

async fn outcome(engine: &Engine, sql: &str) -> String {
    match run(engine, sql).await {
        Ok(batches) => arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string(),
        Err(e) => format!("ERROR ({e})"),
    }
}

/// Runs `SELECT id FROM table WHERE filter ORDER BY id` for every filter; returns what
/// went wrong: different answers, or a filter pushed (or not) against expectation.
pub async fn filter_failures(
    pushed: &Engine,
    local: &Engine,
    table: &str,
    filters: &[(&str, bool)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for (filter, must_push) in filters {
        let sql = format!("SELECT id FROM {table} WHERE {filter} ORDER BY id");
        let (got, want, plan) = both(pushed, local, &sql).await;
        if got != want {
            failures.push(format!(
                "{filter}: pushed gives\n{got}\nDataFusion gives\n{want}"
            ));
        }
        let sent = plan
            .lines()
            .find(|l| l.contains("RemoteScanExec"))
            .unwrap_or_default()
            .to_string();
        let pushed_where = sent.contains(" WHERE ");
        if pushed_where != *must_push {
            failures.push(format!(
                "{filter}: expected pushed={must_push}, the source received: {sent}\n{plan}"
            ));
        }
    }
    failures
}

/// Runs every query; returns what went wrong: different answers, or a sub-plan federated
/// (or not) against expectation.
pub async fn sub_plan_failures(
    pushed: &Engine,
    local: &Engine,
    queries: &[(&str, bool)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for (sql, must_federate) in queries {
        let (got, want, plan) = both(pushed, local, sql).await;
        if got != want {
            failures.push(format!(
                "{sql}: pushed gives\n{got}\nDataFusion gives\n{want}\nwith the plan\n{plan}"
            ));
        }
        let federated = plan.contains("table=(sub-plan)");
        if federated != *must_federate {
            failures.push(format!("{sql}: expected federated={must_federate}\n{plan}"));
        }
    }
    failures
}

/// Runs every query (each reading one common table expression more than once); returns
/// what went wrong: different answers, or scans of the same sub-plan sharing one query on
/// the source (or not) against expectation. A shared query is sent once.
pub async fn shared_failures(
    pushed: &Engine,
    local: &Engine,
    queries: &[(&str, bool)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for (sql, must_share) in queries {
        let (got, want, plan) = both(pushed, local, sql).await;
        if got != want {
            failures.push(format!(
                "{sql}: pushed gives\n{got}\nDataFusion gives\n{want}"
            ));
        }
        let runs = plan.matches("shared: runs").count();
        let reads = plan.matches("shared: reads").count();
        let shared = runs > 0 && reads > 0;
        if shared != *must_share {
            failures.push(format!("{sql}: expected shared={must_share}\n{plan}"));
        }
        let queries = pushed.explain(sql).await.unwrap().queries;
        let mut distinct: Vec<&String> = queries.iter().map(|(_, q)| q).collect();
        distinct.sort();
        distinct.dedup();
        if *must_share && distinct.len() != queries.len() {
            failures.push(format!("{sql}: a query is sent twice: {queries:#?}"));
        }
    }
    failures
}

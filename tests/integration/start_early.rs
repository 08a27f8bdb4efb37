//! Aggregates that a plan would run only after something else has finished start with the
//! query: a hash join's probe side (under a `BufferExec`) unless it reads the join's
//! dynamic filter, which is known only once the build side is done, and the parts of a
//! scalar subquery's main input that do not read the subquery's value (under an
//! `EarlyStartExec`). Each query's answer must equal DataFusion's own, run without any of
//! Tributary's rules.
//!
//! Keys have NULLs and values with no match; names have quotes and unicode; amounts are
//! decimals and times are timestamps with time zones.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use tributary::Engine;
use tributary_core::start_early::EarlyStartExec;

use crate::common::{engine, write_parquet};

const HOUR: i64 = 3_600_000_000;
/// 2024-01-01 00:00:00+02.
const FIRST: i64 = 1_704_060_000_000_000;

/// 3,000 rows; every 97th has NULLs.
fn facts() -> RecordBatch {
    let ids: Vec<i64> = (1..=3000).collect();
    let null = |id: i64| id % 97 == 0;
    let k: Vec<Option<i32>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some((id % 300) as i32))
        .collect();
    let name: Vec<Option<String>> = ids
        .iter()
        .map(|&id| {
            (!null(id)).then(|| match id % 3 {
                0 => format!("o'brien-{}", id % 50),
                1 => format!("東京 \"q\"-{}", id % 50),
                _ => format!("back\\slash-{}", id % 50),
            })
        })
        .collect();
    let amount: Vec<Option<i128>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some(i128::from(id % 100) * 25 + i128::from(id % 7)))
        .collect();
    let at: Vec<Option<i64>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some(FIRST + (id % 100) * HOUR))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int32, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
            true,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(Int32Array::from(k)),
        Arc::new(StringArray::from(name)),
        Arc::new(
            Decimal128Array::from(amount)
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(TimestampMicrosecondArray::from(at).with_timezone("+02:00")),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Five rows: keys and amounts the facts have, one they lack, one NULL.
fn picks() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("top", DataType::Decimal128(12, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![
            Some(3),
            Some(7),
            Some(299),
            Some(1000),
            None,
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(2481), Some(2480), Some(2), Some(99999), None])
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(FIRST + 99 * HOUR),
                Some(FIRST + 5 * HOUR),
                Some(FIRST - HOUR),
                Some(FIRST + 98 * HOUR),
                None,
            ])
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Queries (`{F}` the facts, `{P}` the picks) and whether an aggregate starts early: on a
/// join's probe side, not when the join's keys are its grouping keys, because then the
/// join's dynamic filter reaches the scan below it; under a scalar subquery, not when it
/// reads the subquery's value or waits for a join's keys.
const QUERIES: &[(&str, bool)] = &[
    // Joined on an aggregated value: the filter cannot pass the aggregate.
    (
        "SELECT p.k, a.name, a.top FROM {P} p JOIN \
         (SELECT name, max(amount) AS top FROM {F} GROUP BY name) a ON a.top = p.top \
         ORDER BY a.name, p.k",
        true,
    ),
    (
        "SELECT p.k, a.k AS group_k, a.n, a.last FROM {P} p JOIN \
         (SELECT k, count(*) AS n, max(at) AS last FROM {F} GROUP BY k) a ON a.last = p.at \
         ORDER BY a.k, p.k",
        true,
    ),
    // Nothing matches.
    (
        "SELECT p.k, a.name FROM {P} p JOIN \
         (SELECT name, max(amount) AS top FROM {F} GROUP BY name) a ON a.top = p.top \
         WHERE p.top > 900",
        true,
    ),
    // Joined on the grouping key: the join's keys filter the scan under the aggregate.
    (
        "SELECT p.k, a.total, a.names FROM {P} p JOIN \
         (SELECT k, sum(amount) AS total, count(DISTINCT name) AS names FROM {F} GROUP BY k) a \
         ON a.k = p.k ORDER BY p.k",
        false,
    ),
    // Groups compared with a scalar subquery's value: the grouping runs meanwhile.
    (
        "SELECT k, sum(amount) AS total FROM {F} GROUP BY k \
         HAVING sum(amount) > (SELECT avg(amount) * 12 FROM {F}) ORDER BY k",
        true,
    ),
    // The subquery's value is NULL: no group passes.
    (
        "SELECT name, max(at) AS last FROM {F} GROUP BY name \
         HAVING max(amount) > (SELECT max(amount) FROM {F} WHERE id < 0)",
        true,
    ),
    // The aggregate's groups are filtered by the join above it, whose keys reach the scan
    // below once its build side is read: it waits for them.
    (
        "SELECT p.k, a.total FROM {P} p JOIN \
         (SELECT k, sum(amount) AS total FROM {F} GROUP BY k) a ON a.k = p.k \
         WHERE a.total > (SELECT avg(amount) FROM {F}) ORDER BY p.k",
        false,
    ),
    // The rows aggregated depend on the subquery's value.
    (
        "SELECT count(*) AS n, count(DISTINCT name) AS names FROM {F} \
         WHERE amount > (SELECT max(amount) - 1 FROM {F})",
        false,
    ),
];

/// The facts and picks as Parquet, read by Tributary (as `lake.main.*`) and by plain
/// DataFusion (as `facts` and `picks`), for comparing answers.
pub(crate) struct Lake {
    _dir: tempfile::TempDir,
    pub(crate) tributary: Engine,
    reference: SessionContext,
}

impl Lake {
    pub(crate) async fn new() -> Lake {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        std::fs::create_dir(&lake).unwrap();
        write_parquet(&lake.join("facts.parquet"), &facts());
        write_parquet(&lake.join("picks.parquet"), &picks());
        let tributary = engine(
            dir.path(),
            &format!(
                "sources:\n  - name: lake\n    kind: files\n    url: {}\n",
                lake.display()
            ),
        );
        let reference = SessionContext::new();
        for table in ["facts", "picks"] {
            let path = lake.join(format!("{table}.parquet"));
            reference
                .register_parquet(table, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap();
        }
        Lake {
            _dir: dir,
            tributary,
            reference,
        }
    }

    /// `query` (`{F}` the facts, `{P}` the picks) as Tributary names the tables, and
    /// Tributary's plan of it.
    pub(crate) async fn plan(&self, query: &str) -> (String, DataFrame) {
        let ours = query
            .replace("{F}", "lake.main.facts")
            .replace("{P}", "lake.main.picks");
        let df = self
            .tributary
            .sql(&ours)
            .await
            .unwrap_or_else(|e| panic!("{ours}: {e}"));
        (ours, df)
    }

    /// `query` run by Tributary: its text as Tributary names the tables, its optimized
    /// logical plan (indented), its answer (a text table), and a failure unless that is
    /// plain DataFusion's answer.
    pub(crate) async fn checked(&self, query: &str) -> (String, String, String, Option<String>) {
        let (ours, df) = self.plan(query).await;
        let plan = df
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        let got = df.collect().await.unwrap_or_else(|e| panic!("{ours}: {e}"));
        let got = pretty_format_batches(&got).unwrap().to_string();
        let want = self.want(query).await;
        let mismatch =
            (got != want).then(|| format!("{ours}\ngot\n{got}\nDataFusion alone gives\n{want}"));
        (ours, plan, got, mismatch)
    }

    /// Plain DataFusion's answer to `query`, as a text table.
    pub(crate) async fn want(&self, query: &str) -> String {
        let want = self.plain(query).await.unwrap();
        pretty_format_batches(&want).unwrap().to_string()
    }

    /// Plain DataFusion's batches for `query`, or its error.
    pub(crate) async fn plain(&self, query: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
        let theirs = query.replace("{F}", "facts").replace("{P}", "picks");
        self.reference.sql(&theirs).await?.collect().await
    }
}

/// Whether `plan` starts some of its work with the query: a hash join's probe side under a
/// [`BufferExec`], or an [`EarlyStartExec`].
fn starts_early(plan: &Arc<dyn ExecutionPlan>) -> bool {
    count(plan, |node| {
        node.downcast_ref::<EarlyStartExec>().is_some()
            || node
                .downcast_ref::<HashJoinExec>()
                .is_some_and(|join| join.right().downcast_ref::<BufferExec>().is_some())
    }) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_that_would_wait_start_with_the_query() {
    let lake = Lake::new().await;

    let mut failures = Vec::new();
    for (query, early) in QUERIES {
        let (ours, plan, got) = run(&lake, query).await;
        // The plan run again after DataFusion resets its state (as a recursive query does)
        // starts its work anew.
        let reset = reset_plan_states(Arc::clone(&plan)).unwrap();
        let again = Arc::new(lake.plan(query).await.1.task_ctx());
        let rerun = collect(reset, again)
            .await
            .unwrap_or_else(|e| panic!("{ours}, run again: {e}"));
        let rerun = pretty_format_batches(&rerun).unwrap().to_string();
        if rerun != got {
            failures.push(format!("{ours}\nfirst run\n{got}\nrun again\n{rerun}"));
        }

        let want = lake.want(query).await;
        if got != want {
            failures.push(format!(
                "{ours}\ngot\n{got}\nDataFusion alone gives\n{want}"
            ));
        }
        if starts_early(&plan) != *early {
            failures.push(format!(
                "{ours}: an aggregate should{} start early\n{}",
                if *early { "" } else { " not" },
                displayable(plan.as_ref()).indent(true)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `query` run by Tributary: its text as run, its physical plan and its answer.
async fn run(lake: &Lake, query: &str) -> (String, Arc<dyn ExecutionPlan>, String) {
    let (ours, df) = lake.plan(query).await;
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.unwrap();
    let got = collect(Arc::clone(&plan), task)
        .await
        .unwrap_or_else(|e| panic!("{ours}: {e}"));
    let got = pretty_format_batches(&got).unwrap().to_string();
    (ours, plan, got)
}

/// How many nodes of `plan` satisfy `test`.
fn count(plan: &Arc<dyn ExecutionPlan>, test: impl Fn(&dyn ExecutionPlan) -> bool) -> usize {
    let mut found = 0;
    plan.apply(|node| {
        found += usize::from(test(node.as_ref()));
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    found
}

/// How many [`BufferExec`]s `plan` has.
fn buffers(plan: &Arc<dyn ExecutionPlan>) -> usize {
    count(plan, |node| node.downcast_ref::<BufferExec>().is_some())
}

/// How many hash joins read their build side under a [`BufferExec`].
fn buffered_build_sides(plan: &Arc<dyn ExecutionPlan>) -> usize {
    count(plan, |node| {
        node.downcast_ref::<HashJoinExec>()
            .is_some_and(|join| join.left().downcast_ref::<BufferExec>().is_some())
    })
}

/// A join inside another join's probe side starts its build side with the query, unless
/// that build side waits for a dynamic filter from outside it; answers do not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_sides_that_would_start_late_start_with_the_query() {
    let lake = Lake::new().await;
    let queries = [
        // Three tables: the join of the facts with the picks runs in the probe side of the
        // join with the other picks, so its build side would wait for theirs.
        (
            "SELECT f.id, p.k, q.k AS qk FROM {F} f JOIN {P} p ON f.k = p.k \
             JOIN {P} q ON q.top = f.amount ORDER BY f.id, qk",
            1,
        ),
        // The late build side keeps nothing.
        (
            "SELECT f.id, q.k AS qk FROM {F} f JOIN {P} p ON f.k = p.k \
             JOIN {P} q ON q.top = f.amount WHERE p.top < 0 ORDER BY f.id",
            1,
        ),
        // Two tables: the build side starts with the query anyway.
        (
            "SELECT f.id FROM {P} p JOIN {F} f ON f.k = p.k WHERE p.top > 1 ORDER BY f.id",
            0,
        ),
    ];
    let mut failures = Vec::new();
    for (query, buffered) in queries {
        let (ours, plan, got) = run(&lake, query).await;
        let want = lake.want(query).await;
        if got != want {
            failures.push(format!(
                "{ours}\ngot\n{got}\nDataFusion alone gives\n{want}"
            ));
        }
        // A source's sub-plan is optimized alone, then again in its query: the rule must
        // find what it started already, under whatever DataFusion placed above it.
        let state = lake.tributary.context().state();
        let mut again = Arc::clone(&plan);
        // Join inputs are not swapped once dynamic filters are placed.
        for rule in state.physical_optimizers() {
            if rule.name() != "join_selection" {
                again = rule.optimize(again, state.config_options()).unwrap();
            }
        }
        let (once, twice) = (buffers(&plan), buffers(&again));
        if once != twice {
            failures.push(format!(
                "{ours}: {once} buffers, {twice} once optimized again\n{}",
                displayable(again.as_ref()).indent(true)
            ));
        }
        let found = buffered_build_sides(&plan);
        if found != buffered {
            failures.push(format!(
                "{ours}: {found} build sides started early, expected {buffered}\n{}",
                displayable(plan.as_ref()).indent(true)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

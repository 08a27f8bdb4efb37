//! Reading PostgreSQL's `EXPLAIN (FORMAT JSON)`: the rows a query returns, and whether its
//! plan hashes the larger input of a join.

use serde_json::Value;
use tributary_core::remote::Estimate;

/// A hashed input at least this many times the rows of the other input is "the larger".
const LARGER_FACTOR: f64 = 4.0;
/// Hashed inputs smaller than this cost little wherever they are hashed. Past it, a hash
/// table of a few columns outgrows the default `work_mem` (4 MB) and PostgreSQL splits the
/// join into batches written to disk.
const MIN_HASHED_ROWS: f64 = 100_000.0;

/// The estimate in `explain`, the text of `EXPLAIN (FORMAT JSON)`; `None` if it is not
/// one.
pub fn estimate(explain: &str) -> Option<Estimate> {
    let parsed: Value = serde_json::from_str(explain).ok()?;
    let plan = parsed.get(0)?.get("Plan")?;
    let rows = plan.get("Plan Rows")?.as_f64()?;
    Some(Estimate {
        rows: rows.max(0.0).round() as usize,
        joins_better_apart: hashes_larger_input(plan),
        // Where PostgreSQL runs a join worse, it does so whatever its cost says.
        work: None,
    })
}

/// Whether the topmost join on some path down `plan` is a hash join that builds its hash
/// table from an input of at least [`MIN_HASHED_ROWS`] and [`LARGER_FACTOR`] times the rows
/// it probes with, and returns at least half as many rows as it hashed. PostgreSQL hashes
/// the smaller input when it may choose; before version 16 it cannot for a parallel outer
/// join (TPC-H q13), nor for any anti join (q22), whose preserved side must be probed.
///
/// Only a join that keeps most of the hashed rows counts: reading its inputs apart then
/// moves about as many rows as the join itself produces, where an anti join that drops
/// them (q22 keeps 6,000 customers and drops 1.5 million orders) saves that transfer by
/// running on the source. What the nodes above the join do with its rows is not weighed:
/// q13 groups 1.5 million joined rows into 150,000 there, yet reading its 1.6 million
/// rows apart is faster than PostgreSQL's join. Only topmost joins count because the
/// caller splits the topmost join of the sub-plan (its inputs are then planned again on
/// their own); joins in subplans and init plans (subqueries) are not the sub-plan's.
/// Row estimates of a parallel plan are per process: what each process hashes against
/// what it probes with.
fn hashes_larger_input(plan: &Value) -> bool {
    let children = plan
        .get("Plans")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    fn relationship(child: &Value) -> Option<&str> {
        child.get("Parent Relationship").and_then(Value::as_str)
    }
    let rows_of = |wanted: &str| {
        children
            .iter()
            .find(|c| relationship(c) == Some(wanted))
            .and_then(|c| c.get("Plan Rows"))
            .and_then(Value::as_f64)
    };
    match plan.get("Node Type").and_then(Value::as_str) {
        Some("Hash Join") => {
            let joined = plan.get("Plan Rows").and_then(Value::as_f64);
            matches!((rows_of("Outer"), rows_of("Inner"), joined),
                (Some(probed), Some(hashed), Some(joined))
                    if hashed >= MIN_HASHED_ROWS
                        && hashed >= LARGER_FACTOR * probed
                        && joined >= hashed / 2.0)
        }
        Some("Merge Join" | "Nested Loop") => false,
        _ => children
            .iter()
            .filter(|c| !matches!(relationship(c), Some("InitPlan" | "SubPlan")))
            .any(hashes_larger_input),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(kind: &str, outer_rows: u64, inner_rows: u64, joined: u64) -> String {
        format!(
            r#"{{"Node Type": "{kind}", "Plan Rows": {joined}, "Plans": [
                {{"Node Type": "Seq Scan", "Parent Relationship": "Outer", "Plan Rows": {outer_rows}}},
                {{"Node Type": "Hash", "Parent Relationship": "Inner", "Plan Rows": {inner_rows},
                  "Plans": [{{"Node Type": "Seq Scan", "Parent Relationship": "Outer", "Plan Rows": {inner_rows}}}]}}
            ]}}"#
        )
    }

    fn explain(top: &str) -> String {
        format!(
            r#"[{{"Plan": {{"Node Type": "Aggregate", "Plan Rows": 150000.0, "Plans": [{top}]}}}}]"#
        )
    }

    #[test]
    fn reads_the_rows_of_the_top_node() {
        let e = estimate(r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 42}}]"#).unwrap();
        assert_eq!(e, Estimate::rows(42));
        assert_eq!(estimate("[]"), None);
        assert_eq!(estimate("not json"), None);
    }

    #[test]
    fn a_large_hashed_input_kept_by_the_topmost_join_is_flagged() {
        // TPC-H q13 at SF1: customer probes the hashed orders, 62,500 against 624,938 rows
        // per process, and the outer join keeps every order.
        let q13 = join("Hash Join", 62_500, 624_938, 624_938);
        let e = estimate(&explain(&q13)).unwrap();
        assert_eq!(e.rows, 150_000);
        assert!(e.joins_better_apart);
    }

    #[test]
    fn joins_below_another_join_or_in_subqueries_are_not_looked_at() {
        let bad = join("Hash Join", 729, 625_000, 400_000);
        let below = format!(
            r#"{{"Node Type": "Hash Join", "Plan Rows": 5, "Plans": [
                {}, {{"Node Type": "Hash", "Parent Relationship": "Inner", "Plan Rows": 25}}]}}"#,
            bad.replacen("{", r#"{"Parent Relationship": "Outer", "#, 1)
        );
        assert!(!estimate(&explain(&below)).unwrap().joins_better_apart);
        let in_init_plan = format!(
            r#"{{"Node Type": "Seq Scan", "Plan Rows": 10, "Plans": [
                {}]}}"#,
            bad.replacen("{", r#"{"Parent Relationship": "InitPlan", "#, 1)
        );
        assert!(
            !estimate(&explain(&in_init_plan))
                .unwrap()
                .joins_better_apart
        );
        // The same join under nodes that are not joins is found.
        let under_gather = format!(
            r#"{{"Node Type": "Gather", "Plan Rows": 10, "Plans": [
                {}]}}"#,
            bad.replacen("{", r#"{"Parent Relationship": "Outer", "#, 1)
        );
        assert!(
            estimate(&explain(&under_gather))
                .unwrap()
                .joins_better_apart
        );
    }

    #[test]
    fn small_balanced_or_dropped_hashed_inputs_are_not() {
        let cases = [
            (10, 99_999, 99_999),
            (200_000, 500_000, 500_000),
            (1_000_000, 20_000, 1_000_000),
            // TPC-H q22: an anti join keeps 312 customers per process, hashing 625,000
            // orders.
            (729, 625_000, 312),
        ];
        for (outer, inner, joined) in cases {
            let e = estimate(&explain(&join("Hash Join", outer, inner, joined))).unwrap();
            assert!(
                !e.joins_better_apart,
                "{outer} probing {inner} into {joined}"
            );
        }
        let merge = join("Merge Join", 10, 1_000_000, 1_000_000);
        assert!(!estimate(&explain(&merge)).unwrap().joins_better_apart);
    }
}

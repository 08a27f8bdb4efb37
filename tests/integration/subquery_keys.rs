//! A correlated subquery's aggregate is computed only for the keys of the filtered table the
//! outer query takes its key from. Each query's answer must equal DataFusion's own, run
//! without any of Tributary's rules, and the rule must apply exactly where it may.
//!
//! Keys have NULLs and values with no match; names have quotes and unicode; amounts are
//! decimals and times are timestamps with time zones (the data of `start_early`).

use crate::start_early::Lake;

/// Where the subquery's aggregate input is semi-joined with the outer table's keys.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Narrowed {
    No,
    /// Right under the aggregate: the subquery reads one table.
    Yes,
    /// Under the subquery's own join, on the side that reads the grouping key.
    UnderJoin,
}

/// Queries (`{F}` the facts, `{P}` the picks) and where the subquery's aggregate is
/// narrowed to the outer table's keys.
const QUERIES: &[(&str, Narrowed)] = &[
    // The outer key comes from the filtered picks. (The subquery's `g.id > 0`, which the
    // outer query lacks, keeps it from becoming a window over the outer rows.)
    (
        "SELECT p.k, f.id, f.amount FROM {P} p, {F} f \
         WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k AND g.id > 0) \
         ORDER BY f.id",
        Narrowed::Yes,
    ),
    // The subquery joins two tables (q02's shape): the keys meet the grouping side's rows
    // before the join does, also when the other side keeps nothing.
    (
        "SELECT p.k, f.id, f.amount FROM {P} p, {F} f \
         WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g, {F} h \
         WHERE g.k = p.k AND h.id = g.id + 1 AND h.name LIKE 'o''brien%') ORDER BY f.id",
        Narrowed::UnderJoin,
    ),
    (
        "SELECT p.k, f.id FROM {P} p, {F} f \
         WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT max(g.amount) FROM {F} g JOIN {P} q ON q.k = g.k \
         WHERE g.k = p.k AND q.at > TIMESTAMP '2030-01-01T00:00:00Z') ORDER BY f.id",
        Narrowed::UnderJoin,
    ),
    // The outer key comes from the filtered facts themselves (a quote in the pattern).
    (
        "SELECT f.name, f.amount, f.at FROM {F} f WHERE f.name LIKE 'o''brien-1%' \
         AND f.amount = (SELECT max(g.amount) FROM {F} g WHERE g.name = f.name) \
         ORDER BY f.name, f.at",
        Narrowed::Yes,
    ),
    // The filter keeps nothing.
    (
        "SELECT f.name FROM {F} f WHERE f.name = '東京 \"none\"' \
         AND f.amount = (SELECT max(g.amount) FROM {F} g WHERE g.name = f.name)",
        Narrowed::Yes,
    ),
    // A timestamp key with another time zone on each side: the outer key is cast to the
    // subquery's type, not a plain column, so nothing is added.
    (
        "SELECT p.k, p.at FROM {P} p WHERE p.k IS NOT NULL \
         AND p.top < (SELECT max(g.amount) FROM {F} g WHERE g.at = p.at) ORDER BY p.k",
        Narrowed::No,
    ),
    // Another read of the same table, in a derived table named first, is not where the
    // outer key comes from.
    (
        "SELECT {F}.id FROM (SELECT k AS xk FROM {F} WHERE id < 50) x JOIN {F} ON x.xk = {F}.k \
         WHERE {F}.name LIKE 'o''brien-%' \
         AND {F}.amount = (SELECT max(g.amount) FROM {F} g WHERE g.k = {F}.k) ORDER BY 1",
        Narrowed::Yes,
    ),
    // The outer table is not filtered: every key stays, so nothing is added.
    (
        "SELECT f.id, f.amount FROM {F} f \
         WHERE f.amount = (SELECT max(g.amount) FROM {F} g WHERE g.k = f.k) ORDER BY f.id",
        Narrowed::No,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subquery_groups_are_computed_for_the_outer_keys_only() {
    let lake = Lake::new().await;

    let mut failures = Vec::new();
    for (query, narrowed) in QUERIES {
        let (ours, plan, _, mismatch) = lake.checked(query).await;
        failures.extend(mismatch);
        let found = narrowed_in(&plan);
        if found != *narrowed {
            failures.push(format!(
                "{ours}: the subquery should be narrowed {narrowed:?}, is {found:?}\n{plan}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where the logical `plan` (indented) semi-joins a subquery's aggregate input with outer
/// keys: under another join of that input, or not.
fn narrowed_in(plan: &str) -> Narrowed {
    let lines: Vec<&str> = plan.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let Some(semi) = lines
        .iter()
        .position(|l| l.contains("LeftSemi Join") && l.contains("__tributary_outer_keys"))
    else {
        return Narrowed::No;
    };
    let aggregate = lines[..semi]
        .iter()
        .rposition(|l| l.trim_start().starts_with("Aggregate:"))
        .expect("the semi-join is under an aggregate");
    let under_join = lines[aggregate + 1..semi]
        .iter()
        .any(|l| l.contains("Join:") && indent(l) < indent(lines[semi]));
    if under_join {
        Narrowed::UnderJoin
    } else {
        Narrowed::Yes
    }
}

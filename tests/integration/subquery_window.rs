//! A scalar subquery that aggregates the outer query's own rows is computed as a window over
//! them: a correlated one in `WHERE` per key, an uncorrelated one in `HAVING` over the
//! groups. Each query's answer must equal DataFusion's own, run without any of Tributary's
//! rules, and the rule must apply exactly where it may.
//!
//! Keys have NULLs and values with no match; names have quotes and unicode; amounts are
//! decimals and times are timestamps with time zones (the data of `start_early`).

use crate::start_early::Lake;

/// Queries (`{F}` the facts, `{P}` the picks) and whether the subquery becomes a window.
const QUERIES: &[(&str, bool)] = &[
    // q02's shape: the subquery reads a table of the outer query, correlated on the other.
    (
        "SELECT p.k, f.id, f.amount FROM {P} p, {F} f \
         WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        true,
    ),
    // Two reads of one table in each: only one assignment of the subquery's reads to the
    // outer query's gives its conditions (a quote in the pattern).
    (
        "SELECT p.k, f.id, h.name FROM {P} p, {F} f, {F} h \
         WHERE f.k = p.k AND h.id = f.id + 1 AND h.name NOT LIKE 'o''brien%' AND p.top > 1 \
         AND f.amount = (SELECT max(g.amount) FROM {F} g, {F} i \
         WHERE i.id = g.id + 1 AND g.k = p.k AND i.name NOT LIKE 'o''brien%') ORDER BY f.id",
        true,
    ),
    // `JOIN … ON`, an average of decimals in an expression, and a condition on the other
    // table alone.
    (
        "SELECT p.k, f.id, f.amount FROM {P} p JOIN {F} f ON p.k = f.k \
         WHERE p.at IS NOT NULL \
         AND f.amount < (SELECT avg(g.amount) - 0.01 FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        true,
    ),
    // Timestamps with a time zone, unicode and a quote in the pattern, and the same filter
    // on both sides.
    (
        "SELECT f.name, f.at FROM {P} p, {F} f \
         WHERE f.k = p.k AND f.name LIKE '東京 \"q\"%' AND p.k > 0 \
         AND f.at = (SELECT max(g.at) FROM {F} g WHERE g.k = p.k AND g.name LIKE '東京 \"q\"%') \
         ORDER BY 1, 2",
        true,
    ),
    // Outer conditions the subquery lacks (on its table, and across both) are applied after
    // the window: the minimum is still over all of the key's rows.
    (
        "SELECT p.k, f.id, f.amount FROM {P} p, {F} f \
         WHERE f.k = p.k AND f.name LIKE 'o''brien%' AND f.id > p.k AND p.top > 1 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        true,
    ),
    // A per-key value divided by a constant; one that divides by an aggregate could fail for
    // a key the outer rows lack, as DataFusion computes it for every key.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount > (SELECT max(g.amount) / 2 FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        true,
    ),
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount > (SELECT 1000 / max(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    // A volatile value is computed once per key, not per row.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount >= (SELECT min(g.amount) * (random() + 1) FROM {F} g WHERE g.k = p.k) \
         AND f.amount < 0",
        false,
    ),
    // Many outer rows per key: the subquery's rows repeat in the window, the average does
    // not change.
    (
        "SELECT a.id, f.id AS fid FROM {F} a, {F} f \
         WHERE a.k = f.k AND a.id < 400 \
         AND f.amount > (SELECT avg(g.amount) FROM {F} g WHERE g.k = a.k) ORDER BY 1, 2",
        true,
    ),
    // Nothing matches.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 100000 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k)",
        true,
    ),
    // Sums and counts grow with repetition.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount * 20 > (SELECT sum(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.id % 20 = (SELECT count(*) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    // A float sum may round differently when repeated.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 AND CAST(f.amount AS DOUBLE) > \
         (SELECT avg(CAST(g.amount AS DOUBLE)) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    // The subquery has a condition the outer query lacks.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k AND g.id > 1000) \
         ORDER BY f.id",
        false,
    ),
    // Not correlated: the window would hold every row.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND f.amount = (SELECT max(g.amount) FROM {F} g) ORDER BY f.id",
        false,
    ),
    // Correlated with the table the subquery reads itself.
    (
        "SELECT f.id FROM {F} f WHERE f.name LIKE 'o''brien-1%' \
         AND f.amount = (SELECT max(g.amount) FROM {F} g WHERE g.name = f.name) ORDER BY f.id",
        false,
    ),
    // The outer query does not filter the table of the key: the window would hold about
    // as many rows as the subquery reads.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    // Minimums and maximums of floats: DataFusion's grouped and plain ones differ on NaN.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 \
         AND CAST(f.amount AS DOUBLE) = (SELECT min(CAST(g.amount AS DOUBLE)) FROM {F} g \
         WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    // Calls of one table function with other arguments are other tables.
    (
        "SELECT a.value, b.value FROM generate_series(1, 5) a, generate_series(1, 5) b \
         WHERE b.value = a.value AND a.value > 1 AND b.value = \
         (SELECT max(c.value) FROM generate_series(10, 20) c WHERE c.value = a.value)",
        false,
    ),
    // `HAVING` over a share of the total of the same rows (q11's shape), with NULL groups.
    (
        "SELECT f.name, sum(f.amount) AS total FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING sum(f.amount) > (SELECT sum(g.amount) * 0.007 FROM {F} g WHERE g.id > 10) \
         ORDER BY 1",
        true,
    ),
    // A join, counts, and an aggregate the groups do not compute yet.
    (
        "SELECT f.k, count(*) AS n FROM {F} f JOIN {P} p ON p.k = f.k GROUP BY f.k \
         HAVING count(*) * 4 > (SELECT count(*) FROM {F} g, {P} q WHERE q.k = g.k) \
         AND max(f.amount) > (SELECT min(g.amount) FROM {F} g, {P} q WHERE g.k = q.k) \
         ORDER BY 1",
        true,
    ),
    // Timestamps with a time zone, and unicode and a quote in the pattern.
    (
        "SELECT f.k, max(f.at) AS last FROM {F} f WHERE f.name LIKE '東京 \"q\"%' GROUP BY f.k \
         HAVING max(f.at) = (SELECT max(g.at) FROM {F} g WHERE g.name LIKE '東京 \"q\"%') \
         ORDER BY 1",
        true,
    ),
    // No rows, so no groups.
    (
        "SELECT f.name, sum(f.amount) FROM {F} f WHERE f.id < 0 GROUP BY f.name \
         HAVING sum(f.amount) > (SELECT sum(g.amount) * 0.01 FROM {F} g WHERE g.id < 0)",
        true,
    ),
    // A share by division: a constant divisor cannot fail.
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING sum(f.amount) > (SELECT sum(g.amount) / 150 FROM {F} g WHERE g.id > 10) \
         ORDER BY 1",
        true,
    ),
    // A value that could fail on no rows (`1000 / 0`) is left to DataFusion, even with rows.
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING count(*) > (SELECT 1000 / count(*) FROM {F} g WHERE g.id > 10) ORDER BY 1",
        false,
    ),
    // Other rows than the groups', an average, a float sum.
    (
        "SELECT f.name, sum(f.amount) FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING sum(f.amount) > (SELECT sum(g.amount) * 0.007 FROM {F} g) ORDER BY 1",
        false,
    ),
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING avg(f.amount) > (SELECT avg(g.amount) FROM {F} g WHERE g.id > 10) ORDER BY 1",
        false,
    ),
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING sum(CAST(f.amount AS DOUBLE)) > \
         (SELECT sum(CAST(g.amount AS DOUBLE)) * 0.007 FROM {F} g WHERE g.id > 10) ORDER BY 1",
        false,
    ),
    // The groups have another aggregate of the same name (`sum(f.k)`, with other casts).
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING sum(CAST(f.k AS SMALLINT)) > (SELECT sum(g.k) / 200 FROM {F} g WHERE g.id > 10) \
         ORDER BY 1",
        false,
    ),
    // A volatile `HAVING` condition would be applied below the window.
    (
        "SELECT f.name FROM {F} f WHERE f.id > 10 GROUP BY f.name \
         HAVING random() < 2 AND sum(f.amount) > \
         (SELECT sum(g.amount) * 0.007 FROM {F} g WHERE g.id > 10) ORDER BY 1",
        false,
    ),
    // A volatile condition, and an outer join.
    (
        "SELECT p.k, f.id FROM {P} p, {F} f WHERE f.k = p.k AND p.top > 1 AND random() < 2 \
         AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
    (
        "SELECT p.k, f.id FROM {P} p LEFT JOIN {F} f ON f.k = p.k \
         WHERE p.top > 1 AND f.amount = (SELECT min(g.amount) FROM {F} g WHERE g.k = p.k) ORDER BY f.id",
        false,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subqueries_over_the_outer_rows_are_windows() {
    let lake = Lake::new().await;

    let mut failures = Vec::new();
    for (query, windowed) in QUERIES {
        let (ours, plan, got, mismatch) = lake.checked(query).await;
        failures.extend(mismatch);
        if plan.contains("WindowAggr:") != *windowed {
            failures.push(format!(
                "{ours}: the subquery should be a window: {windowed}\n{plan}"
            ));
        }
        if *windowed
            && got.lines().count() < 5
            && !query.contains("100000")
            && !query.contains("id < 0")
        {
            failures.push(format!("{ours}: expected rows, got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_that_fails_on_no_rows_still_fails() {
    let lake = Lake::new().await;
    // No row is grouped, yet DataFusion computes the subquery's value: 10 / 0.
    let query = "SELECT f.name FROM {F} f WHERE f.id < 0 GROUP BY f.name \
                 HAVING count(*) > (SELECT 10 / count(*) FROM {F} g WHERE g.id < 0)";
    let theirs = lake.plain(query).await.unwrap_err().to_string();
    let (ours, df) = lake.plan(query).await;
    let got = df.collect().await.unwrap_err().to_string();
    assert!(
        theirs.contains("Divide by zero") && got.contains("Divide by zero"),
        "{ours}: {got}\nDataFusion alone: {theirs}"
    );
}

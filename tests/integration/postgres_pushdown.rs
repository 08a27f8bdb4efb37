//! Every pushed operator returns exactly what DataFusion computes without pushdown.
//!
//! The pushdown matrix: each filter and sub-plan below runs twice against the same
//! PostgreSQL tables, once with `pushdown: true` and once with `pushdown: false` (every
//! scan reads whole columns and DataFusion computes the rest), over data chosen to expose
//! the traps: quotes, backslashes, `%` and `_`, unicode, case, trailing blanks, NULLs,
//! -0.0 and NaN, time zones, decimals. Each row also states whether it must be pushed, so
//! a rule that silently stops pushing is caught as well as one that pushes wrongly.

use tributary::Engine;
use tributary_testkit::postgres::Schema;

use crate::common::{run, table};
use crate::flight_sql::{query, start_with};
use crate::matrix::{filter_failures, shared_failures, sub_plan_failures};
use crate::postgres::pg_engine;

const PD_TABLE: &str = r#"
CREATE TABLE pd (
    id int PRIMARY KEY,
    s text,
    s_icu text COLLATE "und-x-icu",
    c char(4),
    ci citext,
    n numeric(10, 2),
    nu numeric,
    f float8,
    i int,
    b bigint,
    ts timestamptz,
    tsn timestamp,
    d date,
    flag bool,
    j jsonb,
    u uuid,
    x numeric(20, 10)
);
INSERT INTO pd VALUES
 (1, 'abc', 'abc', 'ab', 'abc', 1.50, 1.123456789012, 0.0, 5, 10,
  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '{"a":1}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.6428571000),
 (2, 'ABC', 'ABC', 'ab  ', 'ABC', -1.50, -2.5, '-0.0', -5, -10,
  '2024-01-01 01:30:00+02', '2024-01-01 01:30:00', '2023-12-31', false, '{"a":2}',
  'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', -2.5),
 (3, 'abc ', 'abc ', 'abc', 'Abc', 0.00, 0, 'NaN', 0, 0,
  '2023-12-31 23:00:00-05', '2023-12-31 23:00:00', '2024-01-02', true, 'null', NULL, 0),
 (4, 'a''b', 'a''b', 'a''b', 'a''b', 99999999.99, 100, 1.5, 7, 9223372036854775807,
  '1970-01-01 00:00:00+00', '1970-01-01 00:00:00', '1970-01-01', NULL, '[]', NULL, 1.6428570000),
 (5, 'back\slash', 'back\slash', 'x\y', 'x', -99999999.99, -100, 'Infinity', -7, -9223372036854775808,
  '2099-12-31 23:59:59.999999+00', '2099-12-31 23:59:59.999999', '2099-12-31', false, NULL, NULL, 1.6428572000),
 (6, '100%', '100%', '1%', '1%', 0.01, 0.5, '-Infinity', 6, 6, NULL, NULL, NULL, true, NULL, NULL, NULL),
 (7, 'under_score', 'under_score', 'u_s', 'u_s', -0.01, 0.25, 2.5, 8, 8,
  '2024-06-30 12:00:00+09', '2024-06-30 12:00:00', '2024-06-30', true, NULL, NULL, 99.1234567891),
 (8, 'ünïcödé', 'ünïcödé', 'ü', 'ÜNÏ', 12.34, 12.34, -2.5, 9, 9,
  '2024-03-10 02:30:00-08', '2024-03-10 02:30:00', '2024-03-10', false, NULL, NULL, -0.0000000001),
 (9, '東京', '東京', '東京', '東京', 5.00, 5, 3.25, 10, 10,
  '2024-01-01 00:00:00+09', '2024-01-01 00:00:00', '2024-01-01', true, NULL, NULL, 5),
 (10, '', '', '', '', 0.10, 0.1, 1e300, 11, 11,
  '2024-01-01 00:00:00.000001+00', '2024-01-01 00:00:00.000001', '2024-01-01', false, NULL, NULL, 0.1),
 (11, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (12, 'b', 'b', 'b', 'b', 2.00, 2, 4.0, 12, 12,
  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, NULL, NULL, 2),
 (13, 'B', 'B', 'B', 'B', 3.00, 3, 5.0, 13, 13,
  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, NULL, NULL, 1.6428571428);
ANALYZE pd;
"#;

/// Filters and whether each must reach PostgreSQL. The reasons for the unpushed ones are
/// in `tributary_core::remote::pushdown` and `tributary_postgres::types`.
const FILTERS: &[(&str, bool)] = &[
    // String equality is bytewise in PostgreSQL's deterministic collations.
    ("s = 'abc'", true),
    ("s <> 'abc'", true),
    ("s = 'a''b'", true),
    ("s = 'back\\slash'", true),
    ("s = ''", true),
    ("s IS DISTINCT FROM 'abc'", true),
    ("s_icu = 'abc'", true),
    // Ordering follows the collation: C.UTF-8 is byte order, ICU is not.
    ("s < 'b'", true),
    ("s >= 'B'", true),
    ("s BETWEEN 'B' AND 'b'", true),
    ("s_icu < 'b'", false),
    // char(n) ignores trailing blanks, citext ignores case.
    ("c = 'ab'", false),
    ("ci = 'abc'", false),
    // LIKE with % and _ wildcards and backslash escapes; ILIKE folds case differently.
    ("s LIKE 'a%'", true),
    ("s LIKE '%\\%%'", true),
    ("s LIKE '%\\_%'", true),
    ("s LIKE '_b_'", true),
    ("s NOT LIKE '%c%'", true),
    ("s ILIKE 'ABC'", false),
    ("c LIKE 'ab%'", false),
    ("s IS NULL", true),
    ("s IS NOT NULL", true),
    ("s IN ('abc', '東京', 'nope')", true),
    ("s NOT IN ('abc', 'B')", true),
    ("s || '!' = 'abc!'", true),
    ("character_length(s) = 3", true),
    ("coalesce(s, 'none') = 'none'", true),
    // Characters, not bytes; a start before 1 still counts toward the length.
    ("substr(s, 1, 2) = 'ab'", true),
    ("substring(s from 2 for 2) = 'bc'", true),
    ("substr(s, 2) = 'bc'", true),
    ("substr(s, 0, 3) = 'ab'", true),
    ("substr(s, -1, 3) = 'a'", true),
    ("substr(s, 2, 1) = 'n'", true),
    ("substr(s, 1, 1) IN ('ü', '東')", true),
    ("substr(s, i, 2) = 'ab'", false),
    ("upper(s) = 'ABC'", false),
    ("lower(s) = 'abc'", false),
    // Decimals: exact arithmetic, but division rounds differently.
    ("n > 1.00", true),
    ("n = -1.5", true),
    ("n * 2 > 2", true),
    ("n + n > 0", true),
    ("n - n * n < 0", true),
    ("-n > 1", true),
    ("n / 3 > 0.3", false),
    // A float literal turns the comparison into a float one.
    ("n + 0.01 > 0", false),
    // Unconstrained numeric is truncated to 10 fraction digits when read.
    ("nu > 1.12345678901", false),
    // Floats: -0.0 and NaN compare differently.
    ("f = 0", false),
    ("f > 0", false),
    ("f < 1e301", false),
    // Integers: division truncates in both; overflow wraps in DataFusion but fails in
    // PostgreSQL (b + i overflows on two rows), so +, -, *, % and abs stay here.
    ("i / 2 = 2", true),
    ("i % 3 = 2", false),
    ("-i > 0", false),
    ("abs(i) = 5", false),
    ("b + i > 10", false),
    ("nullif(i, 5) IS NULL", true),
    ("CAST(i AS BIGINT) = 5", true),
    ("b > 9223372036854775806", true),
    // Casts that change a value's form stay in DataFusion.
    ("CAST(n AS VARCHAR) = '1.50'", false),
    ("CAST(i AS DOUBLE) > 1", false),
    // Time: instants with zones, plain timestamps, dates, intervals.
    ("ts = TIMESTAMP '2024-01-01 00:00:00+00:00'", true),
    ("ts > TIMESTAMP '2023-12-31 23:59:59Z'", true),
    ("ts < TIMESTAMP '2024-01-01 00:00:00+01:00'", true),
    ("ts >= '2024-06-30T03:00:00Z'", true),
    ("tsn >= TIMESTAMP '2024-01-01 00:00:00'", true),
    ("tsn < '2024-01-01 00:00:00.000001'", true),
    ("d BETWEEN DATE '2023-12-31' AND DATE '2024-01-02'", true),
    ("d > DATE '2024-01-01' - INTERVAL '1' DAY", true),
    ("d + INTERVAL '1' MONTH > DATE '2024-02-01'", true),
    // Booleans and CASE.
    ("flag", true),
    ("NOT flag", true),
    ("flag IS NOT TRUE", true),
    ("CASE WHEN i > 0 THEN 'pos' ELSE 'neg' END = 'pos'", true),
    // Values read through their text form.
    ("j IS NOT NULL", true),
    ("u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", false),
    // Combinations push what they can.
    ("s = 'abc' OR i > 10", true),
    ("(s < 'b' OR s IS NULL) AND i <> 7", true),
];

/// Sub-plans and whether each must run on PostgreSQL as one query.
const SUB_PLANS: &[(&str, bool)] = &[
    (
        "SELECT count(*), sum(n), min(s), max(i), count(DISTINCT s) FROM pd",
        true,
    ),
    (
        "SELECT s_icu, count(*) AS k FROM pd GROUP BY s_icu ORDER BY s_icu",
        true,
    ),
    ("SELECT min(s_icu) FROM pd", false),
    ("SELECT c, count(*) FROM pd GROUP BY c ORDER BY c", false),
    ("SELECT f, count(*) FROM pd GROUP BY f ORDER BY f", false),
    ("SELECT avg(n), sum(n * 2) FROM pd", true),
    ("SELECT avg(i) FROM pd", false),
    (
        "SELECT flag, sum(n) FROM pd WHERE id < 4 GROUP BY flag ORDER BY flag",
        true,
    ),
    // Integer sums wrap on overflow in DataFusion (b's sum does).
    ("SELECT sum(b) FROM pd", false),
    // Same-typed columns: a swapped column order would go unnoticed by the types.
    (
        "SELECT b, count(*) AS k FROM pd GROUP BY b ORDER BY b LIMIT 3",
        true,
    ),
    (
        "SELECT b, count(*) AS k FROM pd GROUP BY b ORDER BY k DESC, b LIMIT 3",
        true,
    ),
    (
        "SELECT a.id AS x, b.id AS y FROM pd a JOIN pd b ON a.s = b.s ORDER BY x, y",
        true,
    ),
    (
        "SELECT a.id AS x, b.id AS y FROM pd a JOIN pd b ON a.c = b.c ORDER BY x, y",
        false,
    ),
    (
        "SELECT a.id AS x, b.i AS y FROM pd a LEFT JOIN pd b ON a.id = b.i ORDER BY x",
        true,
    ),
    // Integer arithmetic may overflow: wraps in DataFusion, fails in PostgreSQL.
    (
        "SELECT a.id AS x, b.i AS y FROM pd a LEFT JOIN pd b ON a.i = b.i + 1 ORDER BY x",
        false,
    ),
    // The SQL written for it would move the preserved side's filter into ON.
    (
        "SELECT a.id AS x, b.i AS y FROM pd a LEFT JOIN pd b ON a.id = b.i WHERE a.id < 5 ORDER BY x",
        false,
    ),
    (
        "SELECT a.id AS x, b.i AS y FROM pd a FULL JOIN pd b ON a.id = b.i ORDER BY x, y",
        true,
    ),
    (
        "SELECT a.id AS x FROM pd a LEFT JOIN pd b ON a.i = b.i AND b.s LIKE 'a%' ORDER BY x",
        true,
    ),
    (
        "SELECT id FROM pd WHERE i NOT IN (SELECT i FROM pd WHERE id > 10) ORDER BY id",
        false,
    ),
    // Still NULL-aware: the outer `i` may be NULL.
    (
        "SELECT id FROM pd WHERE i NOT IN (SELECT i FROM pd WHERE id > 10 AND i IS NOT NULL) ORDER BY id",
        false,
    ),
    // Semi and anti joins run as [NOT] EXISTS, their sides' filters where they belong.
    (
        "SELECT id FROM pd WHERE id NOT IN (SELECT id FROM pd WHERE id > 10) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM pd p WHERE EXISTS (SELECT 1 FROM pd q WHERE q.i = p.id) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM pd p WHERE NOT EXISTS (SELECT 1 FROM pd q WHERE q.i = p.id) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM pd p WHERE p.id < 9 AND NOT EXISTS (SELECT 1 FROM pd q WHERE q.i = p.id AND q.s <> p.s) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM pd WHERE id < 9 AND id IN (SELECT i FROM pd q WHERE q.flag) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM pd WHERE s IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pd q WHERE q.id = pd.i + 0 AND q.s = pd.s) ORDER BY id",
        false,
    ),
    (
        "SELECT id FROM pd WHERE id < 12 AND NOT EXISTS (SELECT 1 FROM pd q WHERE q.id = pd.i AND q.n > 0) AND EXISTS (SELECT 1 FROM pd r WHERE r.b = pd.id AND r.id <> pd.id) ORDER BY id",
        true,
    ),
    // The subquery groups: it would be a derived table, so only the aggregate is sent.
    (
        "SELECT id FROM pd WHERE i IN (SELECT max(id) FROM pd GROUP BY flag) ORDER BY id",
        true,
    ),
    (
        "SELECT id, s FROM pd ORDER BY s NULLS FIRST, id LIMIT 4",
        true,
    ),
    ("SELECT id, s FROM pd ORDER BY s DESC, id LIMIT 4", true),
    ("SELECT id FROM pd ORDER BY n DESC NULLS LAST LIMIT 3", true),
    ("SELECT id FROM pd ORDER BY s_icu, id LIMIT 3", false),
    ("SELECT id FROM pd ORDER BY f, id LIMIT 3", false),
    ("SELECT DISTINCT s FROM pd ORDER BY s", true),
    (
        "SELECT s FROM pd UNION ALL SELECT s FROM pd WHERE id < 3 ORDER BY s",
        true,
    ),
    (
        "SELECT i, count(*) FROM pd GROUP BY i HAVING count(*) > 0 AND i > 5 ORDER BY i",
        true,
    ),
    (
        "SELECT * FROM (SELECT id, s FROM pd LIMIT 20) t WHERE s LIKE 'a%' ORDER BY id",
        false,
    ),
    // A decimal average is DataFusion's, truncated to its scale, wherever it is used: the
    // exact average of `n` where `flag` is 1.642857142857…, DataFusion's 1.642857.
    (
        "SELECT flag, avg(n) AS a FROM pd GROUP BY flag HAVING avg(n) > 1.642857 ORDER BY flag",
        true,
    ),
    (
        "SELECT flag, avg(n) AS a FROM pd GROUP BY flag ORDER BY a DESC LIMIT 2",
        true,
    ),
    // Uncorrelated scalar subqueries run in the same query.
    (
        "SELECT flag, count(*) AS k FROM pd WHERE x > (SELECT avg(n) FROM pd WHERE flag) GROUP BY flag ORDER BY flag",
        true,
    ),
    (
        "SELECT flag, count(*) AS k FROM pd WHERE x > (SELECT avg(n) FROM pd WHERE id > 100) GROUP BY flag ORDER BY flag",
        true,
    ),
    (
        "SELECT flag, count(*) AS k FROM pd WHERE ts < (SELECT max(ts) FROM pd WHERE NOT flag) GROUP BY flag ORDER BY flag",
        true,
    ),
    // TPC-H q22's shape: a derived table over an anti join and a subquery, grouped.
    (
        "SELECT k, count(*) AS c, sum(n) AS t FROM \
         (SELECT substr(s, 1, 1) AS k, n FROM pd \
          WHERE x > (SELECT avg(n) FROM pd WHERE flag) \
          AND NOT EXISTS (SELECT 1 FROM pd q WHERE q.i = pd.id)) AS sub \
         GROUP BY k ORDER BY k",
        true,
    ),
    // Text compares under a collation: the subquery's value is read back instead.
    (
        "SELECT flag, count(*) AS k FROM pd WHERE s = (SELECT max(s) FROM pd WHERE id < 3) GROUP BY flag ORDER BY flag",
        true,
    ),
    (
        "SELECT id FROM pd p WHERE x > (SELECT avg(n) FROM pd q WHERE q.flag = p.flag) ORDER BY id",
        true,
    ),
];

/// Common table expressions read twice: the scans of the same pushed sub-plan share one
/// query (grouping text with quotes, unicode and NULL, summing decimals, timestamps with
/// time zones).
const SHARED: &[(&str, bool)] = &[
    (
        "WITH r AS (SELECT s, sum(n) AS total, max(ts) AS latest FROM pd GROUP BY s) \
         SELECT r.s, r.total, r.latest FROM r WHERE r.total = (SELECT max(total) FROM r) ORDER BY r.s",
        true,
    ),
    (
        "WITH r AS (SELECT s, sum(n) AS total, max(ts) AS latest FROM pd WHERE id <> 4 GROUP BY s) \
         SELECT a.s, a.total, b.latest FROM r a JOIN r b ON a.s = b.s ORDER BY a.s",
        true,
    ),
    (
        "WITH r AS (SELECT s, sum(n) AS total FROM pd WHERE id > 100 GROUP BY s) \
         SELECT s, total FROM r WHERE total = (SELECT max(total) FROM r)",
        true,
    ),
    // Different filters above the aggregate: two different queries.
    (
        "WITH r AS (SELECT s, sum(n) AS total FROM pd GROUP BY s) \
         SELECT s FROM r WHERE total > 0 AND s IN (SELECT s FROM r WHERE total < 100) ORDER BY s",
        false,
    ),
];

#[tokio::test]
async fn scans_of_one_sub_plan_share_its_query() {
    let schema = Schema::create("shared").await;
    schema.execute(PD_TABLE).await;
    let pushed = pg_engine(&schema.name, true, "");
    let local = pg_engine(&schema.name, false, "");
    let failures = shared_failures(&pushed, &local, SHARED).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn a_shared_query_counts_once_in_the_servers_source_rows() {
    let schema = Schema::create("shared_metrics").await;
    schema.execute(PD_TABLE).await;
    let options = tributary::server::Options::default();
    let metrics = std::sync::Arc::clone(&options.metrics);
    let server = start_with(pg_engine(&schema.name, true, ""), options).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    // Both reads of `r` share one query: its three groups (true, false, NULL) count once,
    // not twice.
    let answer = query(
        &mut client,
        "WITH r AS (SELECT flag, count(*) AS k FROM pd GROUP BY flag) \
         SELECT flag, k FROM r WHERE k = (SELECT max(k) FROM r)",
    )
    .await;
    assert!(answer.contains("| true "), "{answer}");
    let text = metrics.render();
    assert!(
        text.contains("tributary_source_rows_total{source=\"pg\"} 3\n"),
        "{text}"
    );
}

#[tokio::test]
async fn filters_give_datafusions_answer_and_push_what_is_safe() {
    let schema = Schema::create("pushdown").await;
    schema.execute(PD_TABLE).await;
    let pushed = pg_engine(&schema.name, true, "");
    let local = pg_engine(&schema.name, false, "");
    let failures = filter_failures(&pushed, &local, "pd", FILTERS).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The matrix is not vacuous: some rows match every filter's negation.
    let all = run(&local, "SELECT id FROM pd").await.unwrap();
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 13);
}

#[tokio::test]
async fn sub_plans_give_datafusions_answer_and_run_remotely_when_safe() {
    let schema = Schema::create("subplans").await;
    schema.execute(PD_TABLE).await;
    let pushed = pg_engine(&schema.name, true, "");
    let local = pg_engine(&schema.name, false, "");
    let failures = sub_plan_failures(&pushed, &local, SUB_PLANS).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Two joined tables of 20,000 rows: `s` is unique per row (a NULL every 100th, unicode
/// and quotes), `g` has ten values, `n` is a decimal.
const WIDE_GROUPS: &str = r#"
CREATE TABLE wa (id int PRIMARY KEY, s text, g int, n numeric(12, 2));
CREATE TABLE wb (id int PRIMARY KEY, k int);
INSERT INTO wa SELECT i, CASE WHEN i % 100 = 0 THEN NULL ELSE 'ü''' || i END, i % 10,
    (i % 997) / 7.0 FROM generate_series(1, 20000) i;
INSERT INTO wb SELECT i, i % 3 FROM generate_series(1, 20000) i;
ANALYZE wa;
ANALYZE wb;
"#;

#[tokio::test]
async fn aggregates_that_hardly_reduce_their_input_run_in_datafusion() {
    let schema = Schema::create("wide_groups").await;
    schema.execute(WIDE_GROUPS).await;
    let pushed = pg_engine(&schema.name, true, "");
    let local = pg_engine(&schema.name, false, "");
    // (query, whether PostgreSQL groups it: it estimates ~20,000 groups of `s`, ten of `g`)
    let cases = [
        (
            "SELECT wa.s, wb.k, count(*) AS c, sum(wa.n) AS t, avg(wa.n) AS a FROM wa \
             JOIN wb ON wa.id = wb.id GROUP BY wa.s, wb.k ORDER BY wa.s, wb.k",
            false,
        ),
        (
            "SELECT wa.g, count(DISTINCT wa.s) AS c FROM wa JOIN wb ON wa.id = wb.id \
             WHERE wb.k <> 1 GROUP BY wa.g ORDER BY wa.g",
            false,
        ),
        (
            "SELECT s, count(*) AS c FROM wa GROUP BY s HAVING count(*) > 0 ORDER BY s",
            false,
        ),
        (
            "SELECT wa.s, count(*) AS c FROM wa JOIN wb ON wa.id = wb.id WHERE wa.id < 0 \
             GROUP BY wa.s ORDER BY wa.s",
            true,
        ),
        (
            "SELECT wa.g, count(*) AS c, avg(wa.n) AS a FROM wa JOIN wb ON wa.id = wb.id \
             GROUP BY wa.g ORDER BY wa.g",
            true,
        ),
    ];
    let failures = placement_failures(&pushed, &local, &schema.name, &cases, "grouped", |sent| {
        sent.contains("GROUP BY")
    })
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `big` (300,000 rows) points at `small` (20,000) through `k`, NULL every 97th row;
/// every 13th note has quotes and unicode; amounts are decimals, times carry a zone.
/// `ANALYZE` samples every row (300 × the statistics target), so the planner's estimates,
/// and the plans the test expects, do not change from run to run; autovacuum is off for
/// both, so that it cannot change their state (visibility map, statistics) between one
/// plan and the next: the test vacuums them itself, in a statement of its own (`VACUUM`
/// cannot run in the transaction of a multi-statement query).
const HASHED_SIDES: &str = r#"
CREATE TABLE small (id int PRIMARY KEY, name text) WITH (autovacuum_enabled = false);
CREATE TABLE big (id int PRIMARY KEY, k int, note text, amount numeric(12, 2), at timestamptz)
    WITH (autovacuum_enabled = false);
INSERT INTO small SELECT i, CASE WHEN i % 50 = 0 THEN NULL ELSE 'ü''' || (i % 700) END
    FROM generate_series(1, 20000) i;
INSERT INTO big SELECT i, CASE WHEN i % 97 = 0 THEN NULL ELSE (i * 7) % 25000 END,
    CASE WHEN i % 13 = 0 THEN 'special ''東京'' requests' ELSE 'plain ünïcödé' END,
    (i % 997) / 7.0, timestamptz '2024-01-01 00:00:00+02' + i * interval '1 minute'
    FROM generate_series(1, 300000) i;
SET default_statistics_target = 1000;
ANALYZE small;
ANALYZE big;
"#;

/// Planner costs under which PostgreSQL 15 plans these tables as it plans TPC-H q13 at
/// SF1: a parallel outer join, which must hash its nullable (here the larger) side.
const PARALLEL_COSTS: &str = "    settings:\n      parallel_setup_cost: 0\n      \
    min_parallel_table_scan_size: 0\n      parallel_tuple_cost: 0.01\n      \
    cpu_tuple_cost: 0.1\n      cpu_operator_cost: 0.05\n";

#[tokio::test]
async fn joins_postgres_would_run_by_hashing_the_larger_input_run_in_datafusion() {
    let schema = Schema::create("hashed_sides").await;
    schema.execute(HASHED_SIDES).await;
    let vacuum = format!("VACUUM {0}.small, {0}.big", schema.name);
    schema.client().batch_execute(&vacuum).await.unwrap();
    let pushed = pg_engine(&schema.name, true, PARALLEL_COSTS);
    let local = pg_engine(&schema.name, false, PARALLEL_COSTS);
    // PostgreSQL 16 hashes the smaller side of a parallel outer join itself.
    let version: i32 = schema
        .client()
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let before_16 = version < 160_000;
    // (query, whether PostgreSQL runs the join)
    let cases = [
        (
            "SELECT small.id, count(big.id) AS c, sum(big.amount) AS total, max(big.at) AS latest \
             FROM small LEFT JOIN big ON small.id = big.k \
             AND big.note NOT LIKE '%''東京''%' GROUP BY small.id ORDER BY small.id",
            !before_16,
        ),
        (
            "SELECT c, count(*) AS customers FROM (SELECT small.name, count(big.id) AS c \
             FROM small LEFT JOIN big ON small.id = big.k GROUP BY small.name) AS t \
             GROUP BY c ORDER BY customers DESC, c DESC",
            !before_16,
        ),
        // Aliases, and an ORDER BY … LIMIT over the join.
        (
            "SELECT s.name, b.note, b.at FROM small s LEFT JOIN big b ON s.id = b.k \
             ORDER BY b.at DESC NULLS LAST, s.id LIMIT 7",
            !before_16,
        ),
        // A subquery above the join runs on PostgreSQL on its own.
        (
            "SELECT small.id, count(big.id) AS c FROM small LEFT JOIN big ON small.id = big.k \
             GROUP BY small.id HAVING count(big.id) > (SELECT count(*) / 20000 FROM big) \
             ORDER BY c DESC, small.id LIMIT 5",
            !before_16,
        ),
        // The anti join drops the hashed rows: running it on the source saves moving them.
        (
            "SELECT count(*) AS lonely FROM small \
             WHERE NOT EXISTS (SELECT 1 FROM big WHERE big.k = small.id)",
            true,
        ),
        // An inner join: PostgreSQL hashes the smaller input itself.
        (
            "SELECT small.name, sum(big.amount) AS total, min(big.at) AS first FROM small \
             JOIN big ON small.id = big.k GROUP BY small.name ORDER BY small.name",
            true,
        ),
    ];
    let mut failures =
        placement_failures(&pushed, &local, &schema.name, &cases, "joined", |sent| {
            sent.contains(" JOIN ") || sent.contains("EXISTS")
        })
        .await;
    let (with_subquery, _) = cases
        .iter()
        .find(|(sql, _)| sql.contains("(SELECT count(*)"))
        .unwrap();
    let sent = sent_sql(&pushed, with_subquery, &schema.name).await;
    if !sent.contains("count(1)") {
        failures.push(format!(
            "{with_subquery}: the subquery was not sent\n{sent}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What went wrong running each of `cases` (a query, and whether PostgreSQL must do what
/// `done_there` sees in the SQL it is sent): answers that differ between `pushed` and
/// `local`, and work done in the wrong place (`what` names it).
async fn placement_failures(
    pushed: &Engine,
    local: &Engine,
    schema: &str,
    cases: &[(&str, bool)],
    what: &str,
    done_there: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    for &(sql, expected_there) in cases {
        let answer = table(pushed, sql).await;
        let expected = table(local, sql).await;
        if answer != expected {
            failures.push(format!("{sql}: pushed\n{answer}\nexpected\n{expected}"));
        }
        let sent = sent_sql(pushed, sql, schema).await;
        let there = done_there(&sent);
        if there != expected_there {
            failures.push(format!("{sql}: {what} by PostgreSQL: {there}\n{sent}"));
        }
    }
    failures
}

/// The SQL each source receives for a query, one statement per line, with the test's
/// schema name replaced so snapshots are stable.
async fn sent_sql(engine: &Engine, sql: &str, schema: &str) -> String {
    let explained = engine.explain(sql).await.unwrap();
    assert!(!explained.queries.is_empty(), "no SQL sent for {sql}");
    explained
        .queries
        .iter()
        .map(|(_, sql)| sql.replace(schema, "tpch"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn tpch_on_postgres_matches_datafusion_and_its_sql_is_stable() {
    let schema = Schema::create("tpch").await;
    schema.load_tpch(0.01).await;
    let pushed = pg_engine(&schema.name, true, "");
    let local = pg_engine(&schema.name, false, "");
    let generated = Engine::new(&tributary::Config::demo(0.01)).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/tpch");
    let mut failures = Vec::new();
    for q in 1..=22 {
        let sql = std::fs::read_to_string(root.join(format!("q{q:02}.sql"))).unwrap();
        let expected = table(&generated, &sql).await;
        let from_pg = table(&pushed, &sql).await;
        let unpushed = table(&local, &sql).await;
        if from_pg != expected {
            failures.push(format!("q{q}: pushed\n{from_pg}\nexpected\n{expected}"));
        }
        if unpushed != expected {
            failures.push(format!("q{q}: unpushed\n{unpushed}\nexpected\n{expected}"));
        }
        insta::assert_snapshot!(
            format!("tpch_q{q:02}_sql"),
            sent_sql(&pushed, &sql, &schema.name).await
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

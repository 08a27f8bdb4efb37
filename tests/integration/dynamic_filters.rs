//! Dynamic filters: a hash join's build-side keys, learned while the query runs, reach the
//! probe side's source as a predicate in its query. Every join below runs with pushdown and
//! without (DataFusion computing everything) and must give the same answer; where the
//! source can evaluate the keys, its query must carry them and it must send fewer rows.
//!
//! The build side is a small Parquet table of keys of every kind (integers, strings with
//! quotes, backslashes and unicode, decimals, dates, timestamps with time zones, NULLs,
//! values the probe side lacks); the probe sides are PostgreSQL and MariaDB tables.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use tributary::{Config, Engine};
use tributary_core::remote::RemoteScanExec;
use tributary_testkit::{mysql, postgres};

use crate::common::write_parquet;

/// 3,000 rows; every key repeats, and every 97th row has NULL keys.
const PG_FACTS: &str = r#"
CREATE TABLE facts (id int PRIMARY KEY, k int, s text, n numeric(12, 2), d date, ts timestamptz);
INSERT INTO facts
SELECT id,
       CASE WHEN id % 97 = 0 THEN NULL ELSE id % 300 END,
       CASE WHEN id % 97 = 0 THEN NULL
            WHEN id % 3 = 0 THEN 'o''brien-' || (id % 50)
            WHEN id % 3 = 1 THEN '東京 "q"-' || (id % 50)
            ELSE 'back\slash-' || (id % 50) END,
       CASE WHEN id % 97 = 0 THEN NULL ELSE (id % 100) / 4.0 END,
       CASE WHEN id % 97 = 0 THEN NULL ELSE date '2024-01-01' + id % 100 END,
       CASE WHEN id % 97 = 0 THEN NULL
            ELSE timestamptz '2024-01-01 00:00:00+02' + (id % 100) * interval '1 hour' END
FROM generate_series(1, 3000) AS id;
ANALYZE facts;
"#;

/// `s` has the default, case-insensitive collation: `O'BRIEN-3` is not a key of `o'brien-3`.
const MY_FACTS: &str = r#"
CREATE TABLE facts (id int PRIMARY KEY, k int, s varchar(40), n decimal(12, 2), d date);
INSERT INTO facts
SELECT seq,
       CASE WHEN seq % 97 = 0 THEN NULL ELSE seq % 300 END,
       CASE WHEN seq % 97 = 0 THEN NULL
            WHEN seq % 9 = 0 THEN CONCAT('O''BRIEN-', seq % 50)
            WHEN seq % 3 = 0 THEN CONCAT('o''brien-', seq % 50)
            WHEN seq % 3 = 1 THEN CONCAT('東京 "q"-', seq % 50)
            ELSE CONCAT('back\\slash-', seq % 50) END,
       CASE WHEN seq % 97 = 0 THEN NULL ELSE (seq % 100) / 4.0 END,
       CASE WHEN seq % 97 = 0 THEN NULL ELSE DATE '2024-01-01' + INTERVAL (seq % 100) DAY END
FROM seq_1_to_3000;
ANALYZE TABLE facts;
"#;

/// Five build-side rows: three keys the probe side has, one it lacks, one NULL.
fn picks() -> RecordBatch {
    let schema = Arc::new(ArrowSchema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("n", DataType::Decimal128(12, 2), true),
        Field::new("d", DataType::Date32, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let hour = 3_600_000_000i64;
    // 2024-01-01 00:00:00+02, the probe side's first timestamp.
    let first = 1_704_060_000_000_000i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![
            Some(3),
            Some(7),
            Some(299),
            Some(1000),
            None,
        ])),
        Arc::new(StringArray::from(vec![
            Some("o'brien-3"),
            Some("東京 \"q\"-7"),
            Some("back\\slash-11"),
            Some("nope"),
            None,
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(25), Some(1250), Some(2475), Some(9999), None])
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        // 2024-01-01, 2024-02-15, 2024-04-09, 2099-01-01.
        Arc::new(Date32Array::from(vec![
            Some(19_723),
            Some(19_768),
            Some(19_822),
            Some(47_482),
            None,
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(first),
                Some(first + 5 * hour),
                Some(first + 99 * hour),
                Some(first - hour),
                None,
            ])
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Tributary over the PostgreSQL schema `pg_schema`, the MariaDB database `my_database`
/// and the Parquet folder `lake`, with or without pushdown; `datafusion` adds session
/// settings.
fn engine(
    pg_schema: &str,
    my_database: &str,
    lake: &Path,
    pushdown: bool,
    datafusion: &str,
) -> Engine {
    let yaml = format!(
        "server:\n  datafusion:\n{datafusion}    datafusion.execution.target_partitions: '4'\nsources:\n  - name: pg\n    kind: postgres\n    url: {}\n    schemas: {{include: [{pg_schema}]}}\n    pushdown: {pushdown}\n  - name: my\n    kind: mysql\n    url: {}\n    schemas: {{include: [{my_database}]}}\n    pushdown: {pushdown}\n  - name: lake\n    kind: files\n    url: {}\n",
        postgres::url(),
        mysql::server_url(),
        lake.display()
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// What one partition of a remote scan did: the query it sent, the query as planned
/// (without dynamic filters), and the rows the scan returned.
#[derive(Debug)]
struct Sent {
    source: String,
    sql: String,
    planned: String,
    rows: usize,
    /// Whether the scan took a dynamic filter.
    holds_filter: bool,
}

/// Runs `sql` and returns its answer as text, what each remote scan sent, and the plan.
async fn run(engine: &Engine, sql: &str) -> (String, Vec<Sent>, String) {
    let df = engine
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    // The query's own settings (a query reading a SQL source lists more keys).
    let task = Arc::new(df.task_ctx());
    let plan = df
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = collect(Arc::clone(&plan), task)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let answer = pretty_format_batches(&batches).unwrap().to_string();
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    let mut sent = Vec::new();
    let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node.downcast_ref::<RemoteScanExec>() {
            let rows = scan
                .metrics()
                .and_then(|m| m.output_rows())
                .unwrap_or_default();
            for (sql, planned) in scan.sent_sqls().into_iter().zip(scan.sqls()) {
                if let Some(sql) = sql {
                    sent.push(Sent {
                        source: scan.source().to_string(),
                        sql,
                        planned,
                        rows,
                        holds_filter: displayable(scan)
                            .one_line()
                            .to_string()
                            .contains("dynamic_filters="),
                    });
                }
            }
        }
        stack.extend(node.children().into_iter().cloned());
    }
    (answer, sent, shown)
}

/// How many build-side keys per partition a hash join of `sql` may list.
async fn listed_keys(engine: &Engine, sql: &str) -> usize {
    let df = engine.sql(sql).await.unwrap();
    df.task_ctx()
        .session_config()
        .options()
        .optimizer
        .hash_join_inlist_pushdown_max_distinct_values
}

/// Joins and whether the probe side's source must receive the build side's keys.
fn joins(pg: &str, my: &str) -> Vec<(String, bool)> {
    let mut joins: Vec<(String, bool)> = ["k", "s", "n", "d", "ts"]
        .iter()
        .map(|key| {
            (
                format!(
                    "SELECT f.id, p.{key} FROM pg.{pg}.facts f JOIN lake.main.picks p ON f.{key} = p.{key} ORDER BY f.id"
                ),
                true,
            )
        })
        .collect();
    joins.extend(["k", "s", "n", "d"].iter().map(|key| {
        (
            format!(
                "SELECT f.id FROM my.{my}.facts f JOIN lake.main.picks p ON f.{key} = p.{key} ORDER BY f.id"
            ),
            true,
        )
    }));
    joins.extend([
        // Two keys: each column gets the set of its values.
        (
            format!(
                "SELECT f.id FROM pg.{pg}.facts f JOIN lake.main.picks p ON f.k = p.k AND f.d = p.d ORDER BY f.id"
            ),
            true,
        ),
        // Semi join (IN) and a sub-plan (an aggregate run by the source) on the probe side.
        (
            format!(
                "SELECT id FROM pg.{pg}.facts WHERE k IN (SELECT k FROM lake.main.picks) ORDER BY id"
            ),
            true,
        ),
        (
            format!(
                "SELECT a.k, a.c FROM (SELECT k, count(*) AS c FROM pg.{pg}.facts GROUP BY k) a JOIN lake.main.picks p ON a.k = p.k ORDER BY a.k"
            ),
            true,
        ),
        (
            format!(
                "SELECT a.d, a.c FROM (SELECT d, count(*) AS c FROM my.{my}.facts GROUP BY d) a JOIN lake.main.picks p ON a.d = p.d ORDER BY a.d"
            ),
            true,
        ),
        // Keys from the other side of an outer join, a NOT IN, and an empty build side:
        // nothing may be lost.
        (
            format!(
                "SELECT p.k, f.id FROM lake.main.picks p LEFT JOIN pg.{pg}.facts f ON f.k = p.k ORDER BY p.k, f.id"
            ),
            false,
        ),
        (
            format!(
                "SELECT count(*) FROM pg.{pg}.facts WHERE k NOT IN (SELECT k FROM lake.main.picks WHERE k IS NOT NULL)"
            ),
            false,
        ),
        (
            format!(
                "SELECT f.id FROM pg.{pg}.facts f JOIN lake.main.picks p ON f.k = p.k WHERE p.k > 5000 ORDER BY f.id"
            ),
            false,
        ),
    ]);
    joins
}

/// The rows the probe side's source sent (its scans together), and whether any of its
/// queries carried an IN list.
fn probe(sent: &[Sent]) -> (usize, bool) {
    let remote = sent.iter().filter(|s| s.source != "lake");
    remote.fold((0, false), |(rows, listed), s| {
        (rows + s.rows, listed || s.sql.contains(" IN ("))
    })
}

/// Runs every join with dynamic filters, without them, and without any pushdown; returns
/// what went wrong.
async fn failures(engines: &Engines, pg: &str, my: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (sql, must_send) in joins(pg, my) {
        let (got, sent, plan) = run(&engines.dynamic, &sql).await;
        let (unfiltered, unfiltered_sent, _) = run(&engines.pushed, &sql).await;
        let (want, _, _) = run(&engines.local, &sql).await;
        for (who, answer) in [("dynamic filters", &got), ("pushdown only", &unfiltered)] {
            if *answer != want {
                failures.push(format!(
                    "{sql}: with {who}\n{answer}\nDataFusion alone gives\n{want}"
                ));
            }
        }
        let ((rows, listed), (all_rows, _)) = (probe(&sent), probe(&unfiltered_sent));
        if must_send && !(listed && rows < all_rows) {
            failures.push(format!(
                "{sql}: the probe side did not get the keys ({rows} rows sent, {all_rows} without): {sent:?}\n{plan}"
            ));
        }
    }
    failures
}

/// The same sources with dynamic filters, with pushdown but no dynamic filters, and with
/// no pushdown at all.
struct Engines {
    dynamic: Engine,
    pushed: Engine,
    local: Engine,
}

#[tokio::test]
async fn build_side_keys_reach_the_probe_sides_source_and_change_no_answer() {
    let pg = postgres::Schema::create("dynamic").await;
    let my = mysql::Database::create("dynamic").await;
    tokio::join!(pg.execute(PG_FACTS), my.execute(MY_FACTS));
    let lake = tempfile::tempdir().unwrap();
    write_parquet(&lake.path().join("picks.parquet"), &picks());

    // CollectLeft (one build side for every probe partition), then Partitioned (a build
    // side per hash partition: the filter is a CASE over the partitions).
    let partitioned = "    datafusion.optimizer.hash_join_single_partition_threshold: '0'\n    datafusion.optimizer.hash_join_single_partition_threshold_rows: '0'\n";
    // Only queries that read a SQL source list more keys than DataFusion's 150.
    let plain = engine(&pg.name, &my.name, lake.path(), true, "");
    let lake_only = "SELECT * FROM lake.main.picks a JOIN lake.main.picks b ON a.k = b.k";
    let federated = format!(
        "SELECT f.id FROM pg.{}.facts f JOIN lake.main.picks p ON f.k = p.k",
        pg.name
    );
    assert_eq!(listed_keys(&plain, lake_only).await, 150);
    assert_eq!(listed_keys(&plain, &federated).await, 100_000);

    let no_dynamic = "    datafusion.optimizer.enable_join_dynamic_filter_pushdown: 'false'\n";
    for settings in ["", partitioned] {
        let engines = Engines {
            dynamic: engine(&pg.name, &my.name, lake.path(), true, settings),
            pushed: engine(
                &pg.name,
                &my.name,
                lake.path(),
                true,
                &format!("{settings}{no_dynamic}"),
            ),
            local: engine(&pg.name, &my.name, lake.path(), false, settings),
        };
        let failures = failures(&engines, &pg.name, &my.name).await;
        assert!(
            failures.is_empty(),
            "settings {settings:?}:\n{}",
            failures.join("\n\n")
        );
    }
}

/// A long list of integer keys reaches PostgreSQL as one array literal (`= ANY('{…}'::
/// BIGINT[])`), which it parses at once, and selects the same rows as the list would:
/// negative keys, keys the probe side lacks, a NULL key, and `smallint`, `int` and
/// `bigint` columns compared with 64-bit keys.
#[tokio::test]
async fn long_integer_key_lists_reach_postgres_as_one_array() {
    let pg = postgres::Schema::create("key_arrays").await;
    pg.execute(
        "CREATE TABLE wide (id bigint PRIMARY KEY, k int, s smallint, b bigint);
         INSERT INTO wide
         SELECT id, CASE WHEN id % 97 = 0 THEN NULL ELSE id % 1000 - 500 END,
                (id % 700 - 350)::smallint, id * 3000000000 - 1500000000000
         FROM generate_series(1, 5000) AS id;
         ANALYZE wide;",
    )
    .await;
    let lake = tempfile::tempdir().unwrap();
    // 400 keys from -500 to 1495 in steps of 5 (half of them absent from `k`), and a NULL,
    // as 64-bit and as 32-bit integers.
    let keys: Vec<Option<i64>> = (0..400).map(|i| Some(i * 5 - 500)).chain([None]).collect();
    let keys32: Vec<Option<i32>> = keys.iter().map(|k| k.map(|k| k as i32)).collect();
    let picks = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            Field::new("key", DataType::Int64, true),
            Field::new("key32", DataType::Int32, true),
        ])),
        vec![
            Arc::new(arrow::array::Int64Array::from(keys)) as ArrayRef,
            Arc::new(Int32Array::from(keys32)) as ArrayRef,
        ],
    )
    .unwrap();
    write_parquet(&lake.path().join("keys.parquet"), &picks);
    let my = mysql::Database::create("key_arrays").await;
    let dynamic = engine(&pg.name, &my.name, lake.path(), true, "");
    let local = engine(&pg.name, &my.name, lake.path(), false, "");
    // `int` with 32-bit keys (the column itself is compared), then `int` and `smallint`
    // cast to the 64-bit keys.
    for (column, key) in [("k", "key32"), ("k", "key"), ("s", "key")] {
        let sql = format!(
            "SELECT w.id, w.{column} FROM pg.{}.wide w JOIN lake.main.keys p ON w.{column} = p.{key} ORDER BY w.id",
            pg.name
        );
        let (sent, plan) = joined_as_without_pushdown(&dynamic, &local, &sql).await;
        let probe: Vec<&Sent> = sent.iter().filter(|s| s.source == "pg").collect();
        assert!(!probe.is_empty(), "{plan}");
        if key == "key32" {
            assert!(
                probe.iter().all(|s| s.sql.contains("\"k\" = ANY('{")),
                "{probe:?}"
            );
        }
        assert!(
            probe.iter().all(|s| listed_in_array(&s.sql, "-500")
                && listed_in_array(&s.sql, "1495")
                && !s.sql.contains(" IN (")),
            "{probe:?}\n{plan}"
        );
        assert!(probe.iter().map(|s| s.rows).sum::<usize>() < 5000, "{plan}");
    }
    // Keys past the range of `int`, both ways.
    let sql = format!(
        "SELECT w.id FROM pg.{}.wide w JOIN (SELECT key * 3000000000 - 1500000000000 AS key FROM lake.main.keys) p ON w.b = p.key ORDER BY w.id",
        pg.name
    );
    let (sent, plan) = joined_as_without_pushdown(&dynamic, &local, &sql).await;
    assert!(
        sent.iter().any(|s| s.source == "pg"
            && listed_in_array(&s.sql, "-3000000000000")
            && listed_in_array(&s.sql, "2985000000000")
            && !s.sql.contains(" IN (")),
        "{sent:?}\n{plan}"
    );
}

/// A build side holding a key for every value of the probe column (every customer against
/// the orders' customer column) cannot make the filter selective: the probe side's scan does
/// not take it, its query goes out as planned, and the answer is unchanged. The estimates
/// come from each source: PostgreSQL's `pg_stats`, MariaDB's index cardinality, the primary
/// keys' row counts. A build side with fewer keys still sends them, and so does one whose
/// key has no distinct-value estimate (Parquet's).
#[tokio::test]
async fn a_build_side_with_every_key_sends_no_filter() {
    let pg = postgres::Schema::create("every_key").await;
    let my = mysql::Database::create("every_key").await;
    // 5,000 customers; 30,000 orders of 700 of them, and orders without a customer. (InnoDB
    // samples its index cardinality: it puts the orders' 700 customers at about 1,400.)
    tokio::join!(
        pg.execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO customers SELECT id, 'c''' || id FROM generate_series(1, 5000) AS id;
             CREATE TABLE orders (id int PRIMARY KEY, cust int);
             INSERT INTO orders
             SELECT id, CASE WHEN id % 101 = 0 THEN NULL ELSE id % 700 + 1 END
             FROM generate_series(1, 30000) AS id;
             ANALYZE customers; ANALYZE orders;",
        ),
        my.execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name varchar(20));
             INSERT INTO customers SELECT seq, CONCAT('c''', seq) FROM seq_1_to_5000;
             CREATE TABLE orders (id int PRIMARY KEY, cust int, INDEX (cust));
             INSERT INTO orders
             SELECT seq, CASE WHEN seq % 101 = 0 THEN NULL ELSE seq % 700 + 1 END
             FROM seq_1_to_30000;
             ANALYZE TABLE customers; ANALYZE TABLE orders;",
        )
    );
    let lake = tempfile::tempdir().unwrap();
    let ids = |n: i32| {
        let schema = Arc::new(ArrowSchema::new(vec![Field::new(
            "id",
            DataType::Int32,
            false,
        )]));
        let ids: Vec<i32> = (1..=n).collect();
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(ids)) as ArrayRef]).unwrap()
    };
    write_parquet(&lake.path().join("everyone.parquet"), &ids(1000));
    write_parquet(&lake.path().join("few.parquet"), &ids(50));
    let dynamic = engine(&pg.name, &my.name, lake.path(), true, "");
    let local = engine(&pg.name, &my.name, lake.path(), false, "");
    let (pg, my) = (&pg.name, &my.name);
    // (query, the probe side's source, whether it gets the keys)
    let cases = [
        (
            format!(
                "SELECT c.id, count(o.id) AS n FROM my.{my}.customers c LEFT JOIN pg.{pg}.orders o ON o.cust = c.id GROUP BY c.id ORDER BY c.id"
            ),
            "pg",
            false,
        ),
        (
            format!(
                "SELECT o.id, c.name FROM my.{my}.customers c JOIN pg.{pg}.orders o ON o.cust = c.id ORDER BY o.id"
            ),
            "pg",
            false,
        ),
        (
            format!(
                "SELECT o.id, c.name FROM pg.{pg}.customers c JOIN my.{my}.orders o ON o.cust = c.id ORDER BY o.id"
            ),
            "my",
            false,
        ),
        (
            format!(
                "SELECT o.id FROM lake.main.few c JOIN pg.{pg}.orders o ON o.cust = c.id ORDER BY o.id"
            ),
            "pg",
            true,
        ),
        (
            format!(
                "SELECT c.id, count(o.id) AS n FROM lake.main.everyone c LEFT JOIN pg.{pg}.orders o ON o.cust = c.id GROUP BY c.id ORDER BY c.id"
            ),
            "pg",
            true,
        ),
    ];
    for (sql, probe_source, filtered) in cases {
        let (got, sent, plan) = run(&dynamic, &sql).await;
        let (want, _, _) = run(&local, &sql).await;
        assert_eq!(got, want, "{sql}");
        assert!(got.lines().count() > 100, "{got}");
        let probe: Vec<&Sent> = sent.iter().filter(|s| s.source == probe_source).collect();
        assert!(!probe.is_empty(), "{sql}\n{plan}");
        for scan in &probe {
            let restricted = scan.sql != scan.planned;
            assert_eq!(restricted, filtered, "{sql}\n{scan:?}\n{plan}");
            assert_eq!(scan.holds_filter, filtered, "{sql}\n{scan:?}\n{plan}");
        }
        let probed = probe_sources(&dynamic, &sql).await;
        assert_eq!(probed, [probe_source], "{sql}\n{plan}");
    }
}

/// The sources the probe side of the hash join in `sql`'s plan reads.
async fn probe_sources(engine: &Engine, sql: &str) -> Vec<String> {
    let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![crate::common::plan(engine, sql).await];
    while let Some(node) = stack.pop() {
        if let Some(join) = node.downcast_ref::<HashJoinExec>() {
            let mut sources = vec![];
            let mut probe = vec![Arc::clone(join.right())];
            while let Some(node) = probe.pop() {
                if let Some(scan) = node.downcast_ref::<RemoteScanExec>() {
                    sources.push(scan.source().to_string());
                }
                probe.extend(node.children().into_iter().cloned());
            }
            return sources;
        }
        stack.extend(node.children().into_iter().cloned());
    }
    panic!("{sql}: no hash join")
}

/// Runs `sql` on `dynamic`, checks that it gives `local`'s answer of over a hundred rows,
/// and returns what each remote scan sent and the plan.
async fn joined_as_without_pushdown(
    dynamic: &Engine,
    local: &Engine,
    sql: &str,
) -> (Vec<Sent>, String) {
    let (got, sent, plan) = run(dynamic, sql).await;
    let (want, _, _) = run(local, sql).await;
    assert_eq!(got, want, "{sql}");
    assert!(got.lines().count() > 100, "{got}");
    (sent, plan)
}

/// Whether `sql` compares with an array literal of 64-bit integers that lists `value`.
fn listed_in_array(sql: &str, value: &str) -> bool {
    sql.split(" = ANY('{").skip(1).any(|rest| {
        rest.split_once("}'::BIGINT[])")
            .is_some_and(|(list, _)| list.split(',').any(|v| v == value))
    })
}

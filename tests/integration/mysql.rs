//! The `mysql` source against the local MariaDB: discovery, every type, parallel
//! partitions, cancellation, and failures that name the source without leaking the
//! password.

use datafusion::common::stats::Precision;
use datafusion::physical_plan::StatisticsArgs;
use datafusion::physical_plan::statistics::StatisticsContext;
use mysql_async::prelude::Queryable;
use tributary::{Config, Engine};
use tributary_testkit::mysql::{Database, server_url};

use crate::common::{assert_counts_without_columns, cells, error, physical_plan, plan, run, table};

/// An engine with one `mysql` source, `my`, limited to `database`, which is also the
/// default schema. `extra` adds settings to the source.
pub fn my_engine(database: &str, pushdown: bool, extra: &str) -> Engine {
    my_engine_at(database, &format!("url: {}", server_url()), pushdown, extra)
}

fn my_engine_at(database: &str, connection: &str, pushdown: bool, extra: &str) -> Engine {
    let yaml = format!(
        "server:\n  default_catalog: my\n  default_schema: {database}\nsources:\n  - name: my\n    kind: mysql\n    {connection}\n    schemas: {{include: [{database}]}}\n    pushdown: {pushdown}\n{extra}"
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

const EVERY_TYPE: &str = r#"
CREATE TABLE every_type (
    id int PRIMARY KEY,
    ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned,
    mi mediumint, mu mediumint unsigned, i int, iu int unsigned, bi bigint, bu bigint unsigned,
    bo bool, b1 bit(1), b9 bit(9),
    de decimal(12, 3), dw decimal(65, 30), fl float, db double,
    ch char(5), vc varchar(20), tx text, lt longtext, la varchar(10) CHARACTER SET latin1,
    bn binary(3), vb varbinary(10), bl blob,
    d date, dt datetime, dt6 datetime(6), ts timestamp(3) NULL, tm time, tm6 time(6), y year,
    e enum('small', 'medium', 'large'), st set('a', 'b', 'c'), j json
);
INSERT INTO every_type VALUES (
    1,
    -128, 255, -32768, 65535,
    -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
    true, b'1', b'100000001',
    -123456789.125, 12345678901234567890.123456789012345678901234567890, 1.5, -2.25,
    'ab', 'it''s "q" \\ ü', '東京', 'long', 'café',
    X'0102', X'00FF', X'DEADBEEF',
    '2024-02-29', '1999-12-31 23:59:59', '2024-01-01 00:00:00.000001', '2024-06-30 12:34:56.789',
    '-838:59:59', '123:45:06.5', 2024,
    'medium', 'a,c', '{"k": [1, null]}'
);
INSERT INTO every_type (id) VALUES (2);
"#;

#[tokio::test]
async fn every_type_round_trips() {
    let db = Database::create("types").await;
    db.execute(EVERY_TYPE).await;
    for protocol in ["binary", "text"] {
        let engine = my_engine(&db.name, true, &format!("    protocol: {protocol}\n"));
        let batches = run(&engine, "SELECT * FROM every_type ORDER BY id")
            .await
            .unwrap();
        assert_every_type(&batches, protocol);
    }
}

fn assert_every_type(batches: &[datafusion::arrow::array::RecordBatch], protocol: &str) {
    let got = cells(batches, 0);
    let expected = [
        ("id", "Int32", "1"),
        ("ti", "Int8", "-128"),
        ("tu", "UInt8", "255"),
        ("si", "Int16", "-32768"),
        ("su", "UInt16", "65535"),
        ("mi", "Int32", "-8388608"),
        ("mu", "UInt32", "16777215"),
        ("i", "Int32", "-2147483648"),
        ("iu", "UInt32", "4294967295"),
        ("bi", "Int64", "-9223372036854775808"),
        ("bu", "UInt64", "18446744073709551615"),
        ("bo", "Boolean", "true"),
        ("b1", "Boolean", "true"),
        ("b9", "UInt64", "257"),
        ("de", "Decimal128(12, 3)", "-123456789.125"),
        (
            "dw",
            "Decimal256(65, 30)",
            "12345678901234567890.123456789012345678901234567890",
        ),
        ("fl", "Float32", "1.5"),
        ("db", "Float64", "-2.25"),
        ("ch", "Utf8", "ab"),
        ("vc", "Utf8", "it's \"q\" \\ ü"),
        ("tx", "Utf8", "東京"),
        ("lt", "Utf8", "long"),
        ("la", "Utf8", "café"),
        ("bn", "Binary", "010200"),
        ("vb", "Binary", "00ff"),
        ("bl", "Binary", "deadbeef"),
        ("d", "Date32", "2024-02-29"),
        ("dt", "Timestamp(µs)", "1999-12-31T23:59:59"),
        ("dt6", "Timestamp(µs)", "2024-01-01T00:00:00.000001"),
        ("ts", "Timestamp(µs, \"UTC\")", "2024-06-30T12:34:56.789Z"),
        ("tm", "Duration(µs)", "-PT3020399S"),
        ("tm6", "Duration(µs)", "PT445506.5S"),
        ("y", "Int16", "2024"),
        ("e", "Utf8", "medium"),
        ("st", "Utf8", "a,c"),
        ("j", "Utf8", "{\"k\": [1, null]}"),
    ];
    let got: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(n, t, v)| (n.as_str(), t.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected, "{protocol} protocol");
    // The second row is NULL everywhere but its key.
    let nulls = cells(batches, 1);
    assert!(nulls[1..].iter().all(|(_, _, v)| v == "NULL"), "{nulls:?}");
}

#[tokio::test]
async fn zero_dates_read_as_null() {
    let db = Database::create("zero").await;
    db.execute(
        "SET SESSION sql_mode = '';
         CREATE TABLE z (id int PRIMARY KEY, d date, dt datetime, y year);
         INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00', 0), (2, '2024-01-01', '2024-01-01 10:00:00', 1999);",
    )
    .await;
    for protocol in ["binary", "text"] {
        let engine = my_engine(&db.name, true, &format!("    protocol: {protocol}\n"));
        assert_eq!(
            table(&engine, "SELECT * FROM z ORDER BY id").await,
            "+----+------------+---------------------+------+\n\
         | id | d          | dt                  | y    |\n\
         +----+------------+---------------------+------+\n\
         | 1  |            |                     |      |\n\
         | 2  | 2024-01-01 | 2024-01-01T10:00:00 | 1999 |\n\
         +----+------------+---------------------+------+",
            "{protocol} protocol"
        );
    }
}

#[tokio::test]
async fn discovery_lists_tables_and_views_with_keys_and_estimates() {
    let db = Database::create("discovery").await;
    db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer varchar(20) NOT NULL, total decimal(10,2));
         INSERT INTO orders VALUES (1, 'ann', 10.50), (2, 'bob', NULL), (3, 'ann', 3.25);
         ANALYZE TABLE orders;
         CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 5;",
    )
    .await;
    let engine = my_engine(&db.name, true, "");
    assert_eq!(
        table(
            &engine,
            &format!(
                "SELECT table_name, table_type FROM information_schema.tables \
                 WHERE table_catalog = 'my' AND table_schema = '{}' ORDER BY 1",
                db.name
            )
        )
        .await,
        "+------------+------------+\n\
         | table_name | table_type |\n\
         +------------+------------+\n\
         | big_orders | VIEW       |\n\
         | orders     | BASE TABLE |\n\
         +------------+------------+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT customer, sum(total) AS s FROM orders GROUP BY customer ORDER BY customer"
        )
        .await,
        "+----------+-------+\n\
         | customer | s     |\n\
         +----------+-------+\n\
         | ann      | 13.75 |\n\
         | bob      |       |\n\
         +----------+-------+"
    );
    assert_eq!(
        table(&engine, "SELECT * FROM big_orders").await,
        "+----+-------+\n| id | total |\n+----+-------+\n| 1  | 10.50 |\n+----+-------+"
    );
    // Without a schema filter every database but the server's own is shown.
    let yaml = format!(
        "sources:\n  - name: my\n    kind: mysql\n    url: {}\n",
        server_url()
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let unfiltered = Engine::new(&config).unwrap();
    let schemas = table(
        &unfiltered,
        "SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'my'",
    )
    .await;
    assert!(schemas.contains(&db.name), "{schemas}");
    for system in [
        "| mysql ",
        "performance_schema",
        "information_schema",
        "| sys ",
    ] {
        assert!(!schemas.contains(system), "{system} shown:\n{schemas}");
    }
}

#[tokio::test]
async fn partitioned_scans_read_every_row_once() {
    let db = Database::create("parts").await;
    db.execute(
        "CREATE TABLE t (id bigint unsigned PRIMARY KEY, v varchar(10));
         INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_10007;",
    )
    .await;
    let engine = my_engine(&db.name, true, "    partitions: 4\n    batch_size: 1000\n");
    let plan = engine.explain("SELECT * FROM t").await.unwrap().to_string();
    assert!(plan.contains("partitions=4"), "{plan}");
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n, count(DISTINCT id) AS d, min(id) AS lo, max(id) AS hi FROM (SELECT id FROM t) x"
        )
        .await,
        "+-------+-------+----+-------+\n\
         | n     | d     | lo | hi    |\n\
         +-------+-------+----+-------+\n\
         | 10007 | 10007 | 1  | 10007 |\n\
         +-------+-------+----+-------+"
    );
}

/// Queries reuse the pool's connections: a view returning the connection's id, read
/// eight times one after another, shows a few ids, not one per query (before, every
/// connection was closed after its query, and each query opened two).
#[tokio::test]
async fn queries_reuse_pooled_connections() {
    let db = Database::create("pooled").await;
    db.execute("CREATE VIEW whoami AS SELECT CONNECTION_ID() AS id;")
        .await;
    let engine = my_engine(&db.name, true, "");
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..8 {
        ids.insert(table(&engine, "SELECT id FROM whoami").await);
    }
    assert!(ids.len() <= 3, "connection ids of 8 queries: {ids:?}");
}

/// Every connection's session is what the pushdown rules and the decoder assume (see
/// `SESSION` in `connect.rs`), read back through a view of the server's session variables,
/// which the server evaluates in the session of whoever queries it.
#[tokio::test]
async fn every_connection_is_set_up_as_the_pushdown_rules_assume() {
    let db = Database::create("session").await;
    db.execute(
        "CREATE VIEW session AS SELECT LOWER(VARIABLE_NAME) AS name, VARIABLE_VALUE AS value
         FROM information_schema.SESSION_VARIABLES
         WHERE VARIABLE_NAME IN ('CHARACTER_SET_RESULTS', 'TIME_ZONE',
                                 'IN_PREDICATE_CONVERSION_THRESHOLD');
         CREATE VIEW modes AS SELECT VARIABLE_VALUE AS sql_mode
         FROM information_schema.SESSION_VARIABLES WHERE VARIABLE_NAME = 'SQL_MODE';",
    )
    .await;
    let engine = my_engine(&db.name, true, "");
    assert_eq!(
        table(&engine, "SELECT name, value FROM session ORDER BY name").await,
        "+-----------------------------------+---------+
| name                              | value   |
+-----------------------------------+---------+
| character_set_results             | utf8mb4 |
| in_predicate_conversion_threshold | 0       |
| time_zone                         | +00:00  |
+-----------------------------------+---------+",
        "MariaDB keeps long IN lists (dynamic filters) as lists for the range optimizer"
    );
    let modes = table(&engine, "SELECT sql_mode FROM modes").await;
    for mode in ["NO_BACKSLASH_ESCAPES", "PIPES_AS_CONCAT"] {
        assert!(modes.contains(mode), "{mode} missing from {modes}");
    }
}

/// `count(*)` over a scan DataFusion runs reads no column: the server is sent `SELECT 1`
/// and only the rows count, in partitions, in batches, and none at all.
#[tokio::test]
async fn a_scan_of_no_columns_counts_its_rows() {
    let db = Database::create("no_columns").await;
    db.execute(
        "CREATE TABLE t (id bigint unsigned PRIMARY KEY, v varchar(10));
         INSERT INTO t SELECT seq, CONCAT('ü''', seq) FROM seq_1_to_10007;",
    )
    .await;
    let engine = my_engine(&db.name, false, "    partitions: 3\n    batch_size: 1000\n");
    assert_counts_without_columns(&engine).await;
}

#[tokio::test]
async fn a_scan_stopped_early_stops_its_query() {
    let db = Database::create("cancel").await;
    db.execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, f double);
         INSERT INTO big SELECT seq, seq FROM seq_1_to_300000;",
    )
    .await;
    let engine = my_engine(&db.name, true, "    partitions: 1\n    batch_size: 1024\n");
    // The float filter stays in DataFusion, so the limit cannot be pushed: DataFusion
    // stops after the first match and drops the stream mid-way.
    let batches = run(&engine, "SELECT id FROM big WHERE f > 10 LIMIT 1")
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(
        queries_running_on(&db, "big").await,
        0,
        "the abandoned query is still running"
    );
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM big WHERE id <= 10").await,
        "+----+\n| n  |\n+----+\n| 10 |\n+----+"
    );
}

/// The query to stop holds the pool's only connection: it is stopped over a connection
/// of its own (waiting for one from the pool, it ran on until the wait timed out).
#[tokio::test]
async fn a_scan_stopped_early_on_a_full_pool_stops_its_query() {
    let db = Database::create("cancel_full").await;
    // Ten billion rows, sent as the server makes them: only stopping the query ends it.
    db.execute(
        "CREATE VIEW endless AS SELECT a.seq AS id, CAST(b.seq AS double) AS f \
         FROM seq_1_to_100000 a, seq_1_to_100000 b;",
    )
    .await;
    let engine = my_engine(&db.name, true, "    batch_size: 1024\n    pool_size: 1\n");
    let batches = run(&engine, "SELECT id FROM endless WHERE f > 10 LIMIT 1")
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(
        queries_running_on(&db, "endless").await,
        0,
        "the abandoned query is still running"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n FROM endless WHERE id = 1 AND f <= 3"
        )
        .await,
        "+---+\n| n |\n+---+\n| 3 |\n+---+"
    );
}

/// How many queries naming `relation` of `db` the server is still running after up to
/// five seconds of waiting for none.
async fn queries_running_on(db: &Database, relation: &str) -> i64 {
    let mut conn = tributary_testkit::mysql::connect().await;
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' \
         AND INFO LIKE '%{}%{relation}%' AND INFO NOT LIKE '%PROCESSLIST%'",
        db.name
    );
    let mut active: i64 = 1;
    for _ in 0..50 {
        active = conn.query_first(&sql).await.unwrap().unwrap_or(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    active
}

#[tokio::test]
async fn failures_name_the_source_and_never_the_password() {
    let db = Database::create("failures").await;
    db.execute("CREATE TABLE t (id int); CREATE VIEW slow AS SELECT SLEEP(3) AS s;")
        .await;
    let url = server_url();
    let host_port = url
        .trim_start_matches("mysql://")
        .trim_start_matches("root@");
    let wrong = my_engine_at(
        &db.name,
        &format!("url: mysql://root:sekrit-password@{host_port}"),
        true,
        "",
    );
    let e = error(&wrong, "SELECT * FROM t").await;
    assert!(
        e.contains("source `my`") && e.contains("Access denied"),
        "{e}"
    );
    assert!(!e.contains("sekrit"), "{e}");

    let down = my_engine_at(
        &db.name,
        "host: 127.0.0.1\n    port: 1\n    user: root\n    password: sekrit-password",
        true,
        "",
    );
    let e = error(&down, "SELECT * FROM t").await;
    assert!(
        e.contains("source `my`") && e.contains("cannot connect"),
        "{e}"
    );
    assert!(!e.contains("sekrit"), "{e}");

    let engine = my_engine(&db.name, true, "    statement_timeout: 1s\n");
    let e = error(&engine, "SELECT * FROM slow").await;
    assert!(e.contains("source `my`"), "{e}");
    assert!(e.to_lowercase().contains("max_statement_time"), "{e}");

    let engine = my_engine(&db.name, true, "");
    let e = error(&engine, "SELECT * FROM nope").await;
    assert!(e.contains("nope"), "{e}");
    // A table dropped after discovery: the query fails naming the source.
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM t").await,
        "+---+\n| n |\n+---+\n| 0 |\n+---+"
    );
    db.execute("DROP TABLE t").await;
    let e = error(&engine, "SELECT * FROM t").await;
    assert!(
        e.contains("source `my`") && e.contains("doesn't exist"),
        "{e}"
    );
}

/// The tables of [`early_probe`](crate::early_probe), in a database of their own.
async fn customers_and_orders(prefix: &str) -> Database {
    let db = Database::create(prefix).await;
    db.execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text);
         INSERT INTO customers SELECT seq, CONCAT('ü''', seq) FROM seq_1_to_2000;
         CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint, amount decimal(10, 2));
         INSERT INTO orders SELECT seq, seq % 1500 + 1, seq / 100 FROM seq_1_to_400000;
         ANALYZE TABLE customers, orders;",
    )
    .await;
    db
}

/// Locks `customers` with `LOCK TABLES`; sees `orders` read in the process list.
struct MyLocker<'a> {
    db: &'a Database,
    conn: mysql_async::Conn,
}

impl crate::early_probe::Locker for MyLocker<'_> {
    async fn lock_customers(&mut self) {
        self.conn
            .query_drop(format!("LOCK TABLES `{}`.customers WRITE", self.db.name))
            .await
            .unwrap();
    }

    async fn orders_running(&mut self) -> bool {
        let orders = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE '%`{}`.`orders`%' AND ID <> CONNECTION_ID()",
            self.db.name
        );
        let running: i64 = self.conn.query_first(&orders).await.unwrap().unwrap_or(0);
        running > 0
    }

    async fn unlock(&mut self) {
        self.conn.query_drop("UNLOCK TABLES").await.unwrap();
    }
}

/// A probe side that queries MariaDB starts early with a pool for both sides' 2 parts
/// (2 × 2), and not with one fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_probe_side_starts_early_only_with_connections_for_both_sides() {
    let db = customers_and_orders("early_probe").await;
    let settings = "    partitions: 2\n    partition_rows: 1000\n    batch_size: 1000\n";
    let roomy = my_engine(&db.name, false, &format!("    pool_size: 4\n{settings}"));
    let tight = my_engine(&db.name, false, &format!("    pool_size: 3\n{settings}"));
    let conn = tributary_testkit::mysql::connect().await;
    crate::early_probe::starts_only_with_connections_for_both_sides(
        &roomy,
        &tight,
        &mut MyLocker { db: &db, conn },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_early_probe_sides_share_a_small_pool() {
    let db = customers_and_orders("early_probe_pool").await;
    let engine = my_engine(
        &db.name,
        false,
        "    pool_size: 4\n    partitions: 2\n    partition_rows: 1000\n    batch_size: 1000\n",
    );
    crate::early_probe::concurrent_joins_share_a_small_pool(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waits_for_a_busy_pool_at_most_pool_timeout() {
    let db = customers_and_orders("pool_timeout").await;
    let engine = my_engine(&db.name, false, crate::pool_timeout::ONE_CONNECTION);
    crate::pool_timeout::a_query_waits_at_most_pool_timeout(&engine).await;
}

/// A scan's row estimate is the server's, except that a condition MariaDB does not
/// estimate (on a column without an index or histogram, where it counts every row) keeps
/// DataFusion's default 20%. A condition on the key stays as MariaDB estimates it, and so
/// does the `IS NOT NULL` MariaDB adds to a nullable column it looks another table up by.
#[tokio::test]
async fn a_filter_the_server_cannot_estimate_keeps_the_default_share_of_rows() {
    let db = customers_and_orders("unestimated").await;
    let engine = my_engine(&db.name, true, "");
    let mut conn = tributary_testkit::mysql::connect().await;
    let mut explained = async |sql: &str| -> u64 {
        let sql = sql
            .replace(" orders", &format!(" {}.orders", db.name))
            .replace(" customers", &format!(" {}.customers", db.name));
        let rows: Vec<mysql_async::Row> = conn.query(format!("EXPLAIN {sql}")).await.unwrap();
        rows.iter()
            .map(|r| r.get::<u64, _>("rows").unwrap())
            .product()
    };
    let unindexed = "SELECT id, customer FROM orders WHERE customer > 10";
    let whole = explained(unindexed).await;
    assert_eq!(
        estimated_rows(&engine, unindexed).await,
        (whole as f64 * 0.2).round() as usize
    );
    let keyed = "SELECT id, customer FROM orders WHERE id <= 100000";
    assert_eq!(
        estimated_rows(&engine, keyed).await,
        explained(keyed).await as usize
    );
    // `customer` is nullable: MariaDB checks `o.customer is not null` before each lookup.
    let lookup = "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer";
    assert_eq!(
        estimated_rows(&engine, lookup).await,
        explained(lookup).await as usize
    );
}

/// The line of the remote scan of `table` in the shown plan `plan`, which must have one.
fn scan_of<'a>(plan: &'a str, table: &str) -> &'a str {
    let name = format!(".{table},");
    plan.lines()
        .find(|l| l.contains("RemoteScanExec") && l.contains(&name))
        .unwrap_or_else(|| panic!("no scan of {table}:\n{plan}"))
}

/// The line of `plan` (a physical plan as shown) that sends a sub-plan to the source.
fn sub_plan_of(plan: &str) -> &str {
    plan.lines()
        .find(|l| l.contains("(sub-plan)"))
        .unwrap_or_else(|| panic!("the join was read apart:\n{plan}"))
}

/// The row estimate of `sql`'s physical plan, which must have one.
async fn estimated_rows(engine: &Engine, sql: &str) -> usize {
    let plan = plan(engine, sql).await;
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .unwrap();
    match stats.num_rows {
        Precision::Exact(rows) | Precision::Inexact(rows) => rows,
        Precision::Absent => panic!(
            "no estimate for {sql}:\n{}",
            datafusion::physical_plan::displayable(plan.as_ref()).indent(false)
        ),
    }
}

/// MariaDB estimates an aggregate at the rows it reads. A grouped subquery that keeps few
/// groups is estimated by its groups instead (at most the grouping key's distinct values,
/// a share of them after `HAVING`), so the semi join builds on it and its keys filter the
/// join beside it, as in TPC-H q18; the answer is DataFusion's without pushdown.
#[tokio::test]
async fn a_grouped_subquery_is_estimated_by_its_groups() {
    let db = Database::create("group_estimate").await;
    db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, note varchar(20), placed timestamp NULL);
         INSERT INTO orders SELECT seq,
             CASE seq % 4 WHEN 0 THEN NULL WHEN 1 THEN 'o''brien' WHEN 2 THEN '東京 \"q\"' ELSE '' END,
             CASE WHEN seq % 5 = 0 THEN NULL ELSE TIMESTAMP '2024-03-31 01:30:00' + INTERVAL seq MINUTE END
             FROM seq_1_to_20000;
         CREATE TABLE items (order_id bigint, line int, qty decimal(12, 2), PRIMARY KEY (order_id, line));
         INSERT INTO items SELECT o.seq, l.seq, CASE WHEN o.seq % 997 = 0 THEN 60.5 ELSE l.seq END
             FROM seq_1_to_20000 o, seq_1_to_5 l;
         ANALYZE TABLE orders, items;",
    )
    .await;
    let sql = "SELECT o.id, o.note, o.placed, sum(l.qty) AS qty \
        FROM orders o JOIN items l ON o.id = l.order_id \
        WHERE o.id IN (SELECT order_id FROM items GROUP BY order_id HAVING sum(qty) > 300) \
        GROUP BY o.id, o.note, o.placed ORDER BY qty DESC, o.id";
    let engine = my_engine(&db.name, true, "");
    let plan = plan(&engine, sql).await;
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    // The grouped subquery is the semi join's build (first) side.
    let build = shown
        .lines()
        .skip_while(|l| !l.contains("join_type=RightSemi"))
        .find(|l| l.contains("RemoteScanExec"))
        .unwrap_or_else(|| panic!("no semi join built on a remote scan:\n{shown}"));
    assert!(build.contains("GROUP BY"), "{shown}");
    let ours = table(&engine, sql).await;
    assert_eq!(ours, table(&my_engine(&db.name, false, ""), sql).await);
    assert_eq!(ours.lines().count(), 20_000 / 997 + 4, "{ours}");
}

/// A join the server would run over a full scan of a table it splits (here `orders`, no
/// index on `customer`) is run by DataFusion over the two tables read apart: `orders` in
/// parallel parts, narrowed by the customers' keys. Where the source splits no scan, the
/// server runs the join.
#[tokio::test]
async fn a_join_reading_a_split_table_whole_is_read_apart() {
    let db = customers_and_orders("join_apart").await;
    let sql = "SELECT c.name, count(*) AS n, sum(o.amount) AS total \
        FROM orders o, customers c \
        WHERE o.customer = c.id AND c.id BETWEEN 100 AND 400 \
        GROUP BY c.name ORDER BY total DESC, c.name";
    let split = "    partition_rows: 50000\n";
    let apart = physical_plan(&my_engine(&db.name, true, split), sql).await;
    assert!(!apart.contains("(sub-plan)"), "{apart}");
    // Joined on its keys (the next test is the shape where that needed help).
    assert!(apart.contains("HashJoinExec"), "{apart}");
    assert!(!apart.contains("NestedLoopJoinExec"), "{apart}");
    let orders = scan_of(&apart, "orders");
    assert!(orders.contains("partitions=2"), "{apart}");
    assert!(orders.contains("dynamic_filters=1"), "{apart}");

    // Estimated as the source estimated the join whole.
    assert!(apart.contains("EstimatedExec: rows="), "{apart}");

    let unsplit = physical_plan(&my_engine(&db.name, true, "    partitions: 1\n"), sql).await;
    assert!(unsplit.contains("(sub-plan)"), "{unsplit}");

    let ours = table(&my_engine(&db.name, true, split), sql).await;
    assert_eq!(ours, table(&my_engine(&db.name, false, ""), sql).await);
    assert_eq!(ours.lines().count(), 301 + 4, "{ours}");
}

/// Whether a join that scans a split table runs on the server or over its inputs read
/// apart is decided by the server's work both ways. For the orders of one priority (2%,
/// found by an index), the server looks up their items by key, reading and returning less
/// than it would reading both tables apart, where all of `items` is read (its dynamic
/// filter narrows what it returns, not what it reads). For a seventh of the items, joined
/// with the five kinds of line (TPC-H q14's shape), reading apart costs less: `items` in
/// parallel parts and `kinds` whole, where the server would scan `items` in one thread.
#[tokio::test]
async fn a_join_runs_where_the_server_reads_less() {
    let db = Database::create("join_work").await;
    db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, note varchar(20), priority int, KEY (priority));
         INSERT INTO orders SELECT seq,
             CASE seq % 4 WHEN 0 THEN NULL WHEN 1 THEN 'o''brien' WHEN 2 THEN '東京 \"q\"' ELSE '' END,
             seq % 50
             FROM seq_1_to_20000;
         CREATE TABLE items (order_id bigint, line int, qty decimal(12, 2), PRIMARY KEY (order_id, line));
         INSERT INTO items SELECT o.seq, l.seq, (o.seq * l.seq) % 7 + 0.25
             FROM seq_1_to_20000 o, seq_1_to_5 l;
         CREATE TABLE kinds (line int PRIMARY KEY, label varchar(20));
         INSERT INTO kinds VALUES (1, 'ä'), (2, 'it''s'), (3, NULL), (4, '\"x\"'), (5, '');
         ANALYZE TABLE orders, items, kinds;",
    )
    .await;
    let split = "    partition_rows: 10000\n";
    let engine = my_engine(&db.name, true, split);
    let unpushed = my_engine(&db.name, false, "");

    let by_key = "SELECT o.note, sum(l.qty) AS qty FROM orders o JOIN items l ON l.order_id = o.id \
        WHERE o.priority = 1 GROUP BY o.note ORDER BY o.note";
    let whole = physical_plan(&engine, by_key).await;
    let pushed = sub_plan_of(&whole);
    assert!(
        pushed.contains("`items`") && pushed.contains("`orders`"),
        "{whole}"
    );
    let ours = table(&engine, by_key).await;
    assert_eq!(ours, table(&unpushed, by_key).await);
    // Priority 1 holds orders 1, 51, 101, …: notes `o'brien` and ''.
    assert_eq!(ours.lines().count(), 2 + 4, "{ours}");

    // A quarter of the orders (by a filter the server does not estimate), grouped by
    // priority on the server: it returns a row a priority, not a row an item.
    let grouped = "SELECT o.priority, count(*) AS n, sum(l.qty) AS qty \
        FROM orders o JOIN items l ON l.order_id = o.id \
        WHERE o.note IS NULL GROUP BY o.priority ORDER BY o.priority";
    let whole = physical_plan(&engine, grouped).await;
    let pushed = sub_plan_of(&whole);
    assert!(pushed.contains("GROUP BY"), "{whole}");
    let ours = table(&engine, grouped).await;
    assert_eq!(ours, table(&unpushed, grouped).await);
    // Orders 4, 8, 12, …: the even priorities.
    assert_eq!(ours.lines().count(), 25 + 4, "{ours}");

    let scanned = "SELECT k.label, sum(l.qty) AS qty FROM items l JOIN kinds k ON k.line = l.line \
        WHERE l.qty > 6 GROUP BY k.label ORDER BY k.label";
    let apart = physical_plan(&engine, scanned).await;
    assert!(!apart.contains("(sub-plan)"), "{apart}");
    let items = scan_of(&apart, "items");
    assert!(items.contains("partitions=2"), "{apart}");
    let ours = table(&engine, scanned).await;
    assert_eq!(ours, table(&unpushed, scanned).await);
    assert_eq!(ours.lines().count(), 5 + 4, "{ours}");
}

/// A join of three tables written as a comma join, under a semi join (TPC-H q18's and
/// q21's shape), read apart: the equalities of its `WHERE` reach DataFusion as join
/// filters and must become join keys, or DataFusion would join by nested loops.
#[tokio::test]
async fn a_three_table_comma_join_read_apart_is_joined_on_its_keys() {
    let db = customers_and_orders("join3_apart").await;
    let sql = "SELECT c.name, o.id, p.amount FROM orders o, customers c, orders p \
        WHERE o.customer = c.id AND p.id = o.id \
          AND o.id IN (SELECT id FROM orders GROUP BY id HAVING sum(amount) > 3995) \
        ORDER BY o.id";
    let engine = my_engine(&db.name, true, "    partition_rows: 50000\n");
    let shown = physical_plan(&engine, sql).await;
    assert!(shown.contains("EstimatedExec"), "{shown}");
    assert!(!shown.contains("NestedLoopJoinExec"), "{shown}");
    assert!(!shown.contains("CrossJoinExec"), "{shown}");
    // The semi join's, and the two of the comma join.
    assert_eq!(shown.matches("HashJoinExec").count(), 3, "{shown}");
    let ours = table(&engine, sql).await;
    assert_eq!(ours, table(&my_engine(&db.name, false, ""), sql).await);
    assert_eq!(ours.lines().count(), 500 + 4, "{ours}");
}

/// Above a join read apart (as in the test before), a semi join builds on the side its
/// source estimates smaller, a grouped subquery's (TPC-H q18's shape), and that side's keys
/// pass down to the scans below as a dynamic filter.
#[tokio::test]
async fn keys_from_above_reach_a_join_read_apart() {
    let db = customers_and_orders("apart_keys").await;
    let sql = "SELECT c.name, o.id, o.amount FROM orders o, customers c \
        WHERE o.customer = c.id \
          AND o.id IN (SELECT id FROM orders GROUP BY id HAVING sum(amount) > 3995) \
        ORDER BY o.id";
    let engine = my_engine(&db.name, true, "    partition_rows: 50000\n");
    let shown = physical_plan(&engine, sql).await;
    let semi = shown
        .lines()
        .find(|l| l.contains("join_type=RightSemi"))
        .unwrap_or_else(|| panic!("no semi join building on the subquery:\n{shown}"));
    assert!(semi.contains("HashJoinExec"), "{shown}");
    assert!(shown.contains("EstimatedExec"), "{shown}");
    let orders = scan_of(&shown, "orders");
    // The customers' keys and the subquery's.
    assert!(orders.contains("dynamic_filters=2"), "{shown}");
    let ours = table(&engine, sql).await;
    assert_eq!(ours, table(&my_engine(&db.name, false, ""), sql).await);
    assert_eq!(ours.lines().count(), 500 + 4, "{ours}");
}

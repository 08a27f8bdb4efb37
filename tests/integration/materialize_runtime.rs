//! Materializations at run time: the run history and health tables, the scheduler (no
//! overlapping runs, retries, shutdown), freshness-aware routing of accelerated tables,
//! and a source that goes down — against the local PostgreSQL, reached through a TCP
//! proxy the tests can cut.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tributary::materialize::{self, Route, RunOptions, SyncError};
use tributary::{Config, Engine};
use tributary_testkit::postgres::{Schema, url};

use crate::common::run;
use crate::materialize::try_sync;

/// A TCP proxy to the test PostgreSQL: cutting it is the source going down (connections
/// refused, open ones dropped) without touching the server other tests use.
struct Proxy {
    port: u16,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Proxy { port, task: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = url()
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_string();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when the task is aborted) drops every open connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// The source URL through the proxy.
    fn url(&self) -> String {
        let base = url();
        let (user, rest) = base.split_once('@').unwrap();
        let database = rest.split_once('/').map_or("", |(_, db)| db);
        format!("{user}@127.0.0.1:{}/{database}", self.port)
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        self.cut();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// An engine over `pg` at `source_url` (limited to `schema`) with `materializations`,
/// keeping its data under `dir`.
fn engine(dir: &Path, source_url: &str, schema: &str, materializations: &str) -> Engine {
    let yaml = format!(
        "server:\n  probe_timeout: 2s\nsources:\n  - name: pg\n    kind: postgres\n    url: {source_url}\n    schemas: {{include: [{schema}]}}\nmaterializations:\n{}",
        materializations.replace("SCHEMA", schema)
    );
    let path = dir.join("tributary.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

async fn sync(engine: &Engine, name: &str) -> Result<materialize::RunReport, SyncError> {
    try_sync(engine, name, RunOptions::default()).await
}

/// A test schema holding `orders` (100 rows), a data folder, and an engine reading the
/// schema at `source_url` with `materializations`.
async fn orders(
    prefix: &str,
    source_url: Option<&str>,
    materializations: &str,
) -> (Schema, tempfile::TempDir, Engine) {
    let schema = Schema::create(prefix).await;
    schema.execute(ORDERS).await;
    let dir = tempfile::tempdir().unwrap();
    let source_url = source_url.map_or_else(url, str::to_string);
    let engine = engine(dir.path(), &source_url, &schema.name, materializations);
    (schema, dir, engine)
}

/// The rows of `sql`, each as its columns' text (NULL as `NULL`).
async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<String>> {
    let batches = run(engine, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut rows = Vec::new();
    for batch in &batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(row) {
                            "NULL".to_string()
                        } else {
                            c.value(row).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

async fn one(engine: &Engine, sql: &str) -> String {
    let rows = rows(engine, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone()
}

const ORDERS: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10, 2));
    INSERT INTO orders SELECT g, 'customer ' || g, g * 1.5 FROM generate_series(1, 100) g;
";

#[tokio::test]
async fn runs_and_health_are_tables_and_a_failing_source_keeps_the_last_good_copy() {
    let mut proxy = Proxy::start().await;
    let jobs = "  - name: orders\n    from: pg.SCHEMA.orders\n    schedule: {every: 1h}\n";
    let (schema, dir, engine) = orders("mz_health", Some(&proxy.url()), jobs).await;

    let state = "SELECT state, last_run_status, consecutive_failures FROM tributary.runtime.materializations";
    assert_eq!(rows(&engine, state).await, [["never run", "NULL", "0"]]);
    assert_eq!(
        one(&engine, "SELECT count(*) FROM tributary.runtime.sync_runs").await,
        "0"
    );

    let report = sync(&engine, "orders").await.unwrap();
    assert_eq!(report.rows_read, 100);
    assert_eq!(rows(&engine, state).await, [["ok", "succeeded", "0"]]);

    // The source goes down: the run fails, is recorded with its error, and the copy
    // keeps answering.
    proxy.cut();
    let e = sync(&engine, "orders").await.unwrap_err();
    assert!(matches!(e, SyncError::Source { .. }), "{e}");
    assert_eq!(
        one(&engine, "SELECT count(*) FROM materialized.public.orders").await,
        "100"
    );
    assert_eq!(rows(&engine, state).await, [["failing", "failed", "1"]]);
    let history = rows(
        &engine,
        "SELECT status, run, rows_read, rows_inserted, trigger, attempt, error IS NULL, \
         ended_at >= started_at, watermark \
         FROM tributary.runtime.sync_runs ORDER BY started_at",
    )
    .await;
    assert_eq!(
        history,
        [
            [
                "succeeded",
                "1",
                "100",
                "100",
                "manual",
                "1",
                "true",
                "true",
                "NULL"
            ],
            [
                "failed", "NULL", "0", "0", "manual", "1", "false", "true", "NULL"
            ],
        ]
    );
    let error = one(
        &engine,
        "SELECT error FROM tributary.runtime.sync_runs WHERE status = 'failed'",
    )
    .await;
    assert!(error.contains("materialization `orders`"), "{error}");
    let reason = one(
        &engine,
        "SELECT reason FROM tributary.runtime.materializations",
    )
    .await;
    assert_eq!(reason, error);
    let fresh = one(
        &engine,
        "SELECT last_success_at <= now() AND staleness_seconds >= 0 \
         FROM tributary.runtime.materializations",
    )
    .await;
    assert_eq!(fresh, "true");

    // A new process (a restarted server) learns the same from the history.
    let restarted = self::engine(dir.path(), &proxy.url(), &schema.name, jobs);
    assert_eq!(rows(&restarted, state).await, [["failing", "failed", "1"]]);
    let health = restarted.materializer().health().await.get("orders");
    assert!(health.last_success.is_some());

    proxy.restore().await;
    sync(&restarted, "orders").await.unwrap();
    assert_eq!(rows(&restarted, state).await, [["ok", "succeeded", "0"]]);
    assert_eq!(
        one(
            &restarted,
            "SELECT count(*) FROM tributary.runtime.sync_runs"
        )
        .await,
        "3"
    );
}

#[tokio::test]
async fn accelerated_tables_route_by_staleness_and_fall_back_when_the_source_is_down() {
    let mut proxy = Proxy::start().await;
    let (schema, _dir, engine) = orders("mz_accel", Some(&proxy.url()), "  - name: orders\n    from: pg.SCHEMA.orders\n    accelerate: true\n    max_staleness: 2s\n").await;
    let count = format!("SELECT count(*) FROM pg.{}.orders", schema.name);
    let routes = |engine: &Engine| {
        let h = engine.materializer().health_now().get("orders");
        let n = |r| h.routes.get(&r).copied().unwrap_or(0);
        (n(Route::Copy), n(Route::Live), n(Route::Fallback))
    };

    // No copy yet: the source answers.
    assert_eq!(one(&engine, &count).await, "100");
    assert_eq!(routes(&engine), (0, 1, 0));

    sync(&engine, "orders").await.unwrap();
    schema
        .execute("INSERT INTO orders VALUES (101, 'late', 1)")
        .await;
    // Fresh: the copy answers (it does not have the new row yet).
    assert_eq!(one(&engine, &count).await, "100");
    assert_eq!(routes(&engine), (1, 1, 0));

    // Too old: the source answers live.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(one(&engine, &count).await, "101");
    assert_eq!(routes(&engine), (1, 2, 0));

    // Too old and the source is down: the last good copy answers.
    proxy.cut();
    assert_eq!(one(&engine, &count).await, "100");
    assert_eq!(
        one(
            &engine,
            &format!(
                "SELECT customer FROM pg.{}.orders WHERE id = 7",
                schema.name
            )
        )
        .await,
        "customer 7"
    );
    assert_eq!(routes(&engine), (1, 2, 2));

    // The metrics show the routes and the staleness.
    let metrics = tributary::server::Metrics::default();
    metrics.watch_materializations(Arc::clone(engine.materializer()));
    let text = metrics.render();
    assert!(
        text.contains(
            r#"tributary_accelerated_queries_total{materialization="orders",route="fallback"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"tributary_materialization_staleness_seconds{materialization="orders"}"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tributary_materialization_runs_total{materialization="orders",status="succeeded"} 1"#
        ),
        "{text}"
    );

    // Back up: a new run makes the copy fresh again, and it answers.
    proxy.restore().await;
    sync(&engine, "orders").await.unwrap();
    assert_eq!(one(&engine, &count).await, "101");
    assert_eq!(routes(&engine), (2, 2, 2));
}

#[tokio::test]
async fn accelerated_without_max_staleness_always_reads_the_copy() {
    let (schema, _dir, engine) = orders(
        "mz_accel_always",
        None,
        "  - name: orders\n    from: pg.SCHEMA.orders\n    accelerate: true\n",
    )
    .await;
    sync(&engine, "orders").await.unwrap();
    schema.execute("DELETE FROM orders WHERE id > 10").await;
    let plan = rows(
        &engine,
        &format!("EXPLAIN SELECT sum(amount) FROM pg.{}.orders", schema.name),
    )
    .await;
    assert!(
        format!("{plan:?}").contains("DeltaScan"),
        "not read from the copy: {plan:?}"
    );
    assert_eq!(
        one(
            &engine,
            &format!("SELECT count(*) FROM pg.{}.orders", schema.name)
        )
        .await,
        "100"
    );
}

/// Holds an exclusive lock on `table` for `hold`, so reads of it wait that long.
fn lock_table(schema: &Schema, table: &str, hold: Duration) -> JoinHandle<()> {
    let sql = format!(
        "BEGIN; LOCK TABLE {}.{table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
        schema.name,
        hold.as_secs_f64()
    );
    tokio::spawn(async move {
        let client = tributary_testkit::postgres::connect().await;
        client.batch_execute(&sql).await.unwrap();
    })
}

#[tokio::test]
async fn scheduled_runs_never_overlap_retry_and_stop_with_the_server() {
    let (schema, _dir, engine) = orders(
        "mz_sched",
        None,
        "  - name: orders\n    from: pg.SCHEMA.orders\n    schedule: {every: 500ms}\n",
    )
    .await;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(materialize::run_schedules(engine.clone(), stopping));

    // Let a few runs go, then make one last 2.5 s (ticks every 500 ms meanwhile).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lock = lock_table(&schema, "orders", Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A manual run meanwhile is refused, not run alongside.
    let e = sync(&engine, "orders").await.unwrap_err();
    assert!(
        matches!(e, SyncError::Running { .. }),
        "expected an overlap refusal: {e}"
    );
    lock.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Shut down while a run is held up: it stops and is recorded as stopped.
    let lock = lock_table(&schema, "orders", Duration::from_millis(3000));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), scheduler)
        .await
        .expect("the scheduler stops on shutdown")
        .unwrap();
    lock.await.unwrap();

    let runs = rows(
        &engine,
        "SELECT status, trigger, error, \
                CAST(started_at AS BIGINT) AS started, CAST(ended_at AS BIGINT) AS ended \
         FROM tributary.runtime.sync_runs ORDER BY started",
    )
    .await;
    assert!(runs.len() >= 3, "{runs:?}");
    for pair in runs.windows(2) {
        let ended: i64 = pair[0][4].parse().unwrap();
        let next_started: i64 = pair[1][3].parse().unwrap();
        assert!(next_started >= ended, "runs overlapped: {runs:?}");
    }
    assert!(runs.iter().all(|r| r[1] == "schedule"), "{runs:?}");
    let (last, earlier) = runs.split_last().unwrap();
    assert_eq!(last[0], "failed", "{runs:?}");
    assert!(last[2].contains("shutting down"), "{runs:?}");
    assert!(earlier.iter().all(|r| r[0] == "succeeded"), "{runs:?}");
}

#[tokio::test]
async fn scheduled_runs_retry_transient_failures() {
    let mut proxy = Proxy::start().await;
    proxy.cut();
    let (_schema, _dir, engine) = orders("mz_retry", Some(&proxy.url()), "  - name: orders\n    from: pg.SCHEMA.orders\n    schedule: {every: 1s}\n    retries: 5\n    retry_backoff: 300ms\n").await;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(materialize::run_schedules(engine.clone(), stopping));
    // The first tries fail while the source is down; one after it is back succeeds.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.restore().await;
    let mut done = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let h = engine.materializer().health_now().get("orders");
        if h.last_success.is_some() {
            done = true;
            break;
        }
    }
    stop.send(true).unwrap();
    scheduler.await.unwrap();
    assert!(done, "no retry succeeded");
    let runs = rows(
        &engine,
        "SELECT status, attempt FROM tributary.runtime.sync_runs ORDER BY started_at",
    )
    .await;
    // The first tick's tries, up to its success (a later tick may have run too).
    let success = runs.iter().position(|r| r[0] == "succeeded").unwrap();
    let first_tick = &runs[..=success];
    assert!(success > 0, "{runs:?}");
    assert!(
        first_tick[..success].iter().all(|r| r[0] == "failed"),
        "{runs:?}"
    );
    let attempts: Vec<String> = first_tick.iter().map(|r| r[1].clone()).collect();
    let expected: Vec<String> = (1..=first_tick.len()).map(|a| a.to_string()).collect();
    assert_eq!(attempts, expected, "{runs:?}");
}

/// The Parquet files under `dir`.
fn parquet_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            count += parquet_files(&path);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            count += 1;
        }
    }
    count
}

/// Runs `orders` `runs` times, each adding rows, so its table has at least that many
/// files; the table's folder and its rows.
async fn small_files(
    schema: &Schema,
    dir: &tempfile::TempDir,
    engine: &Engine,
    runs: usize,
) -> (std::path::PathBuf, Vec<Vec<String>>) {
    sync(engine, "orders").await.unwrap();
    for i in 1..runs {
        schema
            .execute(&format!(
                "INSERT INTO orders SELECT g, 'more', {i} FROM generate_series({}, {}) g",
                1000 + i * 10,
                1009 + i * 10
            ))
            .await;
        sync(engine, "orders").await.unwrap();
    }
    let table = dir.path().join("data/materialized/orders");
    assert!(parquet_files(&table) >= runs);
    let copy = rows(
        engine,
        "SELECT * FROM materialized.public.orders ORDER BY id",
    )
    .await;
    (table, copy)
}

#[tokio::test]
async fn optimize_compacts_small_files_and_vacuum_removes_unused_ones() {
    let (schema, dir, engine) = orders("mz_optimize", None, "  - name: orders\n    from: pg.SCHEMA.orders\n    mode: incremental\n    cursor: id\n    vacuum_retention: 0s\n").await;
    let (table, before) = small_files(&schema, &dir, &engine, 5).await;

    let job = materialize::job(&engine, "orders").unwrap();
    let done = materialize::maintain(&engine, job).await.unwrap().remove(0);
    assert!(done.files_compacted >= 5, "{done}");
    assert_eq!(done.files_written, 1, "{done}");
    // Retention 0: the compacted files are gone from disk, only the new one is left.
    assert_eq!(done.files_deleted as u64, done.files_compacted, "{done}");
    assert_eq!(parquet_files(&table), 1);
    let after = rows(
        &engine,
        "SELECT * FROM materialized.public.orders ORDER BY id",
    )
    .await;
    assert_eq!(before, after);

    // The state survives compaction: the next run reads only new rows.
    schema
        .execute("INSERT INTO orders VALUES (5000, 'newest', 1)")
        .await;
    let report = sync(&engine, "orders").await.unwrap();
    assert_eq!(report.rows_read, 1);

    let history = materialize::maintain_history(&engine, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(history.files_written, 1, "{history}");
    assert_eq!(
        one(&engine, "SELECT count(*) FROM tributary.runtime.sync_runs").await,
        "6"
    );
}

#[tokio::test]
async fn serve_maintains_tables_on_their_optimize_schedule() {
    let (schema, dir, engine) = orders("mz_optimize_every", None, "  - name: orders\n    from: pg.SCHEMA.orders\n    mode: incremental\n    cursor: id\n    optimize: {every: 300ms}\n    vacuum_retention: 0s\n").await;
    let (table, before) = small_files(&schema, &dir, &engine, 4).await;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(materialize::run_schedules(engine.clone(), stopping));
    let mut compacted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if parquet_files(&table) == 1 {
            compacted = true;
            break;
        }
    }
    stop.send(true).unwrap();
    scheduler.await.unwrap();
    assert!(compacted, "{} files left", parquet_files(&table));
    let after = rows(
        &engine,
        "SELECT * FROM materialized.public.orders ORDER BY id",
    )
    .await;
    assert_eq!(before, after);
}

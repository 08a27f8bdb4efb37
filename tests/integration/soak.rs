//! 32 clients at once against the `tributary serve` binary for a bounded time, running a
//! mix of queries (aggregates, joins, full scans, prepared statements, metadata, errors,
//! streams abandoned half-read): every answer must be right, and the server's memory must
//! come back to where it was after a warm-up once the load stops.
//!
//! `TRIBUTARY_SOAK_SECS` sets the loaded time (default 20 s; a longer run locally:
//! `TRIBUTARY_SOAK_SECS=600 cargo nextest run soak`).

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::{StreamExt, TryStreamExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::ServeProcess;
use crate::flight_sql::{Client, code_and_message, fetch};
use crate::flight_sql_security::scrape;

const CLIENTS: usize = 32;

/// The server process and its addresses.
struct Server {
    _process: ServeProcess,
    flight: String,
    metrics: String,
}

fn start() -> Server {
    let mut process = ServeProcess::start(
        &[
            "--demo-scale",
            "0.01",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    process.discard_log();
    Server {
        flight: process.after("grpc://"),
        metrics: process.after("metrics on http://"),
        _process: process,
    }
}

/// A gauge or counter's value in the server's metrics.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = scrape(&server.metrics).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn connect(server: &Server) -> Client {
    let channel = Channel::from_shared(format!("http://{}", server.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Runs query `step` of the mix for client `id`; an error says what went wrong.
async fn run_one(client: &mut Client, id: usize, step: usize) -> Result<(), String> {
    let sql = |sql: &str| sql.to_string();
    let expect = |what: &str, got: usize, wanted: usize| {
        if got == wanted {
            Ok(())
        } else {
            Err(format!("{what}: {got} rows, expected {wanted}"))
        }
    };
    match step % 7 {
        0 => {
            let info = client
                .execute(
                    sql("SELECT l_returnflag, count(*), sum(l_extendedprice) FROM lineitem GROUP BY l_returnflag"),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let (_, batches) = fetch(client, info).await;
            expect("aggregate", rows(&batches), 3)
        }
        1 => {
            let mut prepared = client
                .prepare(sql("SELECT n_name FROM nation WHERE n_nationkey = ?"), None)
                .await
                .map_err(|e| e.to_string())?;
            let schema = Schema::new(vec![Field::new("$1", DataType::Int32, true)]);
            let key = arrow::array::Int32Array::from(vec![(id % 25) as i32]);
            let parameters =
                RecordBatch::try_new(schema.into(), vec![std::sync::Arc::new(key)]).unwrap();
            prepared
                .set_parameters(parameters)
                .map_err(|e| e.to_string())?;
            let info = prepared.execute().await.map_err(|e| e.to_string())?;
            let (_, batches) = fetch(client, info).await;
            prepared.close().await.map_err(|e| e.to_string())?;
            expect("prepared", rows(&batches), 1)
        }
        2 => {
            let info = client
                .execute(sql("SELECT * FROM lineitem"), None)
                .await
                .map_err(|e| e.to_string())?;
            let (_, batches) = fetch(client, info).await;
            expect("full scan", rows(&batches), 60_175)
        }
        3 => {
            let info = client
                .execute(
                    sql("SELECT c_mktsegment, count(*) FROM customer JOIN orders ON c_custkey = o_custkey GROUP BY c_mktsegment"),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let (_, batches) = fetch(client, info).await;
            expect("join", rows(&batches), 5)
        }
        4 => {
            let info = client
                .get_tables(CommandGetTables {
                    catalog: Some("demo".into()),
                    db_schema_filter_pattern: None,
                    table_name_filter_pattern: None,
                    table_types: vec![],
                    include_schema: true,
                })
                .await
                .map_err(|e| e.to_string())?;
            let (_, batches) = fetch(client, info).await;
            expect("tables", rows(&batches), 8)
        }
        5 => {
            // Read one batch of a big result, then go away.
            let info = client
                .execute(sql("SELECT * FROM lineitem"), None)
                .await
                .map_err(|e| e.to_string())?;
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            let mut stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
            match stream.next().await {
                Some(Ok(batch)) if batch.num_rows() > 0 => Ok(()),
                other => Err(format!("abandoned scan: first item {other:?}")),
            }
        }
        _ => match client
            .execute(sql("SELECT * FROM no_such_table"), None)
            .await
        {
            Err(e) => {
                let (code, message) = code_and_message(e);
                if code == Code::InvalidArgument && message.contains("no_such_table") {
                    Ok(())
                } else {
                    Err(format!("unknown table: {code:?} {message}"))
                }
            }
            Ok(_) => Err("a query of an unknown table succeeded".into()),
        },
    }
}

/// `CLIENTS` clients, each running the mix (and reconnecting now and then) until `until`;
/// how many queries ran, or the first wrong answer.
async fn load(server: &Server, until: Instant) -> Result<usize, String> {
    let clients = (0..CLIENTS).map(|id| async move {
        let mut client = connect(server).await;
        let mut step = id;
        let mut done = 0;
        while Instant::now() < until {
            run_one(&mut client, id, step)
                .await
                .map_err(|e| format!("client {id}, step {step}: {e}"))?;
            step += 1;
            done += 1;
            if step % 20 == 0 {
                client = connect(server).await;
            }
        }
        Ok::<_, String>(done)
    });
    let counts: Vec<usize> = futures::stream::iter(clients)
        .buffer_unordered(CLIENTS)
        .try_collect()
        .await?;
    Ok(counts.into_iter().sum())
}

/// Waits for the server to finish every query (abandoned streams end when it notices),
/// then gives its resident memory in MiB.
async fn settled_memory(server: &Server) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(server, "tributary_queries_running").await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "queries still running after a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    metric(server, "tributary_process_resident_memory_bytes")
        .await
        .expect("the server reports its memory")
        / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_get_right_answers_and_memory_returns_to_baseline() {
    let seconds: u64 = std::env::var("TRIBUTARY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let server = start();

    // Warm up: the allocator, thread pools and caches grow to their working size.
    let warm = load(&server, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    let baseline = settled_memory(&server).await;

    let queries = load(&server, Instant::now() + Duration::from_secs(seconds))
        .await
        .unwrap();
    let after = settled_memory(&server).await;
    let failed = metric(&server, "tributary_queries_total{outcome=\"failed\"}").await;
    eprintln!(
        "soak: {warm} queries warming up, {queries} in {seconds} s from {CLIENTS} clients; resident memory {baseline:.0} MiB after warm-up, {after:.0} MiB after the load"
    );
    assert!(queries >= CLIENTS, "only {queries} queries ran");
    assert_eq!(failed, None, "streamed queries failed");
    // Leaking even a few kilobytes per query would show over thousands of queries; the
    // margin is for the allocator keeping freed pages.
    assert!(
        after <= baseline * 1.25 + 32.0,
        "resident memory grew from {baseline:.0} MiB to {after:.0} MiB"
    );
}

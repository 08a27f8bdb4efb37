//! Federated TPC-H: the 22 queries over each placement of `sql/tpch/placements`, timed in
//! one run through
//!
//! - Tributary in process (`Engine::sql` and collect),
//! - Tributary over Flight SQL (a server in this process, arrow-flight's client),
//! - DuckDB reading the same placement (its PostgreSQL and MySQL scanners, `read_parquet`),
//! - DataFusion over local Parquet files of every table (the ceiling),
//! - and, for single-database placements, the database running the whole query itself,
//!
//! each query through all of them before the next starts, in `--runs` rounds of one run of
//! each (so that they meet the machine in the same state; each round starts with the next
//! contender, so that none always follows the same one), reporting each contender's
//! median; with every Tributary answer compared to DuckDB's, or the ceiling's where DuckDB
//! gives none (a mismatch or an error other than a timeout fails the run). Writes a
//! Markdown table and an SVG chart to `$CARGO_TARGET_DIR/bench/`.
//!
//! The data is generated once per scale factor and kept: schema/database
//! `tributary_tpch_sf<scale>` in the local PostgreSQL and MariaDB (see scripts/services.sh)
//! and `$CARGO_TARGET_DIR/tpch/sf<scale>/<table>.parquet`.
//!
//! `cargo bench --bench tpch -- [--scale 1] [--placement mixed]… [--query 3]… [--runs 1]
//! [--timeout 120] [--no-flight] [--set datafusion.key=value]…`

mod data;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use tonic::transport::Channel;
use tributary::{Config, Engine};
use tributary_testkit::tpch::{Dataset, DuckDb, Placement, Query, compare, queries};
use tributary_tpch::TpchTable;

use report::{Checked, Contender, Outcome, PlacementReport};

struct Args {
    scale: f64,
    placements: Vec<String>,
    queries: Vec<usize>,
    runs: usize,
    timeout: Duration,
    flight: bool,
    /// DataFusion settings for Tributary (`server.datafusion`), to compare settings.
    settings: Vec<(String, String)>,
}

/// The options, as `--help` prints them.
const USAGE: &str =
    "cargo bench --bench tpch -- [--scale 1] [--placement mixed]... [--query 3]... \
[--runs 1] [--timeout 120] [--no-flight] [--set datafusion.key=value]...

  --scale N        TPC-H scale factor (1; 0.1 for a quick run)
  --placement P    a placement of sql/tpch/placements/ (every one if none is given)
  --query N        a query, 1 to 22 (every one if none is given)
  --runs N         rounds of one run of each contender; the median is reported
  --timeout S      seconds any contender may take on one query
  --no-flight      leave out Tributary over Flight SQL
  --set K=V        a DataFusion setting for Tributary (server.datafusion)";

/// What was asked for, or the usage and exit status 2 for an option it does not know.
fn args() -> Args {
    let mut args = Args {
        scale: 1.0,
        placements: Vec::new(),
        queries: Vec::new(),
        runs: 1,
        timeout: Duration::from_secs(120),
        flight: true,
        settings: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--scale" => args.scale = value().parse().expect("--scale: a number"),
            "--placement" => args.placements.push(value()),
            "--query" => args.queries.push(
                value()
                    .parse()
                    .ok()
                    .filter(|q| (1..=22).contains(q))
                    .expect("--query: 1 to 22"),
            ),
            "--runs" => args.runs = value().parse().expect("--runs: a number"),
            "--timeout" => {
                args.timeout = Duration::from_secs(value().parse().expect("--timeout: seconds"))
            }
            "--no-flight" => args.flight = false,
            "--set" => {
                let setting = value();
                let (key, value) = setting
                    .split_once('=')
                    .unwrap_or_else(|| panic!("--set {setting}: key=value"));
                args.settings.push((key.to_string(), value.to_string()));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => {
                eprintln!("unknown option {other}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    args
}

const TIMED_OUT: &str = "timed out";

/// One run of `run`, timed, or an error (one naming the timeout when it ran out of time).
async fn timed<T>(
    timeout: Duration,
    run: impl Future<Output = Result<T, String>>,
) -> Result<(Duration, T), String> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result.map(|answer| (started.elapsed(), answer)),
        Err(_) => Err(format!("{TIMED_OUT} after {timeout:?}")),
    }
}

/// The contenders, in their order in the first round (the two whose answers are the
/// references first: DuckDB's, or the ceiling's where DuckDB gives none).
#[derive(Clone, Copy)]
enum Turn {
    DuckDb,
    Ceiling,
    InProcess,
    Flight,
    Alone,
}

impl Turn {
    const ALL: [Turn; 5] = [
        Turn::DuckDb,
        Turn::Ceiling,
        Turn::InProcess,
        Turn::Flight,
        Turn::Alone,
    ];

    /// The contenders in the order they run in `round`: from the `round`th one, every
    /// `step`th one, the step going 1, 2, 3, 4, 1, … round by round. What runs just
    /// before a contender changes what it measures: DuckDB's scans of MariaDB evict the
    /// pages the next query reads from InnoDB's buffer pool, and a contender that follows
    /// another running the same query reads them warm. With each round starting one
    /// further on (1, 2, 3, …), the contender before each would always be the same
    /// one, so all-MariaDB q02 measured 0.19 s in process (always after DuckDB or the
    /// ceiling) and 0.10 s over Flight SQL (after the in-process run). With the step
    /// changing as well (5 contenders, a prime, so every step visits each once), in 4
    /// rounds each contender runs right after each of the others once, except in the
    /// round it starts.
    fn order(round: usize) -> impl Iterator<Item = Turn> {
        let n = Turn::ALL.len();
        let step = 1 + round % (n - 1);
        (0..n).map(move |turn| Turn::ALL[(round + turn * step) % n])
    }
}

/// One contender's runs of one query so far.
struct Tally {
    times: Vec<Duration>,
    /// What stopped it: a query that fails or times out once is not run again.
    failed: Option<String>,
    /// How the answers checked so far compared with the reference (checking stops at the
    /// first that differs, so that it is recorded once).
    checked: Checked,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            times: Vec::new(),
            failed: None,
            checked: Checked::Unchecked,
        }
    }

    fn running(&self) -> bool {
        self.failed.is_none()
    }

    /// Adds a run whose answer is checked against `reference` (see [`check`]).
    fn add(
        &mut self,
        result: Result<(Duration, Vec<RecordBatch>), String>,
        reference: Option<&[RecordBatch]>,
        ordered: bool,
        mismatches: &mut Vec<String>,
        what: String,
    ) {
        // A wrong answer before this one is the mismatch already recorded.
        let checking = self.checked != Checked::Wrong;
        let verdict_of = |answer| {
            checking
                .then(|| check(reference, answer, ordered, mismatches, what))
                .flatten()
        };
        let verdict = match result {
            Ok((time, answer)) => {
                self.times.push(time);
                verdict_of(Ok(&answer))
            }
            Err(e) => {
                let verdict = verdict_of(Err(&e));
                self.failed = Some(e);
                verdict
            }
        };
        match verdict {
            Some(true) => self.checked = Checked::Matched,
            Some(false) => self.checked = Checked::Wrong,
            None => {}
        }
    }

    /// The median time, or what stopped it.
    fn outcome(mut self) -> Outcome {
        match self.failed {
            Some(e) => Outcome::Failed(e),
            None => {
                self.times.sort();
                Outcome::Time(self.times[self.times.len() / 2], self.checked)
            }
        }
    }
}

/// Checks one answer (or error) against the reference answer, recording a mismatch, or
/// an error other than running out of time, in `mismatches` under `what`: whether it
/// matched, or `None` with no reference or after a timeout (the run is reported as timed
/// out; there is no answer to check).
fn check(
    reference: Option<&[RecordBatch]>,
    answer: Result<&[RecordBatch], &str>,
    ordered: bool,
    mismatches: &mut Vec<String>,
    what: String,
) -> Option<bool> {
    let verdict = match (answer, reference) {
        (Err(e), _) if e.starts_with(TIMED_OUT) => return None,
        (Err(e), _) => Err(format!("failed: {e}")),
        (Ok(_), None) => return None,
        (Ok(answer), Some(reference)) => compare(reference, answer, ordered),
    };
    Some(
        verdict
            .map_err(|e| mismatches.push(format!("{what}: {e}")))
            .is_ok(),
    )
}

/// The reference answer, if there is one yet.
fn reference(expected: &Option<(Vec<RecordBatch>, Contender)>) -> Option<&[RecordBatch]> {
    expected.as_ref().map(|(answer, _)| answer.as_slice())
}

async fn in_process(engine: &Engine, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let frame = engine.sql(sql).await.map_err(|e| e.to_string())?;
    frame.collect().await.map_err(|e| e.to_string())
}

async fn over_flight(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        batches.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(batches)
}

/// DataFusion over the Parquet files, every table registered by its bare name.
async fn parquet_ceiling(data: &Dataset) -> SessionContext {
    let ctx = SessionContext::new();
    for table in TpchTable::ALL {
        let path = data.parquet_dir.join(format!("{}.parquet", table.name()));
        ctx.register_parquet(
            table.name(),
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .expect("the Parquet files are readable");
    }
    ctx
}

/// A Flight SQL server on a free loopback port over `config`, and a client of it.
async fn flight_client(config: &Config) -> FlightSqlServiceClient<Channel> {
    let options = tributary::server::Options::default();
    let listener = tributary::server::bind("127.0.0.1:0".parse().unwrap(), &options)
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().unwrap();
    let engine = Engine::new(config).expect("the config builds an engine");
    tokio::spawn(async move {
        let _ = tributary::server::serve(engine, listener, options, std::future::pending()).await;
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the server answers");
    FlightSqlServiceClient::new(channel)
}

/// Touches every table once, in process and through the Flight SQL server (which has an
/// engine of its own), so metadata discovery is not timed with the first query.
async fn warm_up(
    engine: &Engine,
    flight: Option<&FlightSqlServiceClient<Channel>>,
    data: &Dataset,
    placement: &Placement,
) {
    for table in TpchTable::ALL {
        let sql = data.qualify(
            placement,
            &format!("SELECT * FROM {} LIMIT 1", table.name()),
        );
        in_process(engine, &sql).await.expect("every table reads");
        if let Some(client) = flight {
            over_flight(&mut client.clone(), &sql)
                .await
                .expect("every table reads over Flight SQL");
        }
    }
}

async fn bench_placement(
    args: &Args,
    data: &Dataset,
    placement: &Placement,
    queries: &[Query],
    duckdb: &DuckDb,
    ceiling: &SessionContext,
    mismatches: &mut Vec<String>,
) -> PlacementReport {
    let mut yaml = data.tributary_config(placement);
    if !args.settings.is_empty() {
        yaml.push_str("server:\n  datafusion:\n");
        for (key, value) in &args.settings {
            yaml.push_str(&format!("    {key}: \"{value}\"\n"));
        }
    }
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(&config).unwrap_or_else(|e| panic!("{e}"));
    let flight = if args.flight {
        Some(flight_client(&config).await)
    } else {
        None
    };
    warm_up(&engine, flight.as_ref(), data, placement).await;
    let mut alone = data::whole_query_runner(data, placement).await;

    // DuckDB runs each query right beside the others, over one connection.
    let mut duck_session = duckdb.session(data, placement, 1, true);

    let mut report = PlacementReport::new(placement, alone.as_ref().map(|a| a.label()));
    for query in queries {
        let sql = data.qualify(placement, &query.sql);
        // The answer the others are checked against: DuckDB's, or where DuckDB gives
        // none, DataFusion's over the Parquet files (the same engine as Tributary's, but
        // with nothing federated, pushed down or filtered dynamically).
        let mut expected: Option<(Vec<RecordBatch>, Contender)> = None;
        let [mut duck, mut ours, mut flown, mut ceiling_runs, mut whole] =
            [(); 5].map(|()| Tally::new());
        // Round by round, each contender once in each, so that a slow spell of the
        // machine (a neighbour's burst) meets every contender rather than one
        // contender's every run; and in an order that changes round by round, so that
        // none always follows the same one ([`Turn::order`]). The first round starts
        // with DuckDB and the ceiling, whose answers are the references.
        for round in 0..args.runs.max(1) {
            for turn in Turn::order(round) {
                let what = |who: &str| format!("{} {} {who}", placement.name, query.name);
                match turn {
                    Turn::DuckDb if duck.running() => {
                        let run = duck_session.run(query);
                        match (run.error, run.seconds.first()) {
                            (Some(e), _) => duck.failed = Some(e),
                            (None, None) => duck.failed = Some("no time".into()),
                            (None, Some(&seconds)) => {
                                duck.times.push(Duration::from_secs_f64(seconds));
                                if expected.is_none() {
                                    expected = run.answer.map(|a| (a, Contender::DuckDb));
                                }
                            }
                        }
                    }
                    Turn::InProcess if ours.running() => {
                        let run = timed(args.timeout, in_process(&engine, &sql)).await;
                        let what = what("in process");
                        ours.add(run, reference(&expected), query.ordered, mismatches, what);
                    }
                    Turn::Flight if flown.running() => {
                        if let Some(client) = &flight {
                            let run =
                                timed(args.timeout, over_flight(&mut client.clone(), &sql)).await;
                            let what = what("over Flight SQL");
                            flown.add(run, reference(&expected), query.ordered, mismatches, what);
                        }
                    }
                    Turn::Ceiling if ceiling_runs.running() => {
                        let run = timed(args.timeout, async {
                            let frame = ceiling.sql(&query.sql).await.map_err(|e| e.to_string())?;
                            frame.collect().await.map_err(|e| e.to_string())
                        })
                        .await;
                        if let (Ok((_, answer)), None) = (&run, &expected)
                            && duck.failed.is_some()
                        {
                            expected = Some((answer.clone(), Contender::Ceiling));
                        }
                        let what = what("DataFusion over Parquet");
                        let reference = reference(&expected);
                        ceiling_runs.add(run, reference, query.ordered, mismatches, what);
                    }
                    // Stopped by the database itself after the timeout.
                    Turn::Alone if whole.running() => {
                        if let Some(alone) = alone.as_mut() {
                            let started = Instant::now();
                            match alone.run(&query.sql, args.timeout).await {
                                Ok(()) => whole.times.push(started.elapsed()),
                                Err(e) => whole.failed = Some(e),
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut outcomes = vec![(Contender::Tributary, ours.outcome())];
        if flight.is_some() {
            outcomes.push((Contender::Flight, flown.outcome()));
        }
        outcomes.push((Contender::DuckDb, duck.outcome()));
        outcomes.push((Contender::Ceiling, ceiling_runs.outcome()));
        if alone.is_some() {
            outcomes.push((Contender::Alone, whole.outcome()));
        }
        eprintln!("  {} {}", query.name, report::line(&outcomes));
        report.add(query, outcomes, expected.map(|(_, whose)| whose));
    }
    report
}

#[tokio::main]
async fn main() {
    let args = args();
    let target = PathBuf::from(
        std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| format!("{}/.cache/tributary/target", env!("HOME"))),
    );
    let data = data::prepare(args.scale, &target).await;
    let python = data::bench_python();
    let duckdb = DuckDb::new(python, 2).with_timeout(args.timeout);
    let placements: Vec<Placement> = if args.placements.is_empty() {
        Placement::all()
    } else {
        args.placements
            .iter()
            .map(|name| Placement::named(name).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    };
    let queries: Vec<Query> = queries()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| args.queries.is_empty() || args.queries.contains(&(i + 1)))
        .map(|(_, q)| q)
        .collect();
    let ceiling = parquet_ceiling(&data).await;
    let mut mismatches = Vec::new();
    let mut reports = Vec::new();
    for placement in &placements {
        reports.push(
            bench_placement(
                &args,
                &data,
                placement,
                &queries,
                &duckdb,
                &ceiling,
                &mut mismatches,
            )
            .await,
        );
    }
    let title = format!(
        "TPC-H SF{} over placements, median of {} run(s) per query",
        args.scale, args.runs
    );
    report::write(&target.join("bench"), &title, &reports);
    if !mismatches.is_empty() {
        eprintln!(
            "answers that differ from DuckDB's, or errors:\n{}",
            mismatches.join("\n")
        );
        std::process::exit(1);
    }
}

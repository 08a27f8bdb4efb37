//! The `tributary` command line.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use tributary::config::Config;
use tributary::engine::Engine;
use tributary::output::{OutputFormat, write_stream};
use tributary::server;
use tributary_core::HealthStatus;

/// Tributary: one SQL endpoint over your databases, files and APIs.
///
/// Without a config file it serves the `demo` catalog: the TPC-H tables generated in
/// process (`SELECT count(*) FROM demo.tpch.lineitem`).
#[derive(Debug, Parser)]
#[command(name = "tributary", version, max_term_width = 100)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,

    /// Scale factor of the demo data (default 0.01), used when no config file is given.
    #[arg(long, global = true, value_parser = positive_scale)]
    demo_scale: Option<f64>,

    /// Log filter, e.g. `info` or `tributary=debug,datafusion=info`.
    #[arg(long, global = true, env = "TRIBUTARY_LOG", default_value = "warn")]
    log: String,

    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Arrow Flight SQL (for JDBC/ODBC/ADBC drivers and BI tools) until interrupted.
    Serve {
        /// Address to listen on (default: the config's `server.listen`, 127.0.0.1:50051).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where Prometheus scrapes `/metrics`, or `off` (default: `server.metrics_listen`,
        /// 127.0.0.1:9464).
        #[arg(long, value_parser = address_or_off)]
        metrics_listen: Option<MetricsListen>,
        /// Do not run materializations on their schedules (e.g. on all but one of several
        /// servers sharing the data folder).
        #[arg(long)]
        no_schedules: bool,
    },
    /// Hash a password (read from standard input) for `server.auth.users[].password_hash`.
    HashPassword,
    /// Run SQL and print the results.
    Query {
        /// The SQL; read from --file or standard input when absent or `-`.
        sql: Option<String>,
        /// Read the SQL from this file.
        #[arg(long, short, conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Write the results to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Show how a query runs: what each source receives, and the logical and physical plans.
    Explain {
        /// The SQL; read from --file or standard input when absent or `-`.
        sql: Option<String>,
        /// Read the SQL from this file.
        #[arg(long, short, conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// Run the query and show the metrics of each operator.
        #[arg(long)]
        analyze: bool,
    },
    /// Run materializations once: copy their sources into their Delta tables.
    Sync {
        /// The materializations to run, in this order.
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
        /// Run every configured materialization.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Resume paused materializations (their columns are checked again under the
        /// current `drift` policy).
        #[arg(long)]
        resume: bool,
        /// After each successful run, compact the table's small files and delete files
        /// older than its `vacuum_retention` that no version uses; the run history too.
        #[arg(long)]
        optimize: bool,
    },
    /// List the catalogs (sources), their schemas and tables.
    Sources,
    /// Probe every source; exits non-zero if any is unhealthy.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    // deltalake's merge warns on every run that a metric it derives itself is missing;
    // keep that out of the default log unless deltalake's logging is asked for.
    let filter = if filter.contains("deltalake") {
        filter.to_string()
    } else {
        format!("{filter},deltalake_core::operations::merge=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a person at a terminal, never in files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn positive_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(sf) if sf.is_finite() && sf > 0.0 => Ok(sf),
        _ => Err(format!("expected a positive number, got `{text}`")),
    }
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    match (&cli.config, cli.demo_scale) {
        (Some(_), Some(_)) => Err(
            "--demo-scale applies to the built-in demo, not to a config file (add a `kind: tpch` source with `scale_factor` instead)"
                .into(),
        ),
        (Some(path), None) => Config::load(path).map_err(|e| e.to_string()),
        (None, scale) => Ok(Config::demo(scale.unwrap_or(0.01))),
    }
}

/// `--metrics-listen`: an address, or none (clap reads `Option<Option<_>>` as an optional
/// value, hence the wrapper).
#[derive(Debug, Clone, Copy)]
struct MetricsListen(Option<std::net::SocketAddr>);

fn address_or_off(text: &str) -> Result<MetricsListen, String> {
    tributary::config::parse_address_or_off(text).map(MetricsListen)
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Command::HashPassword = cli.command {
        return hash_password();
    }
    let config = load_config(&cli)?;
    let engine = Engine::new(&config).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve {
            listen,
            metrics_listen,
            no_schedules,
        } => {
            let options = server::Options::from_config(&config.server, &config.dir)
                .map_err(|e| e.to_string())?;
            // The metrics read what is known without waiting: know the history first.
            engine.materializer().health().await;
            options
                .metrics
                .watch_materializations(std::sync::Arc::clone(engine.materializer()));
            let listen = listen.unwrap_or(config.server.listen);
            let metrics = metrics_listen.map_or(config.server.metrics_listen, |m| m.0);
            serve(engine, options, listen, metrics, !no_schedules).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => unreachable!("handled before loading the config"),
        Command::Query {
            sql,
            file,
            format,
            output,
        } => {
            let sql = read_sql(sql, file)?;
            query(&engine, &sql, format, output).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { sql, file, analyze } => {
            let sql = read_sql(sql, file)?;
            if analyze {
                let df = engine.sql(&sql).await.map_err(|e| e.to_string())?;
                let df = df.explain(false, true).map_err(|e| e.to_string())?;
                let batches = df.collect().await.map_err(|e| e.to_string())?;
                for batch in &batches {
                    let plans =
                        arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Utf8)
                            .map_err(|e| e.to_string())?;
                    for plan in arrow::array::AsArray::as_string::<i32>(&plans)
                        .iter()
                        .flatten()
                    {
                        println!("{plan}");
                    }
                }
            } else {
                let explanation = engine.explain(&sql).await.map_err(|e| e.to_string())?;
                println!("{explanation}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            names,
            all,
            resume,
            optimize,
        } => sync(&engine, names, all, resume, optimize).await,
        Command::Sources => sources(&engine).await,
        Command::Check => Ok(check(&engine).await),
    }
}

async fn serve(
    engine: Engine,
    options: server::Options,
    addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
    schedules: bool,
) -> Result<(), String> {
    let listener = server::bind(addr, &options)
        .await
        .map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = match metrics_addr {
        Some(addr) => {
            let metrics_listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!("server.metrics_listen: cannot listen on {addr}: {e} (`--metrics-listen off` to go without)")
            })?;
            let bound = metrics_listener.local_addr().map_err(|e| e.to_string())?;
            let task = tokio::spawn(server::serve_metrics(
                std::sync::Arc::clone(&options.metrics),
                metrics_listener,
                std::future::pending(),
            ));
            Some((bound, task))
        }
        None => None,
    };
    let catalogs: Vec<&str> = engine.catalogs().iter().map(|c| c.name()).collect();
    let scheme = if options.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let metrics_note = metrics
        .as_ref()
        .map(|(addr, _)| format!(", metrics on http://{addr}/metrics"))
        .unwrap_or_default();
    let auth_note = if options.auth.is_some() {
        ""
    } else {
        ", no authentication"
    };
    eprintln!(
        "Tributary {} serving Flight SQL on {scheme}://{local} (catalogs: {}{auth_note}{metrics_note}); Ctrl-C to stop",
        env!("CARGO_PKG_VERSION"),
        catalogs.join(", ")
    );
    tracing::info!(%local, tls = options.tls.is_some(), auth = options.auth.is_some(), "serving Flight SQL");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let scheduled: Vec<String> = engine
        .materializations()
        .iter()
        .filter_map(|j| Some(format!("{} ({})", j.name(), j.config.schedule.as_ref()?)))
        .collect();
    let scheduler = (schedules && !scheduled.is_empty()).then(|| {
        eprintln!("Scheduled materializations: {}", scheduled.join(", "));
        tokio::spawn(tributary::materialize::run_schedules(
            engine.clone(),
            stopping,
        ))
    });
    let shutdown = async move {
        shutdown_signal().await;
        // Scheduled runs stop now (nothing half-written is committed); queries finish.
        let _ = stop.send(true);
    };
    let served = server::serve(engine, listener, options, shutdown).await;
    if let Some(scheduler) = scheduler
        && let Err(e) = scheduler.await
    {
        tracing::error!(error = %e, "the scheduler stopped");
    }
    if let Some((_, task)) = metrics {
        task.abort();
    }
    served.map_err(|e| e.to_string())?;
    eprintln!("Tributary stopped");
    Ok(())
}

/// Reads a password from standard input (without echo at a terminal) and prints its
/// Argon2id hash.
fn hash_password() -> Result<ExitCode, String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let echo = |on: bool| {
        if terminal {
            let _ = std::process::Command::new("stty")
                .arg(if on { "echo" } else { "-echo" })
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    };
    if terminal {
        eprint!("password: ");
    }
    echo(false);
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    echo(true);
    if terminal {
        eprintln!();
    }
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let hash = server::auth::hash_password(password)?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM (how service managers and containers stop a process).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    eprintln!("stopping: waiting for running requests to finish");
}

fn read_sql(sql: Option<String>, file: Option<PathBuf>) -> Result<String, String> {
    let sql = match (sql, file) {
        (Some(sql), None) if sql != "-" => sql,
        (_, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read SQL file {}: {e}", path.display()))?,
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read SQL from standard input: {e}"))?;
            text
        }
    };
    if sql.trim().is_empty() {
        return Err(
            "no SQL given (pass it as an argument, with --file, or on standard input)".into(),
        );
    }
    Ok(sql)
}

async fn query(
    engine: &Engine,
    sql: &str,
    format: OutputFormat,
    output: Option<PathBuf>,
) -> Result<(), String> {
    let statements = engine.parse(sql).map_err(|e| e.to_string())?;
    if statements.is_empty() {
        return Err("no SQL statement given".into());
    }
    if format == OutputFormat::Parquet && statements.len() > 1 {
        return Err("--format parquet writes one result; give one statement".into());
    }
    if output.is_none() && format.is_binary() && std::io::stdout().is_terminal() {
        return Err(
            "refusing to write Parquet to a terminal; use --output FILE or redirect".into(),
        );
    }
    let mut sink: Box<dyn Write + Send> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    // Summaries go to stderr on a terminal, and always when rows are discarded.
    let interactive =
        format == OutputFormat::Null || (output.is_none() && std::io::stdout().is_terminal());
    for statement in statements {
        let started = Instant::now();
        let df = engine.plan(statement).await.map_err(|e| e.to_string())?;
        let stream = df.execute_stream().await.map_err(|e| e.to_string())?;
        let rows = write_stream(stream, format, &mut sink)
            .await
            .map_err(|e| e.to_string())?;
        if interactive {
            eprintln!(
                "{rows} row{} in {:.3}s",
                if rows == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            );
        }
    }
    sink.flush()
        .map_err(|e| format!("cannot write the results: {e}"))?;
    Ok(())
}

/// Runs each materialization once, in order, reporting each; fails if any failed.
async fn sync(
    engine: &Engine,
    names: Vec<String>,
    all: bool,
    resume: bool,
    optimize: bool,
) -> Result<ExitCode, String> {
    use tributary::materialize::{self, Counters, ProgressDisplay, ProgressReporter, RunOptions};
    let jobs = if all {
        if engine.materializations().is_empty() {
            return Err("the config has no `materializations`".into());
        }
        engine.materializations().iter().collect::<Vec<_>>()
    } else {
        names
            .iter()
            .map(|n| materialize::job(engine, n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?
    };
    let display = if std::io::stderr().is_terminal() {
        ProgressDisplay::Bar
    } else {
        ProgressDisplay::Log
    };
    let mut failed = 0;
    for job in jobs {
        let counters = std::sync::Arc::new(Counters::default());
        let reporter = ProgressReporter::start(job.name(), counters.clone(), display);
        let options = RunOptions {
            resume,
            ..RunOptions::default()
        };
        let result = materialize::sync(engine, job, counters, options).await;
        drop(reporter);
        match result {
            Ok(report) => println!("{report}"),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                continue;
            }
        }
        if optimize {
            match materialize::maintain(engine, job).await {
                Ok(done) => done.iter().for_each(|d| println!("{d}")),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {e}");
                }
            }
        }
    }
    if optimize {
        // The history's own retention: the shortest of the materializations'.
        let retention = engine
            .materializations()
            .iter()
            .map(|j| j.config.vacuum_retention)
            .min()
            .unwrap_or_default();
        match materialize::maintain_history(engine, retention).await {
            Ok(done) => println!("{done}"),
            Err(e) => {
                failed += 1;
                eprintln!("error: run history: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn sources(engine: &Engine) -> Result<ExitCode, String> {
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for catalog in engine.catalogs() {
        let write = |out: &mut std::io::StdoutLock, line: String| {
            writeln!(out, "{line}").map_err(|e| format!("cannot write: {e}"))
        };
        write(
            &mut out,
            format!("{} ({})", catalog.name(), catalog.source().kind()),
        )?;
        let schemas = match catalog.schema_names().await {
            Ok(s) => s,
            Err(e) => {
                write(&mut out, format!("  error: {e}"))?;
                failed = true;
                continue;
            }
        };
        for schema in schemas {
            write(&mut out, format!("  {schema}"))?;
            match catalog.table_names(&schema).await {
                Ok(tables) => {
                    for table in tables {
                        write(&mut out, format!("    {table}"))?;
                    }
                }
                Err(e) => {
                    write(&mut out, format!("    error: {e}"))?;
                    failed = true;
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn check(engine: &Engine) -> ExitCode {
    let reports = engine.check().await;
    let width = reports
        .iter()
        .map(|r| r.source.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:width$}  {:8}  {:9}  {:>9}  detail",
        "source", "kind", "status", "latency"
    );
    for r in &reports {
        println!(
            "{:width$}  {:8}  {:9}  {:>7.1}ms  {}",
            r.source,
            r.kind,
            r.status.to_string(),
            r.latency.as_secs_f64() * 1000.0,
            r.detail
        );
    }
    if reports.iter().all(|r| r.status == HealthStatus::Healthy) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

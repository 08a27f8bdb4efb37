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
    },
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
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
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

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let config = load_config(&cli)?;
    let engine = Engine::new(&config).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve { listen } => {
            serve(engine, listen.unwrap_or(config.server.listen)).await?;
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Sources => sources(&engine).await,
        Command::Check => Ok(check(&engine).await),
    }
}

async fn serve(engine: Engine, addr: std::net::SocketAddr) -> Result<(), String> {
    let listener = server::bind(addr).await.map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let catalogs: Vec<&str> = engine.catalogs().iter().map(|c| c.name()).collect();
    eprintln!(
        "Tributary {} serving Flight SQL on grpc://{local} (catalogs: {}); Ctrl-C to stop",
        env!("CARGO_PKG_VERSION"),
        catalogs.join(", ")
    );
    tracing::info!(%local, "serving Flight SQL");
    server::serve(engine, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("Tributary stopped");
    Ok(())
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

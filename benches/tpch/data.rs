//! The benchmark's data, generated once per scale factor and kept, and the databases
//! running whole queries themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use mysql_async::prelude::Queryable;
use tributary_testkit::tpch::{Dataset, Placement, Store, write_parquet};
use tributary_testkit::{mysql, postgres};
use tributary_tpch::TpchTable;

/// The data at `scale`: Parquet under `target/tpch/sf<scale>/`, PostgreSQL schema and
/// MariaDB database `tributary_tpch_sf<scale>`, each (re)loaded unless it holds every
/// table with the row counts of the Parquet files.
pub async fn prepare(scale: f64, target: &Path) -> Dataset {
    let name = format!("tributary_tpch_sf{}", scale.to_string().replace('.', "_"));
    let data = Dataset {
        postgres_schema: name.clone(),
        mysql_database: name.clone(),
        parquet_dir: target.join(format!("tpch/sf{scale}")),
    };
    let rows = match parquet_rows(&data.parquet_dir) {
        Some(rows) => rows,
        None => {
            eprintln!(
                "writing TPC-H SF{scale} to {} …",
                data.parquet_dir.display()
            );
            let dir = data.parquet_dir.clone();
            tokio::task::spawn_blocking(move || write_parquet(&dir, scale))
                .await
                .unwrap();
            parquet_rows(&data.parquet_dir).expect("the Parquet files just written")
        }
    };
    if postgres_rows(&name).await != rows {
        eprintln!("loading TPC-H SF{scale} into PostgreSQL schema {name} …");
        let client = postgres::connect().await;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .await
            .unwrap();
        postgres::load_tpch(&name, scale).await;
    }
    hold_in_buffer_pool().await;
    if mysql_rows(&name).await != rows {
        eprintln!("loading TPC-H SF{scale} into MariaDB database {name} …");
        let mut conn = mysql::connect().await;
        conn.query_drop(format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        ))
        .await
        .unwrap();
        mysql::load_tpch(&name, scale).await;
    }
    data
}

type Counts = BTreeMap<&'static str, u64>;

fn parquet_rows(dir: &Path) -> Option<Counts> {
    TpchTable::ALL
        .iter()
        .map(|table| {
            let file = std::fs::File::open(dir.join(format!("{}.parquet", table.name()))).ok()?;
            let reader = SerializedFileReader::new(file).ok()?;
            let rows = u64::try_from(reader.metadata().file_metadata().num_rows()).ok()?;
            Some((table.name(), rows))
        })
        .collect()
}

async fn postgres_rows(schema: &str) -> Counts {
    let client = postgres::connect().await;
    let mut counts = Counts::new();
    for table in TpchTable::ALL {
        let sql = format!("SELECT count(*) FROM {schema}.{}", table.name());
        if let Ok(row) = client.query_one(&sql, &[]).await {
            counts.insert(
                table.name(),
                u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            );
        }
    }
    counts
}

/// InnoDB's buffer pool size while the benchmark runs: the SF1 database (1.3 GB with its
/// keys) fits.
const BUFFER_POOL_BYTES: u64 = 2 << 30;

/// Raises MariaDB's buffer pool (128 MiB by default) to [`BUFFER_POOL_BYTES`] for the
/// server's lifetime; counting each table's rows next reads it in. With the default,
/// a contender's scan of a large table evicted the pages the next contender's query
/// read: all-MariaDB q02 took 0.16–0.26 s right after DuckDB's scans of `partsupp` and
/// 0.07–0.10 s otherwise, whoever ran it (the log has the figures).
async fn hold_in_buffer_pool() {
    let mut conn = mysql::connect().await;
    let size: u64 = conn
        .query_first("SELECT @@innodb_buffer_pool_size")
        .await
        .unwrap()
        .unwrap_or(0);
    if size < BUFFER_POOL_BYTES {
        conn.query_drop(format!(
            "SET GLOBAL innodb_buffer_pool_size = {BUFFER_POOL_BYTES}"
        ))
        .await
        .unwrap();
    }
}

async fn mysql_rows(database: &str) -> Counts {
    let mut conn = mysql::connect().await;
    let mut counts = Counts::new();
    for table in TpchTable::ALL {
        let sql = format!("SELECT count(*) FROM `{database}`.{}", table.name());
        if let Ok(Some(rows)) = conn.query_first::<u64, _>(sql).await {
            counts.insert(table.name(), rows);
        }
    }
    counts
}

/// The bench venv's Python (benches/requirements.txt: DuckDB and its scanners), made by
/// the Python benchmarks' `ensure_venv`.
pub fn bench_python() -> PathBuf {
    let benches = tributary_testkit::workspace_root().join("benches");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys, scanbench; print(scanbench.ensure_venv())")
        .current_dir(&benches)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "making the bench venv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().unwrap_or_default().trim())
}

/// A database running a whole query on its own tables: the other way to answer a
/// single-database placement.
pub enum WholeQuery {
    Postgres(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
}

/// The runner for placements with every table in one database.
pub async fn whole_query_runner(data: &Dataset, placement: &Placement) -> Option<WholeQuery> {
    let stores = placement.stores();
    let only = stores.first().copied().filter(|_| stores.len() == 1)?;
    match only {
        Store::Postgres => {
            let client = postgres::connect().await;
            client
                .batch_execute(&format!("SET search_path TO {}", data.postgres_schema))
                .await
                .unwrap();
            Some(WholeQuery::Postgres(client))
        }
        Store::Mysql => {
            let mut conn = mysql::connect().await;
            conn.query_drop(format!("USE `{}`", data.mysql_database))
                .await
                .unwrap();
            Some(WholeQuery::Mysql(conn))
        }
        Store::Parquet => None,
    }
}

impl WholeQuery {
    /// The contender's name in the report.
    pub fn label(&self) -> &'static str {
        match self {
            WholeQuery::Postgres(_) => "PostgreSQL alone",
            WholeQuery::Mysql(_) => "MariaDB alone",
        }
    }

    /// Runs `sql` to completion (rows are read and dropped), stopped by the database after
    /// `timeout`.
    pub async fn run(&mut self, sql: &str, timeout: Duration) -> Result<(), String> {
        match self {
            WholeQuery::Postgres(client) => {
                let limited = format!("SET statement_timeout = {}", timeout.as_millis());
                client
                    .batch_execute(&limited)
                    .await
                    .map_err(|e| e.to_string())?;
                client.simple_query(sql).await.map(drop).map_err(|e| {
                    e.as_db_error()
                        .map_or(e.to_string(), |d| d.message().into())
                })
            }
            WholeQuery::Mysql(conn) => {
                let limited = format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64());
                conn.query_drop(limited).await.map_err(|e| e.to_string())?;
                conn.query_drop(sql).await.map_err(|e| e.to_string())
            }
        }
    }
}

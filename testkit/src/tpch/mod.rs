//! TPC-H across sources: the generated tables loaded into PostgreSQL, MariaDB and Parquet,
//! placed by the files in `sql/tpch/placements`, DuckDB's answers over the same placement,
//! and the comparison of answers the federated TPC-H test and benchmark share.

mod compare;
mod duckdb;
mod placement;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, Statement, visit_relations_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use tributary_tpch::TpchTable;

pub use compare::compare;
pub use duckdb::{DuckDb, DuckDbRun, DuckDbSession};
pub use placement::{Placement, Store};

/// One of the 22 queries in `sql/tpch/`.
#[derive(Debug, Clone)]
pub struct Query {
    /// `q01` … `q22`.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Its text.
    pub sql: String,
    /// Whether it orders its rows (so answers are compared in order).
    pub ordered: bool,
}

/// The 22 TPC-H queries, in order.
pub fn queries() -> Vec<Query> {
    (1..=22)
        .map(|n| {
            let name = format!("q{n:02}");
            let path = crate::workspace_root().join(format!("sql/tpch/{name}.sql"));
            let sql = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let ordered = parse(&sql)
                .iter()
                .any(|s| matches!(s, Statement::Query(q) if q.order_by.is_some()));
            Query {
                name,
                path,
                sql,
                ordered,
            }
        })
        .collect()
}

fn parse(sql: &str) -> Vec<Statement> {
    Parser::parse_sql(&GenericDialect {}, sql).unwrap_or_else(|e| panic!("{e}: {sql}"))
}

/// Where one copy of TPC-H lives: a PostgreSQL schema, a MariaDB database and
/// a folder of Parquet files (`<table>.parquet`), each holding all eight tables.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The PostgreSQL schema.
    pub postgres_schema: String,
    /// The MariaDB database.
    pub mysql_database: String,
    /// The Parquet folder.
    pub parquet_dir: PathBuf,
}

impl Dataset {
    /// A Tributary config with one source per store `placement` uses: `pg`, `my`, `pq`.
    pub fn tributary_config(&self, placement: &Placement) -> String {
        self.tributary_config_with(placement, None)
    }

    /// [`tributary_config`](Self::tributary_config) with the SQL sources' scans split
    /// past `partition_rows` rows instead of their default, so that small scale factors
    /// also read tables in parallel parts (and plan as larger ones do).
    pub fn tributary_config_with(
        &self,
        placement: &Placement,
        partition_rows: Option<u64>,
    ) -> String {
        let split = partition_rows
            .map(|rows| format!("\n    partition_rows: {rows}"))
            .unwrap_or_default();
        let mut yaml = String::from("sources:\n");
        for store in placement.stores() {
            let catalog = store.catalog();
            let _ = match store {
                Store::Postgres => writeln!(
                    yaml,
                    "  - name: {catalog}\n    kind: postgres\n    url: {}\n    schemas: {{include: [{}]}}{split}",
                    crate::postgres::url(),
                    self.postgres_schema
                ),
                Store::Mysql => writeln!(
                    yaml,
                    "  - name: {catalog}\n    kind: mysql\n    url: {}\n    schemas: {{include: [{}]}}{split}",
                    crate::mysql::server_url(),
                    self.mysql_database
                ),
                Store::Parquet => {
                    let _ = writeln!(
                        yaml,
                        "  - name: {catalog}\n    kind: files\n    url: {}\n    schema: tpch\n    tables:",
                        self.parquet_dir.display()
                    );
                    for (table, _) in placement.tables().filter(|(_, s)| *s == Store::Parquet) {
                        let _ = writeln!(yaml, "      - {{name: {table}, path: {table}.parquet}}");
                    }
                    Ok(())
                }
            };
        }
        yaml
    }

    /// The schema a store keeps the tables in, as Tributary's catalogs name it.
    fn schema(&self, store: Store) -> &str {
        match store {
            Store::Postgres => &self.postgres_schema,
            Store::Mysql => &self.mysql_database,
            Store::Parquet => "tpch",
        }
    }

    /// `sql` with each TPC-H table name qualified with the catalog and schema that hold it
    /// in `placement` (the queries name tables bare; a placement spans catalogs).
    pub fn qualify(&self, placement: &Placement, sql: &str) -> String {
        let mut statements = parse(sql);
        for statement in &mut statements {
            let _ = visit_relations_mut(statement, |name: &mut ObjectName| {
                if let [part] = name.0.as_slice()
                    && let Some(ident) = part.as_ident()
                    && let Some(store) = placement.store(&ident.value)
                {
                    *name = ObjectName::from(vec![
                        Ident::new(store.catalog()),
                        Ident::new(self.schema(store)),
                        ident.clone(),
                    ]);
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
        }
        statements
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";\n")
    }

    /// What DuckDB's runner needs to read `placement` (see `benches/tpch/duckdb_tpch.py`).
    pub fn duckdb_spec(&self, placement: &Placement) -> serde_json::Value {
        let pg = url::Url::parse(&crate::postgres::url()).expect("a PostgreSQL URL");
        let my = url::Url::parse(&crate::mysql::server_url()).expect("a MySQL URL");
        let dsn = |url: &url::Url, database: &str, key: &str| {
            let mut dsn = format!(
                "host={} port={} user={} {key}={database}",
                url.host_str().unwrap_or("127.0.0.1"),
                url.port()
                    .unwrap_or(if key == "dbname" { 5432 } else { 3306 }),
                url.username(),
            );
            if let Some(password) = url.password() {
                let _ = write!(dsn, " password={password}");
            }
            dsn
        };
        let tables: serde_json::Map<String, serde_json::Value> = placement
            .tables()
            .map(|(t, s)| (t.to_string(), s.name().into()))
            .collect();
        serde_json::json!({
            "tables": tables,
            "postgres": {
                "dsn": dsn(&pg, pg.path().trim_start_matches('/'), "dbname"),
                "schema": self.postgres_schema,
            },
            "mysql": {
                "dsn": dsn(&my, &self.mysql_database, "database"),
                "database": self.mysql_database,
            },
            "parquet": self.parquet_dir,
        })
    }
}

/// Writes each TPC-H table at `scale` to `<dir>/<table>.parquet` (Snappy, row groups of a
/// million rows), streaming from the generator.
pub fn write_parquet(dir: &Path, scale: f64) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for table in TpchTable::ALL {
        let path = dir.join(format!("{}.parquet", table.name()));
        // Written aside and renamed when complete, so a file that exists is whole.
        let partial = path.with_extension("parquet.partial");
        let file = std::fs::File::create(&partial)
            .unwrap_or_else(|e| panic!("{}: {e}", partial.display()));
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, table.schema(), Some(properties)).unwrap();
        for batch in table.generate(scale, 1, 1, 64 * 1024) {
            writer.write(&batch.unwrap()).unwrap();
        }
        writer.close().unwrap();
        std::fs::rename(&partial, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The rows of `table` at `scale` in TPC-H's `.tbl` text form without the trailing `|`
/// (`|`-separated, one per line), in chunks of about 1 MiB generated on a blocking thread.
/// Both databases load this text (`COPY … (FORMAT text, DELIMITER '|')`, `LOAD DATA`).
pub(crate) fn text_rows(
    table: TpchTable,
    scale: f64,
) -> (
    tokio::sync::mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut chunk = String::with_capacity(1 << 20);
        table.for_each_row(scale, 1, 1, |row| {
            let _ = write!(chunk, "{row}");
            chunk.pop(); // the `|` after the last field
            chunk.push('\n');
            if chunk.len() >= 1 << 20 {
                let full = std::mem::replace(&mut chunk, String::with_capacity(1 << 20));
                let _ = tx.blocking_send(Bytes::from(full));
            }
        });
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Bytes::from(chunk));
        }
    });
    (rx, producer)
}

/// The columns of `table` as `name type NOT NULL`, each typed by `sql_type` from the type
/// of the generated Arrow data (both databases get the same columns in their own types).
pub(crate) fn column_definitions(
    table: TpchTable,
    sql_type: impl Fn(&DataType) -> String,
) -> Vec<String> {
    table
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {} NOT NULL", f.name(), sql_type(f.data_type())))
        .collect()
}

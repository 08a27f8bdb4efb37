//! PostgreSQL for tests: the server `scripts/services.sh` starts, a schema per test, and
//! TPC-H loaded with `COPY`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};

use datafusion::arrow::datatypes::DataType;
use futures::SinkExt;
use tokio_postgres::{Client, NoTls};
use tributary_tpch::TpchTable;

/// The test server's URL: `TRIBUTARY_TEST_PG`, by default the local one.
pub fn url() -> String {
    std::env::var("TRIBUTARY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A connection to the test server (plain TCP; the tests of TLS use their own).
pub async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {} ({e}); run the tests with scripts/test",
                url()
            )
        });
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("test connection ended: {e}");
        }
    });
    client
}

/// A schema that exists for one test and is dropped (with everything in it) at the end.
pub struct Schema {
    /// Its name, unique per process and test.
    pub name: String,
    client: Client,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Schema {
    /// Creates a fresh schema named after `prefix`.
    pub async fn create(prefix: &str) -> Schema {
        let client = connect().await;
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .await
            .unwrap();
        Schema { name, client }
    }

    /// Runs statements with the schema first on the search path.
    pub async fn execute(&self, sql: &str) {
        self.client
            .batch_execute(&format!("SET search_path TO {}, public; {sql}", self.name))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    }

    /// The connection the schema was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the eight TPC-H tables in this schema and loads them at `scale`.
    pub async fn load_tpch(&self, scale: f64) {
        load_tpch(&self.name, scale).await;
    }
}

/// Creates the eight TPC-H tables in the existing schema `schema`, loads them at `scale`
/// (one `COPY` per table, all at once), adds their primary keys and analyzes them.
pub async fn load_tpch(schema: &str, scale: f64) {
    let client = connect().await;
    let mut ddl = format!("SET search_path TO {schema}; ");
    for table in TpchTable::ALL {
        let _ = write!(ddl, "{}; ", create_table(table));
    }
    client
        .batch_execute(&ddl)
        .await
        .unwrap_or_else(|e| panic!("{ddl}: {}", describe(&e)));
    let loads = TpchTable::ALL.map(|table| async move {
        let client = connect().await;
        copy_tpch(&client, schema, table, scale).await;
    });
    futures::future::join_all(loads).await;
    let mut keys = format!("SET search_path TO {schema}; ");
    for table in TpchTable::ALL {
        let _ = write!(
            keys,
            "ALTER TABLE {} ADD PRIMARY KEY ({}); ",
            table.name(),
            table.primary_key().join(", ")
        );
    }
    client
        .batch_execute(&keys)
        .await
        .unwrap_or_else(|e| panic!("{keys}: {}", describe(&e)));
    // Hint bits and statistics now, so no reader pays for them on its first scan; VACUUM
    // cannot share a statement batch (an implicit transaction).
    for table in TpchTable::ALL {
        let vacuum = format!("VACUUM (FREEZE, ANALYZE) {schema}.{}", table.name());
        client
            .batch_execute(&vacuum)
            .await
            .unwrap_or_else(|e| panic!("{vacuum}: {}", describe(&e)));
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping runs outside the test's runtime, which may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok((client, connection)) = tokio_postgres::connect(&url(), NoTls).await {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// `CREATE TABLE` for a TPC-H table, with the types of the generated Arrow data.
pub fn create_table(table: TpchTable) -> String {
    let columns = crate::tpch::column_definitions(table, |data_type| match data_type {
        DataType::Int64 => "bigint".to_string(),
        DataType::Int32 => "integer".to_string(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Date32 => "date".to_string(),
        _ => "text".to_string(),
    });
    format!("CREATE TABLE {} ({})", table.name(), columns.join(", "))
}

/// Streams a generated TPC-H table into `schema.table` with `COPY … FROM STDIN`.
pub async fn copy_tpch(client: &Client, schema: &str, table: TpchTable, scale: f64) {
    let sink = client
        .copy_in(&format!(
            "COPY {schema}.{} FROM STDIN (FORMAT text, DELIMITER '|')",
            table.name()
        ))
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let (mut rx, producer) = crate::tpch::text_rows(table, scale);
    while let Some(chunk) = rx.recv().await {
        sink.send(chunk).await.unwrap();
    }
    producer.await.unwrap();
    sink.finish().await.unwrap();
}

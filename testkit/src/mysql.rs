//! MySQL/MariaDB for tests: the server `scripts/services.sh` starts and a database per
//! test.

use std::sync::atomic::{AtomicU32, Ordering};

use datafusion::arrow::datatypes::DataType;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use tributary_tpch::TpchTable;

/// The test server's URL: `TRIBUTARY_TEST_MYSQL`, by default the local one.
pub fn url() -> String {
    std::env::var("TRIBUTARY_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string())
}

/// The test server's URL without a database.
pub fn server_url() -> String {
    let mut url = url::Url::parse(&url()).expect("TRIBUTARY_TEST_MYSQL is a URL");
    url.set_path("");
    url.to_string()
}

/// A connection to the test server.
pub async fn connect() -> Conn {
    let opts = Opts::from_url(&server_url()).expect("TRIBUTARY_TEST_MYSQL is a MySQL URL");
    Conn::new(opts).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test MySQL at {} ({e}); run the tests with scripts/test",
            server_url()
        )
    })
}

/// A database that exists for one test and is dropped at the end.
pub struct Database {
    /// Its name, unique per process and test.
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Database {
    /// Creates a fresh database named after `prefix`.
    pub async fn create(prefix: &str) -> Database {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = connect().await;
        conn.query_drop(format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        ))
        .await
        .unwrap();
        Database { name }
    }

    /// Runs statements (separated by `;`) in this database.
    pub async fn execute(&self, sql: &str) {
        let mut conn = connect().await;
        conn.query_drop(format!("USE `{}`", self.name))
            .await
            .unwrap();
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Database {
    /// Creates the eight TPC-H tables in this database and loads them at `scale`.
    pub async fn load_tpch(&self, scale: f64) {
        load_tpch(&self.name, scale).await;
    }
}

/// `CREATE TABLE` for a TPC-H table, with the types of the generated Arrow data and its
/// primary key (InnoDB clusters rows by it; the generator writes them in its order).
pub fn create_table(table: TpchTable) -> String {
    let mut columns = crate::tpch::column_definitions(table, |data_type| match data_type {
        DataType::Int64 => "bigint".to_string(),
        DataType::Int32 => "int".to_string(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 => "date".to_string(),
        _ => "varchar(255)".to_string(),
    });
    columns.push(format!("PRIMARY KEY ({})", table.primary_key().join(", ")));
    format!("CREATE TABLE {} ({})", table.name(), columns.join(", "))
}

/// Creates the eight TPC-H tables in the existing database `database` and loads them at
/// `scale` with `LOAD DATA LOCAL INFILE` streamed from the generator, all at once, then
/// analyzes them.
pub async fn load_tpch(database: &str, scale: f64) {
    let mut conn = connect().await;
    conn.query_drop(format!("USE `{database}`")).await.unwrap();
    for table in TpchTable::ALL {
        conn.query_drop(create_table(table)).await.unwrap();
    }
    let loads = TpchTable::ALL.map(|table| async move {
        let mut conn = connect().await;
        let (rx, producer) = crate::tpch::text_rows(table, scale);
        conn.set_infile_handler(async move {
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (Ok(chunk), rx))
            });
            Ok(chunks.boxed())
        });
        let load = format!(
            "LOAD DATA LOCAL INFILE '{0}' INTO TABLE `{database}`.{0} FIELDS TERMINATED BY '|'",
            table.name()
        );
        conn.query_drop(&load)
            .await
            .unwrap_or_else(|e| panic!("{load}: {e}"));
        producer.await.unwrap();
        let _ = conn.disconnect().await;
    });
    futures::future::join_all(loads).await;
    let names: Vec<String> = TpchTable::ALL
        .iter()
        .map(|t| format!("`{database}`.{}", t.name()))
        .collect();
    conn.query_drop(format!("ANALYZE TABLE {}", names.join(", ")))
        .await
        .unwrap();
    let _ = conn.disconnect().await;
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping runs outside the test's runtime, which may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(opts) = Opts::from_url(&server_url())
                        && let Ok(mut conn) = Conn::new(opts).await
                    {
                        let _ = conn
                            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                            .await;
                        let _ = conn.disconnect().await;
                    }
                });
            }
        })
        .join();
    }
}

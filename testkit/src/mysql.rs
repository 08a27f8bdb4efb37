//! MySQL/MariaDB for tests: the server `scripts/services.sh` starts and a database per
//! test.

use std::sync::atomic::{AtomicU32, Ordering};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

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

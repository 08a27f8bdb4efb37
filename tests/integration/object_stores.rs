//! The `files` source on object stores: the engine's shared `memory://` store, and S3
//! through a real S3-protocol server (moto) on loopback with endpoint, region and
//! credentials from the config.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::parquet::arrow::ArrowWriter;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tempfile::TempDir;
use url::Url;

use crate::common::*;

fn parquet_bytes(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    buf
}

#[tokio::test]
async fn memory_store_tables() {
    let dir = TempDir::new().unwrap();
    let engine = engine(
        dir.path(),
        r#"
sources:
  - name: mem
    kind: files
    url: memory:///lake
    tables:
      - name: people
        path: people/
      - name: one
        path: single/one.parquet
"#,
    );
    let store: Arc<dyn ObjectStore> = engine
        .context()
        .runtime_env()
        .object_store_registry
        .get_store(&Url::parse("memory:///").unwrap())
        .unwrap();
    let batch = people();
    for (i, part) in [(0, 2), (2, 2)].into_iter().enumerate() {
        store
            .put(
                &StorePath::from(format!("lake/people/part-{i}.parquet")),
                PutPayload::from(parquet_bytes(&batch.slice(part.0, part.1))),
            )
            .await
            .unwrap();
    }
    store
        .put(
            &StorePath::from("lake/single/one.parquet"),
            PutPayload::from(parquet_bytes(&batch.slice(0, 1))),
        )
        .await
        .unwrap();
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n, max(id) AS m, min(name) AS a FROM mem.main.people"
        )
        .await,
        "+---+---+-----+\n| n | m | a   |\n+---+---+-----+\n| 4 | 4 | Ada |\n+---+---+-----+"
    );
    assert_eq!(
        table(&engine, "SELECT name FROM mem.main.one").await,
        "+------+\n| name |\n+------+\n| Ada  |\n+------+"
    );
}

/// A moto S3 server on a free loopback port, stopped on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/tributary/venv/bin/python")
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto with {python} ({e}); run the tests with scripts/test")
            });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates a bucket with an S3 `CreateBucket` call (a plain PUT on the bucket).
    fn create_bucket(&self, bucket: &str) {
        let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(python)
            .args([
                "-c",
                "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='PUT'))",
                &format!("{}/{bucket}", self.endpoint),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "creating bucket {bucket} failed");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn s3_with_endpoint_region_and_credentials_from_config() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let dir = TempDir::new().unwrap();
    let engine = engine(
        dir.path(),
        &format!(
            r#"
sources:
  - name: s3lake
    kind: files
    url: s3://lake/warehouse
    options:
      endpoint: {endpoint}
      region: eu-west-1
      access_key_id: ${{TEST_S3_KEY:-testing}}
      secret_access_key: ${{TEST_S3_SECRET:-testing-secret}}
      allow_http: true
"#,
            endpoint = s3.endpoint
        ),
    );
    // Upload through the same store the source registered, so the data travels the S3 API.
    let store = engine
        .context()
        .runtime_env()
        .object_store_registry
        .get_store(&Url::parse("s3://lake").unwrap())
        .unwrap();
    let batch = people();
    store
        .put(
            &StorePath::from("warehouse/orders/year=2024/part-0.parquet"),
            PutPayload::from(parquet_bytes(&batch.slice(0, 3))),
        )
        .await
        .unwrap();
    store
        .put(
            &StorePath::from("warehouse/orders/year=2025/part-0.parquet"),
            PutPayload::from(parquet_bytes(&batch.slice(3, 1))),
        )
        .await
        .unwrap();
    store
        .put(
            &StorePath::from("warehouse/customers.parquet"),
            PutPayload::from(parquet_bytes(&batch)),
        )
        .await
        .unwrap();

    assert_eq!(
        table(&engine, "SELECT table_name FROM information_schema.tables WHERE table_catalog = 's3lake' AND table_schema = 'main' ORDER BY 1").await,
        "+------------+\n| table_name |\n+------------+\n| customers  |\n| orders     |\n+------------+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT year, count(*) AS n FROM s3lake.main.orders GROUP BY year ORDER BY year"
        )
        .await,
        "+------+---+\n| year | n |\n+------+---+\n| 2024 | 3 |\n| 2025 | 1 |\n+------+---+"
    );
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM s3lake.main.customers").await,
        "+---+\n| n |\n+---+\n| 4 |\n+---+"
    );
    let health = engine.check().await;
    assert_eq!(
        health[0].status,
        tributary_core::HealthStatus::Healthy,
        "{:?}",
        health[0]
    );
}

#[tokio::test]
async fn s3_wrong_credentials_fail_without_leaking_the_secret() {
    let s3 = S3Server::start();
    let dir = TempDir::new().unwrap();
    // moto accepts any key, so a missing bucket stands in for a refused request.
    let engine = engine(
        dir.path(),
        &format!(
            "sources:\n  - name: s3lake\n    kind: files\n    url: s3://no-such-bucket/x\n    options:\n      endpoint: {}\n      region: eu-west-1\n      access_key_id: AKIDEXAMPLE\n      secret_access_key: super-secret-value\n      allow_http: true\n",
            s3.endpoint
        ),
    );
    let health = engine.check().await;
    assert_eq!(health[0].status, tributary_core::HealthStatus::Unhealthy);
    assert!(
        health[0].detail.contains("s3://no-such-bucket/x/"),
        "{}",
        health[0].detail
    );
    assert!(
        !health[0].detail.contains("super-secret-value"),
        "{}",
        health[0].detail
    );
    let e = error(&engine, "SELECT * FROM s3lake.main.t").await;
    assert!(e.contains("source `s3lake`"), "{e}");
    assert!(!e.contains("super-secret-value"), "{e}");
}

#[tokio::test]
async fn unknown_object_store_options_are_config_errors() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tributary.yaml");
    std::fs::write(
        &path,
        "sources:\n  - name: s3lake\n    kind: files\n    url: s3://bucket/x\n    options:\n      regoin: eu-west-1\n",
    )
    .unwrap();
    let config = tributary::Config::load(&path).unwrap();
    let e = tributary::Engine::new(&config).unwrap_err().to_string();
    assert!(
        e.ends_with("sources[0].options: unknown S3 option `regoin`"),
        "{e}"
    );
}

//! Support for tests and benchmarks that run against the real services `scripts/test`
//! starts: connection settings, throwaway schemas and databases, TPC-H loaded into
//! PostgreSQL, MariaDB and Parquet and placed across them with DuckDB's answers beside
//! Tributary's, and a JSON API on loopback for the `rest` source.

pub mod mysql;
pub mod postgres;
pub mod rest_api;
pub mod tpch;

/// The workspace's root folder (where `sql/` and `benches/` are).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

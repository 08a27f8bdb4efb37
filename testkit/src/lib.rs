//! Support for tests and benchmarks that run against the real services `scripts/test`
//! starts: connection settings, throwaway schemas and databases, TPC-H loaded into
//! PostgreSQL, MariaDB and Parquet and placed across them with DuckDB's answers beside
//! Tributary's, and a JSON API on loopback for the `rest` source.

pub mod mysql;
pub mod postgres;
pub mod rest_api;
pub mod tpch;

/// The workspace's root folder (where `sql/` and `benches/` are), found from where the
/// test or benchmark runs. Not from where testkit was compiled: cargo shares one build of
/// it between clones that use the same target folder, so that path can name another clone.
pub fn workspace_root() -> std::path::PathBuf {
    let compiled_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace");
    let running_in = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_dir().ok());
    running_in
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("Cargo.lock").is_file() && d.join("testkit").is_dir())
                .map(std::path::Path::to_path_buf)
        })
        .unwrap_or_else(|| compiled_in.to_path_buf())
}

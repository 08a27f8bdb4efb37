//! The `files` source: tables stored as Parquet, CSV, newline-delimited JSON, Arrow IPC or
//! Avro files, on local disk or any object store (`file://`, `s3://`, `gs://`, `az://`,
//! `http(s)://`, `memory://`).
//!
//! Each table is a file, a folder (optionally hive-partitioned, `year=2024/…`) or a glob,
//! read through DataFusion's listing table, so projection, filter (row-group and partition
//! pruning) and limit pushdown come from DataFusion itself. Tables not listed in the config
//! are discovered from the source's root folder.

mod config;
mod format;
mod location;
mod source;
pub mod split_row_groups;

pub use config::{ColumnConfig, FileFormatKind, FileTableConfig, FilesConfig};
pub use location::{ensure_store, resolve_root};
pub use source::FilesSource;

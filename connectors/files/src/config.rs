//! Configuration of a `files` source.

use std::collections::BTreeMap;

use serde::Deserialize;
use tributary_core::Secret;
use tributary_core::config::{OptionValue, SqlType};

/// `kind: files`: one catalog over a folder or bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Root folder: a local path (relative to the config file) or an object-store URL.
    pub url: String,
    /// Object-store options (`region`, `endpoint`, `access_key_id`, `secret_access_key`,
    /// `allow_http`, …), as object_store names them; unset ones come from the environment.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
    /// The schema tables appear in unless a table says otherwise.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Format of tables whose format is not given; by default, from the file extension.
    pub format: Option<FileFormatKind>,
    /// Format options for tables that set none (DataFusion's `OPTIONS`, e.g. `has_header`).
    #[serde(default)]
    pub format_options: BTreeMap<String, OptionValue>,
    /// Tables; when empty, every file and folder under the root is a table.
    #[serde(default)]
    pub tables: Vec<FileTableConfig>,
    /// Also expose files and folders under the root that `tables` does not list
    /// (default: only when `tables` is empty).
    pub discover: Option<bool>,
}

fn default_schema() -> String {
    "main".to_string()
}

/// One table of a `files` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTableConfig {
    /// Table name.
    pub name: String,
    /// Schema; defaults to the source's `schema`.
    pub schema: Option<String>,
    /// A file, a folder (ending in `/` or existing as one) or a glob, relative to the source
    /// root or as an absolute path or URL.
    pub path: String,
    /// File format; by default from the file extension.
    pub format: Option<FileFormatKind>,
    /// Format options (DataFusion's `OPTIONS` for the format, e.g. `delimiter: ";"`).
    #[serde(default)]
    pub format_options: BTreeMap<String, OptionValue>,
    /// Only files ending with this suffix are read (default: the format's extension).
    pub extension: Option<String>,
    /// Declared columns; inferred from the files when absent.
    pub columns: Option<Vec<ColumnConfig>>,
    /// Hive partition columns (`key=value` folders); inferred as strings when absent.
    pub partitions: Option<Vec<ColumnConfig>>,
}

/// A declared column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name.
    pub name: String,
    /// SQL type, e.g. `bigint`, `varchar`, `decimal(12,2)`, `timestamp with time zone`.
    #[serde(rename = "type")]
    pub data_type: SqlType,
    /// Whether the column may hold NULL (default true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The file formats a `files` table can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormatKind {
    /// Apache Parquet.
    Parquet,
    /// Comma- (or otherwise) separated values.
    Csv,
    /// Newline-delimited JSON (or a JSON array with `newline_delimited: false`).
    Json,
    /// Arrow IPC files (Feather v2).
    Arrow,
    /// Apache Avro.
    Avro,
}

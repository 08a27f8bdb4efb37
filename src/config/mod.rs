//! The YAML configuration: `server`, `sources` and `materializations`.
//!
//! Loading is strict: unknown keys are rejected, every value is checked against its type,
//! and each error names the file, the key path (`sources[2].url`) and what was expected.

mod interpolate;
mod load;
mod security;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::config::{OptionValue, de};
use tributary_files::FilesConfig;
use tributary_mysql::MysqlConfig;
use tributary_postgres::PostgresConfig;
use tributary_rest::RestConfig;
use tributary_tpch::TpchConfig;

pub use load::ConfigError;
pub use security::{AuthConfig, TlsConfig, TokenConfig, UserConfig, parse_address_or_off};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` for the built-in demo.
    pub path: Option<PathBuf>,
    /// The folder relative paths resolve against: the config file's folder.
    pub dir: PathBuf,
    /// Server and engine settings.
    pub server: ServerConfig,
    /// Data sources, one catalog each.
    pub sources: Vec<SourceConfig>,
    /// Tables synced from sources into Delta tables.
    pub materializations: Vec<MaterializationConfig>,
}

/// The `server:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the Flight SQL server listens.
    #[serde(default = "default_listen", deserialize_with = "de::parsed")]
    pub listen: SocketAddr,
    /// The catalog unqualified table names resolve in.
    pub default_catalog: Option<String>,
    /// The schema unqualified table names resolve in.
    pub default_schema: Option<String>,
    /// How long discovered schemas, tables and their columns are reused.
    #[serde(default = "default_metadata_ttl", deserialize_with = "de::duration")]
    pub metadata_ttl: Duration,
    /// How long listing a source's schemas or probing its health may take.
    #[serde(default = "default_probe_timeout", deserialize_with = "de::duration")]
    pub probe_timeout: Duration,
    /// Memory queries may use before they spill or fail, e.g. `4GiB`; unlimited if unset.
    #[serde(default, deserialize_with = "de_byte_size")]
    pub memory_limit: Option<u64>,
    /// DataFusion settings, e.g. `datafusion.execution.target_partitions: 8`.
    #[serde(default)]
    pub datafusion: BTreeMap<String, OptionValue>,
    /// Who may connect; required unless the server listens on loopback only.
    pub auth: Option<AuthConfig>,
    /// Serve over TLS.
    pub tls: Option<TlsConfig>,
    /// Where Tributary keeps its own data (materializations without a `target`), relative
    /// to the config file's folder.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where Prometheus scrapes `/metrics` (HTTP); `off` for nowhere.
    #[serde(
        default = "security::default_metrics_listen",
        deserialize_with = "security::address_or_off"
    )]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_metadata_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            default_catalog: None,
            default_schema: None,
            metadata_ttl: default_metadata_ttl(),
            probe_timeout: default_probe_timeout(),
            memory_limit: None,
            datafusion: BTreeMap::new(),
            auth: None,
            tls: None,
            data_dir: default_data_dir(),
            metrics_listen: security::default_metrics_listen(),
        }
    }
}

/// One entry of `sources:`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The catalog name queries use for it.
    pub name: String,
    /// Its key path in the file, e.g. `sources[2]`.
    pub key: String,
    /// The connector and its settings.
    pub kind: SourceKind,
}

/// The connector of a source and its settings (`kind:` in the file).
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `kind: files`.
    Files(FilesConfig),
    /// `kind: mysql` (MySQL and MariaDB).
    Mysql(MysqlConfig),
    /// `kind: postgres`.
    Postgres(PostgresConfig),
    /// `kind: rest`.
    Rest(RestConfig),
    /// `kind: tpch`.
    Tpch(TpchConfig),
}

impl SourceKind {
    /// The kinds `kind:` accepts.
    pub const NAMES: &'static [&'static str] = &["files", "mysql", "postgres", "rest", "tpch"];

    /// The `kind:` value.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Files(_) => "files",
            SourceKind::Mysql(_) => "mysql",
            SourceKind::Postgres(_) => "postgres",
            SourceKind::Rest(_) => "rest",
            SourceKind::Tpch(_) => "tpch",
        }
    }
}

/// One entry of `materializations:`: a table kept as a Delta copy of a source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaterializationConfig {
    /// Name of the materialized table.
    pub name: String,
    /// What to copy: a table (`pg.public.orders`) or a SQL query over the sources.
    pub from: String,
    /// How each run changes the copy.
    #[serde(default)]
    pub mode: RefreshMode,
    /// The column whose growth marks new rows (`incremental` mode).
    pub cursor: Option<String>,
    /// How far before the stored cursor value each `incremental` run reads again, for rows
    /// that commit late: a duration (`10m`) for time cursors, a number for integer ones.
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub lookback: Option<Lookback>,
    /// Primary-key columns (`upsert` mode).
    #[serde(default)]
    pub key: Vec<String>,
    /// In `upsert` mode, delete rows of the copy whose key the source no longer has.
    #[serde(default)]
    pub delete_missing: bool,
    /// When it runs; on demand only if unset.
    pub schedule: Option<Schedule>,
    /// Where the Delta table lives (an object-store URL or folder); by default under the
    /// data folder.
    pub target: Option<String>,
    /// What to do when the source's columns change.
    #[serde(default)]
    pub drift: DriftPolicy,
    /// What to do with a row holding a value that does not fit the copy's column type
    /// (after an incompatible type change the copy kept its type for).
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Columns the Delta table is partitioned by.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// The longest one run may take.
    #[serde(default, deserialize_with = "de::option_duration")]
    pub timeout: Option<Duration>,
    /// How many more times a scheduled run is tried when it failed on something that may
    /// pass (the source or the target failing, a timeout).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one (with jitter).
    #[serde(default = "default_retry_backoff", deserialize_with = "de::duration")]
    pub retry_backoff: Duration,
    /// Serve queries on the `from` table from this copy (a table `from` only).
    #[serde(default)]
    pub accelerate: bool,
    /// With `accelerate`: how old the copy may be before queries go to the source live
    /// instead; unset, the copy always serves them.
    #[serde(default, deserialize_with = "de::option_duration")]
    pub max_staleness: Option<Duration>,
    /// When `serve` compacts and vacuums the table (what `sync --optimize` does); never
    /// on its own if unset.
    pub optimize: Option<Schedule>,
    /// How long files the table no longer uses are kept (for readers of older versions)
    /// before `sync --optimize` deletes them.
    #[serde(
        default = "default_vacuum_retention",
        deserialize_with = "de::duration"
    )]
    pub vacuum_retention: Duration,
}

fn default_vacuum_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_retries() -> u32 {
    2
}

fn default_retry_backoff() -> Duration {
    Duration::from_secs(30)
}

/// The `lookback` of an incremental materialization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// For timestamp and date cursors.
    Time(Duration),
    /// For integer cursors.
    Count(i64),
}

impl std::str::FromStr for Lookback {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(n) = text.trim().parse::<i64>() {
            return if n >= 0 {
                Ok(Lookback::Count(n))
            } else {
                Err(format!("expected a lookback of zero or more, got `{text}`"))
            };
        }
        de::parse_duration(text).map(Lookback::Time).map_err(|_| {
            format!("expected a duration such as `10m` (time cursors) or a number (integer cursors), got `{text}`")
        })
    }
}

/// How a materialization run changes its copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshMode {
    /// Replace the whole table atomically.
    #[default]
    Full,
    /// Append every row read.
    Append,
    /// Read rows past the stored cursor value.
    Incremental,
    /// Merge rows on the key.
    Upsert,
}

/// What a run does when the source's schema changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Add new columns, keep removed ones as NULL, widen compatible types.
    #[default]
    Evolve,
    /// Stop the job and keep serving the old data.
    Pause,
    /// Fail the run.
    Fail,
}

/// What a run does with a row holding a value that does not fit the copy's column type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Fail the run, naming the value and its row.
    #[default]
    Fail,
    /// Write the row to the quarantine table beside the copy, with the reason, and go on.
    Quarantine,
}

/// When a materialization runs: `{every: 15m}` or `{cron: "0 */2 * * *"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ScheduleSpec")]
pub enum Schedule {
    /// At a fixed interval.
    Every(Duration),
    /// On a cron expression.
    Cron(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    #[serde(default, deserialize_with = "de::option_duration")]
    every: Option<Duration>,
    cron: Option<String>,
}

impl Schedule {
    /// The cron expression parsed (five fields, or six with seconds first; UTC).
    pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
        croner::Cron::new(expression)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {}", humantime::format_duration(*every)),
            Schedule::Cron(cron) => write!(f, "cron {cron}"),
        }
    }
}

impl TryFrom<ScheduleSpec> for Schedule {
    type Error = String;

    fn try_from(spec: ScheduleSpec) -> Result<Self, String> {
        match (spec.every, spec.cron) {
            (Some(every), None) if !every.is_zero() => Ok(Schedule::Every(every)),
            (Some(_), None) => Err("`every` must be longer than zero".into()),
            (None, Some(cron)) => {
                Schedule::parse_cron(&cron)?;
                Ok(Schedule::Cron(cron))
            }
            _ => Err("expected exactly one of `every` (e.g. `15m`) or `cron`".into()),
        }
    }
}

fn de_byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let OptionValue(text) = OptionValue::deserialize(d)?;
    parse_byte_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses `512MiB`, `4GiB`, `2GB`, `1048576`.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "expected a size such as `512MiB` or `4GiB`, got `{text}`"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a size such as `512MiB` or `4GiB`, got `{text}`"))?;
    Ok((number * unit_bytes as f64) as u64)
}

impl Config {
    /// The configuration used when no file is given: the `demo` catalog of generated
    /// TPC-H tables at `scale_factor`, with `demo.tpch` as the default schema.
    pub fn demo(scale_factor: f64) -> Config {
        Config {
            path: None,
            dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            server: ServerConfig {
                default_catalog: Some("demo".into()),
                default_schema: Some("tpch".into()),
                ..ServerConfig::default()
            },
            sources: vec![SourceConfig {
                name: "demo".into(),
                key: "demo".into(),
                kind: SourceKind::Tpch(TpchConfig {
                    scale_factor,
                    ..TpchConfig::default()
                }),
            }],
            materializations: Vec::new(),
        }
    }

    /// How to name the config in messages: its path, or `built-in demo`.
    pub fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "built-in demo".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("1.5kib").unwrap(), 1536);
        assert_eq!(parse_byte_size("1024").unwrap(), 1024);
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("5 parsecs").is_err());
    }
}

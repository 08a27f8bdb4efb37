//! Configuration of a `postgres` source.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::Secret;
use tributary_core::config::{OptionValue, Partitions, SchemaFilter, de};

/// `kind: postgres`: one catalog over a PostgreSQL database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A connection URL, `postgres://user:password@host:port/database?sslmode=…`; the
    /// fields below override its parts.
    pub url: Option<Secret>,
    /// Server host name or address.
    pub host: Option<String>,
    /// Server port (default 5432).
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Password (use `${ENV}`).
    pub password: Option<Secret>,
    /// Database name.
    pub database: Option<String>,
    /// TLS: `disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`.
    pub sslmode: Option<SslMode>,
    /// PEM file of the certificate authorities to trust, in addition to the system's.
    pub sslrootcert: Option<String>,
    /// Most connections open at once (default 8).
    #[serde(default = "default_pool_size", deserialize_with = "de::parsed")]
    pub pool_size: usize,
    /// How long connecting may take (default 10s).
    #[serde(default = "default_connect_timeout", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// Longest a query waits for a free connection when all `pool_size` are in use; for
    /// as long as it takes if unset.
    #[serde(default, deserialize_with = "de::option_duration")]
    pub pool_timeout: Option<Duration>,
    /// Longest a statement may run on the server; unlimited if unset.
    #[serde(default, deserialize_with = "de::option_duration")]
    pub statement_timeout: Option<Duration>,
    /// Session settings every connection starts with, e.g. `work_mem: 64MB` or
    /// `jit: on`. They come after any `options` in `url`, so they win over them.
    #[serde(default)]
    pub settings: BTreeMap<String, OptionValue>,
    /// Which schemas to expose.
    #[serde(default)]
    pub schemas: SchemaFilter,
    /// Rows per Arrow batch (default: DataFusion's batch size).
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub batch_size: Option<usize>,
    /// Parallel partitions for large scans: a number, or `auto` (from the table's size and
    /// DataFusion's target partitions). Default `auto`.
    #[serde(default)]
    pub partitions: Partitions,
    /// Rows a table needs (by PostgreSQL's estimate) before `auto` splits its scans.
    #[serde(default = "default_partition_rows", deserialize_with = "de::parsed")]
    pub partition_rows: u64,
    /// Push filters, limits and whole sub-plans to PostgreSQL (default true). With `false`
    /// every scan reads whole columns and DataFusion computes the rest.
    #[serde(default = "yes")]
    pub pushdown: bool,
}

fn default_pool_size() -> usize {
    8
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_partition_rows() -> u64 {
    1_000_000
}

fn yes() -> bool {
    true
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS with a certificate signed by a trusted authority.
    VerifyCa,
    /// TLS with a trusted certificate for the host name connected to.
    VerifyFull,
}

//! Configuration of a `mysql` source.

use std::time::Duration;

use serde::Deserialize;
use tributary_core::Secret;
use tributary_core::config::{Partitions, SchemaFilter, de};

/// `kind: mysql`: one catalog over a MySQL or MariaDB server; its databases are the
/// catalog's schemas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// A connection URL, `mysql://user:password@host:port/database`; the fields below
    /// override its parts.
    pub url: Option<Secret>,
    /// Server host name or address.
    pub host: Option<String>,
    /// Server port (default 3306).
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Password (use `${ENV}`).
    pub password: Option<Secret>,
    /// Default database for the session (discovery still lists every database allowed by
    /// `schemas`).
    pub database: Option<String>,
    /// TLS: `disabled`, `preferred` (default), `required`, `verify-ca` or
    /// `verify-identity`, as MySQL's `--ssl-mode`.
    pub ssl_mode: Option<SslMode>,
    /// PEM file of the certificate authorities to trust, in addition to the system's.
    pub ssl_ca: Option<String>,
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
    /// Which databases to expose (`mysql`, `sys`, `information_schema` and
    /// `performance_schema` never are).
    #[serde(default)]
    pub schemas: SchemaFilter,
    /// Rows per Arrow batch (default: DataFusion's batch size).
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub batch_size: Option<usize>,
    /// Parallel partitions for large scans: a number, or `auto` (from the table's size and
    /// DataFusion's target partitions). Default `auto`. Tables are split on ranges of
    /// their integer primary key.
    #[serde(default)]
    pub partitions: Partitions,
    /// Rows a table needs (by the server's estimate) before `auto` splits its scans.
    #[serde(default = "default_partition_rows", deserialize_with = "de::parsed")]
    pub partition_rows: u64,
    /// Push filters, limits and whole sub-plans to the server (default true).
    #[serde(default = "yes")]
    pub pushdown: bool,
    /// How rows are read: `binary` (default; prepared statements, the faster) or `text`
    /// (plain queries, for MySQL-compatible servers and proxies without prepared
    /// statements).
    #[serde(default)]
    pub protocol: WireProtocol,
}

/// The protocol rows are read with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireProtocol {
    /// Prepared statements: numbers, dates and times arrive in binary.
    #[default]
    Binary,
    /// Plain queries: every value arrives as text.
    Text,
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

/// MySQL's `--ssl-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disabled,
    /// TLS when the server offers it, without checking its certificate.
    Preferred,
    /// TLS, without checking the certificate.
    Required,
    /// TLS with a certificate signed by a trusted authority.
    VerifyCa,
    /// TLS with a trusted certificate for the host name connected to.
    VerifyIdentity,
}

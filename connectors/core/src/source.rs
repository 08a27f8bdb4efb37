//! The `Source` trait every connector implements, and health reports.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;

use crate::Result;

/// A configured data source: one DataFusion catalog of schemas and tables.
///
/// Implementations do real I/O in every method; [`crate::SourceCatalog`] caches the answers,
/// so a connector does not cache discovery itself.
#[async_trait]
pub trait Source: fmt::Debug + Send + Sync + 'static {
    /// The connector kind as written in the config (`files`, `postgres`, …).
    fn kind(&self) -> &'static str;

    /// Names of the schemas this source exposes.
    async fn schema_names(&self) -> Result<Vec<String>>;

    /// Names of the tables in `schema`; empty when the schema does not exist.
    async fn table_names(&self, schema: &str) -> Result<Vec<String>>;

    /// The table `schema.table`, or `None` when it does not exist.
    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>>;

    /// A cheap probe that the source is reachable and the credentials are accepted.
    async fn check(&self) -> Result<Health>;
}

/// What a successful health probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// A short description for operators, e.g. the server version or the object-store root.
    pub detail: String,
}

impl Health {
    /// A healthy probe result with a detail line.
    pub fn ok(detail: impl Into<String>) -> Self {
        Health {
            detail: detail.into(),
        }
    }
}

/// Whether a source answered its probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Reachable, credentials accepted.
    Healthy,
    /// Unreachable, refused, failed or timed out.
    Unhealthy,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// The outcome of probing one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The configured source name (its catalog name).
    pub source: String,
    /// The connector kind.
    pub kind: String,
    /// Healthy or not.
    pub status: HealthStatus,
    /// How long the probe took.
    pub latency: Duration,
    /// What the probe found, or why it failed.
    pub detail: String,
}

//! Accelerated tables: a source table whose materialization sets `accelerate: true` is
//! answered from the Delta copy, in place of the source, under its own name.
//!
//! With `max_staleness`, each query looks at the copy's age (since the start of its last
//! successful run): fresh enough, the copy answers; too old, the source answers live; too
//! old and the source does not answer, the copy answers anyway and a warning says so.
//! Each decision is counted per route (`copy`, `live`, `fallback`) in the health, which the
//! metrics and `tributary.runtime.materializations` show.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{LogicalPlanBuilder, ident};
use tokio::sync::Mutex;
use tributary_core::{HealthStatus, SourceCatalog};

use super::catalog::Slot;
use super::{Job, Materializer, Route, drift};

/// How long a probe of the source is trusted before the next query probes again.
const PROBE_TTL: Duration = Duration::from_secs(5);

/// A source catalog whose accelerated tables are served from their copies.
#[derive(Debug)]
pub struct AcceleratedCatalog {
    source: SourceCatalog,
    /// Accelerated tables by schema, then table name.
    tables: HashMap<String, Arc<HashMap<String, Arc<Accelerated>>>>,
}

impl AcceleratedCatalog {
    /// Wraps `source`; each of `accelerated` is `(schema, table, job)`.
    pub fn new(
        source: SourceCatalog,
        accelerated: Vec<(String, String, Job)>,
        materializer: Arc<Materializer>,
    ) -> Self {
        let mut tables: HashMap<String, HashMap<String, Arc<Accelerated>>> = HashMap::new();
        for (schema, table, job) in accelerated {
            tables.entry(schema).or_default().insert(
                table,
                Arc::new(Accelerated {
                    slot: Slot::new(job),
                    materializer: Arc::clone(&materializer),
                    seen_version: std::sync::Mutex::new(None),
                    probe: Mutex::new(None),
                }),
            );
        }
        AcceleratedCatalog {
            source,
            tables: tables
                .into_iter()
                .map(|(schema, tables)| (schema, Arc::new(tables)))
                .collect(),
        }
    }
}

impl CatalogProvider for AcceleratedCatalog {
    fn schema_names(&self) -> Vec<String> {
        CatalogProvider::schema_names(&self.source)
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let inner = CatalogProvider::schema(&self.source, name)?;
        match self.tables.get(name) {
            Some(tables) => Some(Arc::new(AcceleratedSchema {
                inner,
                tables: Arc::clone(tables),
                source: self.source.clone(),
            })),
            None => Some(inner),
        }
    }
}

#[derive(Debug)]
struct AcceleratedSchema {
    inner: Arc<dyn SchemaProvider>,
    tables: Arc<HashMap<String, Arc<Accelerated>>>,
    source: SourceCatalog,
}

#[async_trait]
impl SchemaProvider for AcceleratedSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(name) {
            Some(accelerated) => accelerated.route(&*self.inner, &self.source, name).await,
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.inner.table_exist(name)
    }
}

/// One accelerated table.
#[derive(Debug)]
struct Accelerated {
    slot: Slot,
    materializer: Arc<Materializer>,
    /// The copy's version when a query last found it too old: a newer one may come from
    /// a run in another process, so the history is read again.
    seen_version: std::sync::Mutex<Option<u64>>,
    /// When a probe last found the source down.
    probe: Mutex<Option<Instant>>,
}

impl Accelerated {
    fn job(&self) -> &Job {
        self.slot.job()
    }

    /// The provider answering this query.
    async fn route(
        &self,
        inner: &dyn SchemaProvider,
        source: &SourceCatalog,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let job = self.job().name();
        let health = self.materializer.health().await;
        let copy = match self.copy().await {
            Ok(copy) => copy,
            Err(e) => {
                tracing::warn!(materialization = job, error = %e, "cannot read the copy; querying the source");
                None
            }
        };
        let Some((copy, version)) = copy else {
            health.routed(job, Route::Live);
            return inner.table(name).await;
        };
        let Some(max) = self.job().config.max_staleness else {
            health.routed(job, Route::Copy);
            return Ok(Some(copy));
        };
        let mut staleness = health.get(job).staleness(SystemTime::now());
        if staleness.is_none_or(|s| s > max) {
            // Too old as far as this process knows; a newer version may come from a run
            // in another process, whose record the history has.
            let previous = self
                .seen_version
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(version);
            if previous != Some(version) {
                health.reload(self.materializer.history()).await;
                staleness = health.get(job).staleness(SystemTime::now());
            }
        }
        let age = staleness.map_or_else(
            || "unknown".to_string(),
            |s| humantime::format_duration(Duration::from_secs(s.as_secs())).to_string(),
        );
        if staleness.is_some_and(|s| s <= max) {
            tracing::debug!(materialization = job, staleness = %age, "answering from the copy");
            health.routed(job, Route::Copy);
            return Ok(Some(copy));
        }
        let live = inner.table(name).await;
        let failure = match &live {
            Ok(Some(_)) if self.source_answers(source).await => None,
            Ok(Some(_)) => Some("the source does not answer its health probe".to_string()),
            Ok(None) => Some("the source no longer lists the table".to_string()),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => {
                tracing::debug!(materialization = job, staleness = %age, "the copy is too old; answering live");
                health.routed(job, Route::Live);
                live
            }
            Some(error) => {
                tracing::warn!(
                    materialization = job,
                    staleness = %age,
                    max_staleness = %humantime::format_duration(max),
                    error = %error,
                    "the copy is too old but the source is down; answering from the last good copy"
                );
                health.routed(job, Route::Fallback);
                Ok(Some(copy))
            }
        }
    }

    /// The copy as a table, without its deprecated columns (the source no longer has
    /// them), and its version; `None` while it has no data.
    async fn copy(&self) -> Result<Option<(Arc<dyn TableProvider>, u64)>> {
        let job = self.job();
        let delta = |e: deltalake::errors::DeltaTableError| {
            DataFusionError::Plan(format!(
                "materialized table `{}` ({}): {e}",
                job.name(),
                job.target
            ))
        };
        let Some(table) = self
            .slot
            .latest(self.materializer.runtime())
            .await
            .map_err(delta)?
        else {
            return Ok(None);
        };
        let version = table.version().unwrap_or_default();
        let deprecated = drift::deprecated_columns(&table);
        let provider = table.table_provider().await?;
        if deprecated.is_empty() {
            return Ok(Some((provider, version)));
        }
        let columns: Vec<_> = provider
            .schema()
            .fields()
            .iter()
            .filter(|f| !deprecated.contains(f.name()))
            .map(|f| ident(f.name()))
            .collect();
        let plan = LogicalPlanBuilder::scan(job.name(), provider_as_source(provider), None)?
            .project(columns)?
            .build()?;
        Ok(Some((Arc::new(ViewTable::new(plan, None)), version)))
    }

    /// Whether the source answers its health probe. A source found down is not probed
    /// again for [`PROBE_TTL`] (a probe of a hanging source waits `probe_timeout`); one
    /// found up is probed again by the next query, so an outage is seen at once.
    async fn source_answers(&self, source: &SourceCatalog) -> bool {
        let mut down_since = self.probe.lock().await;
        if down_since.is_some_and(|at| at.elapsed() < PROBE_TTL) {
            return false;
        }
        let up = source.check().await.status == HealthStatus::Healthy;
        *down_since = (!up).then(Instant::now);
        up
    }
}

//! Turns a [`Source`] into a DataFusion catalog that discovers lazily and caches.
//!
//! DataFusion asks catalogs for schema and table *names* synchronously (for
//! `information_schema` and `SHOW TABLES`) but resolves the tables a query touches
//! asynchronously. So tables are always fetched on demand through
//! [`SchemaProvider::table`], while name listings are answered from a cache that
//! [`SourceCatalog::discover`] fills; the engine calls it before statements that list names.
//! Nothing is fetched when the catalog is registered, so the server starts at once and a
//! source that is down only fails the queries that touch it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use futures::{StreamExt, TryStreamExt};

use crate::source::{HealthReport, HealthStatus};
use crate::{Error, Result, Source};

/// How a [`SourceCatalog`] caches and how long it waits for its source.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// How long discovered names and table definitions are reused before asking again.
    pub metadata_ttl: Duration,
    /// The longest a discovery call or health probe may take before it counts as failed.
    pub probe_timeout: Duration,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            metadata_ttl: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`Source`] registered as a DataFusion catalog under its configured name.
#[derive(Debug, Clone)]
pub struct SourceCatalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    source: Arc<dyn Source>,
    options: CatalogOptions,
    cache: Mutex<Cache>,
}

#[derive(Debug)]
struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T: Clone> Cached<T> {
    fn new(value: T) -> Self {
        Cached {
            value,
            at: Instant::now(),
        }
    }

    fn fresh(&self, ttl: Duration) -> Option<T> {
        (self.at.elapsed() < ttl).then(|| self.value.clone())
    }
}

#[derive(Debug, Default)]
struct Cache {
    schemas: Option<Cached<Vec<String>>>,
    tables: HashMap<String, Cached<Vec<String>>>,
    providers: HashMap<(String, String), Cached<Arc<dyn TableProvider>>>,
}

impl SourceCatalog {
    /// Wraps `source`, to be registered as the catalog `name`.
    pub fn new(name: impl Into<String>, source: Arc<dyn Source>, options: CatalogOptions) -> Self {
        SourceCatalog {
            inner: Arc::new(Inner {
                name: name.into(),
                source,
                options,
                cache: Mutex::new(Cache::default()),
            }),
        }
    }

    /// The catalog (source) name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The connector behind this catalog.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.source
    }

    /// Schema names, from the cache while fresh, else from the source.
    pub async fn schema_names(&self) -> DfResult<Vec<String>> {
        self.inner.schema_names().await
    }

    /// Table names of `schema`, from the cache while fresh, else from the source.
    pub async fn table_names(&self, schema: &str) -> DfResult<Vec<String>> {
        self.inner.table_names(schema).await
    }

    /// The table `schema.table`, from the cache while fresh, else from the source.
    pub async fn table(
        &self,
        schema: &str,
        table: &str,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.inner.table(schema, table).await
    }

    /// Fills the name cache (schemas and the tables of each) where it is missing or stale, so
    /// the synchronous listings DataFusion makes for `information_schema` see every table.
    pub async fn discover(&self) -> DfResult<()> {
        let schemas = self.inner.schema_names().await?;
        futures::stream::iter(schemas)
            .map(|schema| async move { self.inner.table_names(&schema).await })
            .buffer_unordered(4)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Forgets everything cached, so the next use asks the source again.
    pub fn invalidate(&self) {
        *self.inner.lock_cache() = Cache::default();
    }

    /// Probes the source and reports its health and the probe's latency.
    pub async fn check(&self) -> HealthReport {
        let started = Instant::now();
        let outcome = self
            .inner
            .bounded("health check", self.inner.source.check())
            .await;
        let latency = started.elapsed();
        let (status, detail) = match outcome {
            Ok(health) => (HealthStatus::Healthy, health.detail),
            Err(e) => (HealthStatus::Unhealthy, e.to_string()),
        };
        HealthReport {
            source: self.inner.name.clone(),
            kind: self.inner.source.kind().to_string(),
            status,
            latency,
            detail,
        }
    }
}

impl Inner {
    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves only a cache behind; keep using it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ttl(&self) -> Duration {
        self.options.metadata_ttl
    }

    /// Runs a call to the source with the probe timeout.
    async fn bounded<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.options.probe_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "{what} timed out after {}",
                humantime::format_duration(self.options.probe_timeout)
            ))),
        }
    }

    fn fail(&self, error: Error) -> DataFusionError {
        error.in_source(&self.name)
    }

    async fn schema_names(&self) -> DfResult<Vec<String>> {
        if let Some(names) = self
            .lock_cache()
            .schemas
            .as_ref()
            .and_then(|c| c.fresh(self.ttl()))
        {
            return Ok(names);
        }
        let names = self
            .bounded("listing schemas", self.source.schema_names())
            .await
            .map_err(|e| self.fail(e))?;
        self.lock_cache().schemas = Some(Cached::new(names.clone()));
        Ok(names)
    }

    async fn table_names(&self, schema: &str) -> DfResult<Vec<String>> {
        if let Some(names) = self
            .lock_cache()
            .tables
            .get(schema)
            .and_then(|c| c.fresh(self.ttl()))
        {
            return Ok(names);
        }
        let names = self
            .bounded("listing tables", self.source.table_names(schema))
            .await
            .map_err(|e| self.fail(e))?;
        self.lock_cache()
            .tables
            .insert(schema.to_string(), Cached::new(names.clone()));
        Ok(names)
    }

    async fn table(&self, schema: &str, table: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let key = (schema.to_string(), table.to_string());
        if let Some(provider) = self
            .lock_cache()
            .providers
            .get(&key)
            .and_then(|c| c.fresh(self.ttl()))
        {
            return Ok(Some(provider));
        }
        let provider = self
            .source
            .table(schema, table)
            .await
            .map_err(|e| self.fail(e))?;
        if let Some(provider) = &provider {
            self.lock_cache()
                .providers
                .insert(key, Cached::new(Arc::clone(provider)));
        }
        Ok(provider)
    }

    /// Cached schema names, stale or not; `None` before the first listing.
    fn known_schemas(&self) -> Option<(Vec<String>, bool)> {
        let cache = self.lock_cache();
        cache
            .schemas
            .as_ref()
            .map(|c| (c.value.clone(), c.at.elapsed() < self.ttl()))
    }
}

impl CatalogProvider for SourceCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner
            .known_schemas()
            .map(|(names, _)| names)
            .unwrap_or_default()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        // Only a fresh listing can prove a schema absent; otherwise resolve it lazily and let
        // the table lookup ask the source.
        if let Some((names, true)) = self.inner.known_schemas()
            && !names.iter().any(|n| n == name)
        {
            return None;
        }
        Some(Arc::new(SourceSchema {
            catalog: Arc::clone(&self.inner),
            schema: name.to_string(),
        }))
    }
}

/// One schema of a [`SourceCatalog`].
struct SourceSchema {
    catalog: Arc<Inner>,
    schema: String,
}

impl fmt::Debug for SourceSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceSchema({}.{})", self.catalog.name, self.schema)
    }
}

#[async_trait]
impl SchemaProvider for SourceSchema {
    fn table_names(&self) -> Vec<String> {
        let cache = self.catalog.lock_cache();
        cache
            .tables
            .get(&self.schema)
            .map(|c| c.value.clone())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.catalog.table(&self.schema, name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        let cache = self.catalog.lock_cache();
        cache
            .providers
            .contains_key(&(self.schema.clone(), name.to_string()))
            || cache
                .tables
                .get(&self.schema)
                .is_some_and(|c| c.value.iter().any(|t| t == name))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::empty::EmptyTable;

    use super::*;
    use crate::Health;

    /// A source that counts the calls it gets, to see what the catalog caches.
    #[derive(Debug, Default)]
    struct Counting {
        listings: AtomicUsize,
        lookups: AtomicUsize,
        slow: bool,
        broken: bool,
    }

    #[async_trait]
    impl Source for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }

        async fn schema_names(&self) -> Result<Vec<String>> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            if self.slow {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if self.broken {
                return Err(Error::Unavailable("connection refused".into()));
            }
            Ok(vec!["s".into()])
        }

        async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            Ok(if schema == "s" {
                vec!["t".into()]
            } else {
                vec![]
            })
        }

        async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.broken {
                return Err(Error::Unavailable("connection refused".into()));
            }
            Ok((schema == "s" && table == "t")
                .then(|| Arc::new(EmptyTable::new(Arc::new(Schema::empty()))) as _))
        }

        async fn check(&self) -> Result<Health> {
            self.schema_names().await.map(|_| Health::ok("fine"))
        }
    }

    fn catalog_over(source: Counting, ttl: Duration) -> (SourceCatalog, Arc<Counting>) {
        let source = Arc::new(source);
        let options = CatalogOptions {
            metadata_ttl: ttl,
            probe_timeout: Duration::from_millis(200),
        };
        (SourceCatalog::new("src", source.clone(), options), source)
    }

    #[tokio::test]
    async fn nothing_is_fetched_until_needed_and_then_cached() {
        let (catalog, source) = catalog_over(Counting::default(), Duration::from_secs(60));
        assert_eq!(source.listings.load(Ordering::SeqCst), 0);
        // Before discovery the synchronous listings are empty but lookups still work.
        assert!(CatalogProvider::schema_names(&catalog).is_empty());
        let schema = catalog.schema("s").expect("resolved lazily");
        assert!(schema.table("t").await.unwrap().is_some());
        assert!(schema.table("t").await.unwrap().is_some());
        assert_eq!(source.lookups.load(Ordering::SeqCst), 1);
        assert!(schema.table_exist("t"));
        assert!(schema.table("missing").await.unwrap().is_none());

        catalog.discover().await.unwrap();
        catalog.discover().await.unwrap();
        assert_eq!(source.listings.load(Ordering::SeqCst), 2);
        assert_eq!(CatalogProvider::schema_names(&catalog), vec!["s"]);
        assert_eq!(schema.table_names(), vec!["t"]);
        // A fresh listing proves a schema absent.
        assert!(catalog.schema("other").is_none());

        catalog.invalidate();
        assert!(CatalogProvider::schema_names(&catalog).is_empty());
        assert!(schema.table("t").await.unwrap().is_some());
        assert_eq!(source.lookups.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_entries_are_fetched_again() {
        let (catalog, source) = catalog_over(Counting::default(), Duration::ZERO);
        catalog.table("s", "t").await.unwrap();
        catalog.table("s", "t").await.unwrap();
        assert_eq!(source.lookups.load(Ordering::SeqCst), 2);
        // A stale listing does not prove a schema absent.
        catalog.discover().await.unwrap();
        assert!(catalog.schema("other").is_some());
    }

    #[tokio::test]
    async fn failures_name_the_source_and_time_out() {
        let broken = Counting {
            broken: true,
            ..Counting::default()
        };
        let (catalog, _) = catalog_over(broken, Duration::from_secs(60));
        let e = catalog.table("s", "t").await.unwrap_err().to_string();
        assert_eq!(e, "External error: source `src`: connection refused");
        let report = catalog.check().await;
        assert_eq!(report.status, HealthStatus::Unhealthy);
        assert_eq!(report.detail, "connection refused");
        assert_eq!(report.kind, "counting");

        let slow = Counting {
            slow: true,
            ..Counting::default()
        };
        let (catalog, _) = catalog_over(slow, Duration::from_secs(60));
        let e = catalog.discover().await.unwrap_err().to_string();
        assert!(
            e.contains("source `src`: listing schemas timed out after 200ms"),
            "{e}"
        );
        let report = catalog.check().await;
        assert_eq!(report.detail, "health check timed out after 200ms");
        assert!(report.latency >= Duration::from_millis(200));
    }
}

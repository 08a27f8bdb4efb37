//! What the server counts, and the HTTP `/metrics` endpoint Prometheus scrapes (OpenMetrics
//! text format).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tributary_core::SourceScanExec;
use tributary_core::remote::RemoteScanExec;

use crate::materialize::{JobHealth, Materializer};

/// Labels naming a query's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Labels naming a source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// Labels of a failed call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: String,
    code: String,
}

/// Labels naming why a caller was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type DurationFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

/// Labels naming a materialization.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    materialization: String,
}

/// Labels naming a materialization and how its runs ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStatusLabels {
    materialization: String,
    status: &'static str,
}

/// Labels naming an accelerated table's materialization and how queries were answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobRouteLabels {
    materialization: String,
    route: &'static str,
}

/// The materializations' health, read at each scrape (staleness grows between runs).
#[derive(Debug, Default)]
struct MaterializationCollector {
    materializer: Arc<OnceLock<Arc<Materializer>>>,
}

impl Collector for MaterializationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(materializer) = self.materializer.get() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let health = materializer.health_now();
        let jobs: Vec<(JobLabel, JobHealth)> = materializer
            .jobs()
            .iter()
            .map(|j| {
                let label = JobLabel {
                    materialization: j.name().to_string(),
                };
                (label, health.get(j.name()))
            })
            .collect();
        let mut gauge = |name: &str,
                         help: &str,
                         unit: Option<&Unit>,
                         value: &dyn Fn(&JobHealth) -> Option<f64>| {
            let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            for (label, h) in &jobs {
                if let Some(v) = value(h) {
                    metric.encode_family(label)?.encode_gauge(&v)?;
                }
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge(
            "materialization_staleness",
            "Age of each materialization's data: time since its last successful run started",
            Some(&Unit::Seconds),
            &|h| h.staleness(now).map(|s| s.as_secs_f64()),
        )?;
        gauge(
            "materialization_last_success_timestamp",
            "When each materialization's last successful run started (Unix time)",
            Some(&Unit::Seconds),
            &|h| {
                h.last_success
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64())
            },
        )?;
        gauge(
            "materialization_running",
            "1 while a run of the materialization is going on",
            None,
            &|h| Some(if h.running_since.is_some() { 1.0 } else { 0.0 }),
        )?;
        gauge(
            "materialization_consecutive_failures",
            "Runs failed or paused since the last successful one",
            None,
            &|h| Some(f64::from(h.failures)),
        )?;
        let mut runs = encoder.encode_descriptor(
            "materialization_runs",
            "Runs finished by this process, by materialization and status",
            None,
            MetricType::Counter,
        )?;
        for (label, h) in &jobs {
            for (status, count) in &h.runs {
                let labels = JobStatusLabels {
                    materialization: label.materialization.clone(),
                    status: status.as_str(),
                };
                runs.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(count, None)?;
            }
        }
        let mut routes = encoder.encode_descriptor(
            "accelerated_queries",
            "Lookups of accelerated tables (by queries and catalog listings) by how they were answered: copy (fresh), live (copy too old), fallback (copy too old, source down)",
            None,
            MetricType::Counter,
        )?;
        for (label, h) in &jobs {
            for (route, count) in &h.routes {
                let labels = JobRouteLabels {
                    materialization: label.materialization.clone(),
                    route: route.as_str(),
                };
                routes
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(count, None)?;
            }
        }
        Ok(())
    }
}

/// The server's counters, shared by the Flight SQL service and the `/metrics` endpoint.
pub struct Metrics {
    registry: Registry,
    queries: Family<OutcomeLabel, Counter>,
    durations: DurationFamily,
    running: Gauge,
    result_rows: Counter,
    result_bytes: Counter,
    source_rows: Family<SourceLabel, Counter>,
    source_bytes: Family<SourceLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    resident: Gauge,
    materializer: Arc<OnceLock<Arc<Materializer>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tributary");
        let queries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "queries",
            "Queries streamed to clients, by how they ended (done, failed, cancelled, abandoned)",
            queries.clone(),
        );
        let durations: DurationFamily = Family::new_with_constructor(|| {
            // 1 ms to ~9 minutes.
            Histogram::new(exponential_buckets(0.001, 2.0, 20))
        });
        registry.register_with_unit(
            "query_duration",
            "Time from a query's first fetch to its end, by outcome",
            Unit::Seconds,
            durations.clone(),
        );
        let running = Gauge::default();
        registry.register("queries_running", "Queries streaming now", running.clone());
        let result_rows = Counter::default();
        registry.register("result_rows", "Rows sent to clients", result_rows.clone());
        let result_bytes = Counter::default();
        registry.register_with_unit(
            "result",
            "Arrow Flight data sent to clients",
            Unit::Bytes,
            result_bytes.clone(),
        );
        let source_rows = Family::<SourceLabel, Counter>::default();
        registry.register(
            "source_rows",
            "Rows read from each source",
            source_rows.clone(),
        );
        let source_bytes = Family::<SourceLabel, Counter>::default();
        registry.register_with_unit(
            "source",
            "Arrow memory of the batches read from each source",
            Unit::Bytes,
            source_bytes.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "rpc_errors",
            "Calls answered with an error, by gRPC method and status code",
            errors.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_refusals",
            "Logins and calls refused, by reason",
            refusals.clone(),
        );
        let resident = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the server process",
            Unit::Bytes,
            resident.clone(),
        );
        let materializer = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(MaterializationCollector {
            materializer: Arc::clone(&materializer),
        }));
        Metrics {
            materializer,
            registry,
            queries,
            durations,
            running,
            result_rows,
            result_bytes,
            source_rows,
            source_bytes,
            errors,
            refusals,
            resident,
        }
    }
}

impl Metrics {
    /// Shows `materializer`'s health (staleness, runs, routes) from now on; once.
    pub fn watch_materializations(&self, materializer: Arc<Materializer>) {
        let _ = self.materializer.set(materializer);
    }

    /// A query started streaming.
    pub fn query_started(&self) {
        self.running.inc();
    }

    /// A query ended with `outcome` after `elapsed`, having sent `rows` in `bytes` of
    /// Flight data, and read what `plan`'s source scans counted.
    pub fn query_ended(
        &self,
        outcome: &'static str,
        elapsed: Duration,
        rows: u64,
        bytes: u64,
        plan: &Arc<dyn ExecutionPlan>,
    ) {
        self.running.dec();
        let label = OutcomeLabel { outcome };
        self.queries.get_or_create(&label).inc();
        self.durations
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        self.result_rows.inc_by(rows);
        self.result_bytes.inc_by(bytes);
        self.record_sources(plan);
    }

    /// Adds the rows and bytes the source scans under `plan` read. A source's whole-query
    /// scan (a sub-plan pushed to it) is a `RemoteScanExec` without a `SourceScanExec`
    /// above it, counted once when several read one shared query; a table scan is counted
    /// once, at its `SourceScanExec`.
    fn record_sources(&self, plan: &Arc<dyn ExecutionPlan>) {
        let source = if let Some(scan) = plan.downcast_ref::<SourceScanExec>() {
            Some(scan.tag().source.clone())
        } else {
            plan.downcast_ref::<RemoteScanExec>()
                .filter(|scan| scan.reads_source())
                .map(|scan| scan.source().to_string())
        };
        if let Some(source) = source {
            if let Some(metrics) = plan.metrics() {
                let label = SourceLabel { source };
                let rows = metrics.output_rows().unwrap_or(0) as u64;
                let bytes = metrics
                    .sum(|m| matches!(m.value(), MetricValue::OutputBytes(_)))
                    .map_or(0, |v| v.as_usize()) as u64;
                self.source_rows.get_or_create(&label).inc_by(rows);
                self.source_bytes.get_or_create(&label).inc_by(bytes);
            }
            return;
        }
        for child in plan.children() {
            self.record_sources(child);
        }
    }

    /// A call to `method` was answered with gRPC status `code` (its name, e.g. `InvalidArgument`).
    pub fn rpc_error(&self, method: &str, code: tonic::Code) {
        self.errors
            .get_or_create(&ErrorLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// A login or call was refused.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_memory() {
            self.resident.set(bytes as i64);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's resident set size, from `/proc` (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

//! The `tributary` catalog: Tributary's own state as tables, in schema `runtime`.
//!
//! - `sync_runs`: every finished run (the history table itself).
//! - `materializations`: one row per materialization: its state, last run, last success,
//!   staleness and next scheduled run, computed when queried.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result;

use super::history::micros;
use super::{Job, JobHealth, Materializer, RUNTIME_SCHEMA, State, drift, target};

/// The `tributary` catalog.
#[derive(Debug)]
pub struct RuntimeCatalog {
    schema: Arc<RuntimeSchema>,
}

impl RuntimeCatalog {
    /// The catalog over `materializer`'s state.
    pub fn new(materializer: Arc<Materializer>) -> Self {
        RuntimeCatalog {
            schema: Arc::new(RuntimeSchema { materializer }),
        }
    }
}

impl CatalogProvider for RuntimeCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![RUNTIME_SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        (name == RUNTIME_SCHEMA).then(|| Arc::clone(&self.schema) as _)
    }
}

const TABLES: [&str; 2] = ["materializations", "sync_runs"];

#[derive(Debug)]
struct RuntimeSchema {
    materializer: Arc<Materializer>,
}

#[async_trait]
impl SchemaProvider for RuntimeSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(ToString::to_string).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match name {
            "sync_runs" => Ok(Some(self.materializer.history().provider().await?)),
            "materializations" => {
                let batch = materializations(&self.materializer).await?;
                Ok(Some(Arc::new(MemTable::try_new(
                    batch.schema(),
                    vec![vec![batch]],
                )?)))
            }
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

fn materializations_schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("name", false),
        text("mode", false),
        text("schedule", true),
        text("target", false),
        text("accelerates", true),
        text("state", false),
        text("reason", true),
        Field::new("running_since", time.clone(), true),
        Field::new("last_run_at", time.clone(), true),
        text("last_run_status", true),
        Field::new("last_success_at", time.clone(), true),
        Field::new("staleness_seconds", DataType::Float64, true),
        Field::new("max_staleness_seconds", DataType::Float64, true),
        Field::new("next_run_at", time, true),
        Field::new("consecutive_failures", DataType::Int64, false),
        Field::new("committed_runs", DataType::Int64, false),
        Field::new("version", DataType::Int64, true),
        text("watermark", true),
    ]))
}

/// What one materialization's Delta table says.
#[derive(Default)]
struct CopyState {
    version: Option<i64>,
    runs: i64,
    paused: Option<String>,
    error: Option<String>,
}

async fn copy_state(materializer: &Materializer, job: &Job) -> CopyState {
    let table = match target::open(materializer.runtime(), &job.target).await {
        Ok(table) => table,
        Err(e) => {
            return CopyState {
                error: Some(format!("cannot open {}: {e}", job.target)),
                ..CopyState::default()
            };
        }
    };
    let runs = match State::load(&table, job.name()).await {
        Ok(state) => state.runs,
        Err(e) => {
            return CopyState {
                error: Some(format!("cannot read the state of {}: {e}", job.target)),
                ..CopyState::default()
            };
        }
    };
    CopyState {
        version: table.version().and_then(|v| i64::try_from(v).ok()),
        runs,
        paused: drift::paused(&table),
        error: None,
    }
}

/// The state a materialization is in, and why.
fn state(health: &JobHealth, copy: &CopyState) -> (&'static str, Option<String>) {
    let last_error = health.last_run.as_ref().and_then(|r| r.error.clone());
    if let Some(error) = &copy.error {
        ("error", Some(error.clone()))
    } else if let Some(reason) = &copy.paused {
        ("paused", Some(reason.clone()))
    } else if health.running_since.is_some() {
        ("running", None)
    } else if health.failures > 0 {
        ("failing", last_error)
    } else if health.last_success.is_some() || copy.version.is_some() {
        ("ok", None)
    } else {
        ("never run", None)
    }
}

/// One row of `materializations`, before it becomes columns.
struct Row<'a> {
    job: &'a Job,
    health: JobHealth,
    copy: CopyState,
    state: &'static str,
    reason: Option<String>,
}

async fn materializations(materializer: &Materializer) -> Result<RecordBatch> {
    // Runs by other processes (`tributary sync`, another server) are known from the
    // history only.
    let health = materializer.health_now();
    health.refresh(materializer.history()).await;
    let now = SystemTime::now();
    let jobs = materializer.jobs();
    let mut rows = Vec::with_capacity(jobs.len());
    for job in jobs {
        let copy = copy_state(materializer, job).await;
        let health = health.get(job.name());
        let (state, reason) = state(&health, &copy);
        rows.push(Row {
            job,
            health,
            copy,
            state,
            reason,
        });
    }
    let text = |f: &dyn Fn(&Row) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(f)))
    };
    let time = |f: &dyn Fn(&JobHealth) -> Option<SystemTime>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(|r| f(&r.health).map(micros)))
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|Row { job: j, .. }| Some(j.name().to_string())),
        text(&|Row { job: j, .. }| Some(format!("{:?}", j.config.mode).to_lowercase())),
        text(&|Row { job: j, .. }| j.config.schedule.as_ref().map(ToString::to_string)),
        text(&|Row { job: j, .. }| Some(j.target.to_string())),
        text(&|Row { job: j, .. }| j.config.accelerate.then(|| j.config.from.clone())),
        text(&|r| Some(r.state.to_string())),
        text(&|r| r.reason.clone()),
        time(&|h| h.running_since),
        time(&|h| h.last_run.as_ref().map(|r| r.started)),
        text(&|Row { health: h, .. }| h.last_run.as_ref().map(|r| r.status.as_str().to_string())),
        time(&|h| h.last_success),
        Arc::new(Float64Array::from_iter(rows.iter().map(
            |Row { health: h, .. }| h.staleness(now).map(|s| s.as_secs_f64()),
        ))),
        Arc::new(Float64Array::from_iter(rows.iter().map(
            |Row { job: j, .. }| j.config.max_staleness.map(|s| s.as_secs_f64()),
        ))),
        time(&|h| h.next_run),
        Arc::new(Int64Array::from_iter_values(
            rows.iter()
                .map(|Row { health: h, .. }| i64::from(h.failures)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|Row { copy: c, .. }| c.runs),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|Row { copy: c, .. }| c.version),
        )),
        text(&|Row { health: h, .. }| h.watermark.clone()),
    ];
    Ok(RecordBatch::try_new(materializations_schema(), columns)?)
}

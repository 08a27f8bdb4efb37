//! Run history: one row per finished run, failed runs included, appended to the Delta table
//! `<data_dir>/_tributary/sync_runs/` and queried as `tributary.runtime.sync_runs`.
//!
//! A run that is killed outright (SIGKILL, power loss) leaves no row: its data commit is
//! atomic anyway, and the next run picks up from the committed state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use deltalake::errors::DeltaResult;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tokio::sync::Mutex;
use url::Url;

use super::Written;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// It committed, or found nothing new.
    Succeeded,
    /// It failed; nothing was committed.
    Failed,
    /// The source's columns changed under the `pause` policy, or the job was paused.
    Paused,
}

impl RunStatus {
    /// The name used in tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Paused => "paused",
        }
    }

    fn parse(text: &str) -> RunStatus {
        match text {
            "succeeded" => RunStatus::Succeeded,
            "paused" => RunStatus::Paused,
            _ => RunStatus::Failed,
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// `tributary sync`.
    #[default]
    Manual,
    /// The scheduler of `tributary serve`.
    Schedule,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
        }
    }
}

/// One finished run, as recorded.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The materialization.
    pub job: String,
    /// The run number it committed as; `None` when it committed nothing.
    pub run: Option<i64>,
    /// What started it.
    pub trigger: Trigger,
    /// 1 for the first try, 2 for the first retry, …
    pub attempt: u32,
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// How it ended.
    pub status: RunStatus,
    /// Rows read from the source.
    pub rows_read: u64,
    /// Arrow bytes read from the source.
    pub bytes_read: u64,
    /// What its commit changed.
    pub written: Written,
    /// The table version it committed.
    pub version: Option<u64>,
    /// The cursor value stored after it.
    pub watermark: Option<String>,
    /// Why it failed or paused.
    pub error: Option<String>,
}

/// The columns of `sync_runs`.
pub fn schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("run", DataType::Int64, true),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("attempt", DataType::Int32, false),
        Field::new("started_at", time.clone(), false),
        Field::new("ended_at", time, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows_read", DataType::Int64, false),
        Field::new("bytes_read", DataType::Int64, false),
        Field::new("rows_inserted", DataType::Int64, false),
        Field::new("rows_updated", DataType::Int64, false),
        Field::new("rows_deleted", DataType::Int64, false),
        Field::new("rows_quarantined", DataType::Int64, true),
        Field::new("version", DataType::Int64, true),
        Field::new("watermark", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Microseconds since the epoch.
pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn to_batch(records: &[RunRecord]) -> Result<RecordBatch, ArrowError> {
    let count = |f: &dyn Fn(&RunRecord) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            records
                .iter()
                .map(|r| i64::try_from(f(r)).unwrap_or(i64::MAX)),
        ))
    };
    let time = |f: &dyn Fn(&RunRecord) -> SystemTime| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| micros(f(r))))
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.job.as_str()),
        )),
        Arc::new(Int64Array::from_iter(records.iter().map(|r| r.run))),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.trigger.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            records
                .iter()
                .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX)),
        )),
        time(&|r| r.started),
        time(&|r| r.ended),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.status.as_str()),
        )),
        count(&|r| r.rows_read),
        count(&|r| r.bytes_read),
        count(&|r| r.written.inserted),
        count(&|r| r.written.updated),
        count(&|r| r.written.deleted),
        count(&|r| r.written.quarantined),
        Arc::new(Int64Array::from_iter(
            records
                .iter()
                .map(|r| r.version.and_then(|v| i64::try_from(v).ok())),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.watermark.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.error.as_deref()),
        )),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// The last run of a materialization and its last successful one, from the history.
#[derive(Debug, Clone)]
pub struct Latest {
    /// When the last run started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// How it ended.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// When the last successful run started: the copy holds the source as of then.
    pub success: Option<SystemTime>,
    /// The cursor value stored by the last successful run.
    pub watermark: Option<String>,
    /// Runs that failed or paused since the last success.
    pub failures: u32,
}

/// The history table.
#[derive(Debug)]
pub struct History {
    url: Url,
    runtime: Arc<RuntimeEnv>,
    table: Mutex<Option<DeltaTable>>,
}

impl History {
    /// The history kept at `url`, read and written through `runtime`'s object stores.
    pub fn new(url: Url, runtime: Arc<RuntimeEnv>) -> History {
        History {
            url,
            runtime,
            table: Mutex::new(None),
        }
    }

    /// Where it lives.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The table at its latest version (unloaded if nothing was recorded yet).
    async fn latest_table(&self) -> DeltaResult<DeltaTable> {
        let mut open = self.table.lock().await;
        let table = match open.take() {
            Some(mut table) if table.version().is_some() => {
                table.update_state().await?;
                table
            }
            _ => super::target::open(&self.runtime, &self.url).await?,
        };
        Ok(open.insert(table).clone())
    }

    /// Appends `records` in one commit (concurrent appends, from this process or others,
    /// are retried by Delta's conflict resolution).
    pub async fn record(&self, records: &[RunRecord]) -> DeltaResult<()> {
        let batch = to_batch(records)?;
        let mut open = self.table.lock().await;
        let table = match open.take() {
            Some(table) => table,
            None => super::target::open(&self.runtime, &self.url).await?,
        };
        let table = table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            // Histories written before a column was added gain it.
            .with_schema_mode(SchemaMode::Merge)
            .await?;
        *open = Some(table);
        Ok(())
    }

    /// The table to query: the Delta table, or an empty one before the first run.
    pub async fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        let table = self.latest_table().await.map_err(history_error)?;
        if table.version().is_none() {
            return Ok(Arc::new(MemTable::try_new(schema(), vec![vec![]])?));
        }
        table.table_provider().await
    }

    /// The last run and last success of each materialization.
    pub async fn latest(&self) -> Result<HashMap<String, Latest>> {
        let provider = self.provider().await?;
        let ctx =
            SessionContext::new_with_config_rt(SessionConfig::new(), Arc::clone(&self.runtime));
        ctx.register_table("runs", provider)?;
        let batches = ctx
            .sql(
                "WITH ranked AS (
                   SELECT job, started_at, ended_at, status, error,
                          row_number() OVER (PARTITION BY job ORDER BY started_at DESC) AS n
                   FROM runs),
                 success AS (
                   SELECT job, started_at, watermark,
                          row_number() OVER (PARTITION BY job ORDER BY started_at DESC) AS n
                   FROM runs WHERE status = 'succeeded'),
                 failures AS (
                   SELECT r.job, count(*) AS failures
                   FROM runs r LEFT JOIN success s ON r.job = s.job AND s.n = 1
                   WHERE r.status <> 'succeeded'
                     AND (s.started_at IS NULL OR r.started_at > s.started_at)
                   GROUP BY r.job)
                 SELECT r.job, r.started_at, r.ended_at, r.status, r.error,
                        s.started_at AS success, s.watermark,
                        coalesce(f.failures, 0) AS failures
                 FROM ranked r
                 LEFT JOIN success s ON r.job = s.job AND s.n = 1
                 LEFT JOIN failures f ON r.job = f.job
                 WHERE r.n = 1",
            )
            .await?
            .collect()
            .await?;
        let mut latest = HashMap::new();
        for batch in &batches {
            let text =
                |i: usize| -> Result<ArrayRef> { Ok(cast(batch.column(i), &DataType::Utf8)?) };
            let time = |i: usize| -> Result<ArrayRef> {
                Ok(cast(
                    batch.column(i),
                    &DataType::Timestamp(TimeUnit::Microsecond, None),
                )?)
            };
            let (job, status, error, watermark) = (text(0)?, text(3)?, text(4)?, text(6)?);
            let (started, ended, success) = (time(1)?, time(2)?, time(5)?);
            let failures = cast(batch.column(7), &DataType::Int64)?;
            let (job, status, error, watermark) = (
                job.as_string::<i32>(),
                status.as_string::<i32>(),
                error.as_string::<i32>(),
                watermark.as_string::<i32>(),
            );
            let (started, ended, success) = (
                started.as_primitive::<TimestampMicrosecondType>(),
                ended.as_primitive::<TimestampMicrosecondType>(),
                success.as_primitive::<TimestampMicrosecondType>(),
            );
            let failures = failures.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for row in 0..batch.num_rows() {
                let optional = |a: &datafusion::arrow::array::StringArray| {
                    a.is_valid(row).then(|| a.value(row).to_string())
                };
                latest.insert(
                    job.value(row).to_string(),
                    Latest {
                        started: from_micros(started.value(row)),
                        ended: from_micros(ended.value(row)),
                        status: RunStatus::parse(status.value(row)),
                        error: optional(error),
                        success: success
                            .is_valid(row)
                            .then(|| from_micros(success.value(row))),
                        watermark: optional(watermark),
                        failures: u32::try_from(failures.value(row)).unwrap_or(u32::MAX),
                    },
                );
            }
        }
        Ok(latest)
    }
}

fn history_error(e: deltalake::errors::DeltaTableError) -> DataFusionError {
    DataFusionError::Plan(format!("run history (tributary.runtime.sync_runs): {e}"))
}

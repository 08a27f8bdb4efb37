//! The read side of a run: the source query, the cursor bounds, and the one stream that
//! feeds the Delta writer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Constraint;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ident, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::DataFrame;
use futures::StreamExt;

use super::quarantine::{self, Conform, Misfit};
use super::state::Cursor;
use crate::Engine;

/// Plans `from`: a SQL query over the sources, or a table name (`pg.public.orders`,
/// `pg."My Schema".t`), which does not parse as a statement. A table the materialization
/// accelerates is read from its source, never from the copy that stands in for it.
pub async fn plan(engine: &Engine, from: &str, accelerated: bool) -> Result<DataFrame> {
    let text = from.trim();
    if accelerated {
        return engine.source_table(text).await;
    }
    match engine.statement(text) {
        Ok(statement) => engine.plan(statement).await,
        Err(not_sql) => engine.context().table(text).await.map_err(|not_table| {
            DataFusionError::Plan(format!(
                "neither a query ({}) nor a table ({})",
                not_sql.strip_backtrace(),
                not_table.strip_backtrace()
            ))
        }),
    }
}

/// The table `df` reads when it reads one table: where a materialization's key and
/// cursor default from.
pub fn scanned_table(df: &DataFrame) -> Option<Arc<dyn TableProvider>> {
    let mut tables = Vec::new();
    let _ = df.logical_plan().apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            tables.push(source_as_provider(&scan.source).ok());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match tables.as_slice() {
        [Some(table)] => Some(Arc::clone(table)),
        _ => None,
    }
}

/// The primary-key columns `table` declares.
pub fn primary_key(table: &Arc<dyn TableProvider>) -> Option<Vec<String>> {
    let schema = table.schema();
    table.constraints()?.iter().find_map(|c| match c {
        Constraint::PrimaryKey(columns) => Some(
            columns
                .iter()
                .map(|&i| schema.field(i).name().clone())
                .collect(),
        ),
        Constraint::Unique(_) => None,
    })
}

/// The highest cursor value among `changed` (see [`changed`]), encoded; `None` when it
/// has no row.
///
/// Asked as the first row in descending order rather than as `max()`: a source with an
/// index on the cursor answers that from the index's end, while its planner may compute
/// `max()` over every row past `low` (PostgreSQL does when its statistics predate the
/// changes, which is when a run matters). `DESC NULLS FIRST` over non-NULL values is the
/// backward order of an ascending index.
pub async fn upper_bound(changed: DataFrame, cursor: &Cursor) -> Result<Option<i64>> {
    let column = ident(cursor.name());
    let batches = changed
        .sort(vec![column.clone().sort(false, true)])?
        .limit(0, Some(1))?
        .select(vec![column.alias("high")])?
        .collect()
        .await?;
    let value = match batches.iter().find(|b| b.num_rows() > 0) {
        Some(b) => ScalarValue::try_from_array(b.column(0), 0)?,
        None => return Ok(None),
    };
    cursor.encode(&value).map_err(DataFusionError::Plan)
}

/// Rows of `df` with a cursor past `low` (from it on when `inclusive`): the rows a run
/// takes when its upper bound is the highest cursor value among them.
pub fn changed(
    df: DataFrame,
    cursor: &Cursor,
    low: Option<i64>,
    inclusive: bool,
) -> Result<DataFrame> {
    let df = df.filter(ident(cursor.name()).is_not_null())?;
    match low {
        Some(low) => df.filter(above(cursor, low, inclusive)),
        None => Ok(df),
    }
}

/// Rows of `df` with `low < cursor <= high` (`low <= cursor` when `inclusive`).
pub fn between(
    df: DataFrame,
    cursor: &Cursor,
    low: Option<i64>,
    inclusive: bool,
    high: i64,
) -> Result<DataFrame> {
    let mut predicate = ident(cursor.name()).lt_eq(lit(cursor.literal(high)));
    if let Some(low) = low {
        predicate = above(cursor, low, inclusive).and(predicate);
    }
    df.filter(predicate)
}

/// `cursor > low`, or `cursor >= low` when `inclusive`.
fn above(cursor: &Cursor, low: i64, inclusive: bool) -> Expr {
    let (column, low) = (ident(cursor.name()), lit(cursor.literal(low)));
    if inclusive {
        column.gt_eq(low)
    } else {
        column.gt(low)
    }
}

/// Rows and Arrow bytes read so far by a run, rows quarantined, and why the stream
/// failed if it did mid-stream (the writer reports it as its own, wrapped).
#[derive(Debug, Default)]
pub struct Counters {
    rows: AtomicU64,
    bytes: AtomicU64,
    pub(super) quarantined: AtomicU64,
    failure: Mutex<Option<StreamFailure>>,
}

/// Why a run's stream stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFailure {
    /// The source failed.
    Source(String),
    /// A row held a value that does not fit the copy (`on_invalid: fail`).
    Invalid(String),
}

impl Counters {
    fn failed(&self, why: StreamFailure) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(why);
        }
    }

    /// Records that a row did not fit the copy, and why.
    pub(super) fn rejected(&self, why: &str) {
        self.failed(StreamFailure::Invalid(why.to_string()));
    }

    /// Why the stream failed, if it did.
    pub fn stream_failure(&self) -> Option<StreamFailure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Rows set aside in the quarantine table.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Rows read.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Arrow bytes read.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Starts `df` in the engine (so it runs with the engine's object stores and settings)
/// and wraps its stream as a plan any DataFusion session can consume exactly once: the
/// Delta writer plans with its own session. With `conform`, the kept columns are cast to
/// the copy's types and rows whose values do not fit go as its [`Misfit`] says.
pub async fn stream_plan(
    df: DataFrame,
    counters: Arc<Counters>,
    conform: Option<(Conform, Misfit)>,
) -> Result<LogicalPlan> {
    let counters_for_conform = Arc::clone(&counters);
    let stream = df.execute_stream().await?;
    let schema = stream.schema();
    let crash_after = crash_point("batch").and_then(|n| n.parse::<u64>().ok());
    let mut batches = 0u64;
    let counted = stream.inspect(move |batch| {
        batches += 1;
        if crash_after == Some(batches) {
            std::process::abort();
        }
        match batch {
            Ok(b) => {
                counters
                    .rows
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(b.get_array_memory_size() as u64, Ordering::Relaxed);
            }
            Err(e) => counters.failed(StreamFailure::Source(e.strip_backtrace())),
        }
    });
    let mut stream: SendableRecordBatchStream =
        Box::pin(RecordBatchStreamAdapter::new(schema, counted));
    if let Some((conform, misfit)) = conform {
        stream = quarantine::conformed(stream, conform, misfit, counters_for_conform);
    }
    once(stream)
}

/// `stream` as a plan any DataFusion session can consume exactly once.
pub fn once(stream: SendableRecordBatchStream) -> Result<LogicalPlan> {
    let schema = stream.schema();
    let once = OneShot {
        schema: Arc::clone(&schema),
        stream: Mutex::new(Some(stream)),
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(once)])?;
    LogicalPlanBuilder::scan("source", provider_as_source(Arc::new(table)), None)?.build()
}

/// For the crash tests: `TRIBUTARY_TEST_CRASH_AT=<point>[:<arg>]` makes a sync process
/// abort (as abruptly as SIGKILL) at `point`; returns the argument when set for `point`.
pub fn crash_point(point: &str) -> Option<String> {
    let spec = std::env::var("TRIBUTARY_TEST_CRASH_AT").ok()?;
    let (name, arg) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
    (name == point).then(|| arg.to_string())
}

/// A stream that can be executed once.
struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl fmt::Debug for OneShot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneShot").finish_non_exhaustive()
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        taken.unwrap_or_else(|| {
            let error = DataFusionError::Internal(
                "a materialization's source stream was read twice".into(),
            );
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async move { Err(error) }),
            ))
        })
    }
}

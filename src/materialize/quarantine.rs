//! Values that no longer fit the copy's column types.
//!
//! When a source column changes to a type the copy's column cannot be widened to (`int`
//! to `text`, `numeric(12,4)` into `numeric(10,2)`) and the drift policy is `evolve`, the
//! copy keeps its type and a run casts the source's values to it. A value fits when the
//! cast keeps it: it does not fail, and between numeric types it casts back to the same
//! value (`2.5` does not fit an integer column, `2.0` does). Rows holding a value that
//! does not fit fail the run (`on_invalid: fail`) or go to the quarantine Delta table
//! beside the copy (`on_invalid: quarantine`) with the reason and the raw row.
//!
//! The quarantine commit of a run comes before its data commit (the writer commits only
//! after the stream it reads has ended, and the quarantine is committed when it ends) and
//! replaces the rows an earlier try of the same run number left: a run killed in between
//! and run again quarantines its rows once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::kernels::boolean::{and, or};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{
    CastOptions, cast_with_options, filter_record_batch, is_not_null, is_null,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::errors::{DeltaResult, DeltaTableError};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use url::Url;

use super::source::{self, Counters};
use super::target;

/// A column whose source type changed incompatibly, and the copy's type it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The column.
    pub name: String,
    /// The copy's type, which the source's values are cast to.
    pub to: DataType,
    /// The copy's type as Delta names it (for messages).
    pub label: String,
}

/// Casts the kept columns of a source's batches and tells the rows that fit from the
/// others.
#[derive(Debug, Clone)]
pub struct Conform {
    /// Index in the source's batches, and what it keeps.
    columns: Vec<(usize, Kept)>,
    output: SchemaRef,
}

/// Rows whose values do not fit: the source's row and why.
#[derive(Debug)]
pub struct Misfits {
    /// The rows as the source gave them.
    pub rows: RecordBatch,
    /// Why each does not fit.
    pub reasons: Vec<String>,
}

impl Conform {
    /// Conforms batches of `input` for the `kept` columns (which `input` must have).
    pub fn new(input: &Schema, kept: Vec<Kept>) -> Result<Conform> {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = Vec::new();
        for kept in kept {
            let index = input.index_of(&kept.name)?;
            fields[index] = fields[index].clone().with_data_type(kept.to.clone());
            columns.push((index, kept));
        }
        Ok(Conform {
            columns,
            output: Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())),
        })
    }

    /// The schema of the rows that fit.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
    }

    /// The rows of `batch` whose values fit, cast to the copy's types, and the others.
    pub fn split(&self, batch: &RecordBatch) -> Result<(RecordBatch, Option<Misfits>)> {
        let safe = CastOptions {
            safe: true,
            ..CastOptions::default()
        };
        let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
        let mut misfit: Vec<(usize, &Kept, BooleanArray)> = Vec::new();
        for (index, kept) in &self.columns {
            let raw = batch.column(*index);
            let cast = cast_with_options(raw, &kept.to, &safe)?;
            let mut bad = and(&is_not_null(raw)?, &is_null(&cast)?)?;
            if raw.data_type().is_numeric() && kept.to.is_numeric() {
                // Numbers must come back unchanged: no truncated fractions, no rounding.
                let back = cast_with_options(&cast, raw.data_type(), &safe)?;
                bad = or(&bad, &and(&is_not_null(&cast)?, &distinct(&back, raw)?)?)?;
            }
            if bad.true_count() > 0 {
                misfit.push((*index, kept, bad));
            }
            arrays[*index] = cast;
        }
        let cast = RecordBatch::try_new(Arc::clone(&self.output), arrays)?;
        if misfit.is_empty() {
            return Ok((cast, None));
        }
        let any_bad = misfit
            .iter()
            .skip(1)
            .try_fold(misfit[0].2.clone(), |acc, (_, _, b)| or(&acc, b))?;
        let good = datafusion::arrow::compute::not(&any_bad)?;
        let mut reasons = Vec::with_capacity(any_bad.true_count());
        for row in (0..batch.num_rows()).filter(|r| any_bad.value(*r)) {
            let mut why = Vec::new();
            for (index, kept, bad) in &misfit {
                if bad.value(row) {
                    let raw = batch.column(*index);
                    why.push(format!(
                        "`{}`: {:?} ({}) does not fit the copy's {} column",
                        kept.name,
                        array_value_to_string(raw, row)?,
                        raw.data_type(),
                        kept.label
                    ));
                }
            }
            reasons.push(why.join("; "));
        }
        Ok((
            filter_record_batch(&cast, &good)?,
            Some(Misfits {
                rows: filter_record_batch(batch, &any_bad)?,
                reasons,
            }),
        ))
    }
}

/// The rows of `batch` as JSON objects, one per row (NULLs included).
fn raw_json(batch: &RecordBatch) -> Result<Vec<String>, ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text =
        String::from_utf8(writer.into_inner()).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The quarantine table's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run", DataType::Int64, false),
        Field::new(
            "quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// What becomes of rows whose values do not fit.
#[derive(Debug)]
pub enum Misfit {
    /// The run fails on the first.
    Fail,
    /// They go to the quarantine table.
    Quarantine(Quarantine),
}

/// The quarantine table of one run, written while the run reads and committed when the
/// source's stream ends.
#[derive(Debug)]
pub struct Quarantine {
    url: Url,
    runtime: Arc<RuntimeEnv>,
    name: String,
    run: i64,
    sender: Option<mpsc::Sender<Result<RecordBatch>>>,
    writer: Option<JoinHandle<DeltaResult<()>>>,
}

impl Quarantine {
    /// The quarantine at `url` of run `run` of materialization `name`.
    pub fn new(url: Url, runtime: Arc<RuntimeEnv>, name: &str, run: i64) -> Quarantine {
        Quarantine {
            url,
            runtime,
            name: name.to_string(),
            run,
            sender: None,
            writer: None,
        }
    }

    /// Adds `misfits`, starting the table's writer on the first.
    async fn put(&mut self, misfits: Misfits) -> Result<()> {
        let raw = raw_json(&misfits.rows)?;
        let count = raw.len();
        let now = super::history::micros(std::time::SystemTime::now());
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_value(self.run, count)),
                Arc::new(TimestampMicrosecondArray::from_value(now, count).with_timezone("UTC")),
                Arc::new(StringArray::from(misfits.reasons)),
                Arc::new(StringArray::from(raw)),
            ],
        )?;
        let sender = match self.sender.take() {
            Some(sender) => sender,
            None => {
                let (sender, receiver) = mpsc::channel(2);
                self.writer = Some(tokio::spawn(write(
                    self.url.clone(),
                    Arc::clone(&self.runtime),
                    self.name.clone(),
                    self.run,
                    receiver,
                )));
                sender
            }
        };
        if self.sender.insert(sender).send(Ok(batch)).await.is_err() {
            // The writer stopped: its error is what finish() reports.
            return self.finish().await;
        }
        Ok(())
    }

    /// Commits the rows put so far; with none, removes what an earlier try of this run
    /// may have left.
    async fn finish(&mut self) -> Result<()> {
        self.sender = None;
        let result = match self.writer.take() {
            Some(writer) => writer
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
                .and_then(|r| r.map_err(|e| DataFusionError::External(Box::new(e)))),
            None => clear(&self.url, &self.runtime, self.run)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e))),
        };
        result.map_err(|e| {
            DataFusionError::Execution(format!(
                "writing the quarantine table {}: {}",
                self.url,
                e.strip_backtrace()
            ))
        })?;
        if source::crash_point("quarantined").is_some() {
            std::process::abort();
        }
        Ok(())
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        // A run that stopped before its stream ended commits no quarantined rows: stop the
        // writer before closing its channel (which it would take as the end).
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

/// The quarantine rows of run `run`, in one commit replacing those of an earlier try.
async fn write(
    url: Url,
    runtime: Arc<RuntimeEnv>,
    name: String,
    run: i64,
    receiver: mpsc::Receiver<Result<RecordBatch>>,
) -> DeltaResult<()> {
    let table = target::open(&runtime, &url).await?;
    let exists = table.version().is_some();
    let stream: SendableRecordBatchStream =
        Box::pin(RecordBatchStreamAdapter::new(schema(), receiver));
    let plan = source::once(stream).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
    let mut write = table
        .write(Vec::<RecordBatch>::new())
        .with_input_plan(plan)
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "tributary".to_string(),
            serde_json::json!({ "materialization": name, "run": run }),
        )]));
    write = if exists {
        write
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(col("run").eq(lit(run)))
    } else {
        write.with_save_mode(SaveMode::Append)
    };
    write.await.map(|_| ())
}

/// Removes the rows of run `run` (left by a try that was killed after its quarantine
/// commit and before its data commit).
async fn clear(url: &Url, runtime: &RuntimeEnv, run: i64) -> DeltaResult<()> {
    let table = target::open(runtime, url).await?;
    if table.version().is_none() {
        return Ok(());
    }
    table
        .delete()
        .with_predicate(col("run").eq(lit(run)))
        .await?;
    Ok(())
}

/// `stream` with the kept columns cast, rows that do not fit set aside as `misfit` says,
/// and (with a quarantine) the quarantine committed when `stream` ends.
pub fn conformed(
    stream: SendableRecordBatchStream,
    conform: Conform,
    misfit: Misfit,
    counters: Arc<Counters>,
) -> SendableRecordBatchStream {
    struct State {
        input: SendableRecordBatchStream,
        conform: Conform,
        misfit: Misfit,
        counters: Arc<Counters>,
    }
    let schema = conform.schema();
    let state = State {
        input: stream,
        conform,
        misfit,
        counters,
    };
    let rows = futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            let batch = match state.input.next().await {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    if let Misfit::Quarantine(q) = &mut state.misfit
                        && let Err(e) = q.finish().await
                    {
                        return Some((Err(e), None));
                    }
                    return None;
                }
            };
            let (good, bad) = match state.conform.split(&batch) {
                Ok(split) => split,
                Err(e) => return Some((Err(e), None)),
            };
            if let Some(bad) = bad {
                let count = bad.reasons.len() as u64;
                match &mut state.misfit {
                    Misfit::Fail => {
                        let row = raw_json(&bad.rows.slice(0, 1))
                            .ok()
                            .and_then(|r| r.into_iter().next())
                            .unwrap_or_default();
                        let message = format!(
                            "{} in row {row}; `on_invalid: quarantine` sets such rows aside instead of failing the run",
                            bad.reasons[0]
                        );
                        state.counters.rejected(&message);
                        return Some((Err(DataFusionError::Execution(message)), None));
                    }
                    Misfit::Quarantine(q) => {
                        if let Err(e) = q.put(bad).await {
                            return Some((Err(e), None));
                        }
                        state
                            .counters
                            .quarantined
                            .fetch_add(count, Ordering::Relaxed);
                    }
                }
            }
            if good.num_rows() > 0 {
                return Some((Ok(good), Some(state)));
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, rows))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Decimal128Array, Float64Array, Int32Array};

    use super::*;

    fn conform(field: Field, to: DataType, array: ArrayRef) -> (RecordBatch, Option<Misfits>) {
        let ids = Arc::new(Int32Array::from_iter_values(0..array.len() as i32));
        let input = Schema::new(vec![Field::new("id", DataType::Int32, false), field]);
        let label = to.to_string();
        let conform = Conform::new(
            &input,
            vec![Kept {
                name: "v".into(),
                to,
                label,
            }],
        )
        .unwrap();
        let batch = RecordBatch::try_new(Arc::new(input), vec![ids, array]).unwrap();
        conform.split(&batch).unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<i32> {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn text_fits_a_number_column_when_it_parses() {
        let values = StringArray::from(vec![Some("42"), Some("x"), None, Some("-7"), Some("1.5")]);
        let (good, bad) = conform(
            Field::new("v", DataType::Utf8, true),
            DataType::Int32,
            Arc::new(values),
        );
        assert_eq!(ids(&good), [0, 2, 3]);
        assert_eq!(good.schema().field(1).data_type(), &DataType::Int32);
        let bad = bad.unwrap();
        assert_eq!(ids(&bad.rows), [1, 4]);
        assert_eq!(bad.rows.schema().field(1).data_type(), &DataType::Utf8);
        assert!(
            bad.reasons[0].contains("`v`: \"x\" (Utf8) does not fit the copy's Int32 column"),
            "{}",
            bad.reasons[0]
        );
        assert_eq!(
            raw_json(&bad.rows).unwrap(),
            [r#"{"id":1,"v":"x"}"#, r#"{"id":4,"v":"1.5"}"#]
        );
    }

    #[test]
    fn numbers_must_survive_the_cast_unchanged() {
        let values =
            Float64Array::from(vec![Some(2.0), Some(2.5), Some(1e12), Some(f64::NAN), None]);
        let (good, bad) = conform(
            Field::new("v", DataType::Float64, true),
            DataType::Int32,
            Arc::new(values),
        );
        assert_eq!(ids(&good), [0, 4]);
        assert_eq!(ids(&bad.unwrap().rows), [1, 2, 3]);

        let values = Decimal128Array::from(vec![Some(12_500), Some(12_345), None])
            .with_precision_and_scale(12, 4)
            .unwrap();
        let (good, bad) = conform(
            Field::new("v", DataType::Decimal128(12, 4), true),
            DataType::Decimal128(10, 2),
            Arc::new(values),
        );
        // 1.2500 is 1.25; 1.2345 would be rounded.
        assert_eq!(ids(&good), [0, 2]);
        assert_eq!(ids(&bad.unwrap().rows), [1]);
    }

    #[test]
    fn a_batch_that_fits_is_only_cast() {
        let values = StringArray::from(vec![Some("1"), None]);
        let (good, bad) = conform(
            Field::new("v", DataType::Utf8, true),
            DataType::Int64,
            Arc::new(values),
        );
        assert!(bad.is_none());
        assert_eq!(good.num_rows(), 2);
        assert_eq!(good.schema().field(1).data_type(), &DataType::Int64);
    }
}

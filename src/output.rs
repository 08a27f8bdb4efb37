//! Writing query results: a text table, CSV, JSON, newline-delimited JSON or Parquet.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::error::Result;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table (the whole result is held to size the columns).
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A Parquet file.
    Parquet,
    /// Nothing: rows are read and discarded (to time a query).
    Null,
}

impl OutputFormat {
    /// Whether the format is binary (and so not for a terminal).
    pub fn is_binary(self) -> bool {
        self == OutputFormat::Parquet
    }
}

/// Writes every batch of `stream` to `out` as it arrives (the table format waits for the
/// last batch), and returns the number of rows written.
pub async fn write_stream<W: Write + Send>(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: W,
) -> Result<usize> {
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        OutputFormat::Table => {
            let mut out = out;
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                batches.push(batch);
            }
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema));
            }
            writeln!(out, "{}", pretty_format_batches(&batches)?)?;
            out.flush()?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                // The header alone says which columns an empty result has.
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            writer.into_inner().flush()?;
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
            let mut out = writer.into_inner();
            writeln!(out)?;
            out.flush()?;
        }
        OutputFormat::Ndjson => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
            writer.into_inner().flush()?;
        }
        OutputFormat::Null => {
            while let Some(batch) = stream.next().await {
                rows += batch?.num_rows();
            }
        }
        OutputFormat::Parquet => {
            let mut writer = ArrowWriter::try_new(out, schema, None)?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.close()?;
        }
    }
    Ok(rows)
}

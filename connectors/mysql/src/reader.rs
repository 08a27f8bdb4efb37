//! Running a query and streaming its rows as Arrow batches.
//!
//! Queries go over the binary protocol (a prepared statement) unless the source asks for
//! text: integers, floats, dates and times arrive as binary values, so only strings and
//! decimals are parsed. mysql_async
//! rewrites `:name` in a statement it prepares into a placeholder, tracking string literals
//! with backslash escapes, which the session turns off (`NO_BACKSLASH_ESCAPES`); a query
//! with a backslash could therefore be misread, and goes over the text protocol instead.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, TryStreamExt};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::{Protocol, Query, WithParams};
use mysql_async::{QueryResult, Value};
use tokio::sync::OwnedSemaphorePermit;
use tributary_core::Error;
use tributary_core::remote::RemoteReader;
use tributary_core::remote::connections::Reservation;

use crate::config::WireProtocol;
use crate::connect::{Connector, describe_error};
use crate::decode::BatchDecoder;

/// What every reader of one source shares.
#[derive(Debug)]
pub struct Shared {
    /// The source name, for errors.
    pub name: String,
    /// The connection pool.
    pub connector: Connector,
    /// Rows per batch, overriding DataFusion's batch size.
    pub batch_size: Option<usize>,
    /// The protocol rows are read with.
    pub protocol: WireProtocol,
}

impl Shared {
    /// A failure of this source, in DataFusion's terms.
    pub fn fail(&self, what: &str, e: &mysql_async::Error) -> DataFusionError {
        Error::Unavailable(format!("{what}: {}", describe_error(e))).in_source(&self.name)
    }

    fn decode_failed(&self, e: impl std::fmt::Display) -> DataFusionError {
        Error::Unavailable(format!("reading rows failed: {e}")).in_source(&self.name)
    }
}

/// Runs the parts of one scan, each on its own connection.
#[derive(Debug)]
pub struct MysqlReader {
    shared: Arc<Shared>,
    /// Every part's connection.
    connections: Arc<Reservation>,
}

impl MysqlReader {
    /// A reader for a scan of `parts` queries over `shared`'s pool.
    pub fn new(shared: Arc<Shared>, parts: usize) -> Self {
        let connections = Arc::new(shared.connector.reservation(parts));
        MysqlReader {
            shared,
            connections,
        }
    }
}

impl RemoteReader for MysqlReader {
    fn read(
        &self,
        _part: usize,
        sql: String,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<SendableRecordBatchStream> {
        let shared = Arc::clone(&self.shared);
        let connections = Arc::clone(&self.connections);
        let batch_size = shared.batch_size.unwrap_or(batch_size).max(1);
        let stream_schema = Arc::clone(&schema);
        let opening = async move { open(shared, connections, sql, schema, batch_size).await };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            stream_schema,
            futures::stream::once(opening).try_flatten(),
        )))
    }

    fn connections(&self) -> Option<Arc<Reservation>> {
        Some(Arc::clone(&self.connections))
    }
}

async fn open(
    shared: Arc<Shared>,
    connections: Arc<Reservation>,
    sql: String,
    schema: SchemaRef,
    batch_size: usize,
) -> Result<std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>> {
    let (conn, place) = shared
        .connector
        .get_reserved(&connections)
        .await
        .map_err(|e| e.in_source(&shared.name))?
        .into_parts();
    let id = conn.id();
    if shared.protocol == WireProtocol::Text || sql.contains('\\') {
        let result = sql.run(conn).await;
        stream(shared, result, place, schema, batch_size, id)
    } else {
        let result = sql.with(()).run(conn).await;
        stream(shared, result, place, schema, batch_size, id)
    }
}

fn stream<P: Protocol + Send + 'static>(
    shared: Arc<Shared>,
    result: mysql_async::Result<QueryResult<'static, 'static, P>>,
    place: OwnedSemaphorePermit,
    schema: SchemaRef,
    batch_size: usize,
    id: u32,
) -> Result<std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>> {
    let result = result.map_err(|e| shared.fail("the query failed", &e))?;
    // A scan of no columns is written `SELECT 1 FROM …` (MySQL has no `SELECT FROM`):
    // only its rows are counted.
    let placeholder = schema.fields().is_empty() && result.columns_ref().len() == 1;
    let columns: &[mysql_async::Column] = if placeholder {
        &[]
    } else {
        result.columns_ref()
    };
    if columns.len() != schema.fields().len() {
        return Err(shared.decode_failed(format!(
            "the query returned {} columns where {} were expected",
            columns.len(),
            schema.fields().len()
        )));
    }
    let types: Vec<ColumnType> = columns.iter().map(|c| c.column_type()).collect();
    let decoder =
        BatchDecoder::new(schema, &types, batch_size).map_err(|e| shared.decode_failed(e))?;
    let state = Reading {
        shared,
        result: Some(result),
        place: Some(place),
        decoder,
        batch_size,
        id,
    };
    Ok(Box::pin(futures::stream::try_unfold(state, next_batch)))
}

/// A query in progress. Dropped before its end (a `LIMIT` satisfied, a query cancelled),
/// it stops the server's work before its connection goes back to the pool.
struct Reading<P: Protocol + Send + 'static> {
    shared: Arc<Shared>,
    /// `None` once every row has been read.
    result: Option<QueryResult<'static, 'static, P>>,
    /// The connection's place in the pool, given up after the connection.
    place: Option<OwnedSemaphorePermit>,
    decoder: BatchDecoder,
    batch_size: usize,
    /// The server's id of the connection, to stop its query.
    id: u32,
}

async fn next_batch<P: Protocol + Send + 'static>(
    mut s: Reading<P>,
) -> Result<Option<(RecordBatch, Reading<P>)>> {
    let Some(result) = s.result.as_mut() else {
        return Ok(None);
    };
    loop {
        match result.next().await {
            Ok(Some(row)) => {
                s.decoder
                    .append(|i| row.as_ref(i).unwrap_or(&Value::NULL))
                    .map_err(|e| s.shared.decode_failed(e))?;
                if s.decoder.len() >= s.batch_size {
                    let batch = s.decoder.flush().map_err(|e| s.shared.decode_failed(e))?;
                    return Ok(Some((batch, s)));
                }
            }
            Ok(None) => {
                s.finish();
                for (column, count) in s.decoder.zeros() {
                    tracing::warn!(source = %s.shared.name, column, count,
                        "zero dates (0000-00-00) read as NULL");
                }
                if s.decoder.is_empty() {
                    return Ok(None);
                }
                let batch = s.decoder.flush().map_err(|e| s.shared.decode_failed(e))?;
                return Ok(Some((batch, s)));
            }
            Err(e) => {
                s.finish();
                return Err(s.shared.fail("reading rows failed", &e));
            }
        }
    }
}

impl<P: Protocol + Send + 'static> Reading<P> {
    /// Gives the connection back (every row read, or the query failed), then its place.
    fn finish(&mut self) {
        self.result = None;
        self.place = None;
    }
}

impl<P: Protocol + Send + 'static> Drop for Reading<P> {
    fn drop(&mut self) {
        let Some(result) = self.result.take() else {
            return;
        };
        let place = self.place.take();
        let connector = self.shared.connector.clone();
        let id = self.id;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Stop the query first, so the connection is not reused (and its next query
                // killed) before the server has given up this one.
                connector.kill_query(id).await;
                drop(result);
                drop(place);
            });
        }
    }
}

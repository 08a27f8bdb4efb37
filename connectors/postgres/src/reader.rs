//! Running a query with `COPY … TO STDOUT (FORMAT binary)` and streaming it as batches.
//!
//! The parts of one split scan read the same snapshot: the first part to start exports a
//! snapshot from a transaction that stays open until every part has imported it, so a
//! table written to during the scan is still read as of one instant.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_postgres::CopyOutStream;
use tokio_postgres::types::Kind;
use tributary_core::Error;
use tributary_core::remote::RemoteReader;
use tributary_core::remote::connections::Reservation;

use crate::connect::{Connector, Pooled, describe_error};
use crate::copy::BatchDecoder;
use crate::discovery::quote_ident;
use crate::types::{Wire, map_type};

/// What every reader of one source shares.
#[derive(Debug)]
pub struct Shared {
    /// The source name, for errors.
    pub name: String,
    /// The connection pool.
    pub connector: Connector,
    /// Rows per batch, overriding DataFusion's batch size.
    pub batch_size: Option<usize>,
}

impl Shared {
    /// A failure of this source, in DataFusion's terms.
    pub fn fail(&self, what: &str, e: &tokio_postgres::Error) -> DataFusionError {
        Error::Unavailable(format!("{what}: {}", describe_error(e))).in_source(&self.name)
    }
}

/// Runs the parts of one scan.
#[derive(Debug)]
pub struct PgReader {
    shared: Arc<Shared>,
    snapshot: Option<Arc<SnapshotShare>>,
    /// Every part's connection, and the snapshot's.
    connections: Arc<Reservation>,
}

impl PgReader {
    /// A reader for a scan of `parts` queries.
    pub fn new(shared: Arc<Shared>, parts: usize) -> Self {
        let snapshot = (parts > 1).then(|| Arc::new(SnapshotShare::new(parts)));
        let connections = Arc::new(
            shared
                .connector
                .reservation(parts + usize::from(snapshot.is_some())),
        );
        PgReader {
            shared,
            snapshot,
            connections,
        }
    }
}

impl RemoteReader for PgReader {
    fn read(
        &self,
        _part: usize,
        sql: String,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<SendableRecordBatchStream> {
        let shared = Arc::clone(&self.shared);
        let snapshot = self.snapshot.clone();
        let connections = Arc::clone(&self.connections);
        let batch_size = shared.batch_size.unwrap_or(batch_size);
        let stream_schema = Arc::clone(&schema);
        let opening =
            async move { open(shared, connections, snapshot, sql, schema, batch_size).await };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            stream_schema,
            futures::stream::once(opening).try_flatten(),
        )))
    }

    fn connections(&self) -> Option<Arc<Reservation>> {
        Some(Arc::clone(&self.connections))
    }
}

/// Connects, joins the scan's snapshot, describes the query and starts the COPY.
async fn open(
    shared: Arc<Shared>,
    connections: Arc<Reservation>,
    snapshot: Option<Arc<SnapshotShare>>,
    sql: String,
    schema: SchemaRef,
    batch_size: usize,
) -> Result<impl Stream<Item = Result<RecordBatch>>> {
    let conn = shared
        .connector
        .get_reserved(&connections)
        .await
        .map_err(|e| e.in_source(&shared.name))?;
    let in_transaction = match &snapshot {
        Some(share) => share.join(&shared, &connections, &conn).await?,
        None => false,
    };
    let statement = conn
        .prepare(&sql)
        .await
        .map_err(|e| shared.fail("the query failed", &e))?;
    let (copy_sql, wires) = copy_query(&sql, statement.columns());
    let decoder = BatchDecoder::new(schema, &wires, batch_size)
        .map_err(|e| Error::Unavailable(e.to_string()).in_source(&shared.name))?;
    let copy = conn
        .copy_out(&copy_sql)
        .await
        .map_err(|e| shared.fail("the query failed", &e))?;
    let state = Copying {
        shared,
        conn: Some(conn),
        copy: Box::pin(copy),
        decoder,
        ready: Vec::new(),
        in_transaction,
        done: false,
    };
    Ok(futures::stream::try_unfold(state, next_batch))
}

/// Wraps `sql` in the binary COPY, casting to text the columns whose type has no binary
/// decoder here (their Arrow type is text too, by the same mapping).
fn copy_query(sql: &str, columns: &[tokio_postgres::Column]) -> (String, Vec<Wire>) {
    let mut wires = Vec::with_capacity(columns.len());
    let mut select = Vec::with_capacity(columns.len());
    let mut cast = false;
    for (i, column) in columns.iter().enumerate() {
        let alias = quote_ident(&format!("c{i}"));
        match map_type(column.type_(), -1).wire {
            Some(wire) => {
                wires.push(wire);
                select.push(alias);
            }
            None => {
                cast = true;
                if matches!(column.type_().kind(), Kind::Array(_)) {
                    wires.push(Wire::Array(Box::new(Wire::Text)));
                    select.push(format!("{alias}::text[]"));
                } else {
                    wires.push(Wire::Text);
                    select.push(format!("{alias}::text"));
                }
            }
        }
    }
    let query = if cast {
        let aliases: Vec<String> = (0..columns.len())
            .map(|i| quote_ident(&format!("c{i}")))
            .collect();
        format!(
            "SELECT {} FROM ({sql}) AS q({})",
            select.join(", "),
            aliases.join(", ")
        )
    } else {
        sql.to_string()
    };
    (format!("COPY ({query}) TO STDOUT (FORMAT binary)"), wires)
}

/// A COPY in progress. Dropped before the end (a `LIMIT` satisfied, a query cancelled),
/// it cancels the server's work and closes its connection rather than return it to the
/// pool mid-COPY.
struct Copying {
    shared: Arc<Shared>,
    conn: Option<Pooled>,
    copy: Pin<Box<CopyOutStream>>,
    decoder: BatchDecoder,
    ready: Vec<RecordBatch>,
    in_transaction: bool,
    done: bool,
}

async fn next_batch(mut s: Copying) -> Result<Option<(RecordBatch, Copying)>> {
    loop {
        if !s.ready.is_empty() {
            let batch = s.ready.remove(0);
            return Ok(Some((batch, s)));
        }
        if s.done {
            return Ok(None);
        }
        match s.copy.next().await {
            Some(Ok(chunk)) => s
                .decoder
                .push(&chunk, &mut s.ready)
                .map_err(|e| Error::Unavailable(e.to_string()).in_source(&s.shared.name))?,
            Some(Err(e)) => return Err(s.shared.fail("reading rows failed", &e)),
            None => {
                let last = s
                    .decoder
                    .finish()
                    .map_err(|e| Error::Unavailable(e.to_string()).in_source(&s.shared.name))?;
                s.ready.extend(last);
                warn_adjusted(&s);
                if s.in_transaction
                    && let Some(conn) = &s.conn
                {
                    conn.end("COMMIT")
                        .await
                        .map_err(|e| s.shared.fail("ending the read transaction failed", &e))?;
                }
                s.done = true;
            }
        }
    }
}

fn warn_adjusted(s: &Copying) {
    let adjusted = s.decoder.adjustments();
    for (column, count) in &adjusted.nulled {
        tracing::warn!(source = %s.shared.name, column, count,
            "NaN, infinite or out-of-range values read as NULL");
    }
    for (column, count) in &adjusted.truncated {
        tracing::warn!(source = %s.shared.name, column, count,
            "numeric values with more fraction digits than the column's scale were truncated");
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(conn) = self.conn.take() {
            self.shared.connector.cancel(&conn);
            // Closed, not pooled, and without reading on: the server may still be
            // sending this COPY.
            conn.abort();
        }
    }
}

/// The snapshot the parts of one scan share.
#[derive(Debug)]
struct SnapshotShare {
    exporter: tokio::sync::Mutex<Exporter>,
    /// Parts that have not imported the snapshot yet.
    waiting: AtomicUsize,
}

#[derive(Debug)]
enum Exporter {
    NotStarted,
    Open {
        conn: Box<Pooled>,
        id: String,
    },
    /// Every part has imported it, or exporting failed (parts then read independently).
    Closed,
}

impl SnapshotShare {
    fn new(parts: usize) -> Self {
        SnapshotShare {
            exporter: tokio::sync::Mutex::new(Exporter::NotStarted),
            waiting: AtomicUsize::new(parts),
        }
    }

    /// Starts a read-only transaction on `conn` at the scan's snapshot. Returns whether
    /// `conn` is now in a transaction.
    async fn join(
        &self,
        shared: &Shared,
        connections: &Reservation,
        conn: &Pooled,
    ) -> Result<bool> {
        let mut exporter = self.exporter.lock().await;
        if matches!(*exporter, Exporter::NotStarted) {
            *exporter = match export(shared, connections).await {
                Ok((conn, id)) => Exporter::Open {
                    conn: Box::new(conn),
                    id,
                },
                Err(e) => {
                    tracing::warn!(source = %shared.name, error = %e,
                        "cannot export a snapshot; the parts of this scan read independently");
                    Exporter::Closed
                }
            };
        }
        let id = match &*exporter {
            Exporter::Open { id, .. } => Some(id.clone()),
            _ => None,
        };
        let joined = match id {
            Some(id) => {
                conn.begin(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                    id.replace('\'', "''")
                ))
                .await
                .map_err(|e| shared.fail("joining the scan's snapshot failed", &e))?;
                true
            }
            None => false,
        };
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && let Exporter::Open { conn, .. } = std::mem::replace(&mut *exporter, Exporter::Closed)
        {
            // Everyone has the snapshot: end the exporting transaction and pool the
            // connection again.
            if conn.end("ROLLBACK").await.is_err() {
                conn.close();
            }
        }
        Ok(joined)
    }
}

async fn export(
    shared: &Shared,
    connections: &Reservation,
) -> std::result::Result<(Pooled, String), String> {
    let conn = shared
        .connector
        .get_reserved(connections)
        .await
        .map_err(|e| e.to_string())?;
    conn.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| describe_error(&e))?;
    let row = conn
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
        .map_err(|e| describe_error(&e))?;
    Ok((conn, row.get(0)))
}

impl Drop for SnapshotShare {
    fn drop(&mut self) {
        // A part that never ran leaves the exporting transaction open: close that
        // connection rather than pool it inside a transaction.
        if let Exporter::Open { conn, .. } =
            std::mem::replace(self.exporter.get_mut(), Exporter::Closed)
        {
            conn.close();
        }
    }
}

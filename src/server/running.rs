//! Queries being streamed by this node, so `CancelFlightInfo` can stop them, and the log
//! of each one's life. A query is known by its ticket; cancelling ends its stream with a
//! `Cancelled` status, and dropping the stream (done, cancelled, or the client gone) stops
//! the sources' work. Each query logs its start and its end (rows, time, outcome) in a
//! `query` span carrying its id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::Status;

/// The running queries of this node.
#[derive(Debug, Default)]
pub struct Running {
    queries: Mutex<HashMap<u64, (Bytes, Arc<Notify>)>>,
    next: AtomicU64,
}

/// How a query's stream ended.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Every batch was sent.
    Done,
    /// It failed.
    Failed,
    /// `CancelFlightInfo` stopped it.
    Cancelled,
    /// The client stopped reading (disconnected, or dropped the stream).
    Abandoned,
}

/// A query's place in the registry and its log; removed and logged when the stream goes.
struct Registration {
    running: Arc<Running>,
    id: u64,
    span: tracing::Span,
    started: Instant,
    rows: usize,
    outcome: Outcome,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(parent: &self.span, rows = self.rows, elapsed_ms, outcome = ?self.outcome, "query ended");
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Bytes, Arc<Notify>)>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `batches` of the query `sql` behind `ticket`, ending with `Cancelled` if the query
    /// is cancelled first.
    pub fn track(
        self: &Arc<Self>,
        ticket: Bytes,
        sql: &str,
        batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + Unpin + 'static,
    ) -> impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("query", id, sql);
        tracing::info!(parent: &span, "query started");
        let cancel = Arc::new(Notify::new());
        self.lock().insert(id, (ticket, Arc::clone(&cancel)));
        let registration = Registration {
            running: Arc::clone(self),
            id,
            span,
            started: Instant::now(),
            rows: 0,
            outcome: Outcome::Abandoned,
        };
        futures::stream::unfold(Some((batches, cancel, registration)), |state| async move {
            let (mut batches, cancel, mut registration) = state?;
            tokio::select! {
                next = batches.next() => match next {
                    Some(Ok(batch)) => {
                        registration.rows += batch.num_rows();
                        Some((Ok(batch), Some((batches, cancel, registration))))
                    }
                    Some(Err(e)) => {
                        tracing::warn!(parent: &registration.span, error = %e, "query failed");
                        registration.outcome = Outcome::Failed;
                        Some((Err(e), None))
                    }
                    None => {
                        registration.outcome = Outcome::Done;
                        None
                    }
                },
                () = cancel.notified() => {
                    registration.outcome = Outcome::Cancelled;
                    Some((
                    Err(FlightError::Tonic(Box::new(Status::cancelled(
                        "the query was cancelled (CancelFlightInfo)",
                    )))),
                    None,
                ))
                }
            }
        })
    }

    /// Cancels every running query with one of `tickets`; returns how many there were.
    pub fn cancel(&self, tickets: &[Bytes]) -> usize {
        let queries = self.lock();
        let mut cancelled = 0;
        for (ticket, cancel) in queries.values() {
            if tickets.contains(ticket) {
                // A stored permit: the stream sees it even if it is not waiting right now.
                cancel.notify_one();
                cancelled += 1;
            }
        }
        cancelled
    }
}

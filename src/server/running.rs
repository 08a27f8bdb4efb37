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
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use bytes::Bytes;
use datafusion::physical_plan::ExecutionPlan;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::Status;

use super::metrics::Metrics;

/// The running queries of this node.
#[derive(Debug)]
pub struct Running {
    queries: Mutex<HashMap<u64, (Bytes, Arc<Notify>)>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A query about to stream.
pub struct Query<'a> {
    /// The ticket `CancelFlightInfo` names it by.
    pub ticket: Bytes,
    /// Its SQL, for the log.
    pub sql: &'a str,
    /// Who runs it, when the server authenticates callers.
    pub user: Option<&'a str>,
    /// Its physical plan, whose source scans count what they read.
    pub plan: Arc<dyn ExecutionPlan>,
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

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// A query's place in the registry, its log and its metrics; removed, logged and counted
/// when the stream goes.
struct Registration {
    running: Arc<Running>,
    id: u64,
    span: tracing::Span,
    started: Instant,
    rows: u64,
    /// Flight data sent, counted after encoding.
    bytes: Arc<AtomicU64>,
    plan: Arc<dyn ExecutionPlan>,
    outcome: Outcome,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
        let elapsed = self.started.elapsed();
        let bytes = self.bytes.load(Ordering::Relaxed);
        tracing::info!(
            parent: &self.span,
            rows = self.rows,
            bytes,
            elapsed_ms = elapsed.as_millis() as u64,
            outcome = ?self.outcome,
            "query ended"
        );
        self.running.metrics.query_ended(
            self.outcome.label(),
            elapsed,
            self.rows,
            bytes,
            &self.plan,
        );
    }
}

impl Running {
    /// No queries yet; they will be counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Running {
            queries: Mutex::default(),
            next: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Bytes, Arc<Notify>)>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Flight data `encode` makes of `query`'s `batches`, ending with `Cancelled` if
    /// the query is cancelled first.
    pub fn track<S>(
        self: &Arc<Self>,
        query: Query<'_>,
        batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + Unpin + 'static,
        encode: impl FnOnce(BoxStream<'static, Result<RecordBatch, FlightError>>) -> S,
    ) -> impl Stream<Item = Result<FlightData, Status>> + Send + 'static
    where
        S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let span = match query.user {
            Some(user) => tracing::info_span!("query", id, user, sql = query.sql),
            None => tracing::info_span!("query", id, sql = query.sql),
        };
        tracing::info!(parent: &span, "query started");
        self.metrics.query_started();
        let cancel = Arc::new(Notify::new());
        self.lock().insert(id, (query.ticket, Arc::clone(&cancel)));
        let bytes = Arc::new(AtomicU64::new(0));
        let registration = Registration {
            running: Arc::clone(self),
            id,
            span,
            started: Instant::now(),
            rows: 0,
            bytes: Arc::clone(&bytes),
            plan: query.plan,
            outcome: Outcome::Abandoned,
        };
        let batches =
            futures::stream::unfold(Some((batches, cancel, registration)), |state| async move {
                let (mut batches, cancel, mut registration) = state?;
                tokio::select! {
                    next = batches.next() => match next {
                        Some(Ok(batch)) => {
                            registration.rows += batch.num_rows() as u64;
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
            });
        // The encoder sends everything it made of a batch before asking for the next, so
        // the count is complete when the query's end is logged.
        encode(batches.boxed()).inspect(move |data| {
            if let Ok(data) = data {
                let size = data.data_header.len() + data.data_body.len();
                bytes.fetch_add(size as u64, Ordering::Relaxed);
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

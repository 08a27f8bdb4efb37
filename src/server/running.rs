//! Queries being streamed by this node, so `CancelFlightInfo` can stop them. A query is
//! known by its ticket; cancelling ends its stream with a `Cancelled` status, and dropping
//! the stream (done, cancelled, or the client gone) stops the sources' work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Removes a query from the registry when its stream goes away.
struct Registration {
    running: Arc<Running>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Bytes, Arc<Notify>)>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `batches` of the query behind `ticket`, ending with `Cancelled` if the query is
    /// cancelled first.
    pub fn track(
        self: &Arc<Self>,
        ticket: Bytes,
        batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + Unpin + 'static,
    ) -> impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        self.lock().insert(id, (ticket, Arc::clone(&cancel)));
        let registration = Registration {
            running: Arc::clone(self),
            id,
        };
        futures::stream::unfold(Some((batches, cancel, registration)), |state| async move {
            let (mut batches, cancel, registration) = state?;
            tokio::select! {
                next = batches.next() => {
                    next.map(|item| (item, Some((batches, cancel, registration))))
                }
                () = cancel.notified() => Some((
                    Err(FlightError::Tonic(Box::new(Status::cancelled(
                        "the query was cancelled (CancelFlightInfo)",
                    )))),
                    None,
                )),
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

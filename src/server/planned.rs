//! Plans made for `GetFlightInfo`, kept for the `DoGet` that usually follows, so that a
//! statement is planned once rather than twice (which shows on queries of a few tens of
//! milliseconds, such as TPC-H q02 and q11). A ticket stays self-contained: a `DoGet` on
//! another node, a second `DoGet` of one ticket, or one after the plan was dropped plans
//! again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::prelude::DataFrame;

/// Plans kept at most, the oldest dropped first (a client may never fetch what it asked
/// about).
const KEPT: usize = 64;

/// How long a plan is kept: long enough for a client to fetch, short enough that a change
/// of a source's tables is seen by the next query, as without the cache.
const FRESH: Duration = Duration::from_secs(10);

/// Planned statements by their encoded handle (SQL and bound parameters), each taken once.
#[derive(Default)]
pub struct PlannedStatements {
    plans: Mutex<VecDeque<(Bytes, Instant, DataFrame)>>,
}

impl PlannedStatements {
    /// Keeps `plan`, the plan of the statement whose encoded handle is `handle`.
    pub fn keep(&self, handle: Bytes, plan: DataFrame) {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= KEPT {
            plans.pop_front();
        }
        plans.push_back((handle, Instant::now(), plan));
    }

    /// The plan kept for `handle` in the last [`FRESH`] seconds, taken out, if any.
    pub fn take(&self, handle: &[u8]) -> Option<DataFrame> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.retain(|(_, planned, _)| planned.elapsed() < FRESH);
        let at = plans.iter().position(|(h, _, _)| h.as_ref() == handle)?;
        plans.remove(at).map(|(_, _, plan)| plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan(sql: &str) -> DataFrame {
        SessionContext::new().sql(sql).await.unwrap()
    }

    #[tokio::test]
    async fn a_plan_is_taken_once_by_its_handle() {
        let kept = PlannedStatements::default();
        kept.keep(Bytes::from_static(b"a"), plan("SELECT 1 AS a").await);
        kept.keep(Bytes::from_static(b"b"), plan("SELECT 2 AS b").await);
        let b = kept.take(b"b").expect("kept");
        assert_eq!(b.schema().field(0).name(), "b");
        assert!(kept.take(b"b").is_none(), "taken already");
        assert!(kept.take(b"c").is_none(), "never kept");
        assert!(kept.take(b"a").is_some());
    }

    #[tokio::test]
    async fn the_oldest_plans_make_room() {
        let kept = PlannedStatements::default();
        let one = plan("SELECT 1").await;
        for i in 0..=KEPT {
            kept.keep(Bytes::from(i.to_string()), one.clone());
        }
        assert!(kept.take(b"0").is_none(), "dropped for the newest");
        assert!(kept.take(b"1").is_some());
        assert!(kept.take(KEPT.to_string().as_bytes()).is_some());
    }
}

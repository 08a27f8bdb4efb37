//! A hash join's remote probe side started with its join (`EarlyProbeExec`), checked the
//! same way over each SQL source: `customers` (2,000) left joined to their `orders`
//! (400,000: more than a probe side started early buffers, so its query stays at the
//! server until the build side is read), each read in two parts, in a DataFusion hash
//! join whose probe side (`orders`) waits for no dynamic filter. The sources' modules
//! create the tables and say how to lock `customers` and see `orders` being read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::util::pretty::pretty_format_batches;
use tributary::Engine;

use crate::common::table;

/// The join, with an answer that needs every row of both sides.
const ORDERS_PER_CUSTOMER: &str = "SELECT c.id, count(o.id) AS n, sum(o.amount) AS total \
    FROM customers c LEFT JOIN orders o ON o.customer = c.id \
    GROUP BY c.id ORDER BY n, c.id DESC LIMIT 2";

const ANSWER: &str = "+------+---+-------+\n| id   | n | total |\n+------+---+-------+\n| 2000 | 0 |       |\n| 1999 | 0 |       |\n+------+---+-------+";

/// A session of the source's own, outside the engine's pool.
pub(crate) trait Locker {
    /// Locks `customers` against reads until [`unlock`](Self::unlock).
    async fn lock_customers(&mut self);
    /// Whether the server is running a query of `orders` now.
    async fn orders_running(&mut self) -> bool;
    /// Releases the lock.
    async fn unlock(&mut self);
}

/// Runs the join with `customers` locked until the `orders` scan has been seen at the
/// server or `patience` has passed, and returns whether it was seen: a probe side started
/// early queries `orders` while the build side waits for the lock.
async fn orders_read_while_customers_wait(
    engine: &Engine,
    locker: &mut impl Locker,
    patience: Duration,
) -> bool {
    let frame = engine.sql(ORDERS_PER_CUSTOMER).await.unwrap();
    let context = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await.unwrap();
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert!(shown.contains("EarlyProbeExec"), "{shown}");
    locker.lock_customers().await;
    let query = tokio::spawn(datafusion::physical_plan::collect(plan, context));
    let started = Instant::now();
    let mut seen = false;
    while !seen && started.elapsed() < patience {
        seen = locker.orders_running().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    locker.unlock().await;
    let batches = query.await.unwrap().unwrap();
    assert_eq!(pretty_format_batches(&batches).unwrap().to_string(), ANSWER);
    seen
}

/// The probe side starts with the join on `roomy`, whose pool can give both sides every
/// connection they need at once, and not on `tight`, whose pool cannot: started early,
/// it would hold connections the build side waits for.
pub(crate) async fn starts_only_with_connections_for_both_sides(
    roomy: &Engine,
    tight: &Engine,
    locker: &mut impl Locker,
) {
    assert!(
        orders_read_while_customers_wait(roomy, locker, Duration::from_secs(30)).await,
        "the probe side did not start before the build side was read"
    );
    assert!(
        !orders_read_while_customers_wait(tight, locker, Duration::from_secs(2)).await,
        "the probe side started early without connections for the build side"
    );
}

/// Eight joins at once on `engine`, whose pool fits one join at a time: those that
/// cannot reserve every connection they need start late, and all finish.
pub(crate) async fn concurrent_joins_share_a_small_pool(engine: &Engine) {
    let queries: Vec<_> = (0..8)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { table(&engine, ORDERS_PER_CUSTOMER).await })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(queries))
        .await
        .expect("joins waited on each other's connections for ever");
    for answer in all {
        assert_eq!(answer.unwrap(), ANSWER);
    }
}

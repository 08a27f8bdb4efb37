//! A query that finds every pooled connection of its source in use waits at most the
//! source's `pool_timeout`, checked the same way over each SQL source on the tables of
//! [`early_probe`](crate::early_probe), with a pool of one connection.

use std::time::Duration;

use futures::StreamExt;
use tributary::Engine;

use crate::common::{error, table};

/// What the sources' tests add to their config: one connection, waited for briefly, and
/// batches small enough that a scan of `orders` read in part still holds it.
pub(crate) const ONE_CONNECTION: &str =
    "    pool_size: 1\n    pool_timeout: 300ms\n    batch_size: 1000\n";

/// With a scan of `orders` read in part holding the only connection, another query fails
/// with an error naming the keys to change; once the scan is dropped, queries run again
/// (the failed wait took no connection with it).
pub(crate) async fn a_query_waits_at_most_pool_timeout(engine: &Engine) {
    let frame = engine.sql("SELECT id FROM orders").await.unwrap();
    let mut holding = frame.execute_stream().await.unwrap();
    let first = holding.next().await.expect("a first batch").unwrap();
    assert!(first.num_rows() > 0);

    // Not a limit on speed: without `pool_timeout` the query would wait for ever.
    let failed = tokio::time::timeout(
        Duration::from_secs(60),
        error(engine, "SELECT count(*) AS n FROM customers"),
    )
    .await
    .expect("the query waited past its source's pool_timeout");
    for part in [
        "no free connection in the pool after waiting 300ms",
        "1 of 1 in use",
        "`sources[0].pool_size`",
        "`sources[0].pool_timeout`",
    ] {
        assert!(failed.contains(part), "{part:?} is not in: {failed}");
    }

    drop(holding);
    assert_eq!(
        table(engine, "SELECT count(*) AS n FROM customers").await,
        "+------+\n| n    |\n+------+\n| 2000 |\n+------+"
    );
}

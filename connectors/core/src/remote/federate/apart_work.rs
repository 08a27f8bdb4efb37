//! Whether a join the source may run worse is cheaper read apart, by the source's own
//! estimates of its work ([`Estimate::work`](crate::remote::Estimate::work)).
//!
//! MySQL and MariaDB run a query in one thread. Sent whole, a join that scans a large
//! table costs that scan in one thread; read apart, the scan is split into parallel parts,
//! but every other input is read whole as well, where the server would have looked up
//! only the rows it joins. Which is cheaper depends on the plan. On MariaDB 10.11 at SF1
//! (median of 3), TPC-H q14 (`lineitem` scanned, `part` looked up by key) took 1.07–1.14 s
//! read apart against 1.66 s whole, while q05 (`orders` scanned, `customer`, `lineitem`
//! and `supplier` looked up) took 1.44 s whole against 4.9–5.3 s with every table read
//! apart.
//!
//! Both ways are priced in the source's work: whole, the work of the query; apart, the
//! sum over the join's inputs of each input's least work, a plain scan's work divided
//! among its parallel parts, a sub-plan's the lesser of its own two ways. DataFusion's
//! work on the join is left out: it is small beside the source's.
//!
//! Read apart, DataFusion hashes the input with fewer rows and sends its keys to the other
//! input's query (a dynamic filter), which then returns only the rows that join. Where a
//! filter narrowed the hashed input's table to a share of its rows, the other input is
//! priced returning that share of its rows, unless the hashed input has more keys than
//! such a filter lists ([`MAX_IN_VALUES`]; TPC-H q05's year of `orders` does). TPC-H q08
//! over MariaDB: `part` filtered by `p_type = 'ECONOMY ANODIZED STEEL'` and joined by key
//! with `lineitem`, `supplier` and `orders` took 6.1 s as one query (MariaDB scans
//! `orders` and looks up the rest), against 1.6 s read apart, where `lineitem`'s scan
//! returns only the items of those parts.

use datafusion::catalog::Session;
use datafusion::common::{JoinType, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use futures::future::BoxFuture;

use super::{Planner, project_aggregates, remote_sql, remote_table};
use crate::remote::dynamic::MAX_IN_VALUES;
use crate::remote::join_order::largest_table_rows;

/// An input of a join read apart, as priced.
struct Priced {
    /// The source's work for it, for one of its parallel parts.
    work: f64,
    /// The rows it returns, all its parts together.
    rows: f64,
    /// The parallel parts it is read in.
    parts: f64,
}

impl Planner {
    /// Whether `plan`, whose work on the source run as one query is `whole`, costs the
    /// source less with its topmost join's inputs read apart. Where the source cannot
    /// tell the work of one way, the join is read apart.
    pub(super) async fn cheaper_apart(
        &self,
        plan: &LogicalPlan,
        whole: Option<f64>,
        session: &dyn Session,
    ) -> Result<bool> {
        let Some(whole) = whole else {
            return Ok(true);
        };
        let apart = self.apart_work(plan, session).await?;
        tracing::debug!(
            source = self.source.name(),
            whole,
            apart,
            "the work of a join sent whole and read apart"
        );
        Ok(apart.is_none_or(|apart| apart < whole))
    }

    /// The work of `plan`'s topmost join's inputs read apart, each at its
    /// [least work](Self::least_work); `None` without a join or where the source cannot
    /// tell an input's work.
    fn apart_work<'a>(
        &'a self,
        plan: &'a LogicalPlan,
        session: &'a dyn Session,
    ) -> BoxFuture<'a, Result<Option<f64>>> {
        Box::pin(async move {
            match plan {
                LogicalPlan::Join(join) => {
                    let (Some(left), Some(right)) = (
                        self.least_work(&join.left, session).await?,
                        self.least_work(&join.right, session).await?,
                    ) else {
                        return Ok(None);
                    };
                    let (build, build_plan, probe) = if left.rows <= right.rows {
                        (&left, join.left.as_ref(), &right)
                    } else {
                        (&right, join.right.as_ref(), &left)
                    };
                    // Past `MAX_IN_VALUES` keys only their range is sent, which keeps
                    // about every row where the keys are spread over the column.
                    let sends_keys = !join.on.is_empty()
                        && matches!(
                            join.join_type,
                            JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
                        )
                        && build.rows <= MAX_IN_VALUES as f64;
                    let saved = if sends_keys {
                        let kept = kept_share(build.rows, build_plan);
                        self.source.work_per_returned_row() * probe.rows * (1.0 - kept)
                            / probe.parts
                    } else {
                        0.0
                    };
                    Ok(Some(left.work + right.work - saved))
                }
                _ => match plan.inputs()[..] {
                    [input] => self.apart_work(input, session).await,
                    _ => Ok(None),
                },
            }
        })
    }

    /// The least work of reading `input`, an input of a join read apart, as
    /// [`read_apart`](Self::read_apart) reads it: a plain scan in its parallel parts,
    /// each doing its share of the scan's work; a sub-plan as one query, or, where the
    /// source suggests its own join is better apart, the lesser of the two ways.
    async fn least_work(
        &self,
        input: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Option<Priced>> {
        let analysis = self.rule().analyze(input);
        if analysis.blocked.is_some() {
            // DataFusion computes part of it, which the source cannot price.
            return Ok(None);
        }
        let plain = !analysis.worthwhile;
        let sql = if plain {
            remote_sql(self.source.as_ref(), input)
        } else {
            remote_sql(self.source.as_ref(), &project_aggregates(input.clone())?)
        };
        let Ok(sql) = sql else {
            return Ok(None);
        };
        let Some(estimate) = self.estimate(input, &sql.to_string(), session).await else {
            return Ok(None);
        };
        let Some(work) = estimate.work else {
            return Ok(None);
        };
        let rows = estimate.rows as f64;
        if plain {
            let parts = self.scan_parts(input, session).await? as f64;
            return Ok(Some(Priced {
                work: work / parts,
                rows,
                parts,
            }));
        }
        let mut least = work;
        if estimate.joins_better_apart
            && let Some(apart) = self.apart_work(input, session).await?
        {
            least = least.min(apart);
        }
        Ok(Some(Priced {
            work: least,
            rows,
            parts: 1.0,
        }))
    }

    /// How many parallel parts the scan of `input`, one table under filters and
    /// projections, is read in: as the source splits the table, unless it is limited.
    async fn scan_parts(&self, input: &LogicalPlan, session: &dyn Session) -> Result<usize> {
        let mut node = input;
        loop {
            match node {
                LogicalPlan::TableScan(scan) if scan.fetch.is_none() => {
                    let provider = source_as_provider(&scan.source)?;
                    let Some(table) = remote_table(provider.as_ref()) else {
                        return Ok(1);
                    };
                    let max = session.config().target_partitions();
                    let parts = self.source.split(table.info(), max).await?;
                    return Ok(parts.len().max(1));
                }
                LogicalPlan::TableScan(_) | LogicalPlan::Limit(_) => return Ok(1),
                _ => match node.inputs()[..] {
                    [child] => node = child,
                    _ => return Ok(1),
                },
            }
        }
    }
}

/// The share of its largest table's rows `plan`, which is estimated to return `rows`,
/// keeps: where its filters keep a share of a dimension, a dynamic filter with its keys
/// keeps about that share of the rows that join it. 1 where the table's size is unknown.
fn kept_share(rows: f64, plan: &LogicalPlan) -> f64 {
    match largest_table_rows(plan) {
        0 | usize::MAX => 1.0,
        table => (rows / table as f64).min(1.0),
    }
}

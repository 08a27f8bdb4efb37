//! Dynamic filters that cannot be selective are not sent to remote scans.
//!
//! A hash join's dynamic filter is not free for a remote scan. Once the build side is read,
//! DataFusion turns its keys into an `IN` list per partition, the scan writes that list for
//! its source, and the probe query starts only after both (TPC-H q13 over PostgreSQL spent
//! about 120 ms of its ~0.75 s there). That pays when the filter keeps few probe rows, and buys
//! nothing when the build side holds a key for every value the probe column has: q13 joins
//! every customer to `orders.o_custkey`.
//!
//! Join estimates assume that the side with fewer distinct keys finds all of them in the
//! other side (containment); under that assumption a filter whose build side has at least as
//! many distinct keys as the probe column keeps every probe row. [`DropUnselectiveFilters`]
//! takes such a filter off the probe side, judging by the sources' estimates: the distinct
//! values of the build side's key (or its rows, if fewer) against the probe column's. Only a
//! build side that is one table scan is judged, since the estimates of a join or a sub-plan
//! do not say how many keys survive it; without both estimates the filter stays. The filter
//! is taken off the remote scans holding it and out of the `FilterExec` DataFusion places
//! for it below a sort. A join fills its filter only when its probe side holds it, so
//! DataFusion then computes none, and the probe query starts as soon as the join polls it.
//! File scans keep theirs (pruning with a range is cheap). Dropping a filter never changes
//! an answer: the join itself matches the keys.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, Statistics};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, DynamicFilterPhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::StatisticsContext;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions, StatisticsArgs,
};

use super::RemoteScanExec;

/// Takes dynamic filters that cannot be selective off the probe sides of joins (see the
/// module documentation). Runs after the filter pushdown that hands dynamic filters to scans.
#[derive(Debug, Default)]
pub struct DropUnselectiveFilters;

impl PhysicalOptimizerRule for DropUnselectiveFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let produced = node.dynamic_expressions_produced();
            let Some(id) = produced.iter().find_map(|f| f.expression_id()) else {
                return Ok(Transformed::no(node));
            };
            let Some(build_keys) = build_keys(join) else {
                return Ok(Transformed::no(node));
            };
            let probe = drop_filter(Arc::clone(join.right()), id, build_keys)?;
            if !probe.transformed {
                return Ok(Transformed::no(node));
            }
            let left = Arc::clone(join.left());
            Arc::clone(&node)
                .replace_children(
                    vec![left, probe.data],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
                )
                .map(Transformed::yes)
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "DropUnselectiveFilters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Inserts [`DropUnselectiveFilters`] after DataFusion's filter pushdown and before
/// [`crate::start_early::StartEarly`], which starts early only what waits for no filter.
pub fn add_to(rules: &mut Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>) {
    let at = rules
        .iter()
        .position(|r| r.name() == "StartEarly")
        .or_else(|| {
            rules
                .iter()
                .position(|r| r.name() == "FilterPushdown(Post)")
                .map(|i| i + 1)
        })
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(DropUnselectiveFilters));
}

/// The estimated number of distinct keys on the build side of a single-key join: the
/// distinct values of its key column, or its rows if fewer. Only a build side that is one
/// scan (under nodes that filter rows or move them between partitions or columns) is
/// judged: a join's or a sub-plan's estimates carry their tables' distinct values past
/// filters that remove keys, and its rows count repeated keys.
fn build_keys(join: &HashJoinExec) -> Option<usize> {
    let [(key, _)] = join.on() else {
        return None;
    };
    let key = key.downcast_ref::<Column>()?;
    if !is_one_scan(join.left()) {
        return None;
    }
    let stats = statistics(join.left())?;
    let distinct = distinct_values(&stats, key.index())?;
    Some(
        stats
            .num_rows
            .get_value()
            .map_or(distinct, |&rows| distinct.min(rows)),
    )
}

/// `plan`'s statistics. They are an estimate: one that cannot be computed keeps the filter.
fn statistics(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<Statistics>> {
    StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
}

/// The estimated number of distinct values of column `column`, if there is one.
fn distinct_values(stats: &Statistics, column: usize) -> Option<usize> {
    let column = stats.column_statistics.get(column)?;
    column.distinct_count.get_value().copied()
}

/// Whether `plan` reads one table scan, through nodes that only filter rows or move them.
fn is_one_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut node = plan;
    loop {
        let children = node.children();
        let [child] = children.as_slice() else {
            return children.is_empty()
                && node
                    .downcast_ref::<RemoteScanExec>()
                    .is_none_or(|scan| scan.core().is_none());
        };
        let passes_rows = node.downcast_ref::<RepartitionExec>().is_some()
            || node.downcast_ref::<CoalescePartitionsExec>().is_some()
            || node.downcast_ref::<ProjectionExec>().is_some()
            || node.downcast_ref::<FilterExec>().is_some()
            || node.downcast_ref::<BufferExec>().is_some();
        if !passes_rows {
            return false;
        }
        node = child;
    }
}

/// `plan` with the dynamic filter `id` taken off what holds it where the column it compares
/// has at most `build_keys` distinct values: remote scans, and the `FilterExec`s DataFusion
/// places for a filter a scan does not evaluate (below a sort).
fn drop_filter(
    plan: Arc<dyn ExecutionPlan>,
    id: u64,
    build_keys: usize,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let unselective = |values: Option<usize>, holder: &dyn ExecutionPlan, table: &str| {
        let Some(values) = values.filter(|v| build_keys >= *v) else {
            return false;
        };
        tracing::debug!(
            holder = holder.name(),
            table,
            build_keys,
            probe_values = values,
            "dynamic filter dropped: the build side has a key for every value"
        );
        true
    };
    plan.transform_up(|node| {
        if let Some(scan) = node.downcast_ref::<RemoteScanExec>() {
            let values = scan
                .dynamic_filters()
                .iter()
                .find_map(|f| compared_column(f, id))
                .and_then(|column| distinct_values(statistics(&node)?.as_ref(), column));
            if unselective(values, scan, scan.table()) {
                let scan: Arc<dyn ExecutionPlan> = Arc::new(scan.without_dynamic_filter(id));
                return Ok(Transformed::yes(scan));
            }
        } else if let Some(filter) = node.downcast_ref::<FilterExec>()
            && filter.projection().is_none()
            && filter.fetch().is_none()
            && let Some(column) = compared_column(filter.predicate(), id)
        {
            let values = statistics(filter.input()).and_then(|s| distinct_values(&s, column));
            if unselective(values, filter, "") {
                return Ok(Transformed::yes(Arc::clone(filter.input())));
            }
        }
        Ok(Transformed::no(node))
    })
}

/// The column that `expr` compares, if it is the dynamic filter `id` over one column.
fn compared_column(expr: &Arc<dyn PhysicalExpr>, id: u64) -> Option<usize> {
    let filter = expr.downcast_ref::<DynamicFilterPhysicalExpr>()?;
    if filter.expression_id() != Some(id) {
        return None;
    }
    match filter.children().as_slice() {
        [key] => key.downcast_ref::<Column>().map(Column::index),
        _ => None,
    }
}

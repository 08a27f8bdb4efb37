//! Hash joins whose probe side computes everything before returning a row start that work
//! with the query instead of after the build side.
//!
//! A hash join reads its build side to the end before it polls its probe side. When the
//! probe side is an aggregate or a sort, all of its work waits for the build side, and
//! cores or sources idle meanwhile: TPC-H q02's decorrelated subquery aggregates
//! `partsupp` only after the outer query has read `partsupp` too, each on one core.
//! [`StartProbesEarly`] puts DataFusion's [`BufferExec`] over such probe sides; it runs its
//! input in a task of its own from the moment the join starts, and hands the batches over
//! through a buffer counted against the query's memory. (DataFusion's own rule for this,
//! `hash_join_buffering_capacity`, buffers every probe side, before dynamic filters are
//! placed, and so starts scans before their filters are known.)
//!
//! A probe side that reads the join's own dynamic filter is left as it is: its scans must
//! start after the build side to see the filter (remote scans send it to the source, file
//! scans prune with it).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, PhysicalExpr, ReplaceChildrenOptions,
};

/// Bytes of batches a probe side may compute ahead of the join taking them. The work before
/// its first batch is what overlaps the build side; the buffer only saves waiting on each
/// hand-over afterwards.
const BUFFER_BYTES: usize = 4 << 20;

/// Wraps the probe side of every hash join that emits only after reading all its input
/// and does not read the join's dynamic filter in a [`BufferExec`]. Runs after the
/// filter pushdown that hands dynamic filters to scans.
#[derive(Debug, Default)]
pub struct StartProbesEarly;

impl PhysicalOptimizerRule for StartProbesEarly {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let probe = join.right();
            if !worth_starting_early(probe) || reads_filters_of(probe, node.as_ref())? {
                return Ok(Transformed::no(node));
            }
            let ahead: Arc<dyn ExecutionPlan> =
                Arc::new(BufferExec::new(Arc::clone(probe), BUFFER_BYTES));
            let children = vec![Arc::clone(join.left()), ahead];
            Arc::clone(&node)
                .replace_children(
                    children,
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
                )
                .map(Transformed::yes)
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "StartProbesEarly"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `probe` does all its work before its first row (an aggregate, a sort), so
/// starting it early overlaps that work with the build side. A streaming probe side would
/// only fill the buffer and wait.
fn worth_starting_early(probe: &Arc<dyn ExecutionPlan>) -> bool {
    let properties = probe.properties();
    properties.emission_type == EmissionType::Final
        && properties.boundedness == Boundedness::Bounded
        && probe.downcast_ref::<BufferExec>().is_none()
}

/// Whether a node under `probe` reads a dynamic expression that `join` produces.
fn reads_filters_of(probe: &Arc<dyn ExecutionPlan>, join: &dyn ExecutionPlan) -> Result<bool> {
    let produced: HashSet<u64> = join
        .dynamic_expressions_produced()
        .iter()
        .filter_map(|e| e.expression_id())
        .collect();
    if produced.is_empty() {
        return Ok(false);
    }
    let mut found = false;
    probe.apply(|node| {
        node.apply_expressions(&mut |root: &Arc<dyn PhysicalExpr>| {
            root.apply(|expr| {
                if expr
                    .expression_id()
                    .is_some_and(|id| produced.contains(&id))
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// `rules` (DataFusion's physical optimizer rules) with [`StartProbesEarly`] after the
/// filter pushdown that places dynamic filters.
pub fn add_to(rules: &mut Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>) {
    let at = rules
        .iter()
        .position(|r| r.name() == "FilterPushdown(Post)")
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(StartProbesEarly));
}

//! Work that does not depend on what a plan waits for starts with the query.
//!
//! Two operators run one input to the end before they touch another: a hash join reads its
//! build side before it polls its probe side, and an uncorrelated scalar subquery is
//! computed before its query's main input starts. When the input that waits is an
//! aggregate or a sort, all of its work waits, and cores and sources idle meanwhile
//! (TPC-H q02's decorrelated subquery aggregates `partsupp` only after the outer query has
//! read `partsupp` too; q11 aggregates `partsupp` once for its threshold, then again for its
//! groups, each on one core). [`StartEarly`] starts that work with the query:
//! - a hash join's probe side that computes before it returns (an aggregate, a sort) goes
//!   under DataFusion's [`BufferExec`], which runs it in a task of its own from the moment
//!   the join starts and hands the batches over through a buffer counted against the
//!   query's memory. (DataFusion's own rule for this, `hash_join_buffering_capacity`,
//!   buffers every probe side, before dynamic filters are placed, and so starts scans
//!   before their filters are known.)
//! - a hash join's probe side that sends queries to a source goes under an
//!   [`EarlyProbeExec`], which buffers it the same way when every pooled connection both
//!   sides' scans will hold can be reserved as the join starts (a probe side started early
//!   holds its connections until the build side is read, so neither may wait for one).
//! - a hash join's build side that would start late, because the join sits in another
//!   join's probe side, goes under a [`BufferExec`] too.
//! - in a scalar subquery's main input, the topmost aggregates and sorts that do not read a
//!   subquery's value go under an [`EarlyStartExec`], and the subquery node under a
//!   [`StartsEarlyExec`] that starts them (buffered the same way) before it waits for the
//!   subqueries. What reads the values still runs after them.
//!
//! Nothing that reads a dynamic filter produced outside it starts early (a probe side that
//! reads its join's filter, or an aggregate under a join above that filters it): its scans
//! must start after the filter's build side is read, to see it (remote scans send it to the
//! source, file scans prune with it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, PhysicalExpr, ReplaceChildrenOptions,
    SendableRecordBatchStream,
};

use crate::pass_through::{PassThrough, PassThroughExec};
use crate::remote::early_probe::{EarlyProbeExec, connections_to_reserve};

/// Bytes of batches an input started early may compute ahead of its reader. The work before
/// its first batch is what overlaps the wait; the buffer only saves waiting on each
/// hand-over afterwards.
const BUFFER_BYTES: usize = 4 << 20;

/// Starts the probe sides of hash joins and the independent parts of scalar subqueries'
/// main inputs with the query (see the module documentation). Runs after the filter
/// pushdown that hands dynamic filters to scans.
#[derive(Debug, Default)]
pub struct StartEarly;

impl PhysicalOptimizerRule for StartEarly {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = plan
            .transform_up(|node| {
                if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                    return buffer_probe_side(&node, join);
                }
                if node.downcast_ref::<ScalarSubqueryExec>().is_some() {
                    return start_independent_work(node);
                }
                Ok(Transformed::no(node))
            })?
            .data;
        buffer_late_build_sides(plan, false).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "StartEarly"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `rules` (DataFusion's physical optimizer rules) with [`StartEarly`] after the filter
/// pushdown that places dynamic filters.
pub fn add_to(rules: &mut Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>) {
    let at = rules
        .iter()
        .position(|r| r.name() == "FilterPushdown(Post)")
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(StartEarly));
}

fn buffer_probe_side(
    node: &Arc<dyn ExecutionPlan>,
    join: &HashJoinExec,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let probe = join.right();
    if started_already(probe) || waits_for_filters(probe)? {
        return Ok(Transformed::no(Arc::clone(node)));
    }
    let buffered: Arc<dyn ExecutionPlan> = if computes_before_returning(probe) {
        Arc::new(BufferExec::new(Arc::clone(probe), BUFFER_BYTES))
    } else if let Some(connections) = connections_to_reserve(join.left(), probe)? {
        Arc::new(EarlyProbeExec::new(Arc::clone(probe), connections))
    } else {
        return Ok(Transformed::no(Arc::clone(node)));
    };
    Arc::clone(node)
        .replace_children(
            vec![Arc::clone(join.left()), buffered],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )
        .map(Transformed::yes)
}

/// `plan` with the build sides of hash joins that start late under a [`BufferExec`], if they
/// wait for no dynamic filter from outside them. A join starts late inside another join's
/// probe side (`late`), which runs only once that join's build side is read; its own build
/// side would then wait too, though nothing it reads depends on that (q02's subquery reads
/// the outer `part` keys only after the `supplier` rows it joins first). A build side is
/// read to the end whenever its join runs; only when the outer join skips its probe side
/// (an empty build side) is the early work wasted, at most a buffer's worth.
fn buffer_late_build_sides(
    plan: Arc<dyn ExecutionPlan>,
    late: bool,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(Transformed::no(plan));
    }
    let join = plan.downcast_ref::<HashJoinExec>();
    let collects_left = join.is_some_and(|j| j.mode == PartitionMode::CollectLeft);
    let mut changed = false;
    let mut inputs = Vec::with_capacity(children.len());
    for (i, child) in children.into_iter().enumerate() {
        let input = if i == 0
            && collects_left
            && late
            && !started_already(&child)
            && !waits_for_filters(&child)?
        {
            let started = buffer_late_build_sides(child, false)?.data;
            changed = true;
            Arc::new(BufferExec::new(started, BUFFER_BYTES)) as Arc<dyn ExecutionPlan>
        } else {
            // A buffered input starts with the query; a join's probe side waits for its
            // build side.
            let child_late = if started_already(&child) {
                false
            } else {
                late || (join.is_some() && i == 1)
            };
            let input = buffer_late_build_sides(child, child_late)?;
            changed |= input.transformed;
            input.data
        };
        inputs.push(input);
    }
    if !changed {
        return Ok(Transformed::no(plan));
    }
    plan.replace_children(
        inputs,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
    .map(Transformed::yes)
}

/// Whether `plan` is started early already: a [`BufferExec`] or [`EarlyProbeExec`], or one
/// under nodes that only move rows between partitions or columns (a sub-plan DataFusion
/// runs for a source is optimized alone, then again in its query, which may place
/// repartitioning above it).
fn started_already(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut node = plan;
    loop {
        if node.downcast_ref::<BufferExec>().is_some()
            || node.downcast_ref::<EarlyProbeExec>().is_some()
        {
            return true;
        }
        let passes_rows = node.downcast_ref::<RepartitionExec>().is_some()
            || node.downcast_ref::<CoalescePartitionsExec>().is_some()
            || node.downcast_ref::<CooperativeExec>().is_some()
            || node.downcast_ref::<ProjectionExec>().is_some();
        match node.children().as_slice() {
            [child] if passes_rows => node = child,
            _ => return false,
        }
    }
}

/// Whether `plan` does all its work before its first row (an aggregate, a sort), so
/// starting it early overlaps that work with the wait. A streaming input would only fill
/// the buffer and stop.
fn computes_before_returning(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let properties = plan.properties();
    properties.emission_type == EmissionType::Final
        && properties.boundedness == Boundedness::Bounded
}

/// Whether a node in `plan` reads a dynamic filter that no node in `plan` produces: one
/// that a join above fills once its build side is read, which the scans below must wait
/// for (remote scans send it to the source, file scans prune with it).
fn waits_for_filters(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let mut produced = HashSet::new();
    plan.apply(|node| {
        produced.extend(
            node.dynamic_expressions_produced()
                .iter()
                .filter_map(|e| e.expression_id()),
        );
        Ok(TreeNodeRecursion::Continue)
    })?;
    any_expression(plan, &|expr| {
        expr.expression_id()
            .is_some_and(|id| !produced.contains(&id))
    })
}

/// Whether an expression of a node in `plan` (or a part of one) satisfies `test`.
fn any_expression(
    plan: &Arc<dyn ExecutionPlan>,
    test: &dyn Fn(&Arc<dyn PhysicalExpr>) -> bool,
) -> Result<bool> {
    let mut found = false;
    plan.apply(|node| {
        node.apply_expressions(&mut |root: &Arc<dyn PhysicalExpr>| {
            root.apply(|expr| {
                if test(expr) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// `subquery_node` (a [`ScalarSubqueryExec`]) with the topmost aggregates and sorts of its
/// main input that read no subquery value started early.
fn start_independent_work(
    subquery_node: Arc<dyn ExecutionPlan>,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let children: Vec<Arc<dyn ExecutionPlan>> =
        subquery_node.children().into_iter().cloned().collect();
    let Some((input, subqueries)) = children.split_first() else {
        return Ok(Transformed::no(subquery_node));
    };
    let marked = mark_independent(Arc::clone(input))?;
    if !marked.transformed {
        return Ok(Transformed::no(subquery_node));
    }
    let mut children = vec![marked.data];
    children.extend(subqueries.iter().cloned());
    let inner = subquery_node.replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )?;
    Ok(Transformed::yes(Arc::new(StartsEarlyExec::new(inner))))
}

/// `plan` with its topmost aggregates and sorts that read no scalar subquery's value and
/// wait for no dynamic filter from outside them under an [`EarlyStartExec`].
fn mark_independent(plan: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    if computes_before_returning(&plan)
        && !any_expression(&plan, &|expr| {
            expr.downcast_ref::<ScalarSubqueryExpr>().is_some()
        })?
        && !waits_for_filters(&plan)?
    {
        return Ok(Transformed::yes(Arc::new(PassThroughExec::wrap(
            EarlyStart::new(plan),
        ))));
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(Transformed::no(plan));
    }
    let mut changed = false;
    let mut marked = Vec::with_capacity(children.len());
    for child in children {
        let child = mark_independent(child)?;
        changed |= child.transformed;
        marked.push(child.data);
    }
    if !changed {
        return Ok(Transformed::no(plan));
    }
    plan.replace_children(
        marked,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
    .map(Transformed::yes)
}

/// What the [`EarlyStartExec`]s under `plan` start, not counting those another
/// [`StartsEarlyExec`] starts.
fn early_starts(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<Started>> {
    let mut found = Vec::new();
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(early) = node.downcast_ref::<EarlyStartExec>() {
            found.push(Arc::clone(&early.started));
        } else if node.downcast_ref::<StartsEarlyExec>().is_none() {
            stack.extend(node.children().into_iter().cloned());
        }
    }
    found
}

/// Starts the [`EarlyStartExec`]s in its input when it is executed, then runs the input.
pub type StartsEarlyExec = PassThroughExec<StartsEarly>;

/// What a [`StartsEarlyExec`] starts.
pub struct StartsEarly {
    input: Arc<dyn ExecutionPlan>,
    starts: Vec<Arc<Started>>,
}

impl StartsEarlyExec {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let starts = early_starts(&input);
        PassThroughExec::wrap(StartsEarly { input, starts })
    }
}

impl PassThrough for StartsEarly {
    const NAME: &'static str = "StartsEarlyExec";

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        let starts = early_starts(&input);
        StartsEarly { input, starts }
    }

    fn details(&self) -> Option<String> {
        Some(format!("inputs={}", self.starts.len()))
    }

    fn run(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        for early in &self.starts {
            early.start(&context)?;
        }
        self.input.execute(partition, context)
    }
}

/// An input started before its reader executes it, by the [`StartsEarlyExec`] above.
pub type EarlyStartExec = PassThroughExec<EarlyStart>;

/// What an [`EarlyStartExec`] hands over.
pub struct EarlyStart {
    started: Arc<Started>,
}

impl EarlyStart {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        EarlyStart {
            started: Arc::new(Started {
                input,
                run: Mutex::new(None),
            }),
        }
    }
}

impl PassThrough for EarlyStart {
    const NAME: &'static str = "EarlyStartExec";

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.started.input
    }

    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        EarlyStart::new(input)
    }

    fn run(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        match self.started.take(partition, &context) {
            Some(stream) => Ok(stream),
            None => self.started.input.execute(partition, context),
        }
    }
}

/// The input of an [`EarlyStartExec`] and, once [`Started::start`] has run every partition
/// under a [`BufferExec`], their streams, which `execute` hands out once each, and only to
/// the run that started them: a plan run again (or a partition read twice) runs anew.
struct Started {
    input: Arc<dyn ExecutionPlan>,
    run: Mutex<Option<Run>>,
}

/// The streams one run started, one per partition until taken.
struct Run {
    context: Arc<TaskContext>,
    streams: Vec<Option<SendableRecordBatchStream>>,
}

impl Started {
    /// Starts every partition of the input for the run of `context`, unless started for it
    /// already. The streams of an earlier run, if any are left, are dropped (which stops
    /// their tasks).
    fn start(&self, context: &Arc<TaskContext>) -> Result<()> {
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.context, context))
        {
            return Ok(());
        }
        let buffered = BufferExec::new(Arc::clone(&self.input), BUFFER_BYTES);
        let partitions = self.input.properties().partitioning.partition_count();
        let streams = (0..partitions)
            .map(|p| buffered.execute(p, Arc::clone(context)).map(Some))
            .collect::<Result<Vec<_>>>()?;
        *run = Some(Run {
            context: Arc::clone(context),
            streams,
        });
        Ok(())
    }

    /// The stream of `partition` that the run of `context` started, if not yet taken.
    fn take(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
    ) -> Option<SendableRecordBatchStream> {
        self.run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .filter(|r| Arc::ptr_eq(&r.context, context))
            .and_then(|r| r.streams.get_mut(partition))
            .and_then(Option::take)
    }
}

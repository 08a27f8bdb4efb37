//! Operators that pass their one input's rows on unchanged and change only when or how the
//! input runs: started early ([`crate::start_early`], [`crate::remote::early_probe`]),
//! counted against the memory pool ([`crate::window_memory`]), or estimated as a source
//! estimated it (`remote::estimated`).
//!
//! Each is a [`PassThrough`] (its input, how it is rebuilt over a new input, what it shows
//! in plans, and how it runs a partition) made an [`ExecutionPlan`] by [`PassThroughExec`],
//! which gives it its input's schema, partitioning and order, and unless the operator says
//! otherwise its input's statistics.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::{
    ChildStats, ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, StatisticsArgs,
};

/// What a pass-through operator adds to its input (see the module documentation).
pub trait PassThrough: Send + Sync + 'static {
    /// The operator's name in plans and errors.
    const NAME: &'static str;

    /// The input whose rows it passes on.
    fn input(&self) -> &Arc<dyn ExecutionPlan>;

    /// The same operator over `input` (the plan below it rewritten), with nothing kept from
    /// runs of the old one.
    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self;

    /// What `EXPLAIN` shows after the name, if anything.
    fn details(&self) -> Option<String> {
        None
    }

    /// Its statistics, from its input's (`input`): the same, unless it knows better.
    fn statistics(&self, input: &Arc<Statistics>) -> Arc<Statistics> {
        Arc::clone(input)
    }

    /// Whether filters from the plan above (a hash join's dynamic filter among them) pass
    /// through it to its input. Operators placed after filters are pushed down need not
    /// say; one placed before must, or it would stop them.
    const PASSES_FILTERS: bool = false;

    /// The stream of one partition: the input's batches, unchanged.
    fn run(&self, partition: usize, context: Arc<TaskContext>)
    -> Result<SendableRecordBatchStream>;
}

/// The [`ExecutionPlan`] of a [`PassThrough`] `T`, which it dereferences to.
pub struct PassThroughExec<T>(T);

impl<T: PassThrough> PassThroughExec<T> {
    /// `inner` as a plan node.
    pub fn wrap(inner: T) -> Self {
        PassThroughExec(inner)
    }
}

impl<T> Deref for PassThroughExec<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: PassThrough> fmt::Debug for PassThroughExec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.details() {
            Some(details) => write!(f, "{}({details})", T::NAME),
            None => f.write_str(T::NAME),
        }
    }
}

impl<T: PassThrough> DisplayAs for PassThroughExec<T> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.details() {
            Some(details) => write!(f, "{}: {details}", T::NAME),
            None => f.write_str(T::NAME),
        }
    }
}

impl<T: PassThrough> ExecutionPlan for PassThroughExec<T> {
    fn name(&self) -> &str {
        T::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.0.input().properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.0.input()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("{} takes one child, got {}", T::NAME, children.len());
        }
        // Its properties are always its input's: there is nothing to keep or recompute.
        Ok(Arc::new(PassThroughExec(
            self.0.with_input(children.swap_remove(0)),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.0.run(partition, context)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats.first() {
            Some(stats) => Ok(self.0.statistics(stats)),
            None => internal_err!("{} has no input statistics", T::NAME),
        }
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        if T::PASSES_FILTERS {
            FilterDescription::from_children(parent_filters, &self.children())
        } else {
            Ok(FilterDescription::all_unsupported(
                &parent_filters,
                &self.children(),
            ))
        }
    }
}

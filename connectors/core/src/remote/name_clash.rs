//! Physical filter pushdown kept away from plans it would get wrong.
//!
//! DataFusion 55 moves a filter from a plan node to its child by looking its columns up
//! by name in the child's schema (apache/datafusion#25244, fixed by #25259 after 55.2).
//! When the child has two columns of one name (`c.id` and `o.id` out of a join), a
//! filter on the second lands on the first, and the scan below drops rows that match:
//! a join's dynamic filter on `o.id` sent to the scan of `customers` as a filter on its
//! `id`. Tables with an `id` column each are the common case, so this guard skips
//! DataFusion's `FilterPushdown` rules for a plan where a filter could travel through
//! such a schema, and lets them run everywhere else. What a skipped plan loses is speed
//! (no dynamic filters, no filters moved into Parquet scans), never rows: the filters
//! the logical optimizer already pushed into scans are in the plan either way.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;

/// DataFusion's `FilterPushdown` rule (either phase), run only on plans where no filter
/// can pass through a schema with two columns of one name.
#[derive(Debug)]
pub struct GuardedFilterPushdown {
    inner: FilterPushdown,
}

impl GuardedFilterPushdown {
    /// Guards `inner`, under its name, so rule lists read as before.
    pub fn new(inner: FilterPushdown) -> Self {
        GuardedFilterPushdown { inner }
    }

    /// Replaces both phases of DataFusion's `FilterPushdown` in `rules` by guarded ones.
    pub fn guard(rules: &mut [Arc<dyn PhysicalOptimizerRule + Send + Sync>]) {
        for rule in rules {
            let inner = match rule.name() {
                "FilterPushdown" => FilterPushdown::new(),
                "FilterPushdown(Post)" => FilterPushdown::new_post_optimization(),
                _ => continue,
            };
            *rule = Arc::new(GuardedFilterPushdown::new(inner));
        }
    }
}

impl PhysicalOptimizerRule for GuardedFilterPushdown {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if misroutes_filters(plan.as_ref()) {
            tracing::debug!(
                rule = self.inner.name(),
                "filter pushdown skipped: a filter would pass through two columns of one name"
            );
            return Ok(plan);
        }
        self.inner.optimize(plan, config)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn schema_check(&self) -> bool {
        self.inner.schema_check()
    }
}

/// Whether a node that sends filters to its inputs (a hash join to its probe side, a
/// filter, a node with a dynamic filter of its own such as a top-k sort) has, anywhere
/// below it on that path, a schema with a repeated column name.
fn misroutes_filters(plan: &dyn ExecutionPlan) -> bool {
    // A hash join's dynamic filter is made by the pushdown itself, so it is not produced yet.
    let targets: Vec<&Arc<dyn ExecutionPlan>> =
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            vec![join.right()]
        } else if plan.downcast_ref::<FilterExec>().is_some()
            || !plan.dynamic_expressions_produced().is_empty()
        {
            plan.children()
        } else {
            Vec::new()
        };
    targets
        .into_iter()
        .any(|child| repeats_below(child.as_ref()))
        || plan
            .children()
            .into_iter()
            .any(|child| misroutes_filters(child.as_ref()))
}

/// Whether `plan` or a node below it has two output columns of one name.
fn repeats_below(plan: &dyn ExecutionPlan) -> bool {
    repeats_a_name(&plan.schema())
        || plan
            .children()
            .into_iter()
            .any(|child| repeats_below(child.as_ref()))
}

fn repeats_a_name(schema: &Schema) -> bool {
    let mut seen = HashSet::new();
    schema.fields().iter().any(|f| !seen.insert(f.name()))
}

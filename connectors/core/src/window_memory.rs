//! A window that holds its whole input in memory counts it against the memory limit.
//!
//! DataFusion's `WindowAggExec` (a window whose frame reaches past the current row to the
//! end of its partition, as `min(x) OVER (PARTITION BY k)` does) keeps every input batch
//! until its input ends, without counting them in the memory pool. A query over a large
//! window could exhaust the process's memory whatever `server.memory_limit` says.
//! [`CountWindowInputs`] puts a [`CountedInputExec`] under each such window: it counts every
//! batch the window takes as the window gathers them, until the window lets go of its input,
//! so that a window too large for the limit fails the query with DataFusion's "resources
//! exhausted" error, naming the window, instead. (The window's copy of all batches joined
//! into one, made after its input ends, is not counted.)

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::pass_through::{PassThrough, PassThroughExec};

/// Counts the input of every `WindowAggExec` against the memory pool (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct CountWindowInputs;

impl PhysicalOptimizerRule for CountWindowInputs {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(window) = node.downcast_ref::<WindowAggExec>() else {
                return Ok(Transformed::no(node));
            };
            let input = window.input();
            if input.downcast_ref::<CountedInputExec>().is_some() {
                return Ok(Transformed::no(node));
            }
            let counted = Arc::new(CountedInputExec::new(Arc::clone(input), "WindowAggExec"));
            // The counted input has its input's properties: the window's stay as they are.
            node.replace_children(
                vec![counted],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )
            .map(Transformed::yes)
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tributary_count_window_inputs"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on unchanged, counting each in the memory pool, as held by
/// `reader`, until the stream is dropped.
pub type CountedInputExec = PassThroughExec<CountedInput>;

/// The input a [`CountedInputExec`] counts, and who holds it.
pub struct CountedInput {
    input: Arc<dyn ExecutionPlan>,
    reader: &'static str,
}

impl CountedInputExec {
    /// `input`, counted as held by `reader` (the operator that keeps what it reads).
    pub fn new(input: Arc<dyn ExecutionPlan>, reader: &'static str) -> Self {
        PassThroughExec::wrap(CountedInput { input, reader })
    }
}

impl PassThrough for CountedInput {
    const NAME: &'static str = "CountedInputExec";

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        CountedInput {
            input,
            reader: self.reader,
        }
    }

    fn details(&self) -> Option<String> {
        Some(format!("held by {}", self.reader))
    }

    fn run(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let schema = input.schema();
        let reservation = MemoryConsumer::new(format!("{}[{partition}]", self.reader))
            .register(context.memory_pool());
        // Batches often share buffers (an aggregate hands out slices of one batch of all its
        // groups): each buffer is counted once, whole, as the batches keep it whole.
        let mut counter = RecordBatchMemoryCounter::new();
        let counted = input.map(move |batch| {
            let batch = batch?;
            reservation.try_grow(counter.count_batch(&batch))?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn context(memory_limit: usize) -> SessionContext {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory_limit, 1.0)
            .build_arc()
            .unwrap();
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(CountWindowInputs))
            .build();
        SessionContext::new_with_state(state)
    }

    /// `sql`'s answer (as a text table) under a memory limit of `memory_limit` bytes.
    async fn answer(memory_limit: usize, sql: &str) -> Result<String> {
        let batches = context(memory_limit).sql(sql).await?.collect().await?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    /// A window over 4 million rows (32 MB of values) held whole.
    const QUERY: &str = "SELECT count(*) FROM (SELECT value, max(value) OVER () AS top \
                         FROM generate_series(1, 4000000)) WHERE value = top";

    #[tokio::test]
    async fn a_window_over_more_than_the_memory_limit_fails_naming_the_window() {
        let message = answer(8 << 20, QUERY)
            .await
            .expect_err("over the limit")
            .to_string();
        assert!(
            message.contains("Resources exhausted") && message.contains("WindowAggExec"),
            "{message}"
        );

        let plan = context(8 << 20)
            .sql(QUERY)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(
            shown.contains("CountedInputExec: held by WindowAggExec"),
            "{shown}"
        );
    }

    /// An aggregate hands out its groups as slices of one batch: each is counted once.
    /// (Counted per slice, the window would count 39 MB here.)
    #[tokio::test]
    async fn slices_of_one_batch_are_counted_once() {
        let query = "SELECT count(*) FROM (SELECT g, n, sum(n) OVER () AS total FROM \
                     (SELECT value % 300000 AS g, count(*) AS n \
                      FROM generate_series(1, 600000) GROUP BY g)) WHERE n * 300000 = total";
        let shown = answer(48 << 20, query).await.unwrap();
        assert!(shown.contains("| 300000   |"), "{shown}");
    }

    #[tokio::test]
    async fn within_the_limit_the_window_answers() {
        let shown = answer(256 << 20, QUERY).await.unwrap();
        assert!(shown.contains("| 1        |"), "{shown}");
    }
}

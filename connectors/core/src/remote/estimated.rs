//! A sub-plan read apart, estimated as its source estimated it whole.
//!
//! When a source's sub-plan is run by DataFusion over its inputs read apart (see
//! `Planner::join_apart`), DataFusion estimates the joins itself, from each input's rows
//! and distinct values, and may estimate far fewer rows than the source did for the whole:
//! then the join above it builds its hash table on the sub-plan instead of the other side.
//! TPC-H q18 over MariaDB hashed the 6 million rows of `customer`, `orders` and `lineitem`
//! joined, to probe them with the 57 order keys of its `GROUP BY` subquery, where the same
//! sub-plan run whole was estimated as the source estimated it and probed with those keys
//! (which, sent as a dynamic filter, also narrowed the scans below). The operator passes
//! filters from above through, so those keys still reach the scans.

use std::sync::Arc;

use datafusion::common::stats::Precision;
use datafusion::common::{Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use crate::pass_through::{PassThrough, PassThroughExec};

/// A plan estimated at the source's row count (see the module documentation).
pub type EstimatedExec = PassThroughExec<Estimated>;

/// What [`EstimatedExec`] adds to its input: the source's row estimate.
pub struct Estimated {
    input: Arc<dyn ExecutionPlan>,
    rows: usize,
}

impl EstimatedExec {
    /// `input`, estimated at `rows` rows.
    pub fn new(input: Arc<dyn ExecutionPlan>, rows: usize) -> Self {
        PassThroughExec::wrap(Estimated { input, rows })
    }
}

impl PassThrough for Estimated {
    const NAME: &'static str = "EstimatedExec";
    const PASSES_FILTERS: bool = true;

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        Estimated {
            input,
            rows: self.rows,
        }
    }

    fn details(&self) -> Option<String> {
        Some(format!("rows={}", self.rows))
    }

    fn statistics(&self, input: &Arc<Statistics>) -> Arc<Statistics> {
        let mut statistics = input.as_ref().clone();
        statistics.num_rows = Precision::Inexact(self.rows);
        // A size from the input's own estimate of the rows would contradict the count.
        statistics.total_byte_size = Precision::Absent;
        Arc::new(statistics)
    }

    fn run(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

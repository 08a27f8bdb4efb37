//! The physical scan that generates a TPC-H table.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use crate::TpchTable;

/// Generates a TPC-H table in `partitions` parallel parts, projected to the columns asked.
#[derive(Debug)]
pub struct TpchExec {
    table: TpchTable,
    scale: f64,
    partitions: usize,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TpchExec {
    /// A scan of `table` at `scale` in `partitions` parts.
    pub fn new(
        table: TpchTable,
        scale: f64,
        partitions: usize,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let full = table.schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(TpchExec {
            table,
            scale,
            partitions,
            projection,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    fn parts(&self) -> i32 {
        i32::try_from(self.partitions).unwrap_or(i32::MAX)
    }
}

impl DisplayAs for TpchExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|c| c.name().as_str())
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "TpchExec: table={}, scale_factor={}, partitions={}, projection=[{}]",
                self.table.name(),
                self.scale,
                self.partitions,
                columns.join(", ")
            ),
            DisplayFormatType::TreeRender => {
                writeln!(f, "table={}", self.table.name())?;
                write!(f, "scale_factor={}", self.scale)
            }
        }
    }
}

impl ExecutionPlan for TpchExec {
    fn name(&self) -> &'static str {
        "TpchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("TpchExec has no children")
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return internal_err!(
                "TpchExec has {} partitions, asked for {partition}",
                self.partitions
            );
        }
        let part = i32::try_from(partition + 1).unwrap_or(i32::MAX);
        let batch_size = context.session_config().batch_size();
        let projection = self.projection.clone();
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let batches = self
            .table
            .generate(self.scale, part, self.parts(), batch_size)
            .map(move |batch| {
                let _timer = metrics.elapsed_compute().timer();
                let batch = batch?;
                metrics.record_output(batch.num_rows());
                match &projection {
                    Some(p) => Ok(batch.project(p)?),
                    None => Ok(batch),
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(batches),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let (rows, exact) = match args.partition() {
            Some(p) => {
                let part = i32::try_from(p + 1).unwrap_or(i32::MAX);
                self.table.row_count(self.scale, part, self.parts())
            }
            None => self.table.row_count(self.scale, 1, 1),
        };
        let rows = if exact {
            Precision::Exact(rows)
        } else {
            Precision::Inexact(rows)
        };
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(rows),
        ))
    }
}

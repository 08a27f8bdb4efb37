//! The physical scan of a remote table: one query per partition.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, StatisticsArgs,
};
use futures::StreamExt;

use super::RemoteReader;

/// Runs one `SELECT` per partition on a remote source and streams the rows.
#[derive(Debug)]
pub struct RemoteScanExec {
    source: String,
    table: String,
    sqls: Vec<String>,
    schema: SchemaRef,
    statistics: Statistics,
    reader: Arc<dyn RemoteReader>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RemoteScanExec {
    /// A scan of `table` on `source` running `sqls` (one per partition) through `reader`.
    pub fn new(
        source: String,
        table: String,
        sqls: Vec<String>,
        schema: SchemaRef,
        statistics: Statistics,
        reader: Arc<dyn RemoteReader>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(sqls.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        RemoteScanExec {
            source,
            table,
            sqls,
            schema,
            statistics,
            reader,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The queries, one per partition.
    pub fn sqls(&self) -> &[String] {
        &self.sqls
    }
}

impl DisplayAs for RemoteScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default => {
                write!(
                    f,
                    "RemoteScanExec: source={}, table={}, partitions={}, sql={}",
                    self.source,
                    self.table,
                    self.sqls.len(),
                    self.sqls.first().map(String::as_str).unwrap_or("")
                )?;
                if self.sqls.len() > 1 {
                    write!(f, " (and {} more)", self.sqls.len() - 1)?;
                }
                Ok(())
            }
            DisplayFormatType::Verbose => {
                write!(
                    f,
                    "RemoteScanExec: source={}, table={}",
                    self.source, self.table
                )?;
                for (i, sql) in self.sqls.iter().enumerate() {
                    write!(f, ", sql[{i}]={sql}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "source={}", self.source)?;
                write!(f, "table={}", self.table)
            }
        }
    }
}

impl ExecutionPlan for RemoteScanExec {
    fn name(&self) -> &'static str {
        "RemoteScanExec"
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
            internal_err!("RemoteScanExec has no children")
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(sql) = self.sqls.get(partition) else {
            return internal_err!(
                "RemoteScanExec has {} partitions, asked for {partition}",
                self.sqls.len()
            );
        };
        let stream = self.reader.read(
            partition,
            sql.clone(),
            Arc::clone(&self.schema),
            context.session_config().batch_size(),
        )?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let counted = stream.map(move |batch| {
            if let Ok(b) = &batch {
                // Rows and Arrow bytes, read by EXPLAIN ANALYZE and the server's metrics.
                b.record_output(&metrics);
            }
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            counted,
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
        let mut stats = self.statistics.clone();
        if args.partition().is_some() {
            let parts = self.sqls.len().max(1);
            stats.num_rows = match stats.num_rows {
                Precision::Exact(n) | Precision::Inexact(n) => Precision::Inexact(n / parts),
                Precision::Absent => Precision::Absent,
            };
            stats.total_byte_size = match stats.total_byte_size {
                Precision::Exact(n) | Precision::Inexact(n) => Precision::Inexact(n / parts),
                Precision::Absent => Precision::Absent,
            };
        }
        Ok(Arc::new(stats))
    }
}

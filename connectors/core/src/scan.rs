//! Tags a table's scans with the source and table they read, so an error raised while
//! reading (a malformed row, a truncated file, a dropped connection) names them, and
//! counts the rows and bytes each source delivered (the server's per-source metrics).
//!
//! The wrapper plan is transparent to the optimizer: statistics, limits, projections,
//! sort and filter pushdown (including dynamic filters from joins) pass through to the scan
//! below, as they do through DataFusion's own `CooperativeExec`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraints, Result, Statistics, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{DynamicFilterTracking, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, SortOrderPushdownResult,
    StatisticsArgs, replace_children_if_necessary,
};
use futures::TryStreamExt;

use crate::short_lists::ShortListsOnly;

/// Which source and table a scan reads, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanTag {
    /// The source (catalog) name.
    pub source: String,
    /// `schema.table` within the source.
    pub table: String,
    /// Where the data lives: a URL, a remote object name.
    pub location: String,
}

impl ScanTag {
    /// Adds the source, table and location to an error from the scan, keeping the original
    /// error (and its kind) underneath.
    pub fn annotate(&self, error: DataFusionError) -> DataFusionError {
        error.context(format!(
            "source `{}`: table `{}` at {}",
            self.source, self.table, self.location
        ))
    }
}

/// A table whose scans are wrapped in [`SourceScanExec`].
#[derive(Debug)]
pub struct TaggedTable {
    inner: Arc<dyn TableProvider>,
    tag: Arc<ScanTag>,
}

impl TaggedTable {
    /// Wraps `inner`, tagging its scans with `tag`.
    pub fn new(inner: Arc<dyn TableProvider>, tag: ScanTag) -> Self {
        TaggedTable {
            inner,
            tag: Arc::new(tag),
        }
    }

    /// The wrapped table.
    pub fn inner(&self) -> &Arc<dyn TableProvider> {
        &self.inner
    }

    fn wrap(&self, plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(SourceScanExec::new(plan, Arc::clone(&self.tag)))
    }
}

#[async_trait]
impl TableProvider for TaggedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self
            .inner
            .scan(state, projection, filters, limit)
            .await
            .map_err(|e| self.tag.annotate(e))?;
        Ok(self.wrap(plan))
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let result = self
            .inner
            .scan_with_args(state, args)
            .await
            .map_err(|e| self.tag.annotate(e))?;
        Ok(ScanResult::new(self.wrap(result.into_inner())))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// The scan of one source table: passes everything through to the scan below and tags its
/// errors with the source, table and location.
#[derive(Debug, Clone)]
pub struct SourceScanExec {
    input: Arc<dyn ExecutionPlan>,
    tag: Arc<ScanTag>,
    metrics: ExecutionPlanMetricsSet,
}

impl SourceScanExec {
    /// Wraps the scan `input` of the table described by `tag`.
    pub fn new(input: Arc<dyn ExecutionPlan>, tag: Arc<ScanTag>) -> Self {
        SourceScanExec {
            input,
            tag,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The source, table and location this scan reads.
    pub fn tag(&self) -> &ScanTag {
        &self.tag
    }
}

impl DisplayAs for SourceScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "SourceScanExec: source={}, table={}",
                self.tag.source, self.tag.table
            ),
            DisplayFormatType::TreeRender => {
                writeln!(f, "source={}", self.tag.source)?;
                write!(f, "table={}", self.tag.table)
            }
        }
    }
}

impl ExecutionPlan for SourceScanExec {
    fn name(&self) -> &str {
        "SourceScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
            return internal_err!("SourceScanExec takes one child, got {}", children.len());
        }
        Ok(Arc::new(SourceScanExec::new(
            children.swap_remove(0),
            Arc::clone(&self.tag),
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
        let tag = Arc::clone(&self.tag);
        let stream = self
            .input
            .execute(partition, context)
            .map_err(|e| tag.annotate(e))?;
        let schema = stream.schema();
        let output = BaselineMetrics::new(&self.metrics, partition);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream
                .map_ok(move |batch| batch.record_output(&output))
                .map_err(move |e| tag.annotate(e)),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
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
            Some(stats) => Ok(Arc::clone(stats)),
            None => internal_err!("SourceScanExec has no input statistics"),
        }
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        match self.input.try_swapping_with_projection(projection)? {
            Some(new_input) => Ok(Some(replace_children_if_necessary(
                Arc::new(self.clone()),
                vec![new_input],
            )?)),
            None => Ok(None),
        }
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        // Dynamic filters reach the file scan without the long key lists meant for remote
        // sources.
        let filters = parent_filters
            .into_iter()
            .map(|f| {
                if DynamicFilterTracking::classify(&f).contains_dynamic_filter() {
                    Arc::new(ShortListsOnly::new(f)) as Arc<dyn PhysicalExpr>
                } else {
                    f
                }
            })
            .collect();
        FilterDescription::from_children(filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> Result<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        let rewrap = |inner| replace_children_if_necessary(Arc::new(self.clone()), vec![inner]);
        Ok(match self.input.try_pushdown_sort(order)? {
            SortOrderPushdownResult::Exact { inner } => SortOrderPushdownResult::Exact {
                inner: rewrap(inner)?,
            },
            SortOrderPushdownResult::Inexact { inner } => SortOrderPushdownResult::Inexact {
                inner: rewrap(inner)?,
            },
            SortOrderPushdownResult::Unsupported => SortOrderPushdownResult::Unsupported,
        })
    }
}

//! The physical scan of a remote table: one query per partition.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{DynamicFilterTracking, EquivalenceProperties, PhysicalExpr};
use datafusion::physical_expr_common::physical_expr::snapshot_generation;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, StatisticsArgs,
};
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::{StreamExt, TryStreamExt};

use super::RemoteReader;
use super::connections::Reservation;
use super::dynamic::DynamicFilterTarget;
use super::shared::{SharedQuery, SubPlanCore};

/// Runs one `SELECT` per partition on a remote source and streams the rows.
///
/// Dynamic filters that DataFusion pushes to the scan while planning (a hash join's build
/// side keys) are read when each partition's query starts, and what the source can
/// evaluate of them is added to that query (see [`super::dynamic`]).
#[derive(Debug)]
pub struct RemoteScanExec {
    source: String,
    table: String,
    statements: Vec<Statement>,
    schema: SchemaRef,
    statistics: Statistics,
    reader: Arc<dyn RemoteReader>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// How the queries take dynamic filters, if they can.
    dynamic: Option<Arc<DynamicFilterTarget>>,
    dynamic_filters: Vec<Arc<dyn PhysicalExpr>>,
    /// The query each partition sent, once it started.
    sent: Arc<Mutex<Vec<Option<String>>>>,
    /// The dynamic filters as last written for the source, shared by the partitions.
    written: Arc<tokio::sync::Mutex<Option<Written>>>,
    /// What a sub-plan scan computes below its top projection (see [`super::shared`]).
    core: Option<Arc<SubPlanCore>>,
    /// The query this scan reads its rows from, shared with scans of the same core.
    shared: Option<SharedRead>,
}

/// What a scan's source evaluates of one state of its dynamic filters, in its dialect.
#[derive(Debug)]
struct Written {
    /// The filters' generations when they were read.
    generations: Vec<u64>,
    restriction: Option<ast::Expr>,
}

/// How a scan reads a query shared with others.
#[derive(Debug)]
struct SharedRead {
    query: Arc<SharedQuery>,
    /// Column `i` of the scan is column `columns[i]` of the query.
    columns: Vec<usize>,
    /// Whether this is the first of the scans sharing the query, which counts as reading
    /// the source.
    first: bool,
}

impl RemoteScanExec {
    /// A scan of `table` on `source` running `statements` (one per partition) through
    /// `reader`.
    pub fn new(
        source: String,
        table: String,
        statements: Vec<Statement>,
        schema: SchemaRef,
        statistics: Statistics,
        reader: Arc<dyn RemoteReader>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(statements.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let sent = Arc::new(Mutex::new(vec![None; statements.len()]));
        RemoteScanExec {
            source,
            table,
            statements,
            schema,
            statistics,
            reader,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
            dynamic: None,
            dynamic_filters: vec![],
            sent,
            written: Arc::default(),
            core: None,
            shared: None,
        }
    }

    /// Lets scans that compute the same `core` share one query.
    pub fn with_core(mut self, core: SubPlanCore) -> Self {
        self.core = Some(Arc::new(core));
        self
    }

    /// This scan reading `columns` of `query`'s rows; `first` for the one scan of those
    /// sharing it that counts as reading the source.
    pub(super) fn shared(
        &self,
        query: Arc<SharedQuery>,
        columns: Vec<usize>,
        first: bool,
    ) -> RemoteScanExec {
        RemoteScanExec {
            dynamic: None,
            dynamic_filters: vec![],
            shared: Some(SharedRead {
                query,
                columns,
                first,
            }),
            ..self.renewed()
        }
    }

    /// The same scan as a new plan node, with its own metrics and record of queries sent.
    fn renewed(&self) -> RemoteScanExec {
        RemoteScanExec {
            source: self.source.clone(),
            table: self.table.clone(),
            statements: self.statements.clone(),
            schema: Arc::clone(&self.schema),
            statistics: self.statistics.clone(),
            reader: Arc::clone(&self.reader),
            properties: Arc::clone(&self.properties),
            metrics: ExecutionPlanMetricsSet::new(),
            dynamic: self.dynamic.clone(),
            dynamic_filters: self.dynamic_filters.clone(),
            sent: Arc::new(Mutex::new(vec![None; self.statements.len()])),
            written: Arc::default(),
            core: self.core.clone(),
            shared: None,
        }
    }

    /// What the scan computes below its top projection, if it is a sub-plan scan.
    pub(super) fn core(&self) -> Option<Arc<SubPlanCore>> {
        self.core.clone()
    }

    /// Whether the scan reads a query shared with other scans.
    pub(super) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether the rows this scan returns count as read from the source: a scan reading a
    /// shared query counts only if it is the first of those sharing it.
    pub fn reads_source(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.first)
    }

    /// The source's estimate of the rows the scan returns.
    pub(super) fn row_estimate(&self) -> Precision<usize> {
        self.statistics.num_rows
    }

    /// The dynamic filters the scan took.
    pub(super) fn dynamic_filters(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.dynamic_filters
    }

    /// The same scan without the dynamic filter `id`.
    pub(super) fn without_dynamic_filter(&self, id: u64) -> RemoteScanExec {
        // `renewed` starts a scan of its own: scans sharing a query take no filters.
        debug_assert!(self.shared.is_none());
        let dynamic_filters = self
            .dynamic_filters
            .iter()
            .filter(|f| f.expression_id() != Some(id))
            .cloned()
            .collect();
        RemoteScanExec {
            dynamic_filters,
            ..self.renewed()
        }
    }

    /// The reader the scan's queries run through.
    pub(super) fn reader(&self) -> Arc<dyn RemoteReader> {
        Arc::clone(&self.reader)
    }

    /// Where the scan's connections come from, if its source's pool reserves them.
    pub(super) fn connections(&self) -> Option<Arc<Reservation>> {
        self.reader.connections()
    }

    /// Lets the scan take dynamic filters, as `target` says.
    pub fn with_dynamic_filters(mut self, target: DynamicFilterTarget) -> Self {
        self.dynamic = Some(Arc::new(target));
        self
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The table the scan reads, as the source names it.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The queries the scan runs, one per partition: none for a scan reading a query
    /// another scan runs.
    pub fn sqls(&self) -> Vec<String> {
        match &self.shared {
            Some(SharedRead { query, first, .. }) if *first => vec![query.sql().to_string()],
            Some(_) => vec![],
            None => self.statements.iter().map(ToString::to_string).collect(),
        }
    }

    /// The queries as sent, dynamic filters included, one per partition (`None` for a
    /// partition not started).
    pub fn sent_sqls(&self) -> Vec<Option<String>> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The query for `partition`, with what the source can evaluate of the dynamic filters'
    /// current state.
    fn query(&self, partition: usize) -> impl Future<Output = String> + use<> {
        let statement = self.statements[partition].clone();
        let dynamic = self
            .dynamic
            .clone()
            .filter(|_| !self.dynamic_filters.is_empty());
        let filters = self.dynamic_filters.clone();
        let written = Arc::clone(&self.written);
        let source = self.source.clone();
        let table = self.table.clone();
        async move {
            let Some(dynamic) = dynamic else {
                return statement.to_string();
            };
            // Only an optimization: on an error the query still runs, reading more rows.
            let unrestricted = |e: DataFusionError| {
                tracing::warn!(source, table, error = %e, "a dynamic filter could not be sent");
                statement.to_string()
            };
            // The partitions start together once a build side is complete, and their
            // restriction is the same: the first writes it (tens of thousands of keys can
            // take milliseconds) and the others wait for it.
            let restriction = {
                let mut written = written.lock().await;
                let generations: Vec<u64> = filters.iter().map(snapshot_generation).collect();
                match written.as_ref().filter(|w| w.generations == generations) {
                    Some(w) => w.restriction.clone(),
                    None => {
                        let started = Instant::now();
                        let restriction = match dynamic.restriction(&filters) {
                            Ok(restriction) => restriction,
                            Err(e) => return unrestricted(e),
                        };
                        tracing::debug!(source, table, elapsed = ?started.elapsed(),
                            "dynamic filters written");
                        *written = Some(Written {
                            generations,
                            restriction: restriction.clone(),
                        });
                        restriction
                    }
                }
            };
            match restriction {
                Some(r) => dynamic
                    .restrict(&statement, r)
                    .map_or_else(unrestricted, |s| s.to_string()),
                None => statement.to_string(),
            }
        }
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
                    self.statements.len(),
                    self.statements
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )?;
                if self.statements.len() > 1 {
                    write!(f, " (and {} more)", self.statements.len() - 1)?;
                }
                if let Some(shared) = &self.shared {
                    let role = if shared.first { "runs" } else { "reads" };
                    write!(
                        f,
                        ", shared: {role} {} (columns {:?})",
                        shared.query.sql(),
                        shared.columns
                    )?;
                }
                if !self.dynamic_filters.is_empty() {
                    write!(f, ", dynamic_filters={}", self.dynamic_filters.len())?;
                    if let Some(Some(sent)) = self.sent_sqls().first() {
                        write!(f, ", sent={sent}")?;
                    }
                }
                Ok(())
            }
            DisplayFormatType::Verbose => {
                write!(
                    f,
                    "RemoteScanExec: source={}, table={}",
                    self.source, self.table
                )?;
                for (i, sql) in self.statements.iter().enumerate() {
                    write!(f, ", sql[{i}]={sql}")?;
                }
                for (i, sent) in self.sent_sqls().iter().enumerate() {
                    if let Some(sent) = sent {
                        write!(f, ", sent[{i}]={sent}")?;
                    }
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // A hash join fills its dynamic filter only if it finds it here.
        datafusion::physical_plan::apply_expression_roots(self.dynamic_filters.iter().cloned(), f)
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .iter()
            .map(|f| Arc::clone(&f.filter))
            .collect();
        // Static filters reached the scan when it was planned (or could not be pushed);
        // dynamic ones are kept, to read when the queries start. DataFusion still applies
        // them all above the scan.
        let result = FilterPushdownPropagation::with_parent_pushdown_result(vec![
            PushedDown::No;
            filters.len()
        ]);
        let dynamic: Vec<_> = filters
            .into_iter()
            .filter(|f| DynamicFilterTracking::classify(f).contains_dynamic_filter())
            .collect();
        if phase != FilterPushdownPhase::Post
            || self.dynamic.is_none()
            || self.shared.is_some()
            || dynamic.is_empty()
        {
            return Ok(result);
        }
        let mut dynamic_filters = self.dynamic_filters.clone();
        dynamic_filters.extend(dynamic);
        let scan = RemoteScanExec {
            dynamic_filters,
            ..self.renewed()
        };
        Ok(result.with_updated_node(Arc::new(scan)))
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
        if partition >= self.statements.len() {
            return internal_err!(
                "RemoteScanExec has {} partitions, asked for {partition}",
                self.statements.len()
            );
        }
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        if let Some(shared) = &self.shared {
            let rows = shared.query.subscribe(&context)?;
            let columns = shared.columns.clone();
            let schema = Arc::clone(&self.schema);
            let picked = rows.map(move |batch| -> Result<RecordBatch> {
                let batch = batch?;
                let arrays = columns
                    .iter()
                    .map(|&i| Arc::clone(batch.column(i)))
                    .collect();
                let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                let picked =
                    RecordBatch::try_new_with_options(Arc::clone(&schema), arrays, &options)?;
                Ok(picked.record_output(&metrics))
            });
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                picked,
            )));
        }
        // The query is written when the stream is first polled: a hash join polls its
        // probe side only once its build side is complete and the dynamic filter final.
        let query = self.query(partition);
        let reader = Arc::clone(&self.reader);
        let schema = Arc::clone(&self.schema);
        let batch_size = context.session_config().batch_size();
        let sent = Arc::clone(&self.sent);
        let opening = async move {
            let sql = query.await;
            if let Ok(mut sent) = sent.lock() {
                sent[partition] = Some(sql.clone());
            }
            reader.read(partition, sql, schema, batch_size)
        };
        let stream = futures::stream::once(opening).try_flatten();
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
            let parts = self.statements.len().max(1);
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

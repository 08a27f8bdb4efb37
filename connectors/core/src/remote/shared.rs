//! Sub-plan scans that compute the same thing share one query.
//!
//! DataFusion inlines a common table expression at every place that reads it, so a query
//! that reads one twice (TPC-H q15: the revenue of each supplier, joined with its own
//! maximum) pushes the same aggregate to the source twice, and the source computes it
//! twice. Two pushed sub-plans that differ only in the columns their top projection picks
//! have the same *core* ([`SubPlanCore`]); [`ShareSubPlans`] gives each group of such scans
//! one [`SharedQuery`] that runs the core once, keeps its batches, and lets every scan of
//! the group read them, picking its own columns.
//!
//! Only small results are shared (the source's estimate is at most [`SHARE_MAX_ROWS`]),
//! because every batch is kept until the plan is dropped: a scan may start reading only
//! after another has read everything (a hash join's probe side waits for its build side).
//! The kept batches are counted against the query's memory pool. The query is read into
//! the buffer by a task of its own, not by whichever scan polls first, so no scan waits for
//! another to be polled.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, Result, plan_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use tokio::sync::watch;

use super::federate::unalias;
use super::name_clash::GuardedFilterPushdown;
use super::sub_plan_sql::remote_sql;
use super::{RemoteReader, RemoteScanExec, RemoteSource};

/// The most rows (by the source's estimate) a shared query may return: its batches stay in
/// memory for as long as the plan runs.
pub(super) const SHARE_MAX_ROWS: usize = 1_000_000;

/// What a sub-plan computes below the projections and aliases at its top that only pick
/// and rename columns.
#[derive(Debug)]
pub struct SubPlanCore {
    source: Arc<dyn RemoteSource>,
    plan: LogicalPlan,
    /// Column `i` of the scan is column `columns[i]` of the core.
    columns: Vec<usize>,
}

impl SubPlanCore {
    /// The core of the sub-plan `plan` on `source`.
    pub fn of(source: &Arc<dyn RemoteSource>, plan: &LogicalPlan) -> SubPlanCore {
        let mut columns: Vec<usize> = (0..plan.schema().fields().len()).collect();
        let mut core = plan;
        loop {
            match core {
                LogicalPlan::SubqueryAlias(alias) => core = alias.input.as_ref(),
                LogicalPlan::Projection(projection) => {
                    let input = projection.input.schema();
                    let Some(picked) = projection
                        .expr
                        .iter()
                        .map(|e| match unalias(e) {
                            Expr::Column(c) => input.index_of_column(c).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                    else {
                        break;
                    };
                    columns = columns.iter().map(|&i| picked[i]).collect();
                    core = projection.input.as_ref();
                }
                _ => break,
            }
        }
        SubPlanCore {
            source: Arc::clone(source),
            plan: core.clone(),
            columns,
        }
    }

    /// The source's compute context and the SQL of the core's shape (for an aggregate, its
    /// input and grouping without the aggregate functions): scans with equal keys can share
    /// one query, which computes every aggregate any of them needs. `None` if that SQL
    /// cannot be written. Computed only for plans with several sub-plan scans.
    fn key(&self) -> Option<String> {
        let shape = match &self.plan {
            LogicalPlan::Aggregate(aggregate)
                if !aggregate
                    .group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_))) =>
            {
                LogicalPlan::Aggregate(
                    Aggregate::try_new(
                        Arc::clone(&aggregate.input),
                        aggregate.group_expr.clone(),
                        vec![],
                    )
                    .ok()?,
                )
            }
            other => other.clone(),
        };
        let sql = remote_sql(self.source.as_ref(), &shape).ok()?;
        Some(format!("{}\n{sql}", self.source.compute_context()))
    }
}

/// The one query for scans with the same core key: the core, with every aggregate any of
/// them computes; and where each scan's columns are in its answer.
struct Merged {
    statement: Statement,
    schema: SchemaRef,
    columns: Vec<Vec<usize>>,
}

fn merge(cores: &[&SubPlanCore]) -> Result<Merged> {
    let first = cores[0];
    let LogicalPlan::Aggregate(aggregate) = &first.plan else {
        // Equal keys are equal queries.
        return Ok(Merged {
            statement: select_all(first.source.as_ref(), &first.plan)?,
            schema: Arc::new(first.plan.schema().as_arrow().clone()),
            columns: cores.iter().map(|c| c.columns.clone()).collect(),
        });
    };
    let mut input = aggregate.input.as_ref().clone();
    let mut aggregates = aggregate.aggr_expr.clone();
    for core in &cores[1..] {
        let LogicalPlan::Aggregate(other) = &core.plan else {
            return plan_err!("scans with one key compute different things");
        };
        input = wider_input(&input, &other.input)?;
        for e in &other.aggr_expr {
            if !aggregates.contains(e) {
                aggregates.push(e.clone());
            }
        }
    }
    let plan = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(input),
        aggregate.group_expr.clone(),
        aggregates,
    )?);
    let statement = select_all(first.source.as_ref(), &plan)?;
    let merged = plan.schema();
    let columns = cores
        .iter()
        .map(|core| {
            let schema = core.plan.schema();
            core.columns
                .iter()
                .map(|&i| {
                    let (qualifier, field) = schema.qualified_field(i);
                    merged.index_of_column(&Column::new(qualifier.cloned(), field.name()))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Merged {
        statement,
        schema: Arc::new(merged.as_arrow().clone()),
        columns,
    })
}

/// The SQL for `plan` returning its columns in its schema's order (the unparser writes a
/// bare aggregate's functions before its grouping).
fn select_all(source: &dyn RemoteSource, plan: &LogicalPlan) -> Result<Statement> {
    let columns = plan.schema().columns().into_iter().map(Expr::Column);
    let projected = LogicalPlanBuilder::from(plan.clone())
        .project(columns)?
        .build()?;
    remote_sql(source, &projected)
}

/// An input that has the columns of both aggregate inputs `a` and `b`: they are equal, or
/// scans of one table with the same filters and limit, which read the union of their
/// columns (projection pushdown gives each aggregate only the columns it uses).
fn wider_input(a: &LogicalPlan, b: &LogicalPlan) -> Result<LogicalPlan> {
    if a == b {
        return Ok(a.clone());
    }
    match (a, b) {
        (LogicalPlan::TableScan(x), LogicalPlan::TableScan(y))
            if x.table_name == y.table_name
                && x.filters == y.filters
                && x.fetch == y.fetch
                && Arc::ptr_eq(&x.source, &y.source) =>
        {
            let width = x.source.schema().fields().len();
            let all: Vec<usize> = (0..width).collect();
            let wanted = |p: &Option<Vec<usize>>| p.clone().unwrap_or_else(|| all.clone());
            let mut columns = wanted(&x.projection);
            columns.extend(wanted(&y.projection));
            columns.sort_unstable();
            columns.dedup();
            Ok(LogicalPlanBuilder::scan_with_filters_fetch(
                x.table_name.clone(),
                Arc::clone(&x.source),
                Some(columns),
                x.filters.clone(),
                x.fetch,
            )?
            .build()?)
        }
        _ => plan_err!("the aggregates read different inputs"),
    }
}

/// One run of a core query, read by several scans.
#[derive(Debug)]
pub struct SharedQuery {
    source: String,
    reader: Arc<dyn RemoteReader>,
    sql: String,
    schema: SchemaRef,
    buffer: Arc<watch::Sender<Buffer>>,
    /// The task filling the buffer, from the first scan that starts, and the memory the
    /// buffer takes; the task stops when the plan (and so this) is dropped.
    task: Mutex<Option<(SpawnedTask<()>, Arc<MemoryReservation>)>>,
}

/// The batches read so far, and how the query ended.
#[derive(Debug, Default)]
struct Buffer {
    batches: Vec<RecordBatch>,
    end: Option<Result<(), Arc<DataFusionError>>>,
}

impl SharedQuery {
    fn new(source: &str, reader: Arc<dyn RemoteReader>, sql: String, schema: SchemaRef) -> Self {
        SharedQuery {
            source: source.to_string(),
            reader,
            sql,
            schema,
            buffer: Arc::new(watch::Sender::new(Buffer::default())),
            task: Mutex::new(None),
        }
    }

    /// The core query's SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The core's rows, from the start: the first call starts the query.
    pub fn subscribe(self: &Arc<Self>, context: &TaskContext) -> Result<SendableRecordBatchStream> {
        self.start(context)?;
        let shared = Arc::clone(self);
        let receiver = self.buffer.subscribe();
        let batches = futures::stream::unfold(
            (shared, receiver, 0usize, false),
            |(shared, mut receiver, next, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let step = {
                        let buffer = receiver.borrow_and_update();
                        match (buffer.batches.get(next), &buffer.end) {
                            (Some(batch), _) => Some(Ok(batch.clone())),
                            (None, Some(Ok(()))) => return None,
                            (None, Some(Err(e))) => {
                                Some(Err(DataFusionError::Shared(Arc::clone(e))))
                            }
                            (None, None) => None,
                        }
                    };
                    match step {
                        Some(Ok(batch)) => {
                            return Some((Ok(batch), (shared, receiver, next + 1, false)));
                        }
                        Some(Err(e)) => return Some((Err(e), (shared, receiver, next, true))),
                        None => {}
                    }
                    // The sender lives in `shared`, which this stream holds: it cannot close.
                    let _ = receiver.changed().await;
                }
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        )))
    }

    fn start(&self, context: &TaskContext) -> Result<()> {
        let mut task = self
            .task
            .lock()
            .map_err(|_| DataFusionError::Internal("a shared query's lock is poisoned".into()))?;
        if task.is_some() {
            return Ok(());
        }
        let mut rows = self.reader.read(
            0,
            self.sql.clone(),
            Arc::clone(&self.schema),
            context.session_config().batch_size(),
        )?;
        let reservation = Arc::new(
            MemoryConsumer::new(format!("shared query on {}", self.source))
                .register(context.memory_pool()),
        );
        let buffer = Arc::clone(&self.buffer);
        let memory = Arc::clone(&reservation);
        let filling = SpawnedTask::spawn(async move {
            while let Some(batch) = rows.next().await {
                let kept = batch.and_then(|batch| {
                    memory.try_grow(batch.get_array_memory_size())?;
                    Ok(batch)
                });
                match kept {
                    Ok(batch) => buffer.send_modify(|b| b.batches.push(batch)),
                    Err(e) => {
                        buffer.send_modify(|b| b.end = Some(Err(Arc::new(e))));
                        return;
                    }
                }
            }
            buffer.send_modify(|b| b.end = Some(Ok(())));
        });
        *task = Some((filling, reservation));
        Ok(())
    }
}

/// Gives sub-plan scans with the same core one [`SharedQuery`]. It runs before the
/// physical filter pushdown that hands scans their dynamic filters: a shared query's rows
/// are the same for every scan, so shared scans take none.
#[derive(Debug, Default)]
pub struct ShareSubPlans;

impl ShareSubPlans {
    /// DataFusion's physical optimizer rules with this one placed before the dynamic
    /// filter pushdown (`FilterPushdown(Post)`), and both filter pushdown phases guarded
    /// against plans they would get wrong ([`GuardedFilterPushdown::guard`]).
    pub fn with_default_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        GuardedFilterPushdown::guard(&mut rules);
        let at = rules
            .iter()
            .position(|r| r.name() == "FilterPushdown(Post)")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(ShareSubPlans));
        rules
    }
}

/// The query scans with one core key share, and where each finds its columns in it.
struct Share {
    query: Arc<SharedQuery>,
    columns: Vec<(Arc<SubPlanCore>, Vec<usize>)>,
    /// Whether a scan has taken the query yet: the first counts as reading the source.
    taken: bool,
}

impl Share {
    fn new(scan: &RemoteScanExec, cores: &[Arc<SubPlanCore>]) -> Result<Share> {
        let refs: Vec<&SubPlanCore> = cores.iter().map(Arc::as_ref).collect();
        let merged = merge(&refs)?;
        let query = SharedQuery::new(
            scan.source(),
            scan.reader(),
            merged.statement.to_string(),
            merged.schema,
        );
        Ok(Share {
            query: Arc::new(query),
            columns: cores.iter().cloned().zip(merged.columns).collect(),
            taken: false,
        })
    }

    /// The query, the columns `core`'s scan reads, and whether it is the first to read.
    fn take(&mut self, core: &Arc<SubPlanCore>) -> Option<(Arc<SharedQuery>, Vec<usize>, bool)> {
        let (_, columns) = self.columns.iter().find(|(c, _)| Arc::ptr_eq(c, core))?;
        let first = !self.taken;
        self.taken = true;
        Some((Arc::clone(&self.query), columns.clone(), first))
    }
}

/// The core of `scan` if it may be shared.
fn shareable(scan: &RemoteScanExec) -> Option<Arc<SubPlanCore>> {
    let small = match scan.row_estimate() {
        Precision::Exact(n) | Precision::Inexact(n) => n <= SHARE_MAX_ROWS,
        Precision::Absent => false,
    };
    scan.core().filter(|_| small && !scan.is_shared())
}

impl PhysicalOptimizerRule for ShareSubPlans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut cores: Vec<Arc<SubPlanCore>> = Vec::new();
        plan.apply(|node| {
            if let Some(core) = node.downcast_ref::<RemoteScanExec>().and_then(shareable) {
                cores.push(core);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        // Most plans have at most one sub-plan scan: nothing to write SQL for.
        if cores.len() < 2 {
            return Ok(plan);
        }
        let keyed: Vec<(Arc<SubPlanCore>, String)> = cores
            .into_iter()
            .filter_map(|core| core.key().map(|key| (core, key)))
            .collect();
        let mut groups: HashMap<&str, Vec<Arc<SubPlanCore>>> = HashMap::new();
        for (core, key) in &keyed {
            groups.entry(key).or_default().push(Arc::clone(core));
        }
        groups.retain(|_, cores| cores.len() > 1);
        if groups.is_empty() {
            return Ok(plan);
        }
        let mut shares: HashMap<&str, Share> = HashMap::new();
        Ok(plan
            .transform_up(|node| {
                let Some(scan) = node.downcast_ref::<RemoteScanExec>() else {
                    return Ok(Transformed::no(node));
                };
                let Some(core) = shareable(scan) else {
                    return Ok(Transformed::no(node));
                };
                let Some((_, key)) = keyed.iter().find(|(c, _)| Arc::ptr_eq(c, &core)) else {
                    return Ok(Transformed::no(node));
                };
                let Some(cores) = groups.get(key.as_str()) else {
                    return Ok(Transformed::no(node));
                };
                let share = match shares.entry(key) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => match Share::new(scan, cores) {
                        Ok(share) => e.insert(share),
                        Err(error) => {
                            tracing::debug!(%error, "scans of one sub-plan run their own queries");
                            groups.remove(key.as_str());
                            return Ok(Transformed::no(node));
                        }
                    },
                };
                match share.take(&core) {
                    Some((query, columns, first)) => Ok(Transformed::yes(Arc::new(
                        scan.shared(query, columns, first),
                    ))),
                    None => Ok(Transformed::no(node)),
                }
            })?
            .data)
    }

    fn name(&self) -> &str {
        "tributary_share_sub_plans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use futures::TryStreamExt;

    use super::*;

    /// A source answering every query with the same batches, then optionally an error.
    #[derive(Debug)]
    struct Answers {
        batches: Vec<RecordBatch>,
        fail: bool,
        queries: AtomicUsize,
    }

    impl RemoteReader for Answers {
        fn read(
            &self,
            _part: usize,
            _sql: String,
            schema: SchemaRef,
            _batch_size: usize,
        ) -> Result<SendableRecordBatchStream> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let mut items: Vec<Result<RecordBatch>> =
                self.batches.iter().cloned().map(Ok).collect();
            if self.fail {
                items.push(Err(DataFusionError::Execution("the source failed".into())));
            }
            Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(items),
            )))
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]))
    }

    fn query(batches: usize, fail: bool) -> (Arc<SharedQuery>, Arc<Answers>) {
        let batches = (0..batches)
            .map(|i| {
                let values = Int64Array::from(vec![Some(i as i64), None, Some(-1)]);
                RecordBatch::try_new(schema(), vec![Arc::new(values)]).unwrap()
            })
            .collect();
        let answers = Arc::new(Answers {
            batches,
            fail,
            queries: AtomicUsize::new(0),
        });
        let reader = Arc::clone(&answers) as Arc<dyn RemoteReader>;
        let query = SharedQuery::new("db", reader, "SELECT k FROM t".into(), schema());
        (Arc::new(query), answers)
    }

    #[tokio::test]
    async fn every_reader_gets_every_batch_from_one_query() {
        let (shared, answers) = query(3, false);
        let context = TaskContext::default();
        let early = shared.subscribe(&context).unwrap();
        let first: Vec<RecordBatch> = early.try_collect().await.unwrap();
        // This reader starts only after the query ended.
        let late = shared.subscribe(&context).unwrap();
        let second: Vec<RecordBatch> = late.try_collect().await.unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(first, second);
        assert_eq!(first, answers.batches);
        assert_eq!(answers.queries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn readers_in_step_and_an_empty_answer() {
        let (shared, answers) = query(0, false);
        let context = TaskContext::default();
        let a = shared.subscribe(&context).unwrap();
        let b = shared.subscribe(&context).unwrap();
        let (a, b) = futures::join!(a.try_collect::<Vec<_>>(), b.try_collect::<Vec<_>>());
        assert!(a.unwrap().is_empty());
        assert!(b.unwrap().is_empty());
        assert_eq!(answers.queries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_query_fails_every_reader_after_the_batches_before_it() {
        let (shared, _) = query(2, true);
        let context = TaskContext::default();
        for _ in 0..2 {
            let mut rows = shared.subscribe(&context).unwrap();
            assert!(rows.try_next().await.unwrap().is_some());
            assert!(rows.try_next().await.unwrap().is_some());
            let error = rows.try_next().await.unwrap_err();
            assert!(error.to_string().contains("the source failed"), "{error}");
            assert!(rows.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn kept_batches_count_against_the_memory_pool() {
        let (shared, _) = query(1000, false);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(10_000)))
            .build_arc()
            .unwrap();
        let context = TaskContext::default().with_runtime(runtime);
        let rows = shared.subscribe(&context).unwrap();
        let error = rows.try_collect::<Vec<_>>().await.unwrap_err();
        assert!(error.to_string().contains("shared query on db"), "{error}");
    }
}

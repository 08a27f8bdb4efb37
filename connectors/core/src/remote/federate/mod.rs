//! Sub-plan pushdown: joins, aggregates and `ORDER BY … LIMIT` that touch only one SQL
//! source run on that source as one query.
//!
//! `datafusion-federation` finds, after DataFusion's own optimizations, the largest parts of
//! a plan that read from a single source, and hands each to that source's optimizer, which
//! is [`SubPlanRule`] here. The rule federates the largest pieces whose every node and
//! expression the source evaluates exactly as DataFusion would (the same rules as filter
//! pushdown, plus rules for joins, grouping and ordering, and workarounds for shapes the
//! unparser writes wrongly); the rest stays in DataFusion, reading through [`RemoteTable`]
//! scans. Plain scans are never federated: the remote scan splits them into parallel parts.

mod apart_work;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{
    Column, DFSchema, JoinType, NullEquality, Result, Statistics, internal_err,
};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Distinct, Expr, ExprSchemable, Extension, Join, LogicalPlan, Projection, SortExpr,
    Subquery, TableSource, TableType,
};
use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
use datafusion::optimizer::optimizer::Optimizer;
use datafusion::optimizer::{OptimizerConfig, OptimizerContext, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_federation::{
    FederatedPlanNode, FederatedTableProviderAdaptor, FederatedTableSource, FederationPlanner,
    FederationProvider,
};

use super::dynamic::DynamicFilterTarget;
use super::estimated::EstimatedExec;
use super::group_bound::most_groups;
use super::pushdown::{
    ColumnTraits, NotPushed, PushdownRules, check_expr, check_expr_with_subqueries, is_decimal,
    is_string,
};
use super::shared::SubPlanCore;
use super::sub_plan_sql::{remote_sql, single_table};
use super::{Estimate, RemoteScanExec, RemoteSource, RemoteTable, map_subquery_plans};

/// Everything sub-plan pushdown needs for one source; shared by its tables.
#[derive(Clone)]
pub struct Federation {
    provider: Arc<Provider>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Federation({})", self.provider.source.name())
    }
}

impl Federation {
    /// Sets up sub-plan pushdown for `source`.
    pub fn new(source: Arc<dyn RemoteSource>) -> Self {
        let rule = SubPlanRule {
            source: Arc::clone(&source),
        };
        let provider = Provider {
            source,
            optimizer: Arc::new(Optimizer::with_rules(vec![Arc::new(rule)])),
        };
        Federation {
            provider: Arc::new(provider),
        }
    }

    /// `table` as DataFusion should see it: scanned through the remote scan, and
    /// recognised by the federation rule as belonging to this source.
    pub fn table(&self, table: RemoteTable) -> Arc<dyn TableProvider> {
        let source = Source {
            provider: Arc::clone(&self.provider),
            schema: Arc::clone(&table.info().schema),
        };
        Arc::new(FederatedTableProviderAdaptor::new_with_provider(
            Arc::new(source),
            Arc::new(table),
        ))
    }
}

/// The remote table behind a provider registered by [`Federation::table`] (or a bare one).
pub fn remote_table(provider: &dyn TableProvider) -> Option<&RemoteTable> {
    if let Some(table) = provider.downcast_ref::<RemoteTable>() {
        return Some(table);
    }
    provider
        .downcast_ref::<FederatedTableProviderAdaptor>()
        .and_then(|a| a.table_provider.as_deref())
        .and_then(|p| p.downcast_ref::<RemoteTable>())
}

/// One source as the federation rule sees it: plans touching only tables of the same
/// compute context go to its optimizer, [`SubPlanRule`].
struct Provider {
    source: Arc<dyn RemoteSource>,
    optimizer: Arc<Optimizer>,
}

impl FederationProvider for Provider {
    fn name(&self) -> &str {
        "tributary_remote"
    }

    fn compute_context(&self) -> Option<String> {
        Some(self.source.compute_context())
    }

    fn optimizer(&self) -> Option<Arc<Optimizer>> {
        Some(Arc::clone(&self.optimizer))
    }
}

/// The table source of a remote table, naming the source it belongs to.
struct Source {
    provider: Arc<Provider>,
    schema: SchemaRef,
}

impl TableSource for Source {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }
}

impl FederatedTableSource for Source {
    fn federation_provider(&self) -> Arc<dyn FederationProvider> {
        Arc::clone(&self.provider) as Arc<dyn FederationProvider>
    }
}

/// Turns a federated sub-plan into one query on the source: tables get their remote names
/// (aliased to the names the plan uses), DataFusion's unparser writes the SQL, and the
/// source's reader runs it.
struct Planner {
    source: Arc<dyn RemoteSource>,
    /// The traits of the sub-plan's output columns, for dynamic filters on them.
    traits: Vec<ColumnTraits>,
}

/// Inputs of fewer rows are aggregated where they are: moving them costs little either way.
const MIN_ROWS_TO_PLACE_AGGREGATE: usize = 10_000;

impl Planner {
    /// The federation rule of this planner's source, to analyze and push parts of its plan.
    fn rule(&self) -> SubPlanRule {
        SubPlanRule {
            source: Arc::clone(&self.source),
        }
    }

    /// `plan` with its top aggregate computed by DataFusion over the source's answer to the
    /// aggregate's input, when the source estimates at least half as many groups as input
    /// rows: then the aggregate saves little transfer, and PostgreSQL groups (by sorting,
    /// spilling past `work_mem`, and gathering partial groups through one process) far
    /// slower than DataFusion's hash aggregate (TPC-H q16: 250 ms pushed whole, 114 ms for
    /// its join alone). `rows` is the source's estimate for the whole of `plan`.
    async fn aggregate_apart(
        &self,
        plan: &LogicalPlan,
        rows: Option<usize>,
    ) -> Result<Option<LogicalPlan>> {
        if !self.source.estimates_groups() {
            return Ok(None);
        }
        let Some((aggregate, having)) = top_aggregate(plan) else {
            return Ok(None);
        };
        // Without a `HAVING`, the plan returns one row per group.
        let groups = if having {
            let grouped = explicit_projection(LogicalPlan::Aggregate(aggregate.clone()))?;
            match remote_sql(self.source.as_ref(), &grouped) {
                Ok(sql) => self.source.estimate(&sql.to_string()).await.map(|e| e.rows),
                Err(_) => None,
            }
        } else {
            rows
        };
        let Some(groups) = groups else {
            return Ok(None);
        };
        if groups.saturating_mul(2) < MIN_ROWS_TO_PLACE_AGGREGATE {
            return Ok(None);
        }
        // The input alone may not be writable as SQL (a derived table the aggregate
        // inlines); then the source runs both.
        let Ok(ungrouped) = remote_sql(self.source.as_ref(), &aggregate.input) else {
            return Ok(None);
        };
        let Some(input_rows) = self
            .source
            .estimate(&ungrouped.to_string())
            .await
            .map(|e| e.rows)
        else {
            return Ok(None);
        };
        if input_rows < MIN_ROWS_TO_PLACE_AGGREGATE || groups.saturating_mul(2) < input_rows {
            return Ok(None);
        }
        tracing::debug!(
            source = self.source.name(),
            groups,
            input_rows,
            "the aggregate hardly reduces its input; DataFusion computes it"
        );
        match self.read_apart(aggregate.input.as_ref().clone())? {
            Some(input) => replace_aggregate_input(plan, input).map(Some),
            None => Ok(None),
        }
    }

    /// `plan` with its topmost join computed by DataFusion over the source's answers to the
    /// join's two inputs, for a plan whose join the source runs worse (see
    /// [`Estimate`](super::Estimate)). TPC-H q13 on PostgreSQL 15: 0.45 s pushed whole,
    /// 0.39–0.41 s read apart. An input's own sub-plan goes through this planner
    /// again, so a join below the topmost one that the source runs badly is split in turn.
    /// `None` where an input cannot be written as SQL on its own: the source runs it all.
    fn join_apart(&self, plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
        let inputs = match plan {
            LogicalPlan::Join(join) => {
                let left = self.read_apart(join.left.as_ref().clone())?;
                let right = self.read_apart(join.right.as_ref().clone())?;
                match (left, right) {
                    (Some(left), Some(right)) => vec![left, right],
                    _ => return Ok(None),
                }
            }
            _ => match plan.inputs()[..] {
                [input] => match self.join_apart(input)? {
                    Some(input) => vec![input],
                    None => return Ok(None),
                },
                _ => return Ok(None),
            },
        };
        let apart = plan.with_new_exprs(plan.expressions(), inputs)?;
        // The federation rule took the sub-plan in the optimizer's first pass, before the
        // equalities that filters pushed into joins were made join keys (comma joins, as
        // in TPC-H q18 and q21): without that, DataFusion would join by nested loops.
        let keyed = Optimizer::with_rules(vec![Arc::new(ExtractEquijoinPredicate::new())])
            .optimize(apart, &OptimizerContext::new(), |_, _| {})?;
        // The subqueries of the nodes DataFusion now runs are pushed on their own, as
        // the federation rule pushes those of any node it leaves to DataFusion.
        let rule = self.rule();
        keyed
            .transform_down(|node| rule.push_subqueries(node))
            .map(|t| Some(t.data))
    }

    /// `input`, a part of this planner's sub-plan, as a read of its own: a federated
    /// sub-plan if it does more than scan one table (with filters, projections or a
    /// limit DataFusion applies to the scan), else the plan as it is, its scans read in
    /// parallel parts. `None` if its sub-plan cannot be written as SQL.
    fn read_apart(&self, input: LogicalPlan) -> Result<Option<LogicalPlan>> {
        let rule = self.rule();
        let analysis = rule.analyze(&input);
        if !analysis.worthwhile || analysis.blocked.is_some() {
            return Ok(Some(input));
        }
        let wrapped = project_aggregates(input)?;
        if remote_sql(self.source.as_ref(), &wrapped).is_err() {
            return Ok(None);
        }
        let planner = Arc::new(Planner {
            source: Arc::clone(&self.source),
            traits: analysis.traits,
        });
        Ok(Some(LogicalPlan::Extension(Extension {
            node: Arc::new(FederatedPlanNode::new(wrapped, planner)),
        })))
    }

    /// The source's estimate of `sql`, the SQL of `plan`, as the planner counts it: for a
    /// source that estimates the rows an aggregate reads rather than its groups, at most
    /// the groups (see [`aggregate_rows`]), and the work of returning the rows it does not
    /// return taken off: MariaDB prices TPC-H q18's subquery, which groups `lineitem` by
    /// order, as returning the 6 million items it reads, where it returns a row an order
    /// (at most 1.5 million) that its `HAVING` keeps.
    pub(super) async fn estimate(
        &self,
        plan: &LogicalPlan,
        sql: &str,
        session: &dyn Session,
    ) -> Option<Estimate> {
        let mut estimate = self.source.estimate(sql).await?;
        if !self.source.estimates_groups()
            && let Some(most) = aggregate_rows(plan, selectivity(session))
            && most < estimate.rows
        {
            let unreturned = (estimate.rows - most) as f64;
            estimate.work = estimate
                .work
                .map(|work| work - unreturned * self.source.work_per_returned_row());
            estimate.rows = most;
        }
        Some(estimate)
    }
}

/// The aggregate at the top of `plan` (under projections, an `ORDER BY`, which keep the
/// number of groups, and a `HAVING` filter), if any, and whether a `HAVING` is above it.
fn top_aggregate(plan: &LogicalPlan) -> Option<(&Aggregate, bool)> {
    match plan {
        LogicalPlan::Aggregate(a) => Some((a, false)),
        LogicalPlan::Projection(p) => top_aggregate(&p.input),
        // With a fetch, the source's estimate is of the rows kept, not of the groups.
        LogicalPlan::Sort(s) if s.fetch.is_none() => top_aggregate(&s.input),
        LogicalPlan::Filter(f) => top_aggregate(&f.input).map(|(a, _)| (a, true)),
        _ => None,
    }
}

/// DataFusion's selectivity of filters it cannot estimate, in percent.
fn selectivity(session: &dyn Session) -> u8 {
    session
        .config()
        .options()
        .optimizer
        .default_filter_selectivity
}

/// For a source that estimates the rows an aggregate reads rather than its groups, the
/// rows `plan` returns if its top is an aggregate whose groups are bounded (see
/// [`most_groups`]): at most that many groups, of which a `HAVING` keeps the share
/// `selectivity` (in percent: DataFusion's default for filters it cannot estimate).
fn aggregate_rows(plan: &LogicalPlan, selectivity: u8) -> Option<usize> {
    let (aggregate, having) = top_aggregate(plan)?;
    let groups = most_groups(aggregate)?;
    Some(if having {
        (groups as f64 * f64::from(selectivity.min(100)) / 100.0).ceil() as usize
    } else {
        groups
    })
}

/// `plan` with the input of its [`top_aggregate`] replaced by `input`.
fn replace_aggregate_input(plan: &LogicalPlan, input: LogicalPlan) -> Result<LogicalPlan> {
    let child = match plan {
        LogicalPlan::Aggregate(_) => input,
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::Sort(_) => {
            replace_aggregate_input(plan.inputs()[0], input)?
        }
        _ => return internal_err!("no aggregate at the top of a federated sub-plan"),
    };
    plan.with_new_exprs(plan.expressions(), vec![child])
}

#[async_trait]
impl FederationPlanner for Planner {
    async fn plan_federation(
        &self,
        node: &FederatedPlanNode,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let statement = remote_sql(self.source.as_ref(), node.plan())?;
        let estimate = self
            .estimate(node.plan(), &statement.to_string(), session)
            .await;
        let rows = match &estimate {
            Some(e) => Some(e.rows),
            None if !self.source.estimates_groups() => {
                aggregate_rows(node.plan(), selectivity(session))
            }
            None => None,
        };
        let apart = match self.aggregate_apart(node.plan(), rows).await? {
            Some(plan) => Some(plan),
            None => match estimate {
                Some(e)
                    if e.joins_better_apart
                        && self.cheaper_apart(node.plan(), e.work, session).await? =>
                {
                    self.join_apart(node.plan())?
                }
                _ => None,
            },
        };
        if let Some(plan) = apart {
            // Planned without optimizing again, which would push it back whole.
            match session
                .query_planner()
                .create_physical_plan(&plan, session)
                .await
            {
                Ok(physical) => {
                    return Ok(match rows {
                        Some(rows) => Arc::new(EstimatedExec::new(physical, rows)),
                        None => physical,
                    });
                }
                Err(e) => tracing::debug!(source = self.source.name(), error = %e,
                    "a sub-plan read apart could not be planned; the source runs it whole"),
            }
        }
        let schema: SchemaRef = Arc::new(node.plan().schema().as_arrow().clone());
        let mut statistics = Statistics::new_unknown(&schema);
        if let Some(rows) = rows {
            statistics.num_rows = Precision::Inexact(rows);
        }
        let dynamic =
            DynamicFilterTarget::sub_plan(Arc::clone(&self.source), &schema, self.traits.clone())?;
        let core = SubPlanCore::of(&self.source, node.plan());
        let scan = RemoteScanExec::new(
            self.source.name().to_string(),
            "(sub-plan)".to_string(),
            vec![statement],
            schema,
            statistics,
            self.source.reader(1),
        )
        .with_dynamic_filters(dynamic);
        Ok(Arc::new(scan.with_core(core)))
    }
}

/// Chooses which parts of a single-source plan run on the source.
struct SubPlanRule {
    source: Arc<dyn RemoteSource>,
}

impl std::fmt::Debug for SubPlanRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubPlanRule({})", self.source.name())
    }
}

impl OptimizerRule for SubPlanRule {
    fn name(&self) -> &str {
        "tributary_sub_plan_pushdown"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !self.source.pushdown() {
            return Ok(Transformed::no(plan));
        }
        self.push(plan)
    }
}

/// What the rule learned about one node and the plan below it.
#[derive(Debug)]
struct Analysis {
    /// The traits of each output column.
    traits: Vec<ColumnTraits>,
    /// Why this node (or something below it) cannot run on the source; `None` if it can.
    blocked: Option<NotPushed>,
    /// Whether the plan below does more than scan one table (so federating it saves work).
    worthwhile: bool,
    children: Vec<Analysis>,
}

impl SubPlanRule {
    /// `plan` with the largest pieces that can run on the source federated.
    fn push(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        let analysis = self.analyze(&plan);
        self.federate(plan, &analysis)
    }

    fn analyze(&self, plan: &LogicalPlan) -> Analysis {
        let children: Vec<Analysis> = plan.inputs().iter().map(|i| self.analyze(i)).collect();
        let traits = self.output_traits(plan, &children);
        let own = self.check_node(plan, &children);
        let blocked = match own {
            Err(reason) => Some(reason),
            Ok(()) => children.iter().find_map(|c| c.blocked.clone()),
        };
        let worthwhile = matches!(
            plan,
            LogicalPlan::Join(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Union(_)
        ) || children.iter().any(|c| c.worthwhile);
        Analysis {
            traits,
            blocked,
            worthwhile,
            children,
        }
    }

    /// Wraps the largest worthwhile pieces that can run on the source in a federated node.
    fn federate(&self, plan: LogicalPlan, analysis: &Analysis) -> Result<Transformed<LogicalPlan>> {
        if analysis.blocked.is_none() && analysis.worthwhile {
            let wrapped = project_aggregates(plan.clone())?;
            if let Err(e) = remote_sql(self.source.as_ref(), &wrapped) {
                tracing::debug!(source = self.source.name(), error = %e,
                    "a sub-plan could not be written as SQL; DataFusion runs it");
            } else {
                let planner = Arc::new(Planner {
                    source: Arc::clone(&self.source),
                    traits: analysis.traits.clone(),
                });
                let node = FederatedPlanNode::new(wrapped, planner);
                return Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(node),
                })));
            }
        }
        if let (Some(reason), true) = (&analysis.blocked, analysis.worthwhile) {
            tracing::debug!(source = self.source.name(), %reason,
                node = %plan.display(), "sub-plan kept in DataFusion");
        }
        let mut changed = false;
        let inputs = plan
            .inputs()
            .into_iter()
            .zip(&analysis.children)
            .map(|(input, child)| {
                let t = self.federate(input.clone(), child)?;
                changed |= t.transformed;
                Ok(t.data)
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = if changed {
            Transformed::yes(plan.with_new_exprs(plan.expressions(), inputs)?)
        } else {
            Transformed::no(plan)
        };
        plan.transform_data(|plan| self.push_subqueries(plan))
    }

    /// `plan`, a node DataFusion runs, with the plans of its subqueries pushed on their
    /// own (they read this source too).
    fn push_subqueries(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        map_subquery_plans(plan, |subquery| {
            self.push(subquery.subquery.as_ref().clone())
        })
    }

    /// Column traits of a node's output, derived from its inputs'.
    fn output_traits(&self, plan: &LogicalPlan, children: &[Analysis]) -> Vec<ColumnTraits> {
        let width = plan.schema().fields().len();
        let of_exprs = |exprs: &[Expr], input: &LogicalPlan, traits: &[ColumnTraits]| {
            exprs
                .iter()
                .map(|e| expr_traits(e, input.schema(), traits, self.source.rules()))
                .collect::<Vec<_>>()
        };
        let traits = match plan {
            LogicalPlan::TableScan(scan) => {
                let table = source_as_provider(&scan.source).ok();
                let table = table.as_deref().and_then(remote_table);
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| table.map(|t| t.info().traits(f.name())).unwrap_or_default())
                    .collect()
            }
            LogicalPlan::Projection(p) => of_exprs(&p.expr, &p.input, &children[0].traits),
            LogicalPlan::Aggregate(a) => {
                let mut exprs = a.group_expr.clone();
                exprs.extend(a.aggr_expr.iter().cloned());
                of_exprs(&exprs, &a.input, &children[0].traits)
            }
            LogicalPlan::Join(j) => match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    children[0].traits.clone()
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    children[1].traits.clone()
                }
                _ => [children[0].traits.clone(), children[1].traits.clone()].concat(),
            },
            // A union's column is compared differently if any input's is, and exactly only
            // if every input's is.
            LogicalPlan::Union(_) => (0..width)
                .map(|i| {
                    let inputs: Vec<Option<&ColumnTraits>> =
                        children.iter().map(|c| c.traits.get(i)).collect();
                    let any = |f: fn(&ColumnTraits) -> bool| inputs.iter().any(|t| t.is_none_or(f));
                    let all =
                        |f: fn(&ColumnTraits) -> bool| inputs.iter().all(|t| t.is_some_and(f));
                    ColumnTraits {
                        opaque: any(|t| t.opaque),
                        bytewise_order: all(|t| t.bytewise_order),
                        collated: any(|t| t.collated),
                        exact_as_bytes: all(|t| t.exact_as_bytes),
                    }
                })
                .collect(),
            _ => children
                .first()
                .map(|c| c.traits.clone())
                .unwrap_or_default(),
        };
        if traits.len() == width {
            traits
        } else {
            // Unknown shape: treat every column as opaque so nothing is compared remotely.
            vec![
                ColumnTraits {
                    opaque: true,
                    bytewise_order: false,
                    collated: true,
                    exact_as_bytes: false,
                };
                width
            ]
        }
    }

    /// Whether this node itself can run on the source.
    fn check_node(&self, plan: &LogicalPlan, children: &[Analysis]) -> Result<(), NotPushed> {
        let rules = self.source.rules();
        // Select lists and filters may hold scalar subqueries, written into the same query.
        let checker = |expr: &Expr, schema: &DFSchema, traits: &[ColumnTraits]| {
            check_expr_with_subqueries(
                expr,
                schema,
                rules,
                &|c: &Column| lookup(schema, traits, c),
                &|subquery: &Subquery| self.check_subquery(subquery),
            )
        };
        match plan {
            LogicalPlan::TableScan(scan) => {
                let provider = source_as_provider(&scan.source)
                    .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
                match remote_table(provider.as_ref()) {
                    None => Err(NotPushed::Unsupported("a table of another kind".into())),
                    Some(table)
                        if table.source().compute_context() != self.source.compute_context() =>
                    {
                        Err(NotPushed::Unsupported("a table of another source".into()))
                    }
                    Some(_) => Ok(()),
                }
            }
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    checker(e, p.input.schema(), &children[0].traits)?;
                    no_opaque_cast(e, p.input.schema(), &children[0].traits, rules)?;
                }
                Ok(())
            }
            LogicalPlan::Filter(f) => {
                if matches!(f.input.as_ref(), LogicalPlan::Limit(_)) {
                    // The unparser would write `WHERE … LIMIT`, filtering before limiting.
                    return Err(NotPushed::Unsupported("a filter over a limit".into()));
                }
                checker(&f.predicate, f.input.schema(), &children[0].traits)
            }
            LogicalPlan::SubqueryAlias(_) => Ok(()),
            LogicalPlan::Limit(_) => Ok(()),
            LogicalPlan::Sort(s) => {
                if s.fetch.is_none() {
                    return Err(NotPushed::Unsupported(
                        "ORDER BY without LIMIT (DataFusion keeps the order)".into(),
                    ));
                }
                for sort in &s.expr {
                    self.orderable(sort, s.input.schema(), &children[0].traits)?;
                }
                Ok(())
            }
            LogicalPlan::Join(j) => self.check_join(j, children),
            LogicalPlan::Aggregate(a) => self.check_aggregate(a, &children[0].traits),
            LogicalPlan::Distinct(Distinct::All(input)) => {
                for (i, field) in input.schema().fields().iter().enumerate() {
                    let t = children[0].traits.get(i).copied().unwrap_or_default();
                    groupable(field.data_type(), t, field.name())?;
                }
                Ok(())
            }
            LogicalPlan::Union(_) => Ok(()),
            other => Err(NotPushed::Unsupported(format!(
                "{} nodes",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("these")
            ))),
        }
    }

    /// An uncorrelated scalar subquery is written into the query when all of it runs on the
    /// source and its value compares there as in DataFusion: not text, whose comparisons may
    /// follow a collation, nor a value the source represents differently.
    fn check_subquery(&self, subquery: &Subquery) -> Result<(), NotPushed> {
        if !subquery.outer_ref_columns.is_empty() {
            return Err(NotPushed::Unsupported("correlated subqueries".into()));
        }
        let analysis = self.analyze(&subquery.subquery);
        if let Some(reason) = analysis.blocked {
            return Err(reason);
        }
        let schema = subquery.subquery.schema();
        let opaque = analysis.traits.first().is_none_or(|t| t.opaque);
        if schema.fields().len() != 1 || opaque || is_string(schema.field(0).data_type()) {
            return Err(NotPushed::Semantics(
                "a subquery whose value the source compares differently".into(),
            ));
        }
        Ok(())
    }

    fn check_join(&self, j: &Join, children: &[Analysis]) -> Result<(), NotPushed> {
        if j.null_aware {
            return Err(NotPushed::Semantics(
                "NOT IN over nullable values (the SQL written for it treats NULLs differently)"
                    .into(),
            ));
        }
        if matches!(
            j.join_type,
            JoinType::RightSemi | JoinType::RightAnti | JoinType::LeftMark | JoinType::RightMark
        ) {
            // The unparser writes right semi and anti joins as [NOT] EXISTS over the
            // wrong side.
            return Err(NotPushed::Unsupported(
                "right semi and anti joins, and mark joins".into(),
            ));
        }
        if j.null_equality == NullEquality::NullEqualsNull {
            return Err(NotPushed::Unsupported(
                "joins where NULL equals NULL".into(),
            ));
        }
        if matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
            && !matches!(single_table(&j.right), Ok(Some(_)))
        {
            return Err(NotPushed::Unsupported(
                "a semi or anti join whose subquery does more than filter one table".into(),
            ));
        }
        // The unparser folds filters of simple join inputs into ON for outer joins, which
        // is wrong on the side whose rows are kept (semi and anti joins' filters are moved
        // out of the way: `semi_joins_as_exists`).
        let preserved = match j.join_type {
            JoinType::Inner | JoinType::LeftSemi | JoinType::LeftAnti => (false, false),
            JoinType::Left | JoinType::LeftMark => (true, false),
            JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                (false, true)
            }
            JoinType::Full => (true, true),
        };
        if (preserved.0 && filtered_scan(&j.left)) || (preserved.1 && filtered_scan(&j.right)) {
            return Err(NotPushed::Unsupported(
                "an outer join over a filtered table (the SQL written for it would filter the join instead)"
                    .into(),
            ));
        }
        let rules = self.source.rules();
        let (left, right) = (j.left.schema(), j.right.schema());
        for (l, r) in &j.on {
            for (e, schema, traits) in [
                (l, left, &children[0].traits),
                (r, right, &children[1].traits),
            ] {
                check_expr(e, schema, rules, &|c: &Column| lookup(schema, traits, c))?;
                let t = expr_traits(e, schema, traits, rules);
                let data_type = e
                    .get_type(schema)
                    .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
                groupable(&data_type, t, &e.to_string())?;
            }
        }
        if let Some(filter) = &j.filter {
            let both = left
                .as_ref()
                .join(right)
                .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
            let traits = [children[0].traits.clone(), children[1].traits.clone()].concat();
            check_expr(filter, &both, rules, &|c: &Column| {
                lookup(&both, &traits, c)
            })?;
        }
        Ok(())
    }

    fn check_aggregate(&self, a: &Aggregate, traits: &[ColumnTraits]) -> Result<(), NotPushed> {
        let rules = self.source.rules();
        let schema = a.input.schema();
        let check =
            |e: &Expr| check_expr(e, schema, rules, &|c: &Column| lookup(schema, traits, c));
        for g in &a.group_expr {
            check(g)?;
            let data_type = g
                .get_type(schema)
                .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
            groupable(
                &data_type,
                expr_traits(g, schema, traits, rules),
                &g.to_string(),
            )?;
        }
        for expr in &a.aggr_expr {
            let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
                return Err(NotPushed::Unsupported(format!("aggregate `{expr}`")));
            };
            if !params.order_by.is_empty() || params.null_treatment.is_some() {
                return Err(NotPushed::Unsupported("ordered aggregates".into()));
            }
            if let Some(filter) = &params.filter {
                check(filter)?;
            }
            for arg in &params.args {
                check(arg)?;
                let arg_traits = expr_traits(arg, schema, traits, rules);
                let data_type = arg
                    .get_type(schema)
                    .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
                let name = func.name();
                match name {
                    "count" => {
                        if params.distinct {
                            groupable(&data_type, arg_traits, &arg.to_string())?;
                        }
                    }
                    // Integer sums wrap on overflow in DataFusion.
                    "sum" if is_decimal(&data_type) && !arg_traits.opaque => {}
                    "avg" if is_decimal(&data_type) && rules.decimal_avg && !arg_traits.opaque => {}
                    "min" | "max" => {
                        // Where NULLs sort does not matter to min and max.
                        let sort = SortExpr::new(arg.clone(), true, !rules.null_ordering);
                        self.orderable(&sort, schema, traits)?;
                    }
                    _ => {
                        return Err(NotPushed::Function(format!(
                            "{name}({data_type}) is not known to compute the same in {}",
                            rules.dialect_name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether ordering by `sort` gives DataFusion's order: no floats (`-0.0`, NaN), no
    /// opaque values, strings only in byte order.
    fn orderable(
        &self,
        sort: &SortExpr,
        schema: &DFSchema,
        traits: &[ColumnTraits],
    ) -> Result<(), NotPushed> {
        let rules = self.source.rules();
        check_expr(&sort.expr, schema, rules, &|c: &Column| {
            lookup(schema, traits, c)
        })?;
        let t = expr_traits(&sort.expr, schema, traits, rules);
        let data_type = sort
            .expr
            .get_type(schema)
            .map_err(|e| NotPushed::Unsupported(e.to_string()))?;
        groupable(&data_type, t, &sort.expr.to_string())?;
        if !rules.null_ordering
            && sort.nulls_first != sort.asc
            && sort.expr.nullable(schema).unwrap_or(true)
        {
            return Err(NotPushed::Semantics(format!(
                "{} sorts NULLs as its lowest value and cannot write `NULLS {}`",
                rules.dialect_name,
                if sort.nulls_first { "FIRST" } else { "LAST" }
            )));
        }
        if is_string(&data_type) && !t.bytewise_order {
            return Err(NotPushed::Semantics(format!(
                "ordering strings by `{}` follows the collation in {}, not byte order",
                sort.expr, rules.dialect_name
            )));
        }
        Ok(())
    }
}

/// Puts an explicit projection over every aggregate (or `HAVING` filter over an aggregate)
/// that has none: the unparser writes an aggregate's own select list aggregates-first,
/// while the plan (and the positional decoding of the result) has the grouping columns
/// first.
fn project_aggregates(plan: LogicalPlan) -> Result<LogicalPlan> {
    fix_aggregates(plan, false)
}

fn fix_aggregates(plan: LogicalPlan, under_projection: bool) -> Result<LogicalPlan> {
    let is_projection = matches!(plan, LogicalPlan::Projection(_));
    let grouped = match &plan {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Filter(f) => matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)),
        _ => false,
    };
    // A HAVING filter and its aggregate form one SELECT: the projection goes above both.
    let child_under_projection = is_projection || grouped;
    let inputs = plan
        .inputs()
        .into_iter()
        .map(|i| fix_aggregates(i.clone(), child_under_projection))
        .collect::<Result<Vec<_>>>()?;
    let plan = if inputs.is_empty() {
        plan
    } else {
        plan.with_new_exprs(plan.expressions(), inputs)?
    };
    if grouped && !under_projection {
        explicit_projection(plan)
    } else {
        Ok(plan)
    }
}

fn explicit_projection(plan: LogicalPlan) -> Result<LogicalPlan> {
    let columns = plan
        .schema()
        .iter()
        .map(|(qualifier, field)| Expr::Column(Column::from((qualifier, field))))
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        columns,
        Arc::new(plan),
    )?))
}

/// Whether values of `data_type` with traits `t` group and compare for equality as in
/// DataFusion.
fn groupable(data_type: &DataType, t: ColumnTraits, what: &str) -> Result<(), NotPushed> {
    if t.opaque {
        return Err(NotPushed::Semantics(format!(
            "`{what}` holds values the source compares differently"
        )));
    }
    if t.collated && is_string(data_type) {
        return Err(NotPushed::Semantics(format!(
            "`{what}` is compared under a collation that equates different strings"
        )));
    }
    if matches!(
        data_type,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    ) {
        return Err(NotPushed::Semantics(format!(
            "grouping, joining or ordering floats (`{what}`): -0.0 and NaN compare differently"
        )));
    }
    Ok(())
}

/// A cast of an opaque value changes it differently on the source (e.g. `char(n)` to text
/// drops trailing blanks there).
fn no_opaque_cast(
    expr: &Expr,
    schema: &DFSchema,
    traits: &[ColumnTraits],
    rules: &PushdownRules,
) -> Result<(), NotPushed> {
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::Cast(c) = e
            && expr_traits(&c.expr, schema, traits, rules).opaque
        {
            found = Some(e.to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match found {
        Some(cast) => Err(NotPushed::Semantics(format!(
            "`{cast}` converts a value the source represents differently"
        ))),
        None => Ok(()),
    }
}

/// A join input the unparser flattens into the join: `[alias →] filter* → scan` with
/// filters or a limit.
fn filtered_scan(plan: &LogicalPlan) -> bool {
    let mut current = plan;
    let mut filtered = false;
    loop {
        match current {
            LogicalPlan::SubqueryAlias(a) => current = a.input.as_ref(),
            LogicalPlan::Filter(f) => {
                filtered = true;
                current = f.input.as_ref();
            }
            LogicalPlan::TableScan(scan) => {
                return filtered || !scan.filters.is_empty() || scan.fetch.is_some();
            }
            _ => return false,
        }
    }
}

/// The traits of an expression's value: a column's own (through casts and aliases), else
/// opaque if any column it reads is.
/// The traits of an expression's values: a column's own, `min`/`max` keep their
/// argument's, anything computed is opaque or collated if a column it reads is (or, where
/// computed strings follow the connection's collation, always collated).
fn expr_traits(
    expr: &Expr,
    schema: &DFSchema,
    traits: &[ColumnTraits],
    rules: &PushdownRules,
) -> ColumnTraits {
    match unalias(expr) {
        Expr::Column(c) => lookup(schema, traits, c),
        Expr::AggregateFunction(AggregateFunction { func, params })
            if matches!(func.name(), "min" | "max") && params.args.len() == 1 =>
        {
            expr_traits(&params.args[0], schema, traits, rules)
        }
        other => ColumnTraits {
            opaque: other
                .column_refs()
                .iter()
                .any(|c| lookup(schema, traits, c).opaque),
            bytewise_order: false,
            collated: !rules.computed_strings_exact
                || other
                    .column_refs()
                    .iter()
                    .any(|c| lookup(schema, traits, c).collated),
            exact_as_bytes: false,
        },
    }
}

pub(super) fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

fn lookup(schema: &DFSchema, traits: &[ColumnTraits], column: &Column) -> ColumnTraits {
    schema
        .index_of_column(column)
        .ok()
        .and_then(|i| traits.get(i).copied())
        .unwrap_or(ColumnTraits {
            opaque: true,
            bytewise_order: false,
            collated: true,
            exact_as_bytes: false,
        })
}

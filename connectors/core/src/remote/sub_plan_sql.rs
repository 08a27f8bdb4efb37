//! The SQL of a pushed sub-plan: DataFusion's unparser writes it, after the plan is shaped
//! so that what the unparser writes means what the plan computes (remote table names,
//! aggregates over their inputs, semi and anti joins as `[NOT] EXISTS`, decimal averages
//! truncated as DataFusion truncates them), and checks that refuse what it writes wrongly.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, Result};
use datafusion::datasource::source_as_provider;
use datafusion::functions::math::expr_fn::trunc;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, LogicalPlan, LogicalPlanBuilder, Projection, lit,
};
use datafusion::sql::sqlparser::ast::{self, Visit};
use datafusion::sql::unparser::Unparser;

use super::RemoteSource;
use super::exact_strings::write_exact_strings;
use super::federate::{remote_table, unalias};
use super::sql::unqualify;

/// The SQL for a sub-plan, with every table scan reading the remote table under the name
/// the rest of the plan knows it by (its alias, or else its DataFusion name).
pub(super) fn remote_sql(source: &dyn RemoteSource, plan: &LogicalPlan) -> Result<ast::Statement> {
    let renamed = plan
        .clone()
        .transform_down_with_subqueries(|node| {
            let (scan, alias) = match &node {
                LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
                    LogicalPlan::TableScan(scan) => (scan, &alias.alias),
                    _ => return Ok(Transformed::no(node)),
                },
                LogicalPlan::TableScan(scan) => (scan, &scan.table_name),
                _ => return Ok(Transformed::no(node)),
            };
            let remote = remote_scan(source, scan)?.alias(alias.clone())?.build()?;
            Ok(Transformed::new(remote, true, TreeNodeRecursion::Jump))
        })?
        .data;
    let renamed = inline_aggregate_inputs(renamed)?;
    let renamed = semi_joins_as_exists(renamed)?;
    let renamed = truncate_decimal_averages(renamed)?;
    let dialect = source.dialect();
    let mut statement = Unparser::new(dialect.as_ref()).plan_to_sql(&renamed)?;
    write_exact_strings(source.rules().exact_strings, &mut statement);
    if let Some(width) = select_width(&statement)
        && width != plan.schema().fields().len()
    {
        return datafusion::common::plan_err!(
            "the SQL for this sub-plan returns {width} columns, the plan has {}",
            plan.schema().fields().len()
        );
    }
    if has_derived_table(&statement) {
        // The unparser qualifies columns outside a derived table with the names of the
        // tables inside it, which does not resolve (or resolves to the wrong column).
        return datafusion::common::plan_err!(
            "the SQL for this sub-plan needs a derived table, which the unparser writes incorrectly"
        );
    }
    Ok(statement)
}

/// Writes every use of a decimal average as `trunc(avg(x), scale)`: DataFusion truncates a
/// decimal average to its result's scale, while a source computes it with more fraction
/// digits, so `HAVING avg(x) > 1.333333` (or `ORDER BY`, or a comparison with a scalar
/// subquery) would otherwise compare a value DataFusion never has.
fn truncate_decimal_averages(plan: LogicalPlan) -> Result<LogicalPlan> {
    let (plan, untruncated) = truncating(plan)?;
    if untruncated.is_empty() {
        return Ok(plan);
    }
    // The query's own output (a subquery's value, say): truncated in a last select list.
    let columns = plan.schema().columns().into_iter().map(Expr::Column);
    let projection = Projection::try_new(columns.collect(), Arc::new(plan))?;
    Ok(LogicalPlan::Projection(truncate_select_list(
        projection,
        &untruncated,
    )?))
}

/// An output column holding a decimal average not yet truncated, and its scale.
type Untruncated = Vec<(Column, i8)>;

/// `plan` with the averages below it truncated where they are used, and those of its output
/// columns that are still untruncated averages. Only a projection, `HAVING`, `ORDER BY` and
/// `LIMIT` sit between an aggregate and its uses in a pushed plan (aggregates are projected
/// where they are not; see `project_aggregates`); anything else over an untruncated average
/// fails, which keeps the plan in DataFusion.
fn truncating(plan: LogicalPlan) -> Result<(LogicalPlan, Untruncated)> {
    let plan = plan
        .map_subqueries(|subquery| {
            let LogicalPlan::Subquery(mut subquery) = subquery else {
                return Ok(Transformed::no(subquery));
            };
            let inner = Arc::unwrap_or_clone(subquery.subquery);
            subquery.subquery = Arc::new(truncate_decimal_averages(inner)?);
            Ok(Transformed::yes(LogicalPlan::Subquery(subquery)))
        })?
        .data;
    let mut below = Untruncated::new();
    let plan = plan
        .map_children(|child| {
            let (child, untruncated) = truncating(child)?;
            below.extend(untruncated);
            Ok(Transformed::yes(child))
        })?
        .data;
    match plan {
        LogicalPlan::Aggregate(aggregate) => {
            let groups = aggregate.group_expr.len();
            let averages = aggregate
                .aggr_expr
                .iter()
                .enumerate()
                .filter_map(|(i, expr)| {
                    let Expr::AggregateFunction(f) = unalias(expr) else {
                        return None;
                    };
                    let (qualifier, field) = aggregate.schema.qualified_field(groups + i);
                    match field.data_type() {
                        DataType::Decimal128(_, scale) | DataType::Decimal256(_, scale)
                            if f.func.name() == "avg" =>
                        {
                            Some((Column::from((qualifier, field)), *scale))
                        }
                        _ => None,
                    }
                })
                .collect();
            Ok((LogicalPlan::Aggregate(aggregate), averages))
        }
        _ if below.is_empty() => Ok((plan, below)),
        LogicalPlan::Projection(projection) => Ok((
            LogicalPlan::Projection(truncate_select_list(projection, &below)?),
            Untruncated::new(),
        )),
        LogicalPlan::Filter(filter) => {
            let predicate = truncated_in(filter.predicate, &below)?.data;
            let filter = Filter::try_new(predicate, filter.input)?;
            Ok((LogicalPlan::Filter(filter), below))
        }
        LogicalPlan::Sort(mut sort) => {
            for sort_expr in &mut sort.expr {
                sort_expr.expr = truncated_in(sort_expr.expr.clone(), &below)?.data;
            }
            Ok((LogicalPlan::Sort(sort), below))
        }
        LogicalPlan::Limit(_) => Ok((plan, below)),
        _ => datafusion::common::plan_err!(
            "a decimal average is used where its truncation cannot be written"
        ),
    }
}

/// `projection` reading the averages in `untruncated` truncated, its columns keeping their
/// names.
fn truncate_select_list(projection: Projection, untruncated: &Untruncated) -> Result<Projection> {
    let exprs = projection
        .expr
        .iter()
        .zip(projection.schema.iter())
        .map(|(expr, (qualifier, field))| {
            let truncated = truncated_in(expr.clone(), untruncated)?;
            Ok(if truncated.transformed {
                truncated
                    .data
                    .unalias()
                    .alias_qualified(qualifier.cloned(), field.name())
            } else {
                truncated.data
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Projection::try_new_with_schema(exprs, projection.input, projection.schema)
}

/// `expr` with each untruncated average it reads truncated to its scale.
fn truncated_in(expr: Expr, untruncated: &Untruncated) -> Result<Transformed<Expr>> {
    expr.transform(|e| match &e {
        Expr::Column(c) => match untruncated.iter().find(|(u, _)| u == c) {
            Some((_, scale)) => Ok(Transformed::yes(trunc(vec![e, lit(i64::from(*scale))]))),
            None => Ok(Transformed::no(e)),
        },
        _ => Ok(Transformed::no(e)),
    })
}

/// Folds a projection under an aggregate (or under a table alias over the aggregate) into
/// the aggregate's expressions, keeping the aggregate's output names: `SUM(x * (1 - y))`
/// instead of `SUM(__common_expr_1)` over a derived table (DataFusion factors out common
/// expressions that way, and a query's `FROM (SELECT …) AS t` stays one), since the
/// unparser writes derived tables with unresolvable qualifiers.
fn inline_aggregate_inputs(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::Aggregate(aggregate) = &node else {
                return Ok(Transformed::no(node));
            };
            // The names the aggregate reads the projection's columns by.
            let (projection, names) = match aggregate.input.as_ref() {
                LogicalPlan::Projection(projection) => (projection, &projection.schema),
                LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
                    LogicalPlan::Projection(projection) => (projection, &alias.schema),
                    _ => return Ok(Transformed::no(node)),
                },
                _ => return Ok(Transformed::no(node)),
            };
            if !one_select(&projection.input)
                || projection.expr.iter().any(|e| e.is_volatile())
                || aggregate
                    .group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
            {
                return Ok(Transformed::no(node));
            }
            let definitions: Vec<(Column, Expr)> = names
                .iter()
                .zip(&projection.expr)
                .map(|((qualifier, field), expr)| {
                    (Column::from((qualifier, field)), unalias(expr).clone())
                })
                .collect();
            let inline = |expr: &Expr| -> Result<Expr> {
                Ok(expr
                    .clone()
                    .transform(|e| match &e {
                        Expr::Column(c) => match definitions.iter().find(|(d, _)| d == c) {
                            Some((_, definition)) => Ok(Transformed::yes(definition.clone())),
                            None => Ok(Transformed::no(e)),
                        },
                        _ => Ok(Transformed::no(e)),
                    })?
                    .data)
            };
            let group = aggregate
                .group_expr
                .iter()
                .map(inline)
                .collect::<Result<Vec<_>>>()?;
            let aggr = aggregate
                .aggr_expr
                .iter()
                .map(inline)
                .collect::<Result<Vec<_>>>()?;
            let merged = Aggregate::try_new_with_schema(
                Arc::clone(&projection.input),
                group,
                aggr,
                Arc::clone(&aggregate.schema),
            )?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(merged)))
        })?
        .data)
}

/// Whether `plan` is the FROM and WHERE of one SELECT (tables, joins and filters), so an
/// aggregate over it needs no query of its own below it; the unparser would drop an inner
/// aggregate's grouping rather than nest it.
fn one_select(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => true,
        LogicalPlan::Filter(filter) => one_select(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => {
            matches!(alias.input.as_ref(), LogicalPlan::TableScan(_))
        }
        _ => false,
    }
}

/// Shapes semi and anti joins so the unparser's `[NOT] EXISTS (SELECT 1 FROM right WHERE
/// …)` means what the join does. The unparser writes only the join's own condition into the
/// subquery and drops the filters of the tables on either side, so the right input becomes
/// one aliased table whose filters join the condition (inside the subquery), and the left
/// input's filters move above the join (outside it, where a `NOT EXISTS` cannot keep the
/// rows they remove).
fn semi_joins_as_exists(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::Join(join) = &node else {
                return Ok(Transformed::no(node));
            };
            if !matches!(join.join_type, JoinType::LeftSemi | JoinType::LeftAnti) {
                return Ok(Transformed::no(node));
            }
            let Some((right, inside)) = single_table(&join.right)? else {
                return datafusion::common::plan_err!(
                    "the subquery of a semi or anti join reads more than one table"
                );
            };
            let (left, outside) = match single_table(&join.left)? {
                Some((left, outside)) => (left, outside),
                None => (join.left.as_ref().clone(), vec![]),
            };
            let condition = join.filter.iter().cloned().chain(inside);
            let joined = LogicalPlan::Join(Join {
                left: Arc::new(left),
                right: Arc::new(right),
                filter: conjunction(condition),
                ..join.clone()
            });
            Ok(Transformed::yes(match conjunction(outside) {
                Some(predicate) => {
                    LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(joined))?)
                }
                None => joined,
            }))
        })?
        .data)
}

/// `plan` as one aliased table scan without filters, and its filters over the alias's
/// columns, if it reads one table and only filters it on the way (`[alias →] [columns →]
/// filter* → [alias →] scan`, renaming nothing); the outermost alias names it.
pub(super) fn single_table(plan: &LogicalPlan) -> Result<Option<(LogicalPlan, Vec<Expr>)>> {
    let mut alias = None;
    let mut predicates = vec![];
    let mut current = plan;
    loop {
        match current {
            LogicalPlan::SubqueryAlias(a) => {
                alias = alias.or_else(|| Some(a.alias.clone()));
                current = a.input.as_ref();
            }
            LogicalPlan::Projection(p)
                if p.expr
                    .iter()
                    .zip(p.schema.fields())
                    .all(|(e, field)| matches!(e, Expr::Column(c) if c.name == *field.name())) =>
            {
                current = p.input.as_ref();
            }
            LogicalPlan::Filter(f) => {
                predicates.push(f.predicate.clone());
                current = f.input.as_ref();
            }
            LogicalPlan::TableScan(scan) => {
                let alias = alias.unwrap_or_else(|| scan.table_name.clone());
                predicates.extend(scan.filters.iter().cloned());
                let predicates = predicates
                    .into_iter()
                    .map(|p| {
                        p.transform(|e| match e {
                            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new(
                                Some(alias.clone()),
                                c.name,
                            )))),
                            other => Ok(Transformed::no(other)),
                        })
                        .map(|t| t.data)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut bare = scan.clone();
                bare.filters.clear();
                let table = LogicalPlanBuilder::from(LogicalPlan::TableScan(bare))
                    .alias(alias)?
                    .build()?;
                return Ok(Some((table, predicates)));
            }
            _ => return Ok(None),
        }
    }
}

/// How many columns the outermost SELECT lists (`None` for a wildcard or a set operation).
fn select_width(statement: &ast::Statement) -> Option<usize> {
    let ast::Statement::Query(query) = statement else {
        return None;
    };
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let wildcard = select.projection.iter().any(|item| {
        matches!(
            item,
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..)
        )
    });
    (!wildcard).then_some(select.projection.len())
}

/// Whether a query reads from a subquery in a FROM clause, its own or a subquery's.
fn has_derived_table(statement: &ast::Statement) -> bool {
    struct Derived;
    impl ast::Visitor for Derived {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &ast::TableFactor) -> ControlFlow<()> {
            match factor {
                ast::TableFactor::Derived { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    !matches!(statement, ast::Statement::Query(_)) || statement.visit(&mut Derived).is_break()
}

/// A scan of the remote table behind `scan`, under its remote name.
fn remote_scan(
    source: &dyn RemoteSource,
    scan: &datafusion::logical_expr::TableScan,
) -> Result<LogicalPlanBuilder> {
    let provider = source_as_provider(&scan.source)?;
    let Some(table) = remote_table(provider.as_ref()) else {
        return datafusion::common::plan_err!(
            "{} is not a table of {}",
            scan.table_name,
            source.name()
        );
    };
    let filters = scan
        .filters
        .iter()
        .map(|f| unqualify(f.clone()))
        .collect::<Result<Vec<_>>>()?;
    LogicalPlanBuilder::scan_with_filters_fetch(
        table.info().remote.clone(),
        Arc::clone(&scan.source),
        scan.projection.clone(),
        filters,
        scan.fetch,
    )
}

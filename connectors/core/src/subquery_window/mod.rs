//! A scalar subquery that aggregates the rows its outer query already reads becomes a window
//! over the outer query's rows, so those rows are read and joined once instead of twice.
//!
//! Two forms, each with its soundness argument in its module:
//! - [`per_key`]: a correlated subquery in `WHERE` over some of the outer query's tables
//!   under the outer query's own conditions (TPC-H q02, q17) becomes an aggregate over a
//!   window partitioned by the correlated outer columns.
//! - [`group_total`]: an uncorrelated subquery in `HAVING` over exactly the grouped rows
//!   (TPC-H q11: groups whose sum exceeds a share of the total) becomes the groups' own
//!   aggregates combined over a window of all groups.
//!
//! Both compare the subquery's tables and conditions with the outer query's, so the rule runs
//! before DataFusion decorrelates subqueries into joins, while both are still written out:
//! a tree of inner joins of whole tables under a filter. The subquery's tables are matched
//! to reads of the same tables (the same table provider) in the outer query, and its
//! conditions, renamed accordingly, must be among the outer query's. Volatile conditions,
//! joins other than inner ones, and aggregates with `DISTINCT`, `FILTER` or `ORDER BY` or
//! over volatile arguments are left alone.

mod group_total;
mod infallible;
mod per_key;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, NullEquality, Result, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, ExprSchemable, Filter, LogicalPlan, LogicalPlanBuilder, Operator,
    Subquery, TableScan,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Turns aggregate subqueries over the outer query's own rows into windows (see the module
/// documentation). Runs before DataFusion decorrelates subqueries.
#[derive(Debug, Default)]
pub struct AggregateSubqueriesAsWindows;

impl OptimizerRule for AggregateSubqueriesAsWindows {
    fn name(&self) -> &str {
        "tributary_aggregate_subqueries_as_windows"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let mut subqueries = Vec::new();
        filter.predicate.apply(|e| {
            if let Expr::ScalarSubquery(subquery) = e {
                subqueries.push(subquery.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        for subquery in &subqueries {
            let windowed = match filter.input.as_ref() {
                LogicalPlan::Aggregate(groups) => group_total::windowed(filter, groups, subquery)?,
                _ => per_key::windowed(filter, subquery)?,
            };
            if let Some(windowed) = windowed {
                return Ok(Transformed::yes(windowed));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// A tree of inner joins: the plans it joins and every condition of its joins (with the
/// `WHERE` conditions over it, where read by [`filtered_joins`]).
struct Joined<'a> {
    leaves: Vec<&'a LogicalPlan>,
    conditions: Vec<Expr>,
}

/// `plan` as a tree of inner joins (a single plan is a tree of one), unless a join in it
/// matches NULL keys.
fn joined(plan: &LogicalPlan) -> Option<Joined<'_>> {
    fn walk<'a>(plan: &'a LogicalPlan, joined: &mut Joined<'a>) -> bool {
        match plan {
            LogicalPlan::Join(join) if join.join_type == JoinType::Inner => {
                if !join.on.is_empty() && join.null_equality != NullEquality::NullEqualsNothing {
                    return false;
                }
                for (left, right) in &join.on {
                    joined.conditions.push(left.clone().eq(right.clone()));
                }
                if let Some(filter) = &join.filter {
                    joined
                        .conditions
                        .extend(split_conjunction(filter).into_iter().cloned());
                }
                walk(&join.left, joined) && walk(&join.right, joined)
            }
            leaf => {
                joined.leaves.push(leaf);
                true
            }
        }
    }
    let mut joined = Joined {
        leaves: Vec::new(),
        conditions: Vec::new(),
    };
    walk(plan, &mut joined).then_some(joined)
}

/// `plan` (`SELECT … FROM <inner joins> [WHERE …]`) as its joins, with the `WHERE`
/// conditions among theirs, if none of them is volatile or has a subquery.
fn filtered_joins(plan: &LogicalPlan) -> Option<Joined<'_>> {
    let (conditions, input) = match plan {
        LogicalPlan::Filter(filter) => {
            (split_conjunction(&filter.predicate), filter.input.as_ref())
        }
        input => (Vec::new(), input),
    };
    let mut joined = joined(input)?;
    joined.conditions.extend(conditions.into_iter().cloned());
    (!joined
        .conditions
        .iter()
        .any(|c| c.is_volatile() || has_subquery(c)))
    .then_some(joined)
}

/// A scalar subquery `SELECT f(agg(…), …) FROM <inner joins> WHERE …` without groups.
struct Aggregated<'a> {
    /// The subquery's one output, over the aggregates' values.
    output: &'a Expr,
    aggregate: &'a Aggregate,
    joined: Joined<'a>,
    /// The tables the joins read, in the order of `joined.leaves`.
    tables: Vec<Table<'a>>,
}

/// The subquery `plan` as an [`Aggregated`], if every aggregate is a plain call `admits`.
fn aggregated<'a>(
    plan: &'a LogicalPlan,
    admits: impl Fn(&str, &DataType) -> bool,
) -> Option<Aggregated<'a>> {
    let LogicalPlan::Projection(projection) = plan else {
        return None;
    };
    let [output] = projection.expr.as_slice() else {
        return None;
    };
    // The value is computed once (or once per key); over the window it would be computed
    // for every row.
    if output.is_volatile() || has_subquery(output) {
        return None;
    }
    let LogicalPlan::Aggregate(aggregate) = projection.input.as_ref() else {
        return None;
    };
    if !aggregate.group_expr.is_empty()
        || !aggregate
            .aggr_expr
            .iter()
            .all(|a| plain_call(a, aggregate, &admits))
    {
        return None;
    }
    let joined = filtered_joins(&aggregate.input)?;
    let tables = joined
        .leaves
        .iter()
        .map(|leaf| table_read(leaf))
        .collect::<Option<Vec<_>>>()?;
    Some(Aggregated {
        output,
        aggregate,
        joined,
        tables,
    })
}

/// Whether `aggregate` (an aggregate of `of`) is a call with one argument, no `DISTINCT`,
/// `FILTER`, `ORDER BY` or volatile or outer or subquery argument, of a function that
/// `admits` its name and argument type.
fn plain_call(aggregate: &Expr, of: &Aggregate, admits: &impl Fn(&str, &DataType) -> bool) -> bool {
    let Expr::AggregateFunction(AggregateFunction {
        func,
        params:
            AggregateFunctionParams {
                args,
                distinct: false,
                filter: None,
                order_by,
                null_treatment: None,
            },
    }) = aggregate
    else {
        return false;
    };
    let [arg] = args.as_slice() else {
        return false;
    };
    if !order_by.is_empty() || arg.is_volatile() || arg.contains_outer() || has_subquery(arg) {
        return false;
    }
    arg.get_type(of.input.schema())
        .is_ok_and(|data_type| admits(func.name(), &data_type))
}

/// A leaf of a join tree that reads a whole table: the scan, and the name its columns carry.
type Table<'a> = (&'a TableScan, &'a TableReference);

/// The table a leaf of a join tree reads whole, and the name its columns carry.
fn table_read(leaf: &LogicalPlan) -> Option<Table<'_>> {
    let whole = |scan: &TableScan| {
        scan.projection.is_none() && scan.filters.is_empty() && scan.fetch.is_none()
    };
    match leaf {
        LogicalPlan::TableScan(scan) if whole(scan) => Some((scan, &scan.table_name)),
        LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
            LogicalPlan::TableScan(scan) if whole(scan) => Some((scan, &alias.alias)),
            _ => None,
        },
        _ => None,
    }
}

/// Whether two scans read the same table: the same provider, as the SQL planner resolves a
/// table once per query. A name is not enough: the planner names every call of a table
/// function after the function alone, whatever its arguments.
fn same_table(a: &TableScan, b: &TableScan) -> bool {
    if Arc::ptr_eq(&a.source, &b.source) {
        return true;
    }
    match (source_as_provider(&a.source), source_as_provider(&b.source)) {
        (Ok(a), Ok(b)) => std::ptr::addr_eq(Arc::as_ptr(&a), Arc::as_ptr(&b)),
        _ => false,
    }
}

/// At most this many assignments of a subquery's tables to the outer query's are tried, so
/// that a query reading one table many times is not planned for long.
const ASSIGNMENTS_TRIED: usize = 64;

/// Tries assignments of the subquery's tables to distinct reads of the same tables in the
/// outer query, until `accept` takes one (at most [`ASSIGNMENTS_TRIED`]).
fn assign(
    inner: &[Table],
    outer: &[Option<Table>],
    accept: &mut dyn FnMut(&[usize]) -> bool,
) -> bool {
    fn next(
        inner: &[Table],
        outer: &[Option<Table>],
        assigned: &mut Vec<usize>,
        tried: &mut usize,
        accept: &mut dyn FnMut(&[usize]) -> bool,
    ) -> bool {
        let Some((scan, _)) = inner.get(assigned.len()) else {
            *tried += 1;
            return accept(assigned);
        };
        for (j, table) in outer.iter().enumerate() {
            let Some((outer_scan, _)) = table else {
                continue;
            };
            if *tried >= ASSIGNMENTS_TRIED || assigned.contains(&j) || !same_table(scan, outer_scan)
            {
                continue;
            }
            assigned.push(j);
            if next(inner, outer, assigned, tried, accept) {
                return true;
            }
            assigned.pop();
        }
        false
    }
    next(inner, outer, &mut Vec::new(), &mut 0, accept)
}

/// The subquery's table names (or aliases) → the outer query's, for an assignment.
fn names_of(
    inner: &[Table],
    outer: &[Option<Table>],
    assigned: &[usize],
) -> HashMap<TableReference, TableReference> {
    inner
        .iter()
        .zip(assigned)
        .filter_map(|((_, name), j)| Some(((*name).clone(), outer[*j]?.1.clone())))
        .collect()
}

/// `expr` of the subquery named as in the outer query: its tables' columns renamed by
/// `names`, its outer columns (added to `outer`) plain columns. `None` if it reads a column
/// of neither.
fn renamed(
    expr: &Expr,
    names: &HashMap<TableReference, TableReference>,
    outer: &mut Vec<Column>,
) -> Option<Expr> {
    let mut known = true;
    let renamed = expr
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => match c.relation.as_ref().and_then(|r| names.get(r)) {
                    Some(name) => {
                        Transformed::yes(Expr::Column(Column::new(Some(name.clone()), &c.name)))
                    }
                    None => {
                        known = false;
                        Transformed::no(Expr::Column(c))
                    }
                },
                Expr::OuterReferenceColumn(_, c) => {
                    if !outer.contains(&c) {
                        outer.push(c.clone());
                    }
                    Transformed::yes(Expr::Column(c))
                }
                e => Transformed::no(e),
            })
        })
        .ok()?
        .data;
    known.then_some(renamed)
}

/// Whether two conditions are the same, also with the sides of an equality swapped.
fn same_condition(a: &Expr, b: &Expr) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (
            Expr::BinaryExpr(BinaryExpr {
                left: l1,
                op: op1,
                right: r1,
            }),
            Expr::BinaryExpr(BinaryExpr {
                left: l2,
                op: op2,
                right: r2,
            }),
        ) => {
            op1 == op2
                && matches!(op1, Operator::Eq | Operator::IsNotDistinctFrom)
                && l1 == r2
                && r1 == l2
        }
        _ => false,
    }
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::SetComparison(_)
        ))
    })
    .unwrap_or(true)
}

/// The subquery's value as an expression over the window: `output` with each aggregate's
/// output column replaced by its window expression in `windows` and outer columns made plain
/// columns, and those outer columns.
fn value_over_windows(
    output: &Expr,
    windows: &HashMap<Column, Expr>,
) -> Result<(Expr, Vec<Column>)> {
    let mut outer_columns = Vec::new();
    let value = output
        .clone()
        .unalias()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => match windows.get(&c) {
                    Some(window) => Transformed::yes(window.clone()),
                    None => Transformed::no(Expr::Column(c)),
                },
                Expr::OuterReferenceColumn(_, c) => {
                    outer_columns.push(c.clone());
                    Transformed::yes(Expr::Column(c))
                }
                e => Transformed::no(e),
            })
        })?
        .data;
    Ok((value, outer_columns))
}

/// `windowed` under the conditions of `filter` that remain to be applied over it, with
/// `subquery` replaced by `value`, and only `filter`'s columns: the filter, rebuilt.
fn filtered_over(
    windowed: LogicalPlan,
    conditions: &[&Expr],
    filter: &Filter,
    subquery: &Subquery,
    value: &Expr,
) -> Result<Option<LogicalPlan>> {
    let conditions = conditions
        .iter()
        .map(|c| with_value(c, subquery, value))
        .collect::<Result<Vec<_>>>()?;
    let Some(condition) = conjunction(conditions) else {
        return Ok(None);
    };
    let columns = filter
        .input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column);
    LogicalPlanBuilder::from(windowed)
        .filter(condition)?
        .project(columns)?
        .build()
        .map(Some)
}

/// `condition` with `subquery` replaced by `value`.
fn with_value(condition: &Expr, subquery: &Subquery, value: &Expr) -> Result<Expr> {
    condition
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::ScalarSubquery(s) if s == *subquery => Transformed::yes(value.clone()),
                e => Transformed::no(e),
            })
        })
        .map(|t| t.data)
}

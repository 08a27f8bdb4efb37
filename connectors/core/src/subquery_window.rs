//! A correlated subquery that aggregates the outer query's own rows becomes a window over
//! them, so those rows are read and joined once instead of twice.
//!
//! TPC-H q02 keeps, for each part, the suppliers whose cost is the part's lowest among the
//! region's suppliers:
//!
//! ```sql
//! SELECT … FROM part, partsupp, supplier, nation, region
//! WHERE p_partkey = ps_partkey AND p_size = 15 AND <supplier joins and filters J>
//!   AND ps_supplycost = (SELECT min(ps_supplycost) FROM partsupp, supplier, nation, region
//!                        WHERE p_partkey = ps_partkey AND <J>)
//! ```
//!
//! The subquery's tables are among the outer query's and its conditions are the outer
//! query's own, so the rows it aggregates for a part are the outer rows of that part:
//! `ps_supplycost = min(ps_supplycost) OVER (PARTITION BY p_partkey)` (the "WinMagic"
//! rewrite, Zuzarte et al., SIGMOD 2003). DataFusion would read and join `partsupp`,
//! `supplier`, `nation` and `region` a second time for the subquery.
//!
//! Why the answer is the same. Let the outer query join tables `T ∪ S`, and the subquery
//! read a copy of `S` under conditions `P_S` on `S` alone and `C`, which correlate `S` with
//! columns `K` of `T` only. The outer conditions must include `P_S` and `C` (with the
//! subquery's tables named as the outer query's); the others on `T` alone (`P_T`) are
//! applied with them below the window. A row below the window is then `(t, s)` with `P_T(t)`,
//! `P_S(s)` and `C(t, s)`, and the partition of `K(t) = k` holds, for each such `t'` with
//! `K(t') = k`, exactly the rows `s` the subquery aggregates for `k`: the subquery's rows
//! repeated `n ≥ 1` times. Repetition changes neither `min` nor `max`, nor `avg` where sums
//! are exact (integers and decimals; a float sum may round differently), so only these
//! apply, without `DISTINCT`, `FILTER` or `ORDER BY`, and with arguments that read no outer
//! column. The outer query's other conditions are applied above the window, with the
//! comparison: the conditions of one filter may be applied in any order. Nothing applies to
//! volatile conditions or joins other than inner ones, or where `K` is empty (an
//! uncorrelated subquery's window would hold every row of the outer query at once).
//!
//! DataFusion's window operator holds all its input in memory (without counting it against
//! the memory limit), where the subquery's plan held the subquery's groups (counted, and
//! spilled when needed). So the rule applies only where the outer query filters `T` by a
//! condition of its own, as q02 and q17 do: then the window's rows, the outer query's rows
//! before the comparison, are likely a fraction of what the subquery reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, NullEquality, Result, TableReference};
use datafusion::logical_expr::expr::{
    AggregateFunction, AggregateFunctionParams, WindowFunction, WindowFunctionParams,
};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, ExprSchemable, Filter, LogicalPlan, LogicalPlanBuilder, Operator,
    Subquery, TableScan, Window, WindowFrame, WindowFunctionDefinition,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Turns a correlated aggregate subquery over the outer query's own rows into a window
/// (see the module documentation). Runs before DataFusion decorrelates subqueries.
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
            if let Some(windowed) = as_window(filter, subquery)? {
                return Ok(Transformed::yes(windowed));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// `filter` with `subquery` computed as a window over the filter's input, if it may be.
fn as_window(filter: &Filter, subquery: &Subquery) -> Result<Option<LogicalPlan>> {
    let Some(outer) = joined(&filter.input) else {
        return Ok(None);
    };
    let Some(inner) = aggregated(&subquery.subquery) else {
        return Ok(None);
    };
    let Some(inner_tables) = inner
        .joined
        .leaves
        .iter()
        .map(|leaf| table_read(leaf))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let outer_tables: Vec<_> = outer.leaves.iter().map(|leaf| table_read(leaf)).collect();
    let filter_conditions: Vec<&Expr> = split_conjunction(&filter.predicate);
    if filter_conditions
        .iter()
        .copied()
        .chain(&outer.conditions)
        .any(Expr::is_volatile)
    {
        return Ok(None);
    }
    let mut outer_conditions: Vec<&Expr> = filter_conditions
        .iter()
        .copied()
        .filter(|c| !has_subquery(c))
        .collect();
    outer_conditions.extend(outer.conditions.iter());

    let mut assigned = vec![None; inner_tables.len()];
    let mut found = None;
    assign(
        &inner_tables,
        &outer_tables,
        &mut assigned,
        &mut |assigned| {
            found = matched(
                &inner,
                &inner_tables,
                &outer,
                &outer_tables,
                &outer_conditions,
                assigned,
            );
            found.is_some()
        },
    );
    let Some(matched) = found else {
        return Ok(None);
    };
    window_plan(
        filter,
        subquery,
        &inner,
        &outer,
        &filter_conditions,
        matched,
    )
    .map(Some)
}

/// Tries every assignment of the subquery's tables to distinct reads of the same tables in
/// the outer query, until `accept` takes one.
fn assign(
    inner: &[(&TableScan, &TableReference)],
    outer: &[Option<(&TableScan, &TableReference)>],
    assigned: &mut Vec<Option<usize>>,
    accept: &mut dyn FnMut(&[Option<usize>]) -> bool,
) -> bool {
    let Some(next) = assigned.iter().position(Option::is_none) else {
        return accept(assigned);
    };
    for (j, table) in outer.iter().enumerate() {
        let Some((scan, _)) = table else { continue };
        if assigned.contains(&Some(j)) || !same_table(inner[next].0, scan) {
            continue;
        }
        assigned[next] = Some(j);
        if assign(inner, outer, assigned, accept) {
            return true;
        }
        assigned[next] = None;
    }
    false
}

/// What an assignment of the subquery's tables to the outer query's makes of the outer
/// filter: the partition keys, and the conditions that hold the window's rows.
struct Matched {
    /// The outer columns the subquery correlates on, in order of first use.
    keys: Vec<Column>,
    /// The subquery's conditions, named as in the outer query.
    conditions: Vec<Expr>,
    /// The outer query's tables the subquery does not read (`T`).
    others: Vec<usize>,
    /// The subquery's tables' names (and aliases) → the outer query's.
    names: HashMap<TableReference, TableReference>,
}

/// The match of `assigned` (see [`Matched`]), if the subquery aggregates the outer rows.
fn matched(
    inner: &Aggregated,
    inner_tables: &[(&TableScan, &TableReference)],
    outer: &Joined,
    outer_tables: &[Option<(&TableScan, &TableReference)>],
    outer_conditions: &[&Expr],
    assigned: &[Option<usize>],
) -> Option<Matched> {
    let names: HashMap<TableReference, TableReference> = inner_tables
        .iter()
        .zip(assigned)
        .map(|((_, name), j)| {
            let (_, outer_name) = outer_tables[j.expect("assigned")].expect("a table");
            ((*name).clone(), outer_name.clone())
        })
        .collect();
    let others: Vec<usize> = (0..outer.leaves.len())
        .filter(|j| !assigned.contains(&Some(*j)))
        .collect();

    let mut keys = Vec::new();
    let mut conditions = Vec::new();
    for condition in &inner.joined.conditions {
        let renamed = renamed(condition, &names, &mut keys)?;
        if !outer_conditions.iter().any(|c| same_condition(c, &renamed)) {
            return None;
        }
        conditions.push(renamed);
    }
    let of_others = |column: &Column| {
        others
            .iter()
            .any(|j| outer.leaves[*j].schema().has_column(column))
    };
    if keys.is_empty() || !keys.iter().all(of_others) {
        return None;
    }
    let matched = Matched {
        keys,
        conditions,
        others,
        names,
    };
    // The joins' own conditions stay under the window: they must be ones it may apply.
    if !outer.conditions.iter().all(|c| matched.below(c, outer)) {
        return None;
    }
    // The window holds its rows in memory: only where the outer query filters its own
    // tables are they likely a fraction of what the subquery reads.
    outer_conditions
        .iter()
        .any(|c| {
            !c.column_refs().is_empty()
                && matched.below(c, outer)
                && !matched.conditions.iter().any(|m| same_condition(m, c))
        })
        .then_some(matched)
}

impl Matched {
    /// Whether the outer `condition` belongs under the window: it is one of the
    /// subquery's, or reads only tables the subquery does not.
    fn below(&self, condition: &Expr, outer: &Joined) -> bool {
        if has_subquery(condition) {
            return false;
        }
        self.conditions.iter().any(|c| same_condition(c, condition))
            || condition.column_refs().iter().all(|column| {
                self.others
                    .iter()
                    .any(|j| outer.leaves[*j].schema().has_column(column))
            })
    }
}

/// The filter rebuilt as: its conditions the window may see, the window, the remaining
/// conditions with the subquery's value read from the window, and the filter's columns.
fn window_plan(
    filter: &Filter,
    subquery: &Subquery,
    inner: &Aggregated,
    outer: &Joined,
    filter_conditions: &[&Expr],
    matched: Matched,
) -> Result<LogicalPlan> {
    let partition_by: Vec<Expr> = matched.keys.iter().cloned().map(Expr::Column).collect();
    let mut windows = Vec::new();
    let mut values = HashMap::new();
    for (i, aggregate) in inner.aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = aggregate else {
            unreachable!("checked by `aggregated`")
        };
        let mut no_keys = Vec::new();
        let args = params
            .args
            .iter()
            .map(|arg| renamed(arg, &matched.names, &mut no_keys).expect("checked"))
            .collect();
        let window = Expr::from(WindowFunction {
            fun: WindowFunctionDefinition::AggregateUDF(Arc::clone(func)),
            params: WindowFunctionParams {
                args,
                partition_by: partition_by.clone(),
                order_by: vec![],
                window_frame: WindowFrame::new(None),
                filter: None,
                null_treatment: None,
                distinct: false,
            },
        });
        let (qualifier, field) = inner.aggregate.schema.qualified_field(i);
        let output = Column::new(qualifier.cloned(), field.name());
        values.insert(
            output,
            Expr::Column(Column::from_name(window.schema_name().to_string())),
        );
        windows.push(window);
    }
    let value = inner
        .output
        .clone()
        .unalias()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => match values.get(&c) {
                    Some(window) => Transformed::yes(window.clone()),
                    None => Transformed::no(Expr::Column(c)),
                },
                Expr::OuterReferenceColumn(_, c) => Transformed::yes(Expr::Column(c)),
                e => Transformed::no(e),
            })
        })?
        .data;

    let (below, above): (Vec<&Expr>, Vec<&Expr>) = filter_conditions
        .iter()
        .partition(|c| matched.below(c, outer));
    let mut plan = filter.input.as_ref().clone();
    if let Some(below) = conjunction(below.into_iter().cloned()) {
        plan = LogicalPlan::Filter(Filter::try_new(below, Arc::new(plan))?);
    }
    plan = LogicalPlan::Window(Window::try_new(windows, Arc::new(plan))?);
    let above = above
        .into_iter()
        .map(|c| {
            c.clone().transform(|e| {
                Ok(match e {
                    Expr::ScalarSubquery(s) if s == *subquery => Transformed::yes(value.clone()),
                    e => Transformed::no(e),
                })
            })
        })
        .map(|c| c.map(|t| t.data))
        .collect::<Result<Vec<_>>>()?;
    let above = conjunction(above).expect("the subquery's condition is above");
    LogicalPlanBuilder::from(plan)
        .filter(above)?
        .project(
            filter
                .input
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column),
        )?
        .build()
}

/// A tree of inner joins: the plans it joins and every condition of its joins.
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

/// A scalar subquery of the form `SELECT f(agg(…), …) FROM <inner joins> WHERE …`, with
/// aggregates whose value a repetition of rows keeps.
struct Aggregated<'a> {
    /// The subquery's one output, over the aggregates' values.
    output: &'a Expr,
    aggregate: &'a Aggregate,
    /// The tables, with the `WHERE` conditions among the joins'.
    joined: Joined<'a>,
}

fn aggregated(plan: &LogicalPlan) -> Option<Aggregated<'_>> {
    let LogicalPlan::Projection(projection) = plan else {
        return None;
    };
    let [output] = projection.expr.as_slice() else {
        return None;
    };
    let LogicalPlan::Aggregate(aggregate) = projection.input.as_ref() else {
        return None;
    };
    if !aggregate.group_expr.is_empty()
        || !aggregate
            .aggr_expr
            .iter()
            .all(|a| repetition_keeps(a, aggregate))
    {
        return None;
    }
    let (conditions, input) = match aggregate.input.as_ref() {
        LogicalPlan::Filter(filter) => (
            split_conjunction(&filter.predicate)
                .into_iter()
                .cloned()
                .collect(),
            filter.input.as_ref(),
        ),
        input => (Vec::new(), input),
    };
    let mut joined = joined(input)?;
    joined.conditions.extend(conditions);
    if joined
        .conditions
        .iter()
        .any(|c| c.is_volatile() || has_subquery(c))
    {
        return None;
    }
    Some(Aggregated {
        output,
        aggregate,
        joined,
    })
}

/// Whether `aggregate`'s value is the same over its rows repeated any number of times
/// (see the module documentation).
fn repetition_keeps(aggregate: &Expr, of: &Aggregate) -> bool {
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
    if !order_by.is_empty() || args.iter().any(|a| a.contains_outer() || has_subquery(a)) {
        return false;
    }
    match func.name() {
        "min" | "max" => true,
        "avg" => args.iter().all(|a| {
            a.get_type(of.input.schema())
                .is_ok_and(|t| t.is_integer() || t.is_decimal())
        }),
        _ => false,
    }
}

/// The table a leaf of a join tree reads whole, and the name its columns carry.
fn table_read(leaf: &LogicalPlan) -> Option<(&TableScan, &TableReference)> {
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

fn same_table(a: &TableScan, b: &TableScan) -> bool {
    (Arc::ptr_eq(&a.source, &b.source) || a.table_name == b.table_name)
        && a.source.schema() == b.source.schema()
}

/// `expr` of the subquery named as in the outer query: its tables' columns renamed by
/// `names`, its outer columns (added to `keys`) plain columns. `None` if it reads a column
/// of neither.
fn renamed(
    expr: &Expr,
    names: &HashMap<TableReference, TableReference>,
    keys: &mut Vec<Column>,
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
                    if !keys.contains(&c) {
                        keys.push(c.clone());
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

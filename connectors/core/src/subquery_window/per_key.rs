//! A correlated subquery in `WHERE` that aggregates some of the outer query's tables under
//! the outer query's own conditions becomes a window partitioned by the correlated columns.
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
//! repeated `n ≥ 1` times. Repetition changes neither `min` nor `max`, nor `avg` of
//! decimals (sum and count grow n-fold together and the quotient is truncated alike), so
//! only these apply. Not over floats: DataFusion's grouped `min`/`max` and its plain ones
//! disagree on NaN and -0.0, and a float sum may round differently (`avg` of integers is
//! planned over floats). Not over `Decimal256`, whose sum, repeated, could overflow where
//! the subquery's does not. The outer query's other conditions are applied above the
//! window, with the comparison: the conditions of one filter may be applied in any order.
//! Nothing applies where `K` is empty (an uncorrelated subquery's window would hold every
//! row of the outer query at once).
//!
//! DataFusion's window operator holds all its input in memory (counted, by
//! [`crate::window_memory`], but never spilled), where the subquery's plan held the
//! subquery's groups (spilled when needed). So the rule applies only where the outer query
//! filters `T` by a condition of its own, as q02 and q17 do: then the window's rows, the
//! outer query's rows before the comparison, are likely a fraction of what the subquery
//! reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, Result, TableReference};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Expr, Filter, LogicalPlan, Subquery, Window, WindowFrame, WindowFunctionDefinition,
};

use super::{
    Aggregated, Joined, aggregated, assign, filtered_over, has_subquery, infallible, joined,
    names_of, renamed, same_condition, table_read, value_over_windows,
};

/// `filter` with `subquery` computed as a window over the filter's input, if it may be.
pub(super) fn windowed(filter: &Filter, subquery: &Subquery) -> Result<Option<LogicalPlan>> {
    let Some(outer) = joined(&filter.input) else {
        return Ok(None);
    };
    let Some(inner) = aggregated(&subquery.subquery, repetition_keeps) else {
        return Ok(None);
    };
    // DataFusion computes the value for every key the subquery reads, the window only for
    // the outer rows' keys: a value that can fail must fail for both.
    if !infallible::cannot_fail(inner.output, &inner.aggregate.schema) {
        return Ok(None);
    }
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

    let mut found = None;
    assign(&inner.tables, &outer_tables, &mut |assigned| {
        let names = names_of(&inner.tables, &outer_tables, assigned);
        let others = (0..outer.leaves.len())
            .filter(|j| !assigned.contains(j))
            .collect();
        found = matched(&inner, &outer, &outer_conditions, names, others);
        found.is_some()
    });
    let Some(matched) = found else {
        return Ok(None);
    };
    window_plan(
        filter,
        subquery,
        &inner,
        &outer,
        &filter_conditions,
        &matched,
    )
}

/// Whether an aggregate's value over its rows is the same over them repeated any number of
/// times, as far as DataFusion computes it (see the module documentation).
fn repetition_keeps(name: &str, data_type: &DataType) -> bool {
    let exact = matches!(
        data_type,
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..)
    );
    match name {
        "min" | "max" => !data_type.is_floating(),
        "avg" => exact,
        _ => false,
    }
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

/// The match of an assignment (see [`Matched`]), if the subquery aggregates the outer rows.
fn matched(
    inner: &Aggregated,
    outer: &Joined,
    outer_conditions: &[&Expr],
    names: HashMap<TableReference, TableReference>,
    others: Vec<usize>,
) -> Option<Matched> {
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
/// `None` if the subquery's value reads a column the filter's input lacks (a query further
/// out).
fn window_plan(
    filter: &Filter,
    subquery: &Subquery,
    inner: &Aggregated,
    outer: &Joined,
    filter_conditions: &[&Expr],
    matched: &Matched,
) -> Result<Option<LogicalPlan>> {
    let partition_by: Vec<Expr> = matched.keys.iter().cloned().map(Expr::Column).collect();
    let mut windows = Vec::new();
    let mut values = HashMap::new();
    for (i, aggregate) in inner.aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = aggregate else {
            return Ok(None);
        };
        let Some(args) = params
            .args
            .iter()
            .map(|arg| renamed(arg, &matched.names, &mut Vec::new()))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
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
        values.insert(
            Column::new(qualifier.cloned(), field.name()),
            Expr::Column(Column::from_name(window.schema_name().to_string())),
        );
        windows.push(window);
    }
    let (value, outer_columns) = value_over_windows(inner.output, &values)?;
    if !outer_columns
        .iter()
        .all(|c| filter.input.schema().has_column(c))
    {
        return Ok(None);
    }

    let (below, above): (Vec<&Expr>, Vec<&Expr>) = filter_conditions
        .iter()
        .partition(|c| matched.below(c, outer));
    let mut plan = filter.input.as_ref().clone();
    if let Some(below) = conjunction(below.into_iter().cloned()) {
        plan = LogicalPlan::Filter(Filter::try_new(below, Arc::new(plan))?);
    }
    plan = LogicalPlan::Window(Window::try_new(windows, Arc::new(plan))?);
    filtered_over(plan, &above, filter, subquery, &value)
}

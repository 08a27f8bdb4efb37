//! An uncorrelated subquery in `HAVING` that aggregates exactly the rows the query groups
//! becomes the groups' own aggregates combined over a window of all groups.
//!
//! TPC-H q11 keeps the parts whose stock value exceeds a share of the whole stock value, over
//! the same rows:
//!
//! ```sql
//! SELECT ps_partkey, sum(ps_supplycost * ps_availqty) AS value
//! FROM partsupp, supplier, nation WHERE <joins and filters J> GROUP BY ps_partkey
//! HAVING sum(ps_supplycost * ps_availqty) >
//!   (SELECT sum(ps_supplycost * ps_availqty) * 0.0001 FROM partsupp, supplier, nation WHERE <J>)
//! ```
//!
//! The total is the sum of the groups' sums: `sum(sum(…)) OVER ()` over the grouped rows.
//! DataFusion would read and join `partsupp`, `supplier` and `nation` a second time.
//!
//! Why the answer is the same. The subquery reads the same tables (each matched to one of
//! the query's, all of them) under the same conditions, so it aggregates the rows the query
//! groups, and the groups divide those rows. So the total `sum` is the sum of the groups'
//! sums (NULL exactly when each is, i.e. when every value is NULL), `count` the sum of their
//! counts, `min` the least of their minimums, `max` the greatest of their maximums. Sums of
//! integers and decimals are exact (and their wrapping, where it happens, does not depend on
//! the order either); float sums may round differently, and DataFusion's grouped and plain
//! `min`/`max` disagree on NaN and -0.0, so floats are left alone. The combined value is
//! cast back to the subquery's aggregate type. With no rows there are no groups, and the
//! `HAVING` keeps nothing either way; but DataFusion still computes the subquery's value
//! then, from aggregates of no rows (NULL, or 0 for `count`), and a value that fails on
//! those (`1 / count(*)`) fails the query, where the groups would never compute it. So the
//! value must compute over no rows (see [`computes_over_no_rows`]).
//!
//! The window holds every group at once (counted in the memory pool, by
//! [`crate::window_memory`], but never spilled), where DataFusion's plan compared each group
//! with the total as it came.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, Filter, LogicalPlan, Subquery, Window,
    WindowFunctionDefinition, cast,
};
use datafusion::physical_expr::create_physical_expr;

use super::{
    Aggregated, aggregated, assign, filtered_joins, filtered_over, names_of, renamed,
    same_condition, table_read, value_over_windows,
};

/// `filter` (a `HAVING` over `groups`) with `subquery` computed from the groups, if it may
/// be.
pub(super) fn windowed(
    filter: &Filter,
    groups: &Aggregate,
    subquery: &Subquery,
) -> Result<Option<LogicalPlan>> {
    if groups.group_expr.is_empty()
        || groups
            .group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        || !subquery.outer_ref_columns.is_empty()
        // DataFusion pushes a HAVING condition that reads no column (`random() < 0.5`)
        // below a window over all rows, which would then total only the rows it keeps.
        || split_conjunction(&filter.predicate)
            .iter()
            .any(|c| c.is_volatile())
    {
        return Ok(None);
    }
    let Some(inner) = aggregated(&subquery.subquery, splits_over_groups) else {
        return Ok(None);
    };
    if !computes_over_no_rows(&inner) {
        return Ok(None);
    }
    let Some(outer) = filtered_joins(&groups.input) else {
        return Ok(None);
    };
    let Some(outer_tables) = outer
        .leaves
        .iter()
        .map(|leaf| table_read(leaf).map(Some))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    if outer_tables.len() != inner.tables.len() {
        return Ok(None);
    }

    // The same conditions both ways, the subquery's named as the query's.
    let mut names = None;
    assign(&inner.tables, &outer_tables, &mut |assigned| {
        let candidate = names_of(&inner.tables, &outer_tables, assigned);
        let mut outer_columns = Vec::new();
        let Some(conditions) = inner
            .joined
            .conditions
            .iter()
            .map(|c| renamed(c, &candidate, &mut outer_columns))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        let same = outer_columns.is_empty()
            && conditions
                .iter()
                .all(|c| outer.conditions.iter().any(|o| same_condition(o, c)))
            && outer
                .conditions
                .iter()
                .all(|o| conditions.iter().any(|c| same_condition(o, c)));
        if same {
            names = Some(candidate);
        }
        same
    });
    let Some(names) = names else {
        return Ok(None);
    };

    // The subquery's aggregates among the groups' (added where missing), each combined over
    // all groups.
    let mut aggr_expr = groups.aggr_expr.clone();
    let mut parts = Vec::new();
    for aggregate in &inner.aggregate.aggr_expr {
        let Expr::AggregateFunction(AggregateFunction { func, .. }) = aggregate else {
            return Ok(None);
        };
        let Some(per_group) = renamed(aggregate, &names, &mut Vec::new()) else {
            return Ok(None);
        };
        let name = per_group.schema_name().to_string();
        let index = match aggr_expr.iter().position(|a| *a == per_group) {
            Some(index) => index,
            // Another aggregate of the same name (`sum(CAST(x AS INT))` and `sum(x)` are
            // both `sum(x)`): the groups cannot have both.
            None if aggr_expr
                .iter()
                .any(|a| a.schema_name().to_string() == name) =>
            {
                return Ok(None);
            }
            None => {
                aggr_expr.push(per_group);
                aggr_expr.len() - 1
            }
        };
        let combine = match func.name() {
            "sum" | "count" => sum_udaf(),
            "min" => min_udaf(),
            "max" => max_udaf(),
            _ => return Ok(None),
        };
        parts.push((index, combine));
    }
    let groups = Aggregate::try_new(
        Arc::clone(&groups.input),
        groups.group_expr.clone(),
        aggr_expr,
    )?;
    let first_aggregate = groups.group_expr_len()?;
    let windows: Vec<Expr> = parts
        .iter()
        .map(|(index, combine)| {
            let per_group = Column::from(groups.schema.qualified_field(first_aggregate + index));
            Expr::from(WindowFunction::new(
                WindowFunctionDefinition::AggregateUDF(Arc::clone(combine)),
                vec![Expr::Column(per_group)],
            ))
        })
        .collect();
    let window = Window::try_new(windows.clone(), Arc::new(LogicalPlan::Aggregate(groups)))?;

    let mut values = HashMap::new();
    for (i, total) in windows.iter().enumerate() {
        let (qualifier, field) = inner.aggregate.schema.qualified_field(i);
        let total = Expr::Column(Column::from_name(total.schema_name().to_string()));
        let total_type = total.get_type(&window.schema)?;
        let total = if total_type == *field.data_type() {
            total
        } else {
            cast(total, field.data_type().clone())
        };
        values.insert(Column::new(qualifier.cloned(), field.name()), total);
    }
    // Uncorrelated: the value reads no outer column.
    let (value, _) = value_over_windows(inner.output, &values)?;
    let having = split_conjunction(&filter.predicate);
    filtered_over(
        LogicalPlan::Window(window),
        &having,
        filter,
        subquery,
        &value,
    )
}

/// Whether DataFusion computes the subquery's value over no rows without failing, as it
/// does when no row is grouped: each aggregate is then NULL (`count` 0), and the value is
/// computed from those.
fn computes_over_no_rows(inner: &Aggregated) -> bool {
    let schema = &inner.aggregate.schema;
    let values = inner
        .aggregate
        .aggr_expr
        .iter()
        .zip(schema.fields())
        .map(|(aggregate, field)| {
            let counts =
                matches!(aggregate, Expr::AggregateFunction(f) if f.func.name() == "count");
            let value = if counts {
                ScalarValue::new_zero(field.data_type())
            } else {
                ScalarValue::try_from(field.data_type())
            };
            value.and_then(|v| v.to_array())
        })
        .collect::<Result<Vec<_>>>();
    let Ok(values) = values else {
        return false;
    };
    let Ok(batch) = RecordBatch::try_new(Arc::new(schema.as_arrow().clone()), values) else {
        return false;
    };
    create_physical_expr(
        inner.output,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .and_then(|value| value.evaluate(&batch))
    .is_ok()
}

/// Whether an aggregate over rows divided into groups can be computed from its values over
/// each group, exactly as DataFusion computes it (see the module documentation).
fn splits_over_groups(name: &str, data_type: &DataType) -> bool {
    match name {
        "count" => true,
        "sum" => data_type.is_integer() || data_type.is_decimal(),
        "min" | "max" => !data_type.is_floating(),
        _ => false,
    }
}

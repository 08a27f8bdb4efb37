//! A decorrelated subquery's groups are computed only for keys the outer query can have.
//!
//! DataFusion turns a correlated scalar subquery (`ps_supplycost = (SELECT min(…) FROM …
//! WHERE ps_partkey = p_partkey)`) into a join of the outer query with an aggregate grouped
//! by the correlation key, computed for every key: TPC-H q02 groups 159,000 `partsupp` rows
//! into 117,000 groups, of which the outer query, whose `part` filter keeps 747 keys, can
//! meet 460. [`NarrowGroupedSubqueries`] semi-joins the aggregate's input with the keys of
//! the filtered table the outer query takes its key from (DuckDB's "delim join" does the
//! same with the outer query's own keys), at the scan that reads the grouping key, so that
//! the subquery's own joins meet only those rows (on top of the input where that scan reads
//! a SQL source, which joins its tables itself).
//!
//! That is always sound: the outer key's values are among the table's (after its filters),
//! so a group whose key is not there can meet no outer row, and a group is computed from the
//! rows of its own key only, so the groups kept are unchanged. It applies to joins that drop
//! the aggregate's unmatched rows (inner, left, left semi), only where the table is filtered
//! (else every key stays) by deterministic filters and read without a limit (two reads of a
//! limited scan may differ).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Join, LogicalPlan, LogicalPlanBuilder, Projection, TableScan,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::remote::remote_table;

/// The alias of the keys a subquery's aggregate input is narrowed to; also marks an input
/// already narrowed, since optimizer rules run more than once.
const KEYS_ALIAS: &str = "__tributary_outer_keys";

/// Semi-joins the input of a decorrelated subquery's aggregate with the keys the outer
/// query can match (see the module documentation).
#[derive(Debug, Default)]
pub struct NarrowGroupedSubqueries;

impl OptimizerRule for NarrowGroupedSubqueries {
    fn name(&self) -> &str {
        "tributary_narrow_grouped_subqueries"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if !matches!(
            join.join_type,
            JoinType::Inner | JoinType::Left | JoinType::LeftSemi
        ) {
            return Ok(Transformed::no(plan));
        }
        for (outer, inner) in &join.on {
            let (Expr::Column(outer), Expr::Column(inner)) = (outer, inner) else {
                continue;
            };
            let Some(keys) = filtered_source(&join.left, outer)? else {
                continue;
            };
            if let Some(right) = narrowed(&join.right, inner, &keys)? {
                let narrowed = Join {
                    right: Arc::new(right),
                    ..join.clone()
                };
                return Ok(Transformed::yes(LogicalPlan::Join(narrowed)));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// The values `column` of `plan` can take, as a plan of one column: the scan of the table
/// it comes from, under that scan's filters, if they are deterministic and there are any,
/// and the scan has no limit.
fn filtered_source(plan: &LogicalPlan, column: &Column) -> Result<Option<LogicalPlan>> {
    let Some(relation) = &column.relation else {
        return Ok(None);
    };
    // The scan of the table itself, or of the table under an alias (`FROM part p`). Plans
    // under another alias (a derived table, a subquery) name their columns by that alias,
    // so a scan of the same table there is another read and is skipped; two candidates
    // outside them leave the source unknown.
    let mut candidates = Vec::new();
    plan.apply(|node| match node {
        LogicalPlan::TableScan(scan) if &scan.table_name == relation => {
            candidates.push(Some((scan.clone(), column.name.clone())));
            Ok(TreeNodeRecursion::Continue)
        }
        LogicalPlan::SubqueryAlias(alias) if &alias.alias == relation => {
            candidates.push(scanned(&alias.input, &column.name));
            Ok(TreeNodeRecursion::Jump)
        }
        LogicalPlan::SubqueryAlias(_) => Ok(TreeNodeRecursion::Jump),
        _ => Ok(TreeNodeRecursion::Continue),
    })?;
    let found = match candidates.as_slice() {
        [only] => only.clone(),
        _ => None,
    };
    let Some((scan, name)) = found else {
        return Ok(None);
    };
    let column = Column::new(Some(scan.table_name.clone()), name);
    if scan.fetch.is_some()
        || scan.filters.is_empty()
        || scan.filters.iter().any(Expr::is_volatile)
        || !scan.projected_schema.has_column(&column)
    {
        return Ok(None);
    }
    keys_of(scan, &column).map(Some)
}

/// The scan under `plan` (through filters and projections that pass columns on) that
/// gives its column `name`, and that column's name in the scan.
fn scanned(plan: &LogicalPlan, name: &str) -> Option<(TableScan, String)> {
    match plan {
        LogicalPlan::TableScan(scan) => Some((scan.clone(), name.to_string())),
        LogicalPlan::Filter(filter) => scanned(&filter.input, name),
        LogicalPlan::Projection(projection) => {
            let index = projection
                .schema
                .fields()
                .iter()
                .position(|f| f.name() == name)?;
            match projection.expr.get(index)?.clone().unalias() {
                Expr::Column(source) => scanned(&projection.input, &source.name),
                _ => None,
            }
        }
        _ => None,
    }
}

fn keys_of(scan: TableScan, column: &Column) -> Result<LogicalPlan> {
    // A new scan of the key and of every column the filters name, under the filters: the
    // scan's own projection may lack a column of a filter its source applies exactly.
    // Filter pushdown hands the filters to the new scan in the next pass.
    let schema = scan.source.schema();
    let mut projection = vec![schema.index_of(&column.name)?];
    for filter in &scan.filters {
        for used in filter.column_refs() {
            let index = schema.index_of(&used.name)?;
            if !projection.contains(&index) {
                projection.push(index);
            }
        }
    }
    let mut keys = LogicalPlanBuilder::scan(scan.table_name, scan.source, Some(projection))?;
    if let Some(filter) = conjunction(scan.filters) {
        keys = keys.filter(filter)?;
    }
    keys.project(vec![Expr::Column(column.clone())])?
        .alias(KEYS_ALIAS)?
        .build()
}

/// `plan` (a subquery's side of the join) with the input of the aggregate that groups by
/// `column` semi-joined with `keys`, if `column` is a plain grouping column of an aggregate
/// under aliases and projections that pass it through.
fn narrowed(
    plan: &LogicalPlan,
    column: &Column,
    keys: &LogicalPlan,
) -> Result<Option<LogicalPlan>> {
    let Ok(index) = plan.schema().index_of_column(column) else {
        return Ok(None);
    };
    let input = match plan {
        LogicalPlan::SubqueryAlias(alias) => {
            let source = Column::from(alias.input.schema().qualified_field(index));
            narrowed(&alias.input, &source, keys)?
        }
        LogicalPlan::Projection(Projection { expr, input, .. }) => {
            match expr.get(index).map(|e| e.clone().unalias()) {
                Some(Expr::Column(source)) => narrowed(input, &source, keys)?,
                _ => None,
            }
        }
        LogicalPlan::Aggregate(Aggregate {
            group_expr, input, ..
        }) => {
            if group_expr.iter().any(|g| matches!(g, Expr::GroupingSet(_))) {
                return Ok(None);
            }
            let Some(Expr::Column(source)) = group_expr.get(index) else {
                return Ok(None);
            };
            // Optimizer rules run more than once, and may move the semi-join added before.
            if input
                .exists(|node| Ok(matches!(node, LogicalPlan::Join(join) if is_keys_join(join))))?
            {
                return Ok(None);
            }
            let deep = semi_joined(input, source, keys)?;
            if joins_keys_at_remote_scan(&deep)? {
                // A SQL source joins its own tables itself: keys that it cannot take along
                // (a filter it cannot run) split its join, and the estimates may then build
                // on the join's large side (all-MariaDB q02: 0.37 s became 2.1 s). On top
                // of the input, they meet the source's rows as a dynamic filter.
                Some(semi_join_here(input, source, keys)?)
            } else {
                Some(deep)
            }
        }
        _ => None,
    };
    match input {
        Some(input) => plan
            .with_new_exprs(plan.expressions(), vec![input])
            .map(Some),
        None => Ok(None),
    }
}

/// `plan` semi-joined with `keys` on its `column`, the semi-join placed as deep as the
/// column passes through unchanged: under filters, projections, aliases and the side of a
/// join that keeps its rows, down to the scan that reads it. Deeper is cheaper: the join
/// then drops rows before the subquery's other joins meet them, and the keys reach that
/// scan as a dynamic filter (q02's `partsupp` rows are cut to the outer `part` keys before
/// they meet `supplier`).
fn semi_joined(plan: &LogicalPlan, column: &Column, keys: &LogicalPlan) -> Result<LogicalPlan> {
    let below = match plan {
        LogicalPlan::Filter(filter) if !filter.predicate.is_volatile() => Some((0, column.clone())),
        LogicalPlan::Projection(Projection { expr, .. }) => {
            plan.schema().index_of_column(column).ok().and_then(|i| {
                match expr.get(i).map(|e| e.clone().unalias()) {
                    Some(Expr::Column(source)) => Some((0, source)),
                    _ => None,
                }
            })
        }
        LogicalPlan::SubqueryAlias(alias) => plan
            .schema()
            .index_of_column(column)
            .ok()
            .map(|i| (0, Column::from(alias.input.schema().qualified_field(i)))),
        LogicalPlan::Join(join) => {
            let left = join.left.schema().has_column(column);
            let right = join.right.schema().has_column(column);
            // The side the column comes from, if that side's rows reach the output as they
            // are (not null-extended), each row's column unchanged.
            match (join.join_type, left, right) {
                (
                    JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti,
                    true,
                    false,
                ) => Some((0, column.clone())),
                (
                    JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti,
                    false,
                    true,
                ) => Some((1, column.clone())),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((input, column_below)) = below else {
        return semi_join_here(plan, column, keys);
    };
    let mut inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
    inputs[input] = semi_joined(&inputs[input], &column_below, keys)?;
    plan.with_new_exprs(plan.expressions(), inputs)
}

/// `plan` semi-joined with `keys` on its `column`.
fn semi_join_here(plan: &LogicalPlan, column: &Column, keys: &LogicalPlan) -> Result<LogicalPlan> {
    let key = Column::new(Some(KEYS_ALIAS), keys.schema().field(0).name());
    LogicalPlanBuilder::from(plan.clone())
        .join(
            keys.clone(),
            JoinType::LeftSemi,
            (vec![column.clone()], vec![key]),
            None,
        )?
        .build()
}

/// Whether `plan` semi-joins outer keys right at the scan of a SQL source's table.
fn joins_keys_at_remote_scan(plan: &LogicalPlan) -> Result<bool> {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::Join(join) if is_keys_join(join)
            && matches!(join.left.as_ref(), LogicalPlan::TableScan(scan)
                if source_as_provider(&scan.source)
                    .is_ok_and(|p| remote_table(p.as_ref()).is_some()))))
    })
}

/// Whether `join` is a semi-join with outer keys this rule added.
fn is_keys_join(join: &Join) -> bool {
    join.join_type == JoinType::LeftSemi
        && matches!(join.right.as_ref(), LogicalPlan::SubqueryAlias(a) if a.alias.table() == KEYS_ALIAS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{col, lit, table_scan};

    /// A source that applies `size = 15` itself keeps it in the scan without reading
    /// `size` (MariaDB's q02 `part` scan): the keys still filter on it.
    #[test]
    fn keys_read_the_columns_of_filters_the_scan_does_not_project() {
        let schema = Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("kind", DataType::Utf8, true),
            Field::new("size", DataType::Int32, true),
        ]);
        let plan = table_scan(Some("part"), &schema, Some(vec![0, 1]))
            .unwrap()
            .build()
            .unwrap();
        let LogicalPlan::TableScan(mut scan) = plan else {
            unreachable!("a scan")
        };
        scan.filters = vec![col("part.size").eq(lit(15))];

        let keys = keys_of(scan, &Column::new(Some("part"), "key")).unwrap();
        assert_eq!(
            keys.display_indent().to_string(),
            "SubqueryAlias: __tributary_outer_keys\
             \n  Projection: part.key\
             \n    Filter: part.size = Int32(15)\
             \n      TableScan: part projection=[key, size]"
        );
    }
}

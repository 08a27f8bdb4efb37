//! Inner joins regrouped so that tables of one source are joined with each other first.
//!
//! DataFusion joins tables in the order the query names them. In `FROM customer, orders,
//! lineitem` with `customer` in MariaDB and the other two in PostgreSQL, that is
//! `(customer ⋈ orders) ⋈ lineitem`: no part of the plan reads only PostgreSQL, so both
//! of its tables are read (millions of `lineitem` rows) and joined here. Regrouped as
//! `customer ⋈ (orders ⋈ lineitem)`, the PostgreSQL join is one sub-plan the source runs
//! with its hash joins, sending back only the joined rows. Inner joins commute and
//! associate, so every regrouping returns the same rows; the output keeps its columns in
//! their original order.
//!
//! Grouping also orders the joins: a dimension and the table it filters (`customer ⋈
//! nation`) meet before either meets the facts, whose scan then gets the filtered keys
//! as a dynamic filter. For a source that joins by nested loops over indexes (MySQL,
//! MariaDB: [`PushdownRules::hash_joins`](super::PushdownRules::hash_joins) is false),
//! a group of two large tables is left apart, as reading each under the other joins'
//! dynamic filters is faster there.
//!
//! Where the table the query names first is not filtered, the joins start from the
//! smallest filtered dimension at the end of a chain instead (TPC-H q11's `nation` where
//! `n_name = 'GERMANY'`; at most 10,000 rows as its source estimates):
//! `(nation ⋈ supplier) ⋈ partsupp` probes with `partsupp` once, keeping the few
//! suppliers that remain, where `(partsupp ⋈ supplier) ⋈ nation` joins every `partsupp`
//! row twice.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, JoinConstraint, JoinType, NullEquality, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{EmptyRelation, Expr, Join, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::federate::remote_table;
use super::map_subquery_plans;

/// For a source that joins by nested loops, the most rows each table of a group but its
/// largest may have for the group to join there: dimension tables (TPC-H's `nation`,
/// `region`, `supplier`) join fast that way, while `orders ⋈ customer` took 2.3 s in
/// MariaDB at SF1 against 0.66 s read apart (TPC-H q07 over `split_facts`).
const NESTED_LOOP_ROWS: usize = 10_000;

/// The most rows (as the source estimates, before filters) a filtered table may have to
/// start the joins: a dimension, so that its own join costs little even when its filter
/// keeps everything.
const DIMENSION_ROWS: usize = 10_000;

/// Joins tables of one source with each other before joining them with other sources',
/// so that sub-plan pushdown (which runs after it) can send the join to the source.
#[derive(Debug, Default)]
pub struct SameSourceJoinsFirst;

impl OptimizerRule for SameSourceJoinsFirst {
    fn name(&self) -> &str {
        "tributary_same_source_joins_first"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        regroup_with_subqueries(plan)
    }
}

/// `plan` regrouped, and the plans of the uncorrelated subqueries DataFusion keeps as
/// expressions (TPC-H q11's total in `HAVING`) regrouped as well.
fn regroup_with_subqueries(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    regroup(plan)?.transform_data(|plan| {
        plan.transform_down(|node| {
            map_subquery_plans(node, |subquery| {
                let inner = subquery.subquery.as_ref().clone();
                // A correlated one's columns of the outer query are left as they stand.
                if subquery.outer_ref_columns.is_empty() {
                    regroup_with_subqueries(inner)
                } else {
                    Ok(Transformed::no(inner))
                }
            })
        })
    })
}

fn regroup(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if !is_flat_inner(&plan) {
        return plan.map_children(regroup);
    }
    let mut tree = JoinTree::default();
    let regrouped = tree.flatten(plan.clone()).and_then(|_| tree.regrouped());
    // The regrouped join has the same columns (and more) in another order.
    let columns = plan.schema().columns().into_iter().map(Expr::Column);
    match regrouped.and_then(|r| {
        r.map(|joined| LogicalPlanBuilder::from(joined).project(columns)?.build())
            .transpose()
    }) {
        Ok(Some(projected)) => Ok(Transformed::yes(regroup_leaves(projected)?.data)),
        Ok(None) => regroup_leaves(plan),
        // A tree this rule cannot rebuild keeps its order: the plan is only slower.
        Err(e) => {
            tracing::debug!("join order kept: {e}");
            regroup_leaves(plan)
        }
    }
}

/// `plan`'s join tree as it stands, with the plans at its leaves (and the sides semi and
/// anti joins compare with) regrouped as trees of their own.
fn regroup_leaves(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if is_flat_inner(&plan) || is_column_pick(&plan) {
        return plan.map_children(regroup_leaves);
    }
    if filtering_side(&plan).is_none() {
        return regroup(plan);
    }
    let LogicalPlan::Join(mut join) = plan else {
        unreachable!("checked by filtering_side")
    };
    let (kept, other) = match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti => (&mut join.left, &mut join.right),
        _ => (&mut join.right, &mut join.left),
    };
    let new_kept = regroup_leaves(Arc::unwrap_or_clone(Arc::clone(kept)))?;
    let new_other = regroup(Arc::unwrap_or_clone(Arc::clone(other)))?;
    let transformed = new_kept.transformed || new_other.transformed;
    *kept = Arc::new(new_kept.data);
    *other = Arc::new(new_other.data);
    Ok(Transformed::new_transformed(
        LogicalPlan::Join(join),
        transformed,
    ))
}

/// An inner join this rule may regroup: equality that never matches NULLs.
fn is_flat_inner(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(join)
        if join.join_type == JoinType::Inner
            && join.null_equality == NullEquality::NullEqualsNothing)
}

/// A semi or anti join (not the null-aware anti join `NOT IN` plans): it keeps or drops
/// rows of one side by their own columns, so it can move above inner joins of that side.
fn filtering_side(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    let LogicalPlan::Join(join) = plan else {
        return None;
    };
    if join.null_equality != NullEquality::NullEqualsNothing || join.null_aware {
        return None;
    }
    match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti => Some(&join.right),
        JoinType::RightSemi | JoinType::RightAnti => Some(&join.left),
        _ => None,
    }
}

/// A projection that only picks columns (the optimizer puts them between joins).
fn is_column_pick(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Projection(p)
        if p.expr.iter().all(|e| matches!(e, Expr::Column(_))))
}

/// A tree of inner joins taken apart: its inputs, and every condition between them.
#[derive(Default)]
struct JoinTree {
    leaves: Vec<Leaf>,
    /// Equalities `left = right` (from the joins' `on`).
    equalities: Vec<(Expr, Expr)>,
    /// The joins' other conditions, split at `AND`.
    filters: Vec<Expr>,
    /// Semi and anti joins met on the way, innermost first, with the side they filter
    /// replaced by an empty placeholder.
    semis: Vec<Join>,
    /// The leaf sets of the original inner joins with no semi or anti join below them, to
    /// tell whether regrouping changes anything.
    original_joins: Vec<Vec<usize>>,
}

struct Leaf {
    plan: LogicalPlan,
    /// The compute context of the source every table below belongs to, if there is one
    /// and it takes pushed sub-plans.
    source: Option<String>,
    /// Whether that source hash-joins large tables.
    hash_joins: bool,
    /// The source's row estimate for the largest table below (`usize::MAX` if unknown).
    rows: usize,
    /// Whether a filter drops rows below (in the plan or pushed into a scan).
    filtered: bool,
}

impl JoinTree {
    /// Adds `plan`'s leaves and conditions; returns the indexes of its leaves and whether
    /// a semi or anti join was passed.
    fn flatten(&mut self, plan: LogicalPlan) -> Result<(Vec<usize>, bool)> {
        if is_column_pick(&plan) {
            let LogicalPlan::Projection(projection) = plan else {
                unreachable!("checked by is_column_pick")
            };
            return self.flatten(Arc::unwrap_or_clone(projection.input));
        }
        if filtering_side(&plan).is_some() {
            let LogicalPlan::Join(mut join) = plan else {
                unreachable!("checked by filtering_side")
            };
            let empty = Arc::new(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::empty()),
            }));
            let kept = match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => std::mem::replace(&mut join.left, empty),
                _ => std::mem::replace(&mut join.right, empty),
            };
            let (below, _) = self.flatten(Arc::unwrap_or_clone(kept))?;
            self.semis.push(join);
            return Ok((below, true));
        }
        if !is_flat_inner(&plan) {
            let (source, hash_joins) = match single_source(&plan) {
                Some((context, hash_joins)) => (Some(context), hash_joins),
                None => (None, false),
            };
            let rows = largest_table_rows(&plan);
            let filtered = has_filter(&plan);
            self.leaves.push(Leaf {
                plan,
                source,
                hash_joins,
                rows,
                filtered,
            });
            return Ok((vec![self.leaves.len() - 1], false));
        }
        let LogicalPlan::Join(join) = plan else {
            unreachable!("checked by is_flat_inner")
        };
        let (mut below, left_semi) = self.flatten(Arc::unwrap_or_clone(join.left))?;
        let (right, right_semi) = self.flatten(Arc::unwrap_or_clone(join.right))?;
        below.extend(right);
        self.equalities.extend(join.on);
        if let Some(filter) = join.filter {
            self.filters.extend(split_conjunction_owned(filter));
        }
        let semi = left_semi || right_semi;
        if !semi {
            self.original_joins.push(below.clone());
        }
        Ok((below, semi))
    }

    /// The leaves joined with same-source groups first, starting from the smallest
    /// filtered dimension, or `None` when the original joins already do that.
    fn regrouped(&self) -> Result<Option<LogicalPlan>> {
        if self.one_source() {
            return Ok(None);
        }
        let groups = self.source_groups();
        let already = groups.iter().all(|group| {
            self.original_joins.iter().any(|joined| {
                let mut joined = joined.clone();
                joined.sort_unstable();
                joined == *group
            })
        });

        // The units to join: each group, and each leaf in none, in the leaves' order.
        let mut units: Vec<Vec<usize>> = Vec::new();
        for index in 0..self.leaves.len() {
            if units.iter().any(|unit| unit.contains(&index)) {
                continue;
            }
            match groups.iter().find(|g| g.contains(&index)) {
                Some(group) => units.push(group.clone()),
                None => units.push(vec![index]),
            }
        }
        let start = self.selective_start(&units);
        if start.is_none() && (groups.is_empty() || already) {
            return Ok(None);
        }
        if let Some(start) = start {
            let unit = units.remove(start);
            units.insert(0, unit);
        }

        let mut used = Conditions::new(self);
        let mut plans = Vec::with_capacity(units.len());
        for unit in &units {
            let leaves = unit.iter().map(|&i| self.leaves[i].plan.clone()).collect();
            plans.push(used.join_connected(leaves)?);
        }
        // Each semi or anti join filters the lowest part that has its columns.
        let mut on_top = Vec::new();
        for semi in &self.semis {
            let needs = kept_columns(semi);
            match plans
                .iter()
                .position(|plan| needs.iter().all(|c| plan.schema().has_column(c)))
            {
                Some(index) => {
                    let plan = plans[index].clone();
                    plans[index] = with_kept(semi, plan)?;
                }
                None => on_top.push(semi),
            }
        }
        let mut joined = used.join_connected(plans)?;
        for semi in on_top {
            joined = with_kept(semi, joined)?;
        }
        Ok(Some(used.apply_rest(joined)?))
    }

    /// Which of `units` the joins should start from when the first is not filtered: the
    /// filtered one with the fewest rows, if that is a dimension ([`DIMENSION_ROWS`]) at
    /// the end of a chain: equalities join it to one unit, and that unit to one other.
    /// Without selectivity estimates a filter's effect is unknown, so a dimension's
    /// filter never overrides the first table's own (in q02, `part`'s keeps 0.4% of
    /// 200,000 rows, `region`'s one of five regions), and an unfiltered or large unit
    /// never moves ahead. Off a chain, the joins that follow may meet on a column that
    /// is a key of neither side (in q05, `nation ⋈ region` meets `supplier`, which meets
    /// `lineitem` and, on the nation, `customer`: each of a region's 2,000 suppliers
    /// would meet its nation's 6,000 customers, 12 million rows: 1.8 s at SF1 over
    /// `mixed`, 0.96 s kept), so such a dimension keeps its place.
    fn selective_start(&self, units: &[Vec<usize>]) -> Option<usize> {
        let rows = |unit: &[usize]| unit.iter().map(|&i| self.leaves[i].rows).max();
        let filtered = |unit: &[usize]| unit.iter().any(|&i| self.leaves[i].filtered);
        if filtered(&units[0]) {
            return None;
        }
        let all: Vec<usize> = (0..self.leaves.len()).collect();
        let neighbours = |unit: usize| -> Vec<usize> {
            (0..units.len())
                .filter(|&other| {
                    other != unit
                        && units[other]
                            .iter()
                            .any(|&i| self.connects(&units[unit], i, &all))
                })
                .collect()
        };
        // A chain: the dimension meets one unit, and that one meets one more.
        let chained = |unit: usize| match neighbours(unit).as_slice() {
            [next] => neighbours(*next).len() <= 2,
            _ => false,
        };
        units
            .iter()
            .enumerate()
            .filter(|(_, unit)| filtered(unit) && rows(unit) <= Some(DIMENSION_ROWS))
            .filter(|(index, _)| chained(*index))
            .min_by_key(|(index, unit)| (rows(unit), *index))
            .map(|(index, _)| index)
    }

    /// Whether every leaf, and everything semi and anti joins compare them with, reads
    /// one source (which then takes the whole tree, however it is grouped).
    fn one_source(&self) -> bool {
        let Some(first) = self.leaves.first().and_then(|l| l.source.as_ref()) else {
            return false;
        };
        self.leaves.iter().all(|l| l.source.as_ref() == Some(first))
            && self.semis.iter().all(|semi| {
                filtering_side(&LogicalPlan::Join(semi.clone())).is_some_and(|other| {
                    single_source(other).is_some_and(|(context, _)| context == *first)
                })
            })
    }

    /// Groups of two or more leaves of one source that conditions connect, each sorted.
    fn source_groups(&self) -> Vec<Vec<usize>> {
        let mut groups = Vec::new();
        let mut seen = HashSet::new();
        for (start, leaf) in self.leaves.iter().enumerate() {
            let Some(source) = &leaf.source else { continue };
            if !seen.insert(start) {
                continue;
            }
            // The leaves of this source reachable from `start` through conditions that
            // only involve leaves of this source.
            let mut group = vec![start];
            let mut grew = true;
            while grew {
                grew = false;
                for (index, other) in self.leaves.iter().enumerate() {
                    if group.contains(&index) || other.source.as_ref() != Some(source) {
                        continue;
                    }
                    let mut candidate = group.clone();
                    candidate.push(index);
                    if self.connects(&group, index, &candidate) {
                        group.push(index);
                        seen.insert(index);
                        grew = true;
                    }
                }
            }
            if group.len() >= 2 && (leaf.hash_joins || self.all_but_one_small(&group)) {
                group.sort_unstable();
                groups.push(group);
            }
        }
        groups
    }

    /// Whether every table of `group` but its largest has at most [`NESTED_LOOP_ROWS`]
    /// rows, as the source estimates.
    fn all_but_one_small(&self, group: &[usize]) -> bool {
        let mut rows: Vec<usize> = group.iter().map(|&i| self.leaves[i].rows).collect();
        rows.sort_unstable();
        rows.pop();
        rows.iter().all(|&r| r <= NESTED_LOOP_ROWS)
    }

    /// Whether an equality joins leaf `index` to `group`, using no leaf outside `within`
    /// (other conditions alone would make a nested-loop join).
    fn connects(&self, group: &[usize], index: usize, within: &[usize]) -> bool {
        self.equalities.iter().any(|(l, r)| {
            let leaves: HashSet<usize> = l
                .column_refs()
                .into_iter()
                .chain(r.column_refs())
                .filter_map(|c| self.leaf_of(c))
                .collect();
            leaves.contains(&index)
                && leaves.iter().any(|l| group.contains(l))
                && leaves.iter().all(|l| within.contains(l))
        })
    }

    fn leaf_of(&self, column: &Column) -> Option<usize> {
        self.leaves
            .iter()
            .position(|leaf| leaf.plan.schema().has_column(column))
    }
}

/// The conditions of a join tree, each attached to the lowest join that has its columns.
struct Conditions {
    equalities: Vec<Option<(Expr, Expr)>>,
    filters: Vec<Option<Expr>>,
}

impl Conditions {
    fn new(tree: &JoinTree) -> Self {
        Conditions {
            equalities: tree.equalities.iter().cloned().map(Some).collect(),
            filters: tree.filters.iter().cloned().map(Some).collect(),
        }
    }

    /// Joins `plans` left-deep, each step taking the first remaining plan an equality
    /// connects (the original's order when none does).
    fn join_connected(&mut self, plans: Vec<LogicalPlan>) -> Result<LogicalPlan> {
        let mut remaining = plans.into_iter();
        let mut joined = remaining.next().expect("a join has inputs");
        let mut remaining: Vec<LogicalPlan> = remaining.collect();
        while !remaining.is_empty() {
            let next = remaining
                .iter()
                .position(|right| self.connected(joined.schema(), right.schema()))
                .unwrap_or(0);
            let right = remaining.remove(next);
            joined = self.join(joined, right)?;
        }
        Ok(joined)
    }

    /// Whether an unused equality joins `left` to `right`.
    fn connected(&self, left: &DFSchema, right: &DFSchema) -> bool {
        self.equalities.iter().flatten().any(|(a, b)| {
            (covered(a, left) && covered(b, right)) || (covered(a, right) && covered(b, left))
        })
    }

    /// Joins `left` and `right` on every unused condition their columns cover.
    fn join(&mut self, left: LogicalPlan, right: LogicalPlan) -> Result<LogicalPlan> {
        let (l, r) = (left.schema().clone(), right.schema().clone());
        let mut on = Vec::new();
        let mut filters = Vec::new();
        for slot in &mut self.equalities {
            let Some((a, b)) = slot.take() else { continue };
            if covered(&a, &l) && covered(&b, &r) {
                on.push((a, b));
            } else if covered(&a, &r) && covered(&b, &l) {
                on.push((b, a));
            } else if within(&a.column_refs(), &l, &r) && within(&b.column_refs(), &l, &r) {
                filters.push(a.eq(b));
            } else {
                *slot = Some((a, b));
            }
        }
        for slot in &mut self.filters {
            match slot.take() {
                Some(f) if within(&f.column_refs(), &l, &r) => filters.push(f),
                other => *slot = other,
            }
        }
        inner_join(left, right, on, conjunction(filters))
    }

    /// `plan` filtered by any condition no join took (none, unless a condition names no
    /// column of the joined tables).
    fn apply_rest(self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let rest = self
            .equalities
            .into_iter()
            .flatten()
            .map(|(a, b)| a.eq(b))
            .chain(self.filters.into_iter().flatten());
        match conjunction(rest) {
            Some(filter) => LogicalPlanBuilder::from(plan).filter(filter)?.build(),
            None => Ok(plan),
        }
    }
}

fn covered(expr: &Expr, schema: &DFSchema) -> bool {
    expr.column_refs().iter().all(|c| schema.has_column(c))
}

fn within(columns: &HashSet<&Column>, left: &DFSchema, right: &DFSchema) -> bool {
    columns
        .iter()
        .all(|c| left.has_column(c) || right.has_column(c))
}

fn inner_join(
    left: LogicalPlan,
    right: LogicalPlan,
    on: Vec<(Expr, Expr)>,
    filter: Option<Expr>,
) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        Arc::new(left),
        Arc::new(right),
        on,
        filter,
        JoinType::Inner,
        JoinConstraint::On,
        NullEquality::NullEqualsNothing,
        false,
    )?))
}

/// The columns of the filtered side a semi or anti join compares.
fn kept_columns(semi: &Join) -> Vec<Column> {
    let other = filtering_side(&LogicalPlan::Join(semi.clone()))
        .expect("a semi or anti join")
        .schema()
        .clone();
    let mut columns: Vec<Column> = semi
        .on
        .iter()
        .flat_map(|(l, r)| [l, r])
        .chain(semi.filter.as_ref())
        .flat_map(|e| e.column_refs())
        .filter(|c| !other.has_column(c))
        .cloned()
        .collect();
    columns.dedup();
    columns
}

/// The semi or anti join `semi` filtering `kept`.
fn with_kept(semi: &Join, kept: LogicalPlan) -> Result<LogicalPlan> {
    let (left, right) = match semi.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti => (Arc::new(kept), Arc::clone(&semi.right)),
        _ => (Arc::clone(&semi.left), Arc::new(kept)),
    };
    Ok(LogicalPlan::Join(Join::try_new(
        left,
        right,
        semi.on.clone(),
        semi.filter.clone(),
        semi.join_type,
        semi.join_constraint,
        semi.null_equality,
        false,
    )?))
}

/// The compute context of the one pushdown-enabled source every table of `plan` reads, if
/// there is one, and whether it hash-joins.
fn single_source(plan: &LogicalPlan) -> Option<(String, bool)> {
    let mut context: Option<(String, bool)> = None;
    let mut single = true;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let this = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| remote_table(p.as_ref()).map(|t| Arc::clone(t.source())))
                .filter(|s| s.pushdown())
                .map(|s| (s.compute_context(), s.rules().hash_joins));
            match (&context, this) {
                (_, None) => single = false,
                (None, Some(this)) => context = Some(this),
                (Some(seen), Some(this)) => single &= *seen == this,
            }
        }
        Ok(if single {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    context.filter(|_| single)
}

/// Whether `plan` filters rows: a filter node, or filters pushed into a scan.
fn has_filter(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::Filter(_) => true,
            LogicalPlan::TableScan(scan) => !scan.filters.is_empty(),
            _ => false,
        })
    })
    .unwrap_or(false)
}

/// The largest row estimate of the tables `plan` reads (`usize::MAX` when one is unknown).
pub(super) fn largest_table_rows(plan: &LogicalPlan) -> usize {
    let mut largest = 0;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let rows = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| remote_table(p.as_ref()).and_then(TableProvider::statistics))
                .and_then(|s| s.num_rows.get_value().copied())
                .unwrap_or(usize::MAX);
            largest = largest.max(rows);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    largest
}

//! Dynamic filters sent to the source.
//!
//! While a query runs, DataFusion learns predicates it could not know when planning: a hash
//! join's build side gives the keys its probe side can match (`k >= 3 AND k <= 90 AND k IN
//! (3, 17, 90)`), a top-k its current bound. It hands them to the probe side's scans as
//! dynamic filters. A remote scan reads them when its query starts, which for a hash join's
//! probe side is after the build side is complete (the join polls its probe side only then),
//! and adds what the source evaluates exactly as DataFusion would to the query, so the source
//! sends only the rows that can match (Trino's dynamic filtering).
//!
//! The join still evaluates its own condition, so what is sent need only keep every row the
//! filter keeps. Parts the source cannot evaluate are dropped, which weakens the predicate and
//! is always sound: a predicate is first weakened to a range and a set of values per key (see
//! [`Bounds`]), and the per-partition branches of a partitioned join are merged into one.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column, DFSchema, HashSet, Result, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Cast, Expr, Operator, lit};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column as ColumnExpr, InListExpr, IsNullExpr, Literal,
};
use datafusion::physical_expr_common::physical_expr::{PhysicalExpr, snapshot_physical_expr};
use datafusion::sql::sqlparser::ast::{self, Ident, SetExpr, Statement, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::Unparser;

use super::RemoteSource;
use super::exact_strings::write_exact_strings;
use super::pushdown::{ColumnTraits, check_expr, is_string};
use super::sql::and_where;

/// The most values one key's `IN` list sends (the partitions' lists together); past it
/// only the key's range is sent.
pub const MAX_IN_VALUES: usize = 100_000;

/// How one scan's queries take dynamic filters: the names its output columns have in the
/// query, what the source knows about them, and where the predicate goes.
#[derive(Debug)]
pub struct DynamicFilterTarget {
    source: Arc<dyn RemoteSource>,
    /// The scan's output columns under the names the predicate uses.
    schema: DFSchema,
    traits: Vec<ColumnTraits>,
    shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A plain `SELECT` of table columns: the predicate joins its `WHERE`.
    Table,
    /// Any query (a sub-plan): it becomes a named subquery with numbered columns, and the
    /// predicate filters that (sources push it into the subquery where they can).
    SubPlan,
}

/// The name of the wrapped sub-plan, and the prefix of its numbered columns.
const WRAPPED: &str = "tributary_filtered";
const WRAPPED_COLUMN: &str = "c";

impl DynamicFilterTarget {
    /// For a plain scan of table columns: `schema` is its output (names as on the source)
    /// and `traits` the columns' traits, in the same order.
    pub fn table(
        source: Arc<dyn RemoteSource>,
        schema: &SchemaRef,
        traits: Vec<ColumnTraits>,
    ) -> Result<Self> {
        Ok(DynamicFilterTarget {
            source,
            schema: DFSchema::try_from(schema.as_ref().clone())?,
            traits,
            shape: Shape::Table,
        })
    }

    /// For a sub-plan's query, whose output is `schema` with `traits`.
    pub fn sub_plan(
        source: Arc<dyn RemoteSource>,
        schema: &SchemaRef,
        traits: Vec<ColumnTraits>,
    ) -> Result<Self> {
        let numbered: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                Field::new(
                    format!("{WRAPPED_COLUMN}{i}"),
                    f.data_type().clone(),
                    f.is_nullable(),
                )
            })
            .collect();
        Ok(DynamicFilterTarget {
            source,
            schema: DFSchema::try_from(Schema::new(numbered))?,
            traits,
            shape: Shape::SubPlan,
        })
    }

    /// What of `filters`' current state the source can evaluate, written in its dialect as
    /// one condition on the scan's columns; `None` when that is nothing. It does not depend
    /// on the partition, so a scan writes it once for all its queries (see [`Self::restrict`]).
    pub fn restriction(&self, filters: &[Arc<dyn PhysicalExpr>]) -> Result<Option<ast::Expr>> {
        let Some(predicate) = self.predicate(filters)? else {
            return Ok(None);
        };
        let dialect = self.source.dialect();
        let mut written = Unparser::new(dialect.as_ref()).expr_to_sql(&predicate)?;
        if self.source.rules().integer_arrays {
            integer_arrays(&mut written);
        }
        write_exact_strings(self.source.rules().exact_strings, &mut written);
        Ok(Some(written))
    }

    /// What of `filters`' current state the source can evaluate, as one predicate over the
    /// scan's columns; `None` when that is nothing.
    fn predicate(&self, filters: &[Arc<dyn PhysicalExpr>]) -> Result<Option<Expr>> {
        let mut all = Bounds::all();
        for filter in filters {
            let current = snapshot_physical_expr(Arc::clone(filter))?;
            all = all.and(Bounds::of(&current, self.schema.fields().len()));
        }
        let conjuncts = match all {
            Bounds::Never => vec![lit(false)],
            Bounds::Keys(keys) => keys
                .into_iter()
                .filter_map(|(key, bound)| bound.to_expr(self.key_expr(&key)))
                .filter(|e| self.evaluates(e))
                .collect(),
        };
        Ok(conjuncts.into_iter().reduce(Expr::and))
    }

    /// `statement`, restricted by a [`Self::restriction`].
    pub fn restrict(&self, statement: &Statement, predicate: ast::Expr) -> Result<Statement> {
        let dialect = self.source.dialect();
        match self.shape {
            Shape::Table => {
                let mut restricted = statement.clone();
                and_where(&mut restricted, predicate)?;
                Ok(restricted)
            }
            Shape::SubPlan => {
                let Statement::Query(query) = statement else {
                    return datafusion::common::internal_err!("expected a query, got {statement}");
                };
                let quote = |name: &str| match dialect.identifier_quote_style(name) {
                    Some(q) => Ident::with_quote(q, name),
                    None => Ident::new(name),
                };
                // A template with the CTE's column names, filled in with the query and
                // predicate (a CTE rather than a derived table: MariaDB takes column names
                // only there).
                let columns: Vec<String> = (0..self.schema.fields().len())
                    .map(|i| quote(&format!("{WRAPPED_COLUMN}{i}")).to_string())
                    .collect();
                let name = quote(WRAPPED).to_string();
                let template = format!(
                    "WITH {name} ({}) AS (SELECT 1) SELECT * FROM {name}",
                    columns.join(", ")
                );
                let mut wrapped = Parser::parse_sql(&GenericDialect {}, &template)
                    .map_err(|e| datafusion::common::DataFusionError::Internal(e.to_string()))?
                    .pop()
                    .expect("the template is one statement");
                let Statement::Query(outer) = &mut wrapped else {
                    return datafusion::common::internal_err!("the template is a query");
                };
                let Some(with) = outer.with.as_mut() else {
                    return datafusion::common::internal_err!("the template has a WITH");
                };
                with.cte_tables[0].query = query.clone();
                let SetExpr::Select(select) = outer.body.as_mut() else {
                    return datafusion::common::internal_err!("the template is a SELECT");
                };
                select.selection = Some(predicate);
                Ok(wrapped)
            }
        }
    }

    fn key_expr(&self, key: &Key) -> Expr {
        let field = self.schema.field(key.column);
        let column = Expr::Column(Column::new_unqualified(field.name().clone()));
        match &key.cast {
            // Between string types (a Parquet side's `Utf8View`) the value is the same:
            // the bare column, which an index answers and every dialect writes.
            Some(to) if is_string(to) && is_string(field.data_type()) => column,
            Some(to) => Expr::Cast(Cast::new(Box::new(column), to.clone())),
            None => column,
        }
    }

    /// Whether the source evaluates `expr` exactly as DataFusion would.
    fn evaluates(&self, expr: &Expr) -> bool {
        let traits = |c: &Column| {
            self.schema
                .index_of_column(c)
                .ok()
                .and_then(|i| self.traits.get(i).copied())
                .unwrap_or(ColumnTraits {
                    opaque: true,
                    bytewise_order: false,
                    collated: true,
                    exact_as_bytes: false,
                })
        };
        let checked = check_expr(expr, &self.schema, self.source.rules(), &traits);
        if let Err(reason) = &checked {
            tracing::debug!(source = self.source.name(), %expr, %reason,
                "a dynamic filter stays in DataFusion");
        }
        checked.is_ok()
    }
}

/// Lists of at least this many values are written as arrays where the source takes them.
const ARRAY_FROM: usize = 100;

/// Writes each long `k IN (…)` of integer literals as `k = ANY('{…}'::BIGINT[])`: the same
/// rows (integers compare exactly across widths, and the list has no NULL), one literal to
/// parse, and still a condition the source can answer from an index on `k`.
fn integer_arrays(predicate: &mut ast::Expr) {
    let _ = visit_expressions_mut(predicate, |e| {
        if let ast::Expr::InList {
            expr,
            list,
            negated: false,
        } = e
            && list.len() >= ARRAY_FROM
            && let Some(values) = list.iter().map(integer).collect::<Option<Vec<_>>>()
        {
            let array = ast::Expr::value(ast::Value::SingleQuotedString(format!(
                "{{{}}}",
                values.join(",")
            )));
            *e = ast::Expr::AnyOp {
                left: expr.clone(),
                compare_op: ast::BinaryOperator::Eq,
                right: Box::new(ast::Expr::Cast {
                    kind: ast::CastKind::DoubleColon,
                    expr: Box::new(array),
                    data_type: ast::DataType::Array(ast::ArrayElemTypeDef::SquareBracket(
                        Box::new(ast::DataType::BigInt(None)),
                        None,
                    )),
                    array: false,
                    format: None,
                }),
                is_some: false,
            };
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The text of an integer literal that fits a `BIGINT`.
fn integer(e: &ast::Expr) -> Option<String> {
    let (negative, value) = match e {
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => (true, expr.as_ref()),
        e => (false, e),
    };
    let ast::Expr::Value(value) = value else {
        return None;
    };
    let ast::Value::Number(digits, false) = &value.value else {
        return None;
    };
    let text = if negative {
        format!("-{digits}")
    } else {
        digits.clone()
    };
    text.parse::<i64>().is_ok().then_some(text)
}

/// A key a dynamic filter constrains: an output column of the scan, maybe cast.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    column: usize,
    cast: Option<DataType>,
}

impl Key {
    fn of(expr: &Arc<dyn PhysicalExpr>, width: usize) -> Option<Key> {
        let (column, cast) = match expr.downcast_ref::<CastExpr>() {
            Some(cast) => (cast.expr(), Some(cast.cast_type().clone())),
            None => (expr, None),
        };
        let column = column.downcast_ref::<ColumnExpr>()?.index();
        (column < width).then_some(Key { column, cast })
    }
}

/// What a predicate says about one key, weakened: a row passes if its key lies in
/// `[low, high]` (each end optional) and in `values` (if given), or is NULL and `nulls`.
#[derive(Debug, Clone)]
struct KeyBound {
    low: Option<ScalarValue>,
    high: Option<ScalarValue>,
    values: Option<Vec<ScalarValue>>,
    nulls: bool,
}

impl KeyBound {
    fn values<'a>(values: impl IntoIterator<Item = &'a ScalarValue>) -> Self {
        KeyBound {
            low: None,
            high: None,
            values: distinct(values),
            nulls: false,
        }
    }

    /// Both bounds hold.
    fn and(self, other: KeyBound) -> KeyBound {
        let values = match (self.values, other.values) {
            (Some(a), Some(b)) => {
                let b: HashSet<&ScalarValue> = b.iter().collect();
                Some(a.into_iter().filter(|v| b.contains(v)).collect())
            }
            (a, b) => a.or(b),
        };
        KeyBound {
            low: tighter(self.low, other.low, true),
            high: tighter(self.high, other.high, false),
            values,
            nulls: self.nulls && other.nulls,
        }
    }

    /// Either bound holds.
    fn or(self, other: KeyBound) -> KeyBound {
        let values = match (self.values, other.values) {
            // The partitions of a partitioned join list disjoint keys (each key is hashed
            // to one), so lists that add up to more than can be sent are not merged to
            // find out: a list dropped is only a weaker filter.
            (Some(a), Some(b)) if a.len() + b.len() <= MAX_IN_VALUES => {
                distinct(a.iter().chain(&b))
            }
            _ => None,
        };
        KeyBound {
            low: looser(self.low, other.low, true),
            high: looser(self.high, other.high, false),
            values,
            nulls: self.nulls || other.nulls,
        }
    }

    /// The bound as a predicate on `key`; `None` if it does not restrict it.
    fn to_expr(&self, key: Expr) -> Option<Expr> {
        let restriction = match &self.values {
            // Only NULLs (if any) pass.
            Some(values) if values.is_empty() => None,
            // With the values listed, the range adds nothing.
            Some(values) => Some(Expr::InList(InList::new(
                Box::new(key.clone()),
                values.iter().cloned().map(lit).collect(),
                false,
            ))),
            None => {
                let low = self.low.clone().map(|v| key.clone().gt_eq(lit(v)));
                let high = self.high.clone().map(|v| key.clone().lt_eq(lit(v)));
                Some(low.into_iter().chain(high).reduce(Expr::and)?)
            }
        };
        Some(match (restriction, self.nulls) {
            (Some(restriction), false) => restriction,
            (Some(restriction), true) => restriction.or(key.is_null()),
            (None, true) => key.is_null(),
            (None, false) => lit(false),
        })
    }
}

/// `values` without NULLs, each once, in their order; `None` past [`MAX_IN_VALUES`] of them.
///
/// Build sides list tens of thousands of keys, once per partition, and the probe side's
/// query waits for this: the set hashes references with DataFusion's fast hasher, and
/// stops as soon as the list is too long to send.
fn distinct<'a>(values: impl IntoIterator<Item = &'a ScalarValue>) -> Option<Vec<ScalarValue>> {
    let values = values.into_iter();
    let expected = values.size_hint().0.min(MAX_IN_VALUES + 1);
    let mut seen = HashSet::with_capacity(expected);
    let mut kept = Vec::with_capacity(expected);
    for value in values {
        if value.is_null() || !seen.insert(value) {
            continue;
        }
        if kept.len() == MAX_IN_VALUES {
            return None;
        }
        kept.push(value.clone());
    }
    Some(kept)
}

/// The tighter of two range ends (`low`: the larger); either if they do not compare.
fn tighter(a: Option<ScalarValue>, b: Option<ScalarValue>, low: bool) -> Option<ScalarValue> {
    match (a, b) {
        (Some(a), Some(b)) => match a.partial_cmp(&b) {
            Some(order) if order.is_lt() == low => Some(b),
            _ => Some(a),
        },
        (a, b) => a.or(b),
    }
}

/// The looser of two range ends (`low`: the smaller); none if either is open or they do not
/// compare.
fn looser(a: Option<ScalarValue>, b: Option<ScalarValue>, low: bool) -> Option<ScalarValue> {
    let (a, b) = (a?, b?);
    match a.partial_cmp(&b)? {
        order if order.is_lt() == low => Some(a),
        _ => Some(b),
    }
}

/// A predicate weakened to what it says about each key.
#[derive(Debug, Clone)]
enum Bounds {
    /// No row passes.
    Never,
    /// Rows whose keys all pass their bounds (no keys: every row).
    Keys(Vec<(Key, KeyBound)>),
}

impl Bounds {
    fn all() -> Self {
        Bounds::Keys(vec![])
    }

    fn key(key: Key, bound: KeyBound) -> Self {
        Bounds::Keys(vec![(key, bound)])
    }

    /// What `expr` (over a scan of `width` columns) implies about its keys.
    fn of(expr: &Arc<dyn PhysicalExpr>, width: usize) -> Self {
        if let Some(literal) = expr.downcast_ref::<Literal>() {
            return match literal.value() {
                ScalarValue::Boolean(Some(true)) => Bounds::all(),
                ScalarValue::Boolean(_) => Bounds::Never,
                _ => Bounds::all(),
            };
        }
        if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
            return Self::of_binary(binary, width);
        }
        if let Some(in_list) = expr.downcast_ref::<InListExpr>() {
            return Self::of_in_list(in_list, width);
        }
        if let Some(is_null) = expr.downcast_ref::<IsNullExpr>()
            && let Some(key) = Key::of(is_null.arg(), width)
        {
            let mut bound = KeyBound::values([]);
            bound.nulls = true;
            return Bounds::key(key, bound);
        }
        if let Some(case) = expr.downcast_ref::<CaseExpr>() {
            // The value is one of the branches' (a missing ELSE is NULL, which no row passes).
            let branches = case
                .when_then_expr()
                .iter()
                .map(|(_, then)| Bounds::of(then, width));
            let otherwise = case
                .else_expr()
                .map_or(Bounds::Never, |e| Bounds::of(e, width));
            return branches.fold(otherwise, Bounds::or);
        }
        Bounds::all()
    }

    fn of_binary(binary: &BinaryExpr, width: usize) -> Self {
        let (left, right) = (binary.left(), binary.right());
        match binary.op() {
            Operator::And => return Self::of(left, width).and(Self::of(right, width)),
            Operator::Or => return Self::of(left, width).or(Self::of(right, width)),
            _ => {}
        }
        let (key, value, op) = match (
            Key::of(left, width),
            right.downcast_ref::<Literal>(),
            Key::of(right, width),
            left.downcast_ref::<Literal>(),
        ) {
            (Some(key), Some(value), _, _) => (key, value.value(), *binary.op()),
            (_, _, Some(key), Some(value)) => match binary.op().swap() {
                Some(op) => (key, value.value(), op),
                None => return Bounds::all(),
            },
            _ => return Bounds::all(),
        };
        if value.is_null() {
            // A comparison with NULL is never true.
            return match op {
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => Bounds::Never,
                _ => Bounds::all(),
            };
        }
        let bound = |low: Option<&ScalarValue>, high: Option<&ScalarValue>| KeyBound {
            low: low.cloned(),
            high: high.cloned(),
            values: None,
            nulls: false,
        };
        // Strict comparisons are weakened to inclusive ones.
        let bound = match op {
            Operator::Eq => KeyBound::values([value]),
            Operator::Gt | Operator::GtEq => bound(Some(value), None),
            Operator::Lt | Operator::LtEq => bound(None, Some(value)),
            _ => return Bounds::all(),
        };
        Bounds::key(key, bound)
    }

    fn of_in_list(in_list: &InListExpr, width: usize) -> Self {
        if in_list.negated() {
            return Bounds::all();
        }
        let Some(values) = in_list
            .list()
            .iter()
            .map(|e| e.downcast_ref::<Literal>().map(Literal::value))
            .collect::<Option<Vec<_>>>()
        else {
            return Bounds::all();
        };
        if let Some(key) = Key::of(in_list.expr(), width) {
            return Bounds::key(key, KeyBound::values(values));
        }
        // A multi-column key, `struct(a, b) IN (…)`: each column's values are a set it
        // must be in.
        let Some(function) = in_list.expr().downcast_ref::<ScalarFunctionExpr>() else {
            return Bounds::all();
        };
        if function.name() != "struct" {
            return Bounds::all();
        }
        let mut bounds = Bounds::all();
        for (i, arg) in function.args().iter().enumerate() {
            let Some(key) = Key::of(arg, width) else {
                continue;
            };
            let Some(fields) = values
                .iter()
                .map(|v| match v {
                    ScalarValue::Struct(s) if i < s.num_columns() => {
                        ScalarValue::try_from_array(s.column(i), 0).ok()
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            bounds = bounds.and(Bounds::key(key, KeyBound::values(&fields)));
        }
        bounds
    }

    fn and(self, other: Bounds) -> Bounds {
        let (Bounds::Keys(mut keys), Bounds::Keys(others)) = (self, other) else {
            return Bounds::Never;
        };
        for (key, bound) in others {
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) => *existing = existing.clone().and(bound),
                None => keys.push((key, bound)),
            }
        }
        let impossible = keys
            .iter()
            .any(|(_, b)| !b.nulls && b.values.as_ref().is_some_and(Vec::is_empty));
        if impossible {
            Bounds::Never
        } else {
            Bounds::Keys(keys)
        }
    }

    fn or(self, other: Bounds) -> Bounds {
        match (self, other) {
            (Bounds::Never, other) | (other, Bounds::Never) => other,
            (Bounds::Keys(keys), Bounds::Keys(mut others)) => Bounds::Keys(
                keys.into_iter()
                    .filter_map(|(key, bound)| {
                        let i = others.iter().position(|(k, _)| *k == key)?;
                        let (_, other) = others.swap_remove(i);
                        Some((key, bound.or(other)))
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_expr::expressions::{col as pcol, lit as plit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ])
    }

    fn bin(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    fn bounds_of(expr: Arc<dyn PhysicalExpr>) -> String {
        match Bounds::of(&expr, 2) {
            Bounds::Never => "never".into(),
            Bounds::Keys(keys) => keys
                .into_iter()
                .filter_map(|(k, b)| {
                    b.to_expr(Expr::Column(Column::new_unqualified(format!(
                        "k{}",
                        k.column
                    ))))
                })
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" AND "),
        }
    }

    #[test]
    fn a_collect_left_filter_becomes_its_in_list() {
        let s = schema();
        let a = pcol("a", &s).unwrap();
        let range = bin(
            bin(Arc::clone(&a), Operator::GtEq, plit(3i64)),
            Operator::And,
            bin(Arc::clone(&a), Operator::LtEq, plit(90i64)),
        );
        let list = Arc::new(
            InListExpr::try_new(
                Arc::clone(&a),
                vec![plit(3i64), plit(90i64), plit(17i64)],
                false,
                &s,
            )
            .unwrap(),
        );
        let expr = bin(range, Operator::And, list);
        assert_eq!(bounds_of(expr), "k0 IN ([Int64(3), Int64(90), Int64(17)])");
    }

    #[test]
    fn partitions_merge_into_one_list_and_unknown_parts_weaken_to_the_range() {
        let s = schema();
        let a = pcol("a", &s).unwrap();
        let part = |lo: i64, hi: i64, values: Option<Vec<i64>>| {
            let range = bin(
                bin(Arc::clone(&a), Operator::GtEq, plit(lo)),
                Operator::And,
                bin(Arc::clone(&a), Operator::LtEq, plit(hi)),
            );
            match values {
                Some(v) => bin(
                    range,
                    Operator::And,
                    Arc::new(
                        InListExpr::try_new(
                            Arc::clone(&a),
                            v.into_iter().map(plit).collect(),
                            false,
                            &s,
                        )
                        .unwrap(),
                    ),
                ),
                None => range,
            }
        };
        let case =
            |branches: Vec<Arc<dyn PhysicalExpr>>, otherwise: bool| -> Arc<dyn PhysicalExpr> {
                Arc::new(
                    CaseExpr::try_new(
                        Some(Arc::clone(&a)),
                        branches
                            .into_iter()
                            .enumerate()
                            .map(|(i, b)| (plit(i as i64), b))
                            .collect(),
                        Some(plit(otherwise)),
                    )
                    .unwrap(),
                )
            };
        let both = case(
            vec![
                part(1, 5, Some(vec![1, 5])),
                part(2, 9, Some(vec![2, 9, 5])),
            ],
            false,
        );
        assert_eq!(
            bounds_of(both),
            "k0 IN ([Int64(1), Int64(5), Int64(2), Int64(9)])"
        );
        let one_unlisted = case(vec![part(1, 5, Some(vec![1, 5])), part(2, 9, None)], false);
        assert_eq!(bounds_of(one_unlisted), "k0 >= Int64(1) AND k0 <= Int64(9)");
        // An ELSE that lets rows through leaves nothing to send.
        let open = case(vec![part(1, 5, Some(vec![1, 5]))], true);
        assert_eq!(bounds_of(open), "");
        // Only empty partitions: no row can match.
        assert_eq!(bounds_of(case(vec![plit(false)], false)), "never");
    }

    #[test]
    fn lists_past_the_cap_leave_the_range() {
        use datafusion::arrow::array::Int64Array;
        let s = schema();
        let a = pcol("a", &s).unwrap();
        // A build side's keys as DataFusion lists them: every row's, repeats included.
        let keys = |values: Vec<i64>| -> Arc<dyn PhysicalExpr> {
            let (lo, hi) = (values[0], values[values.len() - 1]);
            let list = InListExpr::try_new_from_array(
                Arc::clone(&a),
                Arc::new(Int64Array::from(values)),
                false,
                &s,
            )
            .unwrap();
            let range = bin(
                bin(Arc::clone(&a), Operator::GtEq, plit(lo)),
                Operator::And,
                bin(Arc::clone(&a), Operator::LtEq, plit(hi)),
            );
            bin(range, Operator::And, Arc::new(list))
        };
        let partitions = |parts: Vec<Arc<dyn PhysicalExpr>>| -> Arc<dyn PhysicalExpr> {
            let branches = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| (plit(i as i64), p))
                .collect();
            Arc::new(CaseExpr::try_new(Some(Arc::clone(&a)), branches, Some(plit(false))).unwrap())
        };
        // What is sent of key `a`: the number of values listed, or the range.
        let sent = |expr: Arc<dyn PhysicalExpr>| match Bounds::of(&expr, 2) {
            Bounds::Keys(keys) if keys.len() == 1 => {
                let bound = &keys[0].1;
                match &bound.values {
                    Some(values) => format!("{} values", values.len()),
                    None => format!("{:?}..={:?}", bound.low, bound.high),
                }
            }
            _ => "other".to_string(),
        };
        let max = MAX_IN_VALUES as i64;
        let twice: Vec<i64> = (1..=max).flat_map(|k| [k, k]).collect();
        assert_eq!(sent(keys(twice)), format!("{max} values"));
        assert_eq!(
            sent(keys((1..=max + 1).collect())),
            format!("Some(Int64({}))..=Some(Int64({}))", 1, max + 1)
        );
        let half = max / 2;
        let halves = partitions(vec![
            keys((1..=half).collect()),
            keys((half + 1..=max).collect()),
        ]);
        assert_eq!(sent(halves), format!("{max} values"));
        let over = partitions(vec![
            keys((1..=half + 1).collect()),
            keys((half + 1..=max).collect()),
        ]);
        assert_eq!(
            sent(over),
            format!("Some(Int64({}))..=Some(Int64({}))", 1, max)
        );
    }

    #[test]
    fn nulls_kept_by_the_filter_are_kept() {
        let s = schema();
        let a = pcol("a", &s).unwrap();
        let list: Arc<dyn PhysicalExpr> =
            Arc::new(InListExpr::try_new(Arc::clone(&a), vec![plit(1i64)], false, &s).unwrap());
        let expr = bin(
            Arc::new(IsNullExpr::new(Arc::clone(&a))),
            Operator::Or,
            list,
        );
        assert_eq!(bounds_of(expr), "k0 IN ([Int64(1)]) OR k0 IS NULL");
    }

    #[test]
    fn what_cannot_be_sent_is_dropped_not_changed() {
        let s = schema();
        let a = pcol("a", &s).unwrap();
        let b = pcol("b", &s).unwrap();
        // NOT IN, OR across keys, and comparisons between columns say nothing sendable.
        let not_in: Arc<dyn PhysicalExpr> =
            Arc::new(InListExpr::try_new(Arc::clone(&a), vec![plit(1i64)], true, &s).unwrap());
        assert_eq!(bounds_of(Arc::clone(&not_in)), "");
        let across = bin(
            bin(Arc::clone(&a), Operator::Eq, plit(1i64)),
            Operator::Or,
            bin(Arc::clone(&b), Operator::Eq, plit("x")),
        );
        assert_eq!(bounds_of(across), "");
        // ... but the other side of an AND still is.
        let mixed = bin(
            not_in,
            Operator::And,
            bin(Arc::clone(&b), Operator::Eq, plit("x")),
        );
        assert_eq!(bounds_of(mixed), "k1 IN ([Utf8(\"x\")])");
        // Disjoint values: nothing passes.
        let disjoint = bin(
            bin(Arc::clone(&a), Operator::Eq, plit(1i64)),
            Operator::And,
            bin(a, Operator::Eq, plit(2i64)),
        );
        assert_eq!(bounds_of(disjoint), "never");
    }

    #[test]
    fn long_lists_of_integers_become_one_array_and_others_stay_lists() {
        use datafusion::sql::unparser::dialect::PostgreSqlDialect;
        let written = |values: Vec<Expr>, negated: bool| {
            let key = Expr::Column(Column::new_unqualified("k"));
            let list = Expr::InList(InList::new(Box::new(key), values, negated));
            let mut sql = Unparser::new(&PostgreSqlDialect {})
                .expr_to_sql(&list)
                .unwrap();
            integer_arrays(&mut sql);
            sql.to_string()
        };
        let mut values: Vec<i64> = (1..ARRAY_FROM as i64).collect();
        values.extend([-7, i64::MIN, i64::MAX]);
        let expected: Vec<String> = values.iter().map(i64::to_string).collect();
        assert_eq!(
            written(values.iter().copied().map(lit).collect(), false),
            format!("\"k\" = ANY('{{{}}}'::BIGINT[])", expected.join(","))
        );
        assert_eq!(
            written(values.iter().map(|&v| lit(v as i32)).collect(), false),
            format!(
                "\"k\" = ANY('{{{}}}'::BIGINT[])",
                values
                    .iter()
                    .map(|&v| (v as i32).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        );
        let short = written((1..ARRAY_FROM as i64).map(lit).collect(), false);
        assert!(short.starts_with("\"k\" IN (1, 2, "), "{short}");
        let negated = written(values.iter().copied().map(lit).collect(), true);
        assert!(negated.starts_with("\"k\" NOT IN ("), "{negated}");
        let mut texts: Vec<Expr> = values.iter().copied().map(lit).collect();
        texts.push(lit("1"));
        assert!(written(texts, false).contains(" IN ("));
        let unsigned: Vec<Expr> = (0..ARRAY_FROM as u64)
            .map(|v| lit(v + u64::MAX / 2 + 1))
            .collect();
        assert!(written(unsigned, false).contains(" IN ("));
    }
}

//! Which expressions a SQL source evaluates exactly as DataFusion would.
//!
//! A predicate is pushed to a source only when the source's answer equals DataFusion's for
//! every input, including NULLs, collations, padding and rounding. Everything else stays in
//! DataFusion, and [`NotPushed`] says why (shown by `tributary explain`). Each connector
//! describes its source with [`PushdownRules`] and per-column [`ColumnTraits`]; the walk
//! over the expression is shared.

use std::fmt;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::expr::{InList, Like, ScalarFunction};
use datafusion::logical_expr::{
    Between, BinaryExpr, Cast, Expr, ExprSchemable, Operator, Subquery,
};

/// What a source's comparisons on one column mean, beyond its Arrow type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnTraits {
    /// The source compares these values differently from DataFusion comparing the Arrow
    /// values we return (blank-padded `char(n)`, case-insensitive text, values read
    /// through their text form, floats with `-0.0 = 0.0`): no comparison on it is pushed.
    pub opaque: bool,
    /// String ordering (`<`, `>`, `MIN`, `ORDER BY`) follows byte order as in DataFusion
    /// (a binary or `C` collation).
    pub bytewise_order: bool,
    /// String equality (`=`, grouping, joins, `LIKE`) follows a collation that equates
    /// different strings (case- or accent-insensitive, or ignoring trailing spaces): none
    /// of it is pushed, but for comparisons with literals where
    /// [`exact_as_bytes`](Self::exact_as_bytes) is set.
    pub collated: bool,
    /// The column's text is stored as UTF-8, so where the source's rules write string
    /// literals as binary strings ([`PushdownRules::exact_strings`]), comparing the
    /// column with literals compares its bytes, without padding, as DataFusion does:
    /// such comparisons are pushed whatever its collation.
    pub exact_as_bytes: bool,
}

/// What a source evaluates with DataFusion's semantics, beyond plain comparisons of
/// columns of their own types. One value per connector; each field has a test.
#[derive(Debug, Clone)]
pub struct PushdownRules {
    /// The source's name in messages (`PostgreSQL`).
    pub dialect_name: &'static str,
    /// Scalar functions, by DataFusion name, that the source computes identically.
    pub functions: &'static [&'static str],
    /// `LIKE` with `%`, `_` and backslash escapes, case-sensitively, as DataFusion does.
    pub like: bool,
    /// Integer `/` truncates toward zero and fails on division by zero, as DataFusion's
    /// does.
    pub integer_division: bool,
    /// `=` on strings compares bytes (deterministic collations); when false, string
    /// equality is not pushed.
    pub string_equality: bool,
    /// Strings that are not a column's (literals, `CASE`, concatenations) compare bytewise;
    /// when false they follow a connection collation, and string comparisons are pushed
    /// only between a column with a bytewise collation and literals.
    pub computed_strings_exact: bool,
    /// The dialect writes `NULLS FIRST` / `NULLS LAST`; when false, the source sorts NULLs
    /// as its lowest value and only orders agreeing with that are pushed.
    pub null_ordering: bool,
    /// `AVG` of decimals has DataFusion's scale and truncation.
    pub decimal_avg: bool,
    /// Types the dialect can `CAST` to (the unparser writes types some servers lack).
    pub cast_to: fn(&DataType) -> bool,
    /// The source joins large tables by hashing, so tables of it that a query names apart
    /// are regrouped to join there (`SameSourceJoinsFirst`). Where it joins by nested
    /// loops over indexes, a join of two large tables runs slower there than apart, with
    /// dynamic filters, and only joins with small tables are regrouped.
    pub hash_joins: bool,
    /// A long list of integer keys is written as one array literal, `k = ANY('{1,2,…}'::
    /// BIGINT[])`, which the source reads at once, instead of `k IN (1, 2, …)`, whose
    /// tens of thousands of constants cost PostgreSQL's parser and planner about 100 ms.
    pub integer_arrays: bool,
    /// The SQL writer makes MySQL's string comparisons exact, whatever the column's
    /// collation: string literals compared with a column become binary strings
    /// (`CAST('…' AS BINARY)`), which compare byte by byte, trailing spaces included
    /// (equality keeps the collated comparison beside it, `s = 'x' AND s = CAST('x' AS
    /// BINARY)`, which an index on the column answers). Comparisons of a column whose
    /// traits say [`exact_as_bytes`](ColumnTraits::exact_as_bytes) with literals are then
    /// pushed.
    pub exact_strings: bool,
}

/// Why an expression is evaluated by DataFusion instead of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPushed {
    /// A function the source does not have or computes differently.
    Function(String),
    /// The source's semantics differ for these operands.
    Semantics(String),
    /// A kind of expression the pushdown does not translate.
    Unsupported(String),
}

impl fmt::Display for NotPushed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPushed::Function(name) => write!(f, "unsupported function: {name}"),
            NotPushed::Semantics(what) => write!(f, "semantics differ: {what}"),
            NotPushed::Unsupported(what) => write!(f, "not translated: {what}"),
        }
    }
}

/// Checks that `expr` (over columns of `schema`, whose traits `traits` gives) is evaluated
/// by the source exactly as DataFusion would.
pub fn check_expr(
    expr: &Expr,
    schema: &DFSchema,
    rules: &PushdownRules,
    traits: &dyn Fn(&Column) -> ColumnTraits,
) -> Result<(), NotPushed> {
    Checker {
        schema,
        rules,
        traits,
        subquery: None,
    }
    .check(expr)
}

/// [`check_expr`] for an expression written into a sub-plan's query, where a scalar
/// subquery is pushed when `subquery` accepts it.
pub(crate) fn check_expr_with_subqueries(
    expr: &Expr,
    schema: &DFSchema,
    rules: &PushdownRules,
    traits: &dyn Fn(&Column) -> ColumnTraits,
    subquery: &SubqueryCheck<'_>,
) -> Result<(), NotPushed> {
    Checker {
        schema,
        rules,
        traits,
        subquery: Some(subquery),
    }
    .check(expr)
}

/// Decides whether a scalar subquery in an expression runs on the source too.
pub type SubqueryCheck<'a> = dyn Fn(&Subquery) -> Result<(), NotPushed> + 'a;

struct Checker<'a> {
    schema: &'a DFSchema,
    rules: &'a PushdownRules,
    traits: &'a dyn Fn(&Column) -> ColumnTraits,
    subquery: Option<&'a SubqueryCheck<'a>>,
}

impl Checker<'_> {
    fn check(&self, expr: &Expr) -> Result<(), NotPushed> {
        match expr {
            Expr::Column(_) | Expr::Literal(..) => Ok(()),
            Expr::ScalarSubquery(subquery) => match self.subquery {
                Some(accept) => accept(subquery),
                None => Err(NotPushed::Unsupported(describe(expr))),
            },
            Expr::Alias(a) => self.check(&a.expr),
            Expr::Not(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => self.check(e),
            Expr::Negative(e) => {
                match self.data_type(e) {
                    Some(t) if is_decimal(&t) => {}
                    Some(t) => {
                        return Err(NotPushed::Semantics(format!(
                            "negating {t} values (integer overflow wraps in DataFusion)"
                        )));
                    }
                    None => {
                        return Err(NotPushed::Unsupported("an operand of unknown type".into()));
                    }
                }
                self.check(e)
            }
            Expr::IsTrue(e)
            | Expr::IsFalse(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNotFalse(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotUnknown(e) => self.check(e),
            Expr::BinaryExpr(b) => self.binary(b),
            Expr::Between(Between {
                expr, low, high, ..
            }) => {
                self.comparable(expr, Operator::Lt)?;
                self.comparable(low, Operator::Lt)?;
                self.comparable(high, Operator::Lt)?;
                self.string_operands(&[expr, low, high])?;
                self.check(expr)?;
                self.check(low)?;
                self.check(high)
            }
            Expr::InList(InList { expr, list, .. }) => {
                self.comparable(expr, Operator::Eq)?;
                self.check(expr)?;
                for item in list {
                    self.comparable(item, Operator::Eq)?;
                    self.check(item)?;
                }
                let mut operands: Vec<&Expr> = vec![expr];
                operands.extend(list.iter());
                self.string_operands(&operands)?;
                Ok(())
            }
            Expr::Like(like) => self.like(like),
            Expr::SimilarTo(_) => Err(NotPushed::Semantics("SIMILAR TO patterns".into())),
            Expr::Cast(Cast { expr, field }) => {
                self.cast(expr, field.data_type())?;
                self.check(expr)
            }
            Expr::TryCast(_) => Err(NotPushed::Unsupported("TRY_CAST".into())),
            Expr::Case(case) => {
                if let Some(e) = &case.expr {
                    let mut operands: Vec<&Expr> = vec![e];
                    operands.extend(case.when_then_expr.iter().map(|(when, _)| when.as_ref()));
                    // `CASE s WHEN 'x'` compares without an operator the SQL writer sees.
                    if operands.iter().any(|o| self.is_collated(o)) {
                        return Err(NotPushed::Semantics(format!(
                            "`CASE` on a string compares under the collation in {}",
                            self.rules.dialect_name
                        )));
                    }
                    self.comparable(e, Operator::Eq)?;
                    self.string_operands(&operands)?;
                    self.check(e)?;
                }
                for (when, then) in &case.when_then_expr {
                    if case.expr.is_some() {
                        self.comparable(when, Operator::Eq)?;
                    }
                    self.check(when)?;
                    self.check(then)?;
                }
                match &case.else_expr {
                    Some(e) => self.check(e),
                    None => Ok(()),
                }
            }
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                let name = func.name();
                if !self.rules.functions.contains(&name) {
                    return Err(NotPushed::Function(format!(
                        "{name} is not known to compute the same in {}",
                        self.rules.dialect_name
                    )));
                }
                // The source's `substr` takes integer positions: a literal is written as one,
                // a bigint column would find no such function.
                if name == "substr" && !args.iter().skip(1).all(|a| matches!(a, Expr::Literal(..)))
                {
                    return Err(NotPushed::Unsupported(
                        "substr with positions that are not constants".into(),
                    ));
                }
                // `nullif` compares its arguments, under a collation the SQL writer does
                // not see there.
                if name == "nullif" && args.iter().any(|a| self.is_collated(a)) {
                    return Err(NotPushed::Semantics(format!(
                        "nullif compares strings under the collation in {}",
                        self.rules.dialect_name
                    )));
                }
                for arg in args {
                    self.check(arg)?;
                    if self.is_opaque(arg) {
                        return Err(NotPushed::Semantics(format!(
                            "{name} over a value {} represents differently",
                            self.rules.dialect_name
                        )));
                    }
                }
                Ok(())
            }
            other => Err(NotPushed::Unsupported(describe(other))),
        }
    }

    fn binary(&self, b: &BinaryExpr) -> Result<(), NotPushed> {
        use Operator::*;
        match b.op {
            And | Or => {}
            Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom => {
                self.comparable(&b.left, b.op)?;
                self.comparable(&b.right, b.op)?;
                self.string_operands(&[&b.left, &b.right])?;
            }
            Plus | Minus | Multiply => self.arithmetic(b)?,
            // Division by zero and overflow fail in both engines; `%` differs at
            // `MIN % -1` (an error in DataFusion).
            Divide => {
                let integral = self.data_type(&b.left).is_some_and(|t| t.is_integer())
                    && self.data_type(&b.right).is_some_and(|t| t.is_integer());
                if !(integral && self.rules.integer_division) {
                    return Err(NotPushed::Semantics(format!(
                        "`/` rounds differently in {}",
                        self.rules.dialect_name
                    )));
                }
            }
            StringConcat => {
                for side in [&b.left, &b.right] {
                    if self.is_opaque(side) {
                        return Err(NotPushed::Semantics(format!(
                            "concatenating a value {} represents differently",
                            self.rules.dialect_name
                        )));
                    }
                }
            }
            op => return Err(NotPushed::Unsupported(format!("operator `{op}`"))),
        }
        self.check(&b.left)?;
        self.check(&b.right)
    }

    /// Arithmetic is pushed on decimals (exact in both engines, overflow an error in
    /// both) and dates and times; integer overflow wraps silently in DataFusion but fails
    /// in the source, and float results depend on the order of operations.
    fn arithmetic(&self, b: &BinaryExpr) -> Result<(), NotPushed> {
        // A date or time moved by an interval; differences of two instants have
        // engine-specific types (days, intervals, digits).
        let shifted = [&b.left, &b.right]
            .iter()
            .any(|e| matches!(self.data_type(e), Some(DataType::Interval(_))));
        for side in [&b.left, &b.right] {
            match self.data_type(side) {
                Some(t) if is_decimal(&t) => {}
                Some(t)
                    if is_temporal(&t)
                        && shifted
                        && matches!(b.op, Operator::Plus | Operator::Minus) => {}
                Some(t) => {
                    return Err(NotPushed::Semantics(format!("`{}` on {t} values", b.op)));
                }
                None => return Err(NotPushed::Unsupported("an operand of unknown type".into())),
            }
        }
        Ok(())
    }

    /// Whether comparing `operand` with `op` gives DataFusion's answer.
    fn comparable(&self, operand: &Expr, op: Operator) -> Result<(), NotPushed> {
        let name = self.rules.dialect_name;
        if self.is_opaque(operand) {
            return Err(NotPushed::Semantics(format!(
                "comparing `{operand}`, whose values {name} compares differently"
            )));
        }
        let Some(t) = self.data_type(operand) else {
            return Err(NotPushed::Unsupported("an operand of unknown type".into()));
        };
        if matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64) {
            return Err(NotPushed::Semantics(format!(
                "comparing floats (-0.0 and NaN compare differently in {name})"
            )));
        }
        if is_string(&t) {
            let ordering = !matches!(
                op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::IsDistinctFrom
                    | Operator::IsNotDistinctFrom
            );
            if self.compared_as_bytes(operand) {
                return Ok(());
            }
            if !ordering && (!self.rules.string_equality || self.is_collated(operand)) {
                return Err(NotPushed::Semantics(format!(
                    "string equality follows the collation in {name}"
                )));
            }
            if ordering && !self.bytewise(operand) {
                return Err(NotPushed::Semantics(format!(
                    "string ordering follows the column's collation in {name}, not byte order"
                )));
            }
        }
        Ok(())
    }

    fn like(&self, like: &Like) -> Result<(), NotPushed> {
        if like.case_insensitive {
            return Err(NotPushed::Semantics(
                "ILIKE case folding differs outside ASCII".into(),
            ));
        }
        if !self.rules.like {
            return Err(NotPushed::Semantics(format!(
                "LIKE patterns behave differently in {}",
                self.rules.dialect_name
            )));
        }
        if like.escape_char.is_some_and(|c| c != '\\') {
            return Err(NotPushed::Semantics(
                "LIKE with an escape character other than `\\`".into(),
            ));
        }
        for side in [&like.expr, &like.pattern] {
            if self.is_opaque(side) {
                return Err(NotPushed::Semantics(format!(
                    "LIKE on `{side}`, whose values {} compares differently",
                    self.rules.dialect_name
                )));
            }
            if !self.rules.string_equality || self.is_collated(side) {
                return Err(NotPushed::Semantics("LIKE follows the collation".into()));
            }
        }
        self.check(&like.expr)?;
        self.check(&like.pattern)
    }

    /// Casts are pushed when the value is unchanged by the conversion in both engines:
    /// widening integers and decimals, and dates to timestamps.
    fn cast(&self, expr: &Expr, to: &DataType) -> Result<(), NotPushed> {
        let Some(from) = self.data_type(expr) else {
            return Err(NotPushed::Unsupported("a cast from an unknown type".into()));
        };
        if !(self.rules.cast_to)(to) {
            return Err(NotPushed::Unsupported(format!(
                "a cast to {to}, which {} has no type for",
                self.rules.dialect_name
            )));
        }
        if from == *to || (is_string(&from) && is_string(to)) {
            return Ok(());
        }
        let widening = match (&from, to) {
            (f, t) if f.is_integer() && t.is_integer() => {
                let (fs, ts) = (f.is_signed_integer(), t.is_signed_integer());
                (fs == ts && integer_width(f) <= integer_width(t))
                    || (!fs && ts && integer_width(f) < integer_width(t))
            }
            (f, DataType::Decimal128(p, s) | DataType::Decimal256(p, s)) if f.is_integer() => {
                (*p as i32 - *s as i32) >= integer_digits(f)
            }
            (
                DataType::Decimal128(p1, s1) | DataType::Decimal256(p1, s1),
                DataType::Decimal128(p2, s2) | DataType::Decimal256(p2, s2),
            ) => s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32),
            (DataType::Date32, DataType::Timestamp(_, None)) => true,
            _ => false,
        };
        if widening {
            Ok(())
        } else {
            Err(NotPushed::Semantics(format!(
                "casting {from} to {to} converts differently in {}",
                self.rules.dialect_name
            )))
        }
    }

    fn data_type(&self, expr: &Expr) -> Option<DataType> {
        expr.get_type(self.schema).ok()
    }

    /// An expression whose value the source represents differently: an opaque column, or
    /// anything computed from one.
    fn is_opaque(&self, expr: &Expr) -> bool {
        expr.column_refs().iter().any(|c| (self.traits)(c).opaque)
    }

    /// Where computed strings follow a connection collation, a string comparison is exact
    /// only between plain columns of bytewise collations and literals (a column's
    /// collation wins over a literal's).
    fn string_operands(&self, operands: &[&Expr]) -> Result<(), NotPushed> {
        if self.rules.computed_strings_exact
            || !operands
                .iter()
                .any(|e| self.data_type(e).is_some_and(|t| is_string(&t)))
        {
            return Ok(());
        }
        let mut columns = 0;
        let mut as_bytes = false;
        let mut cast_literal = false;
        for operand in operands {
            match strip(operand) {
                Expr::Literal(..) => cast_literal |= !matches!(operand, Expr::Literal(..)),
                Expr::Column(c) if !(self.traits)(c).collated => columns += 1,
                Expr::Column(_) if self.compared_as_bytes(operand) => {
                    columns += 1;
                    as_bytes = true;
                }
                _ => {
                    return Err(NotPushed::Semantics(format!(
                        "computed strings compare under the connection's collation in {}",
                        self.rules.dialect_name
                    )));
                }
            }
        }
        // Only literals, as they stand, are written as binary strings: a collated column
        // compared with another column, or with a cast literal, would still compare under
        // its collation.
        if as_bytes && (columns > 1 || cast_literal) {
            return Err(NotPushed::Semantics(format!(
                "columns compare under their collation in {}",
                self.rules.dialect_name
            )));
        }
        if columns > 0 {
            Ok(())
        } else {
            Err(NotPushed::Semantics(format!(
                "strings without a column compare under the connection's collation in {}",
                self.rules.dialect_name
            )))
        }
    }

    /// A column the source compares with literals by its bytes, as the SQL writer puts
    /// them ([`PushdownRules::exact_strings`]).
    fn compared_as_bytes(&self, expr: &Expr) -> bool {
        self.rules.exact_strings
            && matches!(strip(expr), Expr::Column(c) if (self.traits)(c).exact_as_bytes)
    }

    /// An expression over a column whose string equality follows a collation.
    fn is_collated(&self, expr: &Expr) -> bool {
        expr.column_refs().iter().any(|c| (self.traits)(c).collated)
    }

    /// Whether string ordering on `expr` is bytewise: literals are, columns when their
    /// collation is.
    fn bytewise(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Literal(..) => true,
            Expr::Column(c) => (self.traits)(c).bytewise_order,
            Expr::Cast(Cast { expr, .. })
            | Expr::Alias(datafusion::logical_expr::expr::Alias { expr, .. }) => {
                self.bytewise(expr)
            }
            _ => false,
        }
    }
}

/// `expr` without aliases and casts between string types.
fn strip(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip(&a.expr),
        Expr::Cast(Cast { expr: inner, field }) if is_string(field.data_type()) => strip(inner),
        other => other,
    }
}

fn describe(expr: &Expr) -> String {
    match expr {
        Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => "subqueries".into(),
        Expr::AggregateFunction(_) => "aggregate functions in a filter".into(),
        Expr::WindowFunction(_) => "window functions".into(),
        Expr::Placeholder(_) => "parameters".into(),
        other => format!("expression `{}`", other.variant_name()),
    }
}

pub(crate) fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

pub(crate) fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) | DataType::Interval(_)
    )
}

fn integer_width(t: &DataType) -> u32 {
    match t {
        DataType::Int8 | DataType::UInt8 => 8,
        DataType::Int16 | DataType::UInt16 => 16,
        DataType::Int32 | DataType::UInt32 => 32,
        _ => 64,
    }
}

fn integer_digits(t: &DataType) -> i32 {
    match t {
        DataType::Int8 | DataType::UInt8 => 3,
        DataType::Int16 | DataType::UInt16 => 5,
        DataType::Int32 | DataType::UInt32 => 10,
        DataType::Int64 => 19,
        _ => 20,
    }
}

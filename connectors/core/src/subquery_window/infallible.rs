//! Whether computing an expression can fail, whatever the values of its columns.
//!
//! A per-key subquery's value is computed by DataFusion for every key the subquery reads,
//! and by the window only for the keys of the outer rows. A value that can fail (`1 /
//! min(x)` with a key whose minimum is 0, a cast that overflows for a key the outer rows
//! lack) could fail a query DataFusion's way and not the window's, so the window is used
//! only for values that cannot fail.
//!
//! The check follows how DataFusion 55 computes, over arrow-arith's kernels: integer `+`,
//! `-`, `*` and negation wrap, but integer `/` and `%` fail on a zero divisor and on
//! `MIN / -1`; decimal `+`, `-`, `*`, `/` and `%` fail when the 128-bit value they compute
//! (the scaled operands, their sum or product, the scaled dividend) overflows; float
//! arithmetic never fails; casts fail (they are not `TRY_CAST`) when the value does not fit
//! the target. So it bounds the absolute value of every number the expression computes,
//! from the types of its columns and its constants, and accepts only operations that those
//! bounds keep from failing. Anything else (functions, temporal arithmetic, casts that
//! parse or narrow to types the bound does not cover) counts as able to fail.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, ExprSchemable, Operator, TryCast};

/// The largest value an `i128` (a `Decimal128`'s unscaled value) holds.
const I128_MAX: f64 = i128::MAX as f64;

/// Whether computing `expr` over rows of `schema` cannot fail, whatever the rows hold.
pub(super) fn cannot_fail(expr: &Expr, schema: &DFSchema) -> bool {
    bound(expr, schema).is_some()
}

/// The largest absolute value `expr` can take (infinite where unbounded, 0 for what is not
/// a number), or `None` if computing it can fail.
fn bound(expr: &Expr, schema: &DFSchema) -> Option<f64> {
    let data_type = expr.get_type(schema).ok()?;
    match expr {
        Expr::Column(_) | Expr::OuterReferenceColumn(..) => Some(largest(&data_type)),
        Expr::Literal(value, _) => Some(magnitude(value)),
        Expr::Alias(Alias { expr, .. }) => bound(expr, schema),
        Expr::TryCast(TryCast { expr, .. }) => {
            bound(expr, schema)?;
            Some(largest(&data_type))
        }
        Expr::Cast(Cast { expr, .. }) => {
            let from = expr.get_type(schema).ok()?;
            let value = bound(expr, schema)?;
            casts(&from, &data_type, value).then_some(value)
        }
        Expr::Negative(expr) => {
            let value = bound(expr, schema)?;
            is_number(&data_type).then_some(value)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (left_type, right_type) =
                (left.get_type(schema).ok()?, right.get_type(schema).ok()?);
            if !is_number(&left_type) || !is_number(&right_type) {
                return None;
            }
            let (l, r) = (bound(left, schema)?, bound(right, schema)?);
            let scale = |t: &DataType| match t {
                DataType::Decimal128(_, s) => i32::from(*s),
                _ => 0,
            };
            let decimal = matches!(data_type, DataType::Decimal128(..));
            match op {
                Operator::Plus | Operator::Minus => {
                    let value = l + r;
                    // Both operands are scaled to the result's scale, then added.
                    (!decimal || value * 10f64.powi(scale(&data_type)) < I128_MAX).then_some(value)
                }
                Operator::Multiply => {
                    let value = l * r;
                    // The unscaled operands are multiplied, whatever the result's scale.
                    let unscaled = value * 10f64.powi(scale(&left_type) + scale(&right_type));
                    (!decimal || unscaled < I128_MAX).then_some(value)
                }
                Operator::Divide | Operator::Modulo => {
                    let divisor = divisor(right, &right_type)?;
                    let value = if *op == Operator::Divide {
                        l / divisor
                    } else {
                        l.min(divisor)
                    };
                    // The dividend is scaled up to the result's scale plus the divisor's.
                    let scaled = l * 10f64
                        .powi(scale(&data_type).max(scale(&left_type)) + scale(&right_type));
                    (!decimal || scaled < I128_MAX).then_some(value)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The absolute value of a divisor that cannot fail a division: a constant (possibly
/// cast) other than NULL, zero, and for signed integers -1.
fn divisor(expr: &Expr, data_type: &DataType) -> Option<f64> {
    let value = match expr {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(Cast { expr, field }) => match expr.as_ref() {
            Expr::Literal(v, _) => v.cast_to(field.data_type()).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    let as_float = match value.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(f)) => f,
        _ => return None,
    };
    let minus_one = data_type.is_signed_integer() && as_float == -1.0;
    (as_float != 0.0 && as_float.is_finite() && !minus_one).then_some(as_float.abs())
}

/// Whether casting a value of `from` of at most `value` to `to` cannot fail.
fn casts(from: &DataType, to: &DataType, value: f64) -> bool {
    if from == to {
        return true;
    }
    let number = is_number(from);
    match to {
        t if t.is_string() => {
            number || from.is_temporal() || matches!(from, DataType::Boolean) || from.is_string()
        }
        DataType::Float32 | DataType::Float64 => number,
        t if t.is_integer() => {
            number && value <= largest(t) && (t.is_signed_integer() || from.is_unsigned_integer())
        }
        DataType::Decimal128(precision, scale) => {
            // Rounding to fewer fraction digits adds at most one unit of the last place.
            let room = 10f64.powi(i32::from(*precision) - i32::from(*scale));
            number && value + 10f64.powi(-i32::from(*scale)) < room
        }
        _ => false,
    }
}

/// The largest absolute value of `data_type` (infinite for floats, 0 for what is not a
/// number).
fn largest(data_type: &DataType) -> f64 {
    match data_type {
        DataType::Int8 => i8::MAX as f64,
        DataType::Int16 => i16::MAX as f64,
        DataType::Int32 => i32::MAX as f64,
        DataType::Int64 => i64::MAX as f64,
        DataType::UInt8 => u8::MAX as f64,
        DataType::UInt16 => u16::MAX as f64,
        DataType::UInt32 => u32::MAX as f64,
        DataType::UInt64 => u64::MAX as f64,
        DataType::Decimal128(precision, scale) => {
            10f64.powi(i32::from(*precision) - i32::from(*scale))
        }
        t if t.is_floating() => f64::INFINITY,
        _ => 0.0,
    }
}

/// The absolute value of a constant (0 for NULL and what is not a number).
fn magnitude(value: &ScalarValue) -> f64 {
    if value.is_null() || !is_number(&value.data_type()) {
        return 0.0;
    }
    match value.cast_to(&DataType::Float64) {
        Ok(ScalarValue::Float64(Some(f))) => f.abs(),
        _ => f64::INFINITY,
    }
}

/// Integers, floats and 128-bit decimals: the numbers the bound covers.
fn is_number(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(data_type, DataType::Decimal128(..))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::{cast, col, lit};

    use super::*;

    fn schema() -> DFSchema {
        let fields = vec![
            Field::new("d", DataType::Decimal128(19, 6), true),
            Field::new("wide", DataType::Decimal128(38, 10), true),
            Field::new("i", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", DataType::Date32, true),
        ];
        DFSchema::try_from(Arc::new(Schema::new(fields)).as_ref().clone()).unwrap()
    }

    fn decimal(v: i128, p: u8, s: i8) -> Expr {
        lit(ScalarValue::Decimal128(Some(v), p, s))
    }

    #[test]
    fn bounded_arithmetic_and_widening_casts_cannot_fail() {
        let schema = schema();
        let cases = [
            // q17: 0.2 * avg(l_quantity) as a float, compared as Decimal(30, 15).
            cast(
                lit(0.2) * cast(col("d"), DataType::Float64),
                DataType::Decimal128(30, 15),
            ),
            col("d") - decimal(1, 19, 6),
            col("d") / decimal(2, 19, 0),
            col("i") * lit(1000_i64) + lit(1_i64),
            col("i") / lit(7_i64),
            -col("i"),
            cast(col("d"), DataType::Utf8),
            cast(col("i"), DataType::Float64),
            cast(col("i"), DataType::Decimal128(38, 10)),
            Expr::TryCast(TryCast::new(Box::new(col("s")), DataType::Int64)),
            col("s"),
        ];
        for expr in cases {
            assert!(cannot_fail(&expr, &schema), "{expr}");
        }
    }

    #[test]
    fn divisions_by_values_overflows_and_parsing_casts_can_fail() {
        let schema = schema();
        let cases = [
            lit(1000_i64) / col("i"),
            col("i") % col("i"),
            col("i") / lit(0_i64),
            col("i") / lit(-1_i64),
            col("i") / lit(ScalarValue::Int64(None)),
            // A 38-digit decimal times anything may not fit 128 bits.
            col("wide") * decimal(2, 38, 10),
            col("wide") + col("wide"),
            cast(col("i"), DataType::Int32),
            cast(col("i"), DataType::UInt64),
            cast(col("d"), DataType::Decimal128(10, 6)),
            cast(col("s"), DataType::Int64),
            cast(col("s"), DataType::Date32),
            cast(
                lit(1e300) * cast(col("d"), DataType::Float64),
                DataType::Decimal128(38, 0),
            ),
            col("t") + col("t"),
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                datafusion::functions::math::abs(),
                vec![col("i")],
            )),
        ];
        for expr in cases {
            assert!(!cannot_fail(&expr, &schema), "{expr}");
        }
    }
}

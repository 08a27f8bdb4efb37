//! Filters sent to the API as query parameters.
//!
//! A parameter stands for a comparison (`updated_since` for `updated_at >= X`). It also
//! serves any filter it is looser than (`>=` serves `>`), since DataFusion checks every
//! pushed filter again (they are `Inexact`): the API's idea of the comparison (time
//! granularity, collation) need not be SQL's.

use arrow::temporal_conversions::timestamp_ns_to_datetime;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::config::{FilterOp, FilterParam, ValueFormat};

/// The query parameters that `filters` become, with the filters each serves.
pub fn params(mappings: &[FilterParam], filters: &[Expr]) -> Vec<(String, String)> {
    let mut chosen: Vec<(&FilterParam, ScalarValue)> = Vec::new();
    for filter in filters {
        let Some((mapping, value)) = serving(mappings, filter) else {
            continue;
        };
        match chosen.iter_mut().find(|(m, _)| m.param == mapping.param) {
            None => chosen.push((mapping, value)),
            // Two bounds on one parameter: the tighter one serves both.
            Some((m, current)) => {
                let tighter = match m.op {
                    FilterOp::Gt | FilterOp::GtEq => value > *current,
                    FilterOp::Lt | FilterOp::LtEq => value < *current,
                    FilterOp::Eq => false,
                };
                if tighter {
                    *current = value;
                }
            }
        }
    }
    chosen
        .into_iter()
        .filter_map(|(m, v)| Some((m.param.clone(), write(&v, m.format)?)))
        .collect()
}

/// Whether some parameter serves `filter`.
pub fn can_serve(mappings: &[FilterParam], filter: &Expr) -> bool {
    serving(mappings, filter).is_some()
}

/// The mapping serving `filter` (`column op literal`, either way round) and its value.
fn serving<'a>(
    mappings: &'a [FilterParam],
    filter: &Expr,
) -> Option<(&'a FilterParam, ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
        return None;
    };
    let (column, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
        _ => return None,
    };
    if value.is_null() {
        return None;
    }
    let mapping = mappings.iter().find(|m| {
        m.column == column.name
            && matches!(
                (m.op, op),
                (FilterOp::Eq, Operator::Eq)
                    | (FilterOp::Gt, Operator::Gt)
                    | (FilterOp::GtEq, Operator::Gt | Operator::GtEq)
                    | (FilterOp::Lt, Operator::Lt)
                    | (FilterOp::LtEq, Operator::Lt | Operator::LtEq)
            )
    })?;
    write(value, mapping.format)?;
    Some((mapping, value.clone()))
}

/// `value` as the API takes it; `None` for values the format cannot write.
fn write(value: &ScalarValue, format: ValueFormat) -> Option<String> {
    let nanos = timestamp_nanos(value);
    match format {
        ValueFormat::UnixSeconds => nanos.map(|n| n.div_euclid(1_000_000_000).to_string()),
        ValueFormat::UnixMillis => nanos.map(|n| n.div_euclid(1_000_000).to_string()),
        ValueFormat::Text => match value {
            ScalarValue::TimestampSecond(..)
            | ScalarValue::TimestampMillisecond(..)
            | ScalarValue::TimestampMicrosecond(..)
            | ScalarValue::TimestampNanosecond(..) => {
                let at = timestamp_ns_to_datetime(nanos?)?;
                Some(at.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
            }
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
            ScalarValue::Int8(_)
            | ScalarValue::Int16(_)
            | ScalarValue::Int32(_)
            | ScalarValue::Int64(_)
            | ScalarValue::UInt8(_)
            | ScalarValue::UInt16(_)
            | ScalarValue::UInt32(_)
            | ScalarValue::UInt64(_)
            | ScalarValue::Float32(_)
            | ScalarValue::Float64(_)
            | ScalarValue::Decimal128(..)
            | ScalarValue::Boolean(_)
            | ScalarValue::Date32(_) => Some(value.to_string()),
            _ => None,
        },
    }
}

/// A timestamp or date as nanoseconds since the epoch (UTC; a timestamp without time
/// zone is read as UTC).
fn timestamp_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::Date32(Some(days)) => i64::from(*days).checked_mul(86_400_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn mapping(column: &str, op: FilterOp, param: &str, format: ValueFormat) -> FilterParam {
        FilterParam {
            column: column.into(),
            op,
            param: param.into(),
            format,
        }
    }

    #[test]
    fn parameters_serve_the_filters_they_are_looser_than() {
        let mappings = vec![
            mapping("updated_at", FilterOp::GtEq, "since", ValueFormat::Text),
            mapping(
                "updated_at",
                FilterOp::Lt,
                "before",
                ValueFormat::UnixSeconds,
            ),
            mapping("status", FilterOp::Eq, "status", ValueFormat::Text),
        ];
        let at = |s: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(s * 1_000_000),
                Some("UTC".into()),
            ))
        };
        let filters = vec![
            col("updated_at").gt(at(1_700_000_000)),
            col("updated_at").gt_eq(at(1_700_000_100)),
            at(1_800_000_000).gt(col("updated_at")),
            col("updated_at").lt_eq(at(1_900_000_000)),
            lit("open").eq(col("status")),
            col("status").not_eq(lit("closed")),
        ];
        assert_eq!(
            params(&mappings, &filters),
            vec![
                ("since".to_string(), "2023-11-14T22:15:00Z".to_string()),
                ("before".to_string(), "1800000000".to_string()),
                ("status".to_string(), "open".to_string()),
            ]
        );
        assert!(!can_serve(&mappings, &col("updated_at").lt_eq(at(1))));
        assert!(!can_serve(&mappings, &col("status").not_eq(lit("x"))));
        assert!(can_serve(&mappings, &col("updated_at").gt(at(1))));
    }
}

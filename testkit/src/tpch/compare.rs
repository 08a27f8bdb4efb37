//! Comparing two answers to a query: rows in order when the query orders them, as multisets
//! otherwise; decimals exactly, floats to 1e-9 relative. A decimal compared with a float
//! (one engine averages decimals into decimals, the other into floats) may differ by one
//! unit in the decimal's last place, which is what rounding to that scale can do.

use std::cmp::Ordering;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// One cell, in a form both engines' types map to.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i128),
    Decimal { value: i128, scale: i8 },
    Float(f64),
    Text(String),
    Date(i32),
    Other(String),
}

const FLOAT_TOLERANCE: f64 = 1e-9;

impl Value {
    fn number(&self) -> Option<f64> {
        match *self {
            Value::Int(v) => Some(v as f64),
            Value::Decimal { value, scale } => Some(value as f64 / 10f64.powi(scale.into())),
            Value::Float(v) => Some(v),
            _ => None,
        }
    }

    /// The exact value as (unscaled, scale), for integers and decimals.
    fn exact(&self) -> Option<(i128, i8)> {
        match *self {
            Value::Int(v) => Some((v, 0)),
            Value::Decimal { value, scale } => Some((value, scale)),
            _ => None,
        }
    }

    fn same(&self, other: &Value) -> bool {
        if let (Some(a), Some(b)) = (self.exact(), other.exact()) {
            return exact_equal(a, b);
        }
        if let (Some(a), Some(b)) = (self.number(), other.number()) {
            let scale = match (self, other) {
                (Value::Decimal { scale, .. }, Value::Float(_))
                | (Value::Float(_), Value::Decimal { scale, .. }) => Some(*scale),
                _ => None,
            };
            let allowed = FLOAT_TOLERANCE * a.abs().max(b.abs())
                + scale.map_or(0.0, |s| 10f64.powi(-i32::from(s)));
            return (a - b).abs() <= allowed;
        }
        self == other
    }

    /// An order both answers are sorted by before an order-insensitive comparison: numbers
    /// by value whatever their type, then everything else by its text.
    fn order(&self, other: &Value) -> Ordering {
        let rank = |v: &Value| match v {
            Value::Null => 0,
            Value::Int(_) | Value::Decimal { .. } | Value::Float(_) => 1,
            Value::Date(_) => 2,
            Value::Text(_) => 3,
            Value::Other(_) => 4,
        };
        match (self, other) {
            (Value::Text(a), Value::Text(b)) | (Value::Other(a), Value::Other(b)) => a.cmp(b),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            _ => match (self.number(), other.number()) {
                (Some(a), Some(b)) => a.total_cmp(&b),
                _ => rank(self).cmp(&rank(other)),
            },
        }
    }
}

fn exact_equal((a, a_scale): (i128, i8), (b, b_scale): (i128, i8)) -> bool {
    let rescale = |v: i128, by: i8| v.checked_mul(10i128.checked_pow(by.unsigned_abs().into())?);
    match a_scale.cmp(&b_scale) {
        Ordering::Equal => a == b,
        Ordering::Less => rescale(a, b_scale - a_scale) == Some(b),
        Ordering::Greater => rescale(b, a_scale - b_scale) == Some(a),
    }
}

fn values(column: &dyn Array) -> Vec<Value> {
    macro_rules! ints {
        ($t:ty) => {
            column
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map_or(Value::Null, |v| Value::Int(v.into())))
                .collect()
        };
    }
    match column.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Decimal128(_, scale) => column
            .as_primitive::<Decimal128Type>()
            .iter()
            .map(|v| {
                v.map_or(Value::Null, |value| Value::Decimal {
                    value,
                    scale: *scale,
                })
            })
            .collect(),
        DataType::Float32 => column
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map_or(Value::Null, |v| Value::Float(v.into())))
            .collect(),
        DataType::Float64 => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Float))
            .collect(),
        DataType::Date32 => column
            .as_primitive::<Date32Type>()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Date))
            .collect(),
        DataType::Utf8 => texts(column.as_string::<i32>().iter()),
        DataType::LargeUtf8 => texts(column.as_string::<i64>().iter()),
        DataType::Utf8View => texts(column.as_string_view().iter()),
        _ => {
            let options = FormatOptions::default().with_null("NULL");
            let formatter = ArrayFormatter::try_new(column, &options).expect("a displayable type");
            (0..column.len())
                .map(|i| {
                    if column.is_null(i) {
                        Value::Null
                    } else {
                        Value::Other(formatter.value(i).to_string())
                    }
                })
                .collect()
        }
    }
}

fn texts<'a>(cells: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    cells
        .map(|v| v.map_or(Value::Null, |v| Value::Text(v.to_string())))
        .collect()
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<Vec<Value>> = batch.columns().iter().map(|c| values(c)).collect();
        for i in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c[i].clone()).collect());
        }
    }
    rows
}

fn sort(rows: &mut [Vec<Value>]) {
    rows.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.order(y))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
}

fn show(row: &[Value]) -> String {
    let cells: Vec<String> = row
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".to_string(),
            Value::Int(v) => v.to_string(),
            Value::Decimal { value, scale } => format!("{value}e-{scale}"),
            Value::Float(v) => v.to_string(),
            Value::Text(v) | Value::Other(v) => format!("{v:?}"),
            Value::Date(v) => format!("date {v}"),
        })
        .collect();
    format!("({})", cells.join(", "))
}

/// Whether `actual` answers the query as `expected` does; the error says where they first
/// differ. `ordered` when the query has an ORDER BY.
pub fn compare(
    expected: &[RecordBatch],
    actual: &[RecordBatch],
    ordered: bool,
) -> Result<(), String> {
    let width = |batches: &[RecordBatch]| batches.first().map(|b| b.num_columns());
    let (mut want, mut got) = (rows(expected), rows(actual));
    if want.len() != got.len() {
        return Err(format!(
            "{} rows, expected {}; first expected {}, first got {}",
            got.len(),
            want.len(),
            want.first().map_or("none".into(), |r| show(r)),
            got.first().map_or("none".into(), |r| show(r)),
        ));
    }
    if !want.is_empty() && width(expected) != width(actual) {
        return Err(format!(
            "{:?} columns, expected {:?}",
            width(actual),
            width(expected)
        ));
    }
    if !ordered {
        sort(&mut want);
        sort(&mut got);
    }
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if !w.iter().zip(g).all(|(a, b)| a.same(b)) {
            return Err(format!("row {i}: got {}, expected {}", show(g), show(w)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, Decimal128Array, Float64Array, StringArray, StringViewArray,
    };

    use super::*;

    #[test]
    fn decimals_are_exact_and_floats_are_close() {
        let dec = |value, scale| Value::Decimal { value, scale };
        assert!(dec(1050, 2).same(&dec(10500, 3)));
        assert!(!dec(1050, 2).same(&dec(10501, 3)));
        assert!(dec(4200, 2).same(&Value::Int(42)));
        assert!(Value::Float(1.0).same(&Value::Float(1.0 + 1e-12)));
        assert!(!Value::Float(1.0).same(&Value::Float(1.0 + 1e-6)));
        // An average rounded to six places against the float average.
        assert!(dec(25_522_005, 6).same(&Value::Float(25.522_005_853)));
        assert!(!dec(25_522_007, 6).same(&Value::Float(25.522_005_853)));
        assert!(!Value::Text("a".into()).same(&Value::Text("a ".into())));
        assert!(Value::Null.same(&Value::Null));
        assert!(!Value::Null.same(&Value::Int(0)));
    }

    fn batch(names: ArrayRef, amounts: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("name", names), ("amount", amounts)]).unwrap()
    }

    #[test]
    fn answers_compare_across_types_in_order_only_when_ordered() {
        let ours = batch(
            Arc::new(StringViewArray::from(vec![Some("b"), Some("a"), None])),
            Arc::new(
                Decimal128Array::from(vec![150, 1, 0])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        );
        let theirs = batch(
            Arc::new(StringArray::from(vec![None, Some("a"), Some("b")])),
            Arc::new(Float64Array::from(vec![0.0, 0.01, 1.5])),
        );
        let (theirs, ours) = ([theirs], [ours]);
        assert_eq!(compare(&theirs, &ours, false), Ok(()));
        let err = compare(&theirs, &ours, true).unwrap_err();
        assert!(err.starts_with("row 0:"), "{err}");
        let err = compare(&theirs, &[ours[0].slice(0, 2)], false).unwrap_err();
        assert!(err.starts_with("2 rows, expected 3"), "{err}");
        let off = batch(
            Arc::new(StringArray::from(vec![None, Some("a"), Some("b")])),
            Arc::new(Float64Array::from(vec![0.0, 0.01, 1.52])),
        );
        let err = compare(&[off], &ours, false).unwrap_err();
        assert!(err.contains("row 2"), "{err}");
    }
}

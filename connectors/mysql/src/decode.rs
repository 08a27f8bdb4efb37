//! Rows of MySQL's text protocol into Arrow builders: each cell's bytes are parsed
//! straight into the builder of the column's Arrow type.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    DurationMicrosecondBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder,
    Int32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
    UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::kernels::cast_utils::{Parser, parse_decimal};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;

/// A value the decoder could not read, with the column it was in.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Builds batches of `schema` from rows of cells.
pub struct BatchDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
    /// Zero dates (`0000-00-00`) and zero years read as NULL, per column.
    zeros: Vec<usize>,
}

impl BatchDecoder {
    /// A decoder for `schema`; `bit[i]` says whether result column `i` is a `BIT` column
    /// (sent as raw big-endian bytes rather than digits).
    pub fn new(schema: SchemaRef, bit: &[bool], capacity: usize) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                Column::new(
                    field.data_type(),
                    bit.get(i).copied().unwrap_or(false),
                    capacity,
                )
                .ok_or_else(|| {
                    DecodeError(format!(
                        "column `{}`: no decoder for Arrow type {}",
                        field.name(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let zeros = vec![0; columns.len()];
        Ok(BatchDecoder {
            schema,
            columns,
            rows: 0,
            zeros,
        })
    }

    /// Appends one row; `cell(i)` is column `i`'s bytes, `None` for NULL.
    pub fn append<'a>(&mut self, cell: impl Fn(usize) -> Option<&'a [u8]>) -> Result<()> {
        for (i, column) in self.columns.iter_mut().enumerate() {
            let value = cell(i);
            match column.append(value) {
                Ok(true) => {}
                Ok(false) => self.zeros[i] += 1,
                Err(e) => {
                    return Err(DecodeError(format!(
                        "column `{}`: {e} (value {:?})",
                        self.schema.field(i).name(),
                        value.map(String::from_utf8_lossy).unwrap_or_default()
                    )));
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows appended since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are waiting.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows appended so far, as a batch.
    pub fn flush(&mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(|e| DecodeError(e.to_string()))
    }

    /// Column names with how many zero dates or years they read as NULL.
    pub fn zeros(&self) -> Vec<(String, usize)> {
        self.zeros
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (self.schema.field(i).name().clone(), *n))
            .collect()
    }
}

enum Column {
    Bool(BooleanBuilder),
    BitBool(BooleanBuilder),
    Bits(UInt64Builder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal128(Decimal128Builder, u8, i8),
    Decimal256(Decimal256Builder, u8, i8),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Duration(DurationMicrosecondBuilder),
}

impl Column {
    fn new(data_type: &DataType, bit: bool, n: usize) -> Option<Column> {
        Some(match data_type {
            DataType::Boolean if bit => Column::BitBool(BooleanBuilder::with_capacity(n)),
            DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(n)),
            DataType::UInt64 if bit => Column::Bits(UInt64Builder::with_capacity(n)),
            DataType::Int8 => Column::Int8(Int8Builder::with_capacity(n)),
            DataType::Int16 => Column::Int16(Int16Builder::with_capacity(n)),
            DataType::Int32 => Column::Int32(Int32Builder::with_capacity(n)),
            DataType::Int64 => Column::Int64(Int64Builder::with_capacity(n)),
            DataType::UInt8 => Column::UInt8(UInt8Builder::with_capacity(n)),
            DataType::UInt16 => Column::UInt16(UInt16Builder::with_capacity(n)),
            DataType::UInt32 => Column::UInt32(UInt32Builder::with_capacity(n)),
            DataType::UInt64 => Column::UInt64(UInt64Builder::with_capacity(n)),
            DataType::Float32 => Column::Float32(Float32Builder::with_capacity(n)),
            DataType::Float64 => Column::Float64(Float64Builder::with_capacity(n)),
            DataType::Decimal128(p, s) => Column::Decimal128(
                Decimal128Builder::with_capacity(n)
                    .with_precision_and_scale(*p, *s)
                    .ok()?,
                *p,
                *s,
            ),
            DataType::Decimal256(p, s) => Column::Decimal256(
                Decimal256Builder::with_capacity(n)
                    .with_precision_and_scale(*p, *s)
                    .ok()?,
                *p,
                *s,
            ),
            DataType::Utf8 => Column::Text(StringBuilder::with_capacity(n, n * 16)),
            DataType::Binary => Column::Binary(BinaryBuilder::with_capacity(n, n * 16)),
            DataType::Date32 => Column::Date(Date32Builder::with_capacity(n)),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Column::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(tz.clone()),
            ),
            DataType::Duration(TimeUnit::Microsecond) => {
                Column::Duration(DurationMicrosecondBuilder::with_capacity(n))
            }
            _ => return None,
        })
    }

    /// Appends a value; `Ok(false)` when a zero date was read as NULL.
    fn append(&mut self, value: Option<&[u8]>) -> std::result::Result<bool, String> {
        let Some(v) = value else {
            self.append_null();
            return Ok(true);
        };
        match self {
            Column::Bool(b) => b.append_value(int::<i64>(v)? != 0),
            Column::BitBool(b) => b.append_value(bits(v)? != 0),
            Column::Bits(b) => b.append_value(bits(v)?),
            Column::Int8(b) => b.append_value(int(v)?),
            Column::Int16(b) => {
                // YEAR's zero value `0000`.
                let year: i16 = int(v)?;
                if year == 0 && v.len() == 4 {
                    b.append_null();
                    return Ok(false);
                }
                b.append_value(year)
            }
            Column::Int32(b) => b.append_value(int(v)?),
            Column::Int64(b) => b.append_value(int(v)?),
            Column::UInt8(b) => b.append_value(int(v)?),
            Column::UInt16(b) => b.append_value(int(v)?),
            Column::UInt32(b) => b.append_value(int(v)?),
            Column::UInt64(b) => b.append_value(int(v)?),
            Column::Float32(b) => b.append_value(float(v)?),
            Column::Float64(b) => b.append_value(float(v)?),
            Column::Decimal128(b, p, s) => {
                b.append_value(parse_decimal::<Decimal128Type>(text(v)?, *p, *s).map_err(arrow)?)
            }
            Column::Decimal256(b, p, s) => {
                b.append_value(parse_decimal::<Decimal256Type>(text(v)?, *p, *s).map_err(arrow)?)
            }
            Column::Text(b) => b.append_value(text(v)?),
            Column::Binary(b) => b.append_value(v),
            Column::Date(b) => match date(v)? {
                Some(days) => b.append_value(days),
                None => {
                    b.append_null();
                    return Ok(false);
                }
            },
            Column::Timestamp(b) => match timestamp(v)? {
                Some(micros) => b.append_value(micros),
                None => {
                    b.append_null();
                    return Ok(false);
                }
            },
            Column::Duration(b) => b.append_value(duration(v)?),
        }
        Ok(true)
    }

    fn append_null(&mut self) {
        match self {
            Column::Bool(b) | Column::BitBool(b) => b.append_null(),
            Column::Bits(b) | Column::UInt64(b) => b.append_null(),
            Column::Int8(b) => b.append_null(),
            Column::Int16(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::UInt8(b) => b.append_null(),
            Column::UInt16(b) => b.append_null(),
            Column::UInt32(b) => b.append_null(),
            Column::Float32(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Decimal128(b, ..) => b.append_null(),
            Column::Decimal256(b, ..) => b.append_null(),
            Column::Text(b) => b.append_null(),
            Column::Binary(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Timestamp(b) => b.append_null(),
            Column::Duration(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool(b) | Column::BitBool(b) => Arc::new(b.finish()),
            Column::Bits(b) | Column::UInt64(b) => Arc::new(b.finish()),
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Int16(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::UInt8(b) => Arc::new(b.finish()),
            Column::UInt16(b) => Arc::new(b.finish()),
            Column::UInt32(b) => Arc::new(b.finish()),
            Column::Float32(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Decimal128(b, ..) => Arc::new(b.finish()),
            Column::Decimal256(b, ..) => Arc::new(b.finish()),
            Column::Text(b) => Arc::new(b.finish()),
            Column::Binary(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => Arc::new(b.finish()),
            Column::Duration(b) => Arc::new(b.finish()),
        }
    }
}

fn arrow(e: ArrowError) -> String {
    e.to_string()
}

fn text(v: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| "not valid UTF-8".to_string())
}

/// An integer written in decimal digits, parsed without going through `str`.
fn int<T: TryFrom<i128>>(v: &[u8]) -> std::result::Result<T, String> {
    let (negative, digits) = match v.first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if digits.is_empty() || digits.len() > 20 {
        return Err("not an integer".into());
    }
    let mut n: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err("not an integer".into());
        }
        n = n * 10 + i128::from(d - b'0');
    }
    T::try_from(if negative { -n } else { n }).map_err(|_| "out of range".to_string())
}

fn float<T: std::str::FromStr>(v: &[u8]) -> std::result::Result<T, String> {
    text(v)?
        .parse()
        .map_err(|_| "not a floating-point number".to_string())
}

/// `BIT(n)` values arrive as ⌈n/8⌉ big-endian bytes.
fn bits(v: &[u8]) -> std::result::Result<u64, String> {
    if v.len() > 8 {
        return Err("more than 64 bits".into());
    }
    Ok(v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn digits(v: &[u8]) -> std::result::Result<u32, String> {
    let mut n = 0u32;
    for &d in v {
        if !d.is_ascii_digit() {
            return Err("malformed time".into());
        }
        n = n * 10 + u32::from(d - b'0');
    }
    Ok(n)
}

/// Whether a `DATE` or `DATETIME` text is a zero date or has a zero month or day (which
/// MySQL allows in some modes).
fn zero_date(v: &[u8]) -> bool {
    v.len() >= 10 && (&v[5..7] == b"00" || &v[8..10] == b"00")
}

/// `YYYY-MM-DD` as days since 1970-01-01; `None` for a zero date.
fn date(v: &[u8]) -> std::result::Result<Option<i32>, String> {
    if zero_date(v) {
        return Ok(None);
    }
    Date32Type::parse(text(v)?)
        .map(Some)
        .ok_or_else(|| "malformed date".to_string())
}

/// `YYYY-MM-DD hh:mm:ss[.ffffff]` as microseconds since the epoch; `None` for a zero date.
fn timestamp(v: &[u8]) -> std::result::Result<Option<i64>, String> {
    if zero_date(v) {
        return Ok(None);
    }
    TimestampMicrosecondType::parse(text(v)?)
        .map(Some)
        .ok_or_else(|| "malformed timestamp".to_string())
}

/// `[-]h…h:mm:ss[.ffffff]` (hours may exceed 24) as microseconds.
fn duration(v: &[u8]) -> std::result::Result<i64, String> {
    let (negative, rest) = match v.first() {
        Some(b'-') => (true, &v[1..]),
        _ => (false, v),
    };
    let colon = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or("malformed time")?;
    if rest.len() < colon + 6 || rest[colon + 3] != b':' {
        return Err("malformed time".into());
    }
    let hours = i64::from(digits(&rest[..colon])?);
    let minutes = i64::from(digits(&rest[colon + 1..colon + 3])?);
    let seconds = i64::from(digits(&rest[colon + 4..colon + 6])?);
    let micros =
        ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + fraction(&rest[colon + 6..])?;
    Ok(if negative { -micros } else { micros })
}

/// `.ffffff` (1 to 6 digits) as microseconds; empty is zero.
fn fraction(v: &[u8]) -> std::result::Result<i64, String> {
    match v {
        [] => Ok(0),
        [b'.', rest @ ..] if !rest.is_empty() && rest.len() <= 6 => {
            Ok(i64::from(digits(rest)?) * 10i64.pow(6 - rest.len() as u32))
        }
        _ => Err("malformed fraction of a second".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(date(b"1970-01-01"), Ok(Some(0)));
        assert_eq!(date(b"2000-03-01"), Ok(Some(11_017)));
        assert_eq!(date(b"0000-00-00"), Ok(None));
        assert_eq!(date(b"0001-01-01"), Ok(Some(-719_162)));
        assert_eq!(
            timestamp(b"1970-01-02 00:00:01.5"),
            Ok(Some(86_401_500_000))
        );
        assert_eq!(timestamp(b"0000-00-00 00:00:00"), Ok(None));
        assert_eq!(duration(b"-838:59:59.000000"), Ok(-3_020_399_000_000));
        assert_eq!(duration(b"25:00:00"), Ok(90_000_000_000));
        assert!(duration(b"12").is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(int::<u64>(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(int::<i64>(b"-9223372036854775808"), Ok(i64::MIN));
        assert!(int::<i8>(b"128").is_err());
        assert!(int::<i32>(b"1.5").is_err());
        assert_eq!(bits(&[0x01, 0x00]), Ok(256));
    }
}

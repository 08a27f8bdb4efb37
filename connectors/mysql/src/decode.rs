//! Rows of MySQL's binary (or, for some queries, text) protocol into Arrow builders: each
//! cell goes straight into the builder of the column's Arrow type. Binary cells (integers,
//! floats, dates, times) are taken as they are; cells sent as bytes (strings, decimals, BIT,
//! and every cell of the text protocol) are parsed from their bytes.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveTime};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    DurationMicrosecondBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder,
    Int32Builder, Int64Builder, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::kernels::cast_utils::{Parser, parse_decimal};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use mysql_async::Value;
use mysql_async::consts::ColumnType;

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
    /// A decoder for `schema`; `types[i]` is the MySQL type of result column `i`, which
    /// tells `BIT` (raw big-endian bytes) and `YEAR` (whose zero is NULL) apart.
    pub fn new(schema: SchemaRef, types: &[ColumnType], capacity: usize) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                Column::new(
                    field.data_type(),
                    types.get(i).copied().unwrap_or(ColumnType::MYSQL_TYPE_NULL),
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

    /// Appends one row; `cell(i)` is column `i`'s value.
    pub fn append<'a>(&mut self, cell: impl Fn(usize) -> &'a Value) -> Result<()> {
        for (i, column) in self.columns.iter_mut().enumerate() {
            let value = cell(i);
            match column.append(value) {
                Ok(true) => {}
                Ok(false) => self.zeros[i] += 1,
                Err(e) => {
                    return Err(DecodeError(format!(
                        "column `{}`: {e} (value {})",
                        self.schema.field(i).name(),
                        value.as_sql(true)
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
        // A scan of no columns (`count(*)` read apart) still has its rows.
        let rows = std::mem::take(&mut self.rows);
        let arrays = self
            .columns
            .iter_mut()
            .enumerate()
            .map(|(i, column)| {
                column.finish().map_err(|e| {
                    DecodeError(format!("column `{}`: {e}", self.schema.field(i).name()))
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)
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
    /// `YEAR`, whose zero value `0000` reads as NULL.
    Year(Int16Builder),
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
    /// Text, gathered as bytes and checked to be UTF-8 once per batch (much cheaper than
    /// value by value).
    Text(BinaryBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Duration(DurationMicrosecondBuilder),
}

impl Column {
    fn new(data_type: &DataType, mysql_type: ColumnType, n: usize) -> Option<Column> {
        let bit = mysql_type == ColumnType::MYSQL_TYPE_BIT;
        Some(match data_type {
            DataType::Boolean if bit => Column::BitBool(BooleanBuilder::with_capacity(n)),
            DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(n)),
            DataType::UInt64 if bit => Column::Bits(UInt64Builder::with_capacity(n)),
            DataType::Int8 => Column::Int8(Int8Builder::with_capacity(n)),
            DataType::Int16 if mysql_type == ColumnType::MYSQL_TYPE_YEAR => {
                Column::Year(Int16Builder::with_capacity(n))
            }
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
            DataType::Utf8 => Column::Text(BinaryBuilder::with_capacity(n, n * 16)),
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

    /// Appends a value; `Ok(false)` when a zero date or year was read as NULL.
    fn append(&mut self, v: &Value) -> std::result::Result<bool, String> {
        if *v == Value::NULL {
            self.append_null();
            return Ok(true);
        }
        match self {
            Column::Bool(b) => b.append_value(int::<i64>(v)? != 0),
            Column::BitBool(b) => b.append_value(bits(bytes(v)?)? != 0),
            Column::Bits(b) => b.append_value(bits(bytes(v)?)?),
            Column::Int8(b) => b.append_value(int(v)?),
            Column::Int16(b) => b.append_value(int(v)?),
            Column::Year(b) => match int(v)? {
                0 => {
                    b.append_null();
                    return Ok(false);
                }
                year => b.append_value(year),
            },
            Column::Int32(b) => b.append_value(int(v)?),
            Column::Int64(b) => b.append_value(int(v)?),
            Column::UInt8(b) => b.append_value(int(v)?),
            Column::UInt16(b) => b.append_value(int(v)?),
            Column::UInt32(b) => b.append_value(int(v)?),
            Column::UInt64(b) => b.append_value(int(v)?),
            Column::Float32(b) => b.append_value(match v {
                Value::Float(f) => *f,
                // Parsed as `f32` directly: through `f64` it could round twice.
                Value::Bytes(t) => text(t)?
                    .parse()
                    .map_err(|_| "not a floating-point number")?,
                _ => float(v)? as f32,
            }),
            Column::Float64(b) => b.append_value(float(v)?),
            Column::Decimal128(b, p, s) => b.append_value(
                parse_decimal::<Decimal128Type>(text(bytes(v)?)?, *p, *s).map_err(arrow)?,
            ),
            Column::Decimal256(b, p, s) => b.append_value(
                parse_decimal::<Decimal256Type>(text(bytes(v)?)?, *p, *s).map_err(arrow)?,
            ),
            Column::Text(b) => b.append_value(bytes(v)?),
            Column::Binary(b) => b.append_value(bytes(v)?),
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
            Column::Int16(b) | Column::Year(b) => b.append_null(),
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

    fn finish(&mut self) -> std::result::Result<ArrayRef, String> {
        Ok(match self {
            Column::Bool(b) | Column::BitBool(b) => Arc::new(b.finish()),
            Column::Bits(b) | Column::UInt64(b) => Arc::new(b.finish()),
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Int16(b) | Column::Year(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::UInt8(b) => Arc::new(b.finish()),
            Column::UInt16(b) => Arc::new(b.finish()),
            Column::UInt32(b) => Arc::new(b.finish()),
            Column::Float32(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Decimal128(b, ..) => Arc::new(b.finish()),
            Column::Decimal256(b, ..) => Arc::new(b.finish()),
            Column::Text(b) => {
                return StringArray::try_from_binary(b.finish())
                    .map(|a| Arc::new(a) as ArrayRef)
                    .map_err(|_| "not valid UTF-8".to_string());
            }
            Column::Binary(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => Arc::new(b.finish()),
            Column::Duration(b) => Arc::new(b.finish()),
        })
    }
}

fn arrow(e: ArrowError) -> String {
    e.to_string()
}

fn text(v: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| "not valid UTF-8".to_string())
}

/// The bytes of a value sent as bytes (strings, decimals, BIT, every text-protocol cell).
fn bytes(v: &Value) -> std::result::Result<&[u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err("a binary value where bytes were expected".into()),
    }
}

/// An integer, sent as one (binary protocol) or in decimal digits, parsed without going
/// through `str`.
fn int<T: TryFrom<i128>>(v: &Value) -> std::result::Result<T, String> {
    let n = match v {
        Value::Int(i) => i128::from(*i),
        Value::UInt(u) => i128::from(*u),
        Value::Bytes(b) => int_digits(b)?,
        _ => return Err("not an integer".into()),
    };
    T::try_from(n).map_err(|_| "out of range".to_string())
}

fn int_digits(v: &[u8]) -> std::result::Result<i128, String> {
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
    Ok(if negative { -n } else { n })
}

fn float(v: &Value) -> std::result::Result<f64, String> {
    match v {
        Value::Double(d) => Ok(*d),
        Value::Float(f) => Ok(f64::from(*f)),
        // Integers beyond 2^53 round, as DataFusion's casts do.
        Value::Int(i) => Ok(*i as f64),
        Value::UInt(u) => Ok(*u as f64),
        Value::Bytes(b) => text(b)?
            .parse()
            .map_err(|_| "not a floating-point number".to_string()),
        _ => Err("not a floating-point number".into()),
    }
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

/// A binary date (and time) as a calendar date; `None` for a zero date or one with a zero
/// month or day.
fn civil(year: u16, month: u8, day: u8) -> std::result::Result<Option<NaiveDate>, String> {
    if month == 0 || day == 0 {
        return Ok(None);
    }
    NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .map(Some)
        .ok_or_else(|| "malformed date".to_string())
}

/// A date as days since 1970-01-01; `None` for a zero date.
fn date(v: &Value) -> std::result::Result<Option<i32>, String> {
    match v {
        Value::Date(y, m, d, ..) => Ok(civil(*y, *m, *d)?.map(Date32Type::from_naive_date)),
        Value::Bytes(b) if zero_date(b) => Ok(None),
        Value::Bytes(b) => Date32Type::parse(text(b)?)
            .map(Some)
            .ok_or_else(|| "malformed date".to_string()),
        _ => Err("not a date".into()),
    }
}

/// A date and time as microseconds since the epoch; `None` for a zero date.
fn timestamp(v: &Value) -> std::result::Result<Option<i64>, String> {
    match v {
        Value::Date(y, mo, d, h, mi, s, us) => {
            let Some(day) = civil(*y, *mo, *d)? else {
                return Ok(None);
            };
            let time =
                NaiveTime::from_hms_micro_opt(u32::from(*h), u32::from(*mi), u32::from(*s), *us)
                    .ok_or("malformed time of day")?;
            Ok(Some(day.and_time(time).and_utc().timestamp_micros()))
        }
        Value::Bytes(b) if zero_date(b) => Ok(None),
        Value::Bytes(b) => TimestampMicrosecondType::parse(text(b)?)
            .map(Some)
            .ok_or_else(|| "malformed timestamp".to_string()),
        _ => Err("not a date and time".into()),
    }
}

/// A `TIME` (negative, or beyond 24 hours) as microseconds.
fn duration(v: &Value) -> std::result::Result<i64, String> {
    match v {
        Value::Time(negative, days, h, m, s, us) => {
            let micros = (((i64::from(*days) * 24 + i64::from(*h)) * 60 + i64::from(*m)) * 60
                + i64::from(*s))
                * 1_000_000
                + i64::from(*us);
            Ok(if *negative { -micros } else { micros })
        }
        Value::Bytes(b) => duration_text(b),
        _ => Err("not a time".into()),
    }
}

/// `[-]h…h:mm:ss[.ffffff]` (hours may exceed 24) as microseconds.
fn duration_text(v: &[u8]) -> std::result::Result<i64, String> {
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

    fn b(text: &str) -> Value {
        Value::Bytes(text.as_bytes().to_vec())
    }

    #[test]
    fn text_dates_and_times() {
        assert_eq!(date(&b("1970-01-01")), Ok(Some(0)));
        assert_eq!(date(&b("2000-03-01")), Ok(Some(11_017)));
        assert_eq!(date(&b("0000-00-00")), Ok(None));
        assert_eq!(date(&b("0001-01-01")), Ok(Some(-719_162)));
        assert_eq!(
            timestamp(&b("1970-01-02 00:00:01.5")),
            Ok(Some(86_401_500_000))
        );
        assert_eq!(timestamp(&b("0000-00-00 00:00:00")), Ok(None));
        assert_eq!(duration(&b("-838:59:59.000000")), Ok(-3_020_399_000_000));
        assert_eq!(duration(&b("25:00:00")), Ok(90_000_000_000));
        assert!(duration(&b("12")).is_err());
    }

    #[test]
    fn binary_dates_and_times() {
        assert_eq!(date(&Value::Date(2000, 3, 1, 0, 0, 0, 0)), Ok(Some(11_017)));
        assert_eq!(date(&Value::Date(0, 0, 0, 0, 0, 0, 0)), Ok(None));
        assert_eq!(date(&Value::Date(2020, 2, 0, 0, 0, 0, 0)), Ok(None));
        assert!(date(&Value::Date(2021, 2, 30, 0, 0, 0, 0)).is_err());
        assert_eq!(
            timestamp(&Value::Date(1970, 1, 2, 0, 0, 1, 500_000)),
            Ok(Some(86_401_500_000))
        );
        assert_eq!(
            timestamp(&Value::Date(1969, 12, 31, 23, 59, 59, 999_999)),
            Ok(Some(-1))
        );
        // -838:59:59 is 34 days and 22 hours.
        assert_eq!(
            duration(&Value::Time(true, 34, 22, 59, 59, 0)),
            Ok(-3_020_399_000_000)
        );
        assert_eq!(
            duration(&Value::Time(false, 1, 1, 0, 0, 7)),
            Ok(90_000_000_007)
        );
    }

    #[test]
    fn integers() {
        assert_eq!(int::<u64>(&b("18446744073709551615")), Ok(u64::MAX));
        assert_eq!(int::<i64>(&b("-9223372036854775808")), Ok(i64::MIN));
        assert!(int::<i8>(&b("128")).is_err());
        assert!(int::<i32>(&b("1.5")).is_err());
        assert_eq!(int::<u64>(&Value::UInt(u64::MAX)), Ok(u64::MAX));
        assert_eq!(int::<i8>(&Value::Int(-128)), Ok(-128));
        assert!(int::<u8>(&Value::Int(-1)).is_err());
        assert!(int::<i64>(&Value::Double(1.0)).is_err());
        assert_eq!(float(&Value::Float(1.5)), Ok(1.5));
        assert_eq!(float(&b("-2.25e3")), Ok(-2250.0));
        assert_eq!(bits(&[0x01, 0x00]), Ok(256));
    }
}

//! Decoding PostgreSQL's binary COPY format straight into Arrow builders.
//!
//! The stream is a header, then one tuple per row (a field count, then each field as a
//! length and its bytes, `-1` for NULL), then a trailer (field count `-1`). Tuples usually
//! arrive one per chunk; a tuple split across chunks is reassembled before it is decoded,
//! so a builder never sees half a row.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, ListArray, RecordBatch, RecordBatchOptions, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, IntervalMonthDayNano, SchemaRef, TimeUnit, i256,
};

use crate::types::{UNCONSTRAINED_NUMERIC, Wire};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A decoding failure, naming the column.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

fn malformed(what: &str) -> DecodeError {
    DecodeError(format!("malformed binary COPY data: {what}"))
}

/// Values that could not be represented and were read as NULL or rounded, counted per scan
/// so the caller can warn once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adjustments {
    /// `NaN`/`Infinity` numerics and infinite dates and timestamps, read as NULL.
    pub nulled: Vec<(String, u64)>,
    /// Numerics with more fraction digits than the column's scale, truncated.
    pub truncated: Vec<(String, u64)>,
}

/// Decodes a binary COPY stream into record batches of `schema`.
pub struct BatchDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    batch_size: usize,
    rows: usize,
    pending: BytesMut,
    header_done: bool,
    finished: bool,
}

struct Column {
    name: String,
    decoder: Decoder,
    /// Set when the decoded type differs from the schema's (e.g. a pushed-down `avg` that
    /// PostgreSQL computes as `numeric` and DataFusion types as `double`).
    target: Option<DataType>,
    nulled: u64,
    truncated: u64,
}

impl BatchDecoder {
    /// A decoder for rows whose columns travel as `wires`, producing batches of
    /// `batch_size` rows of `schema`.
    pub fn new(schema: SchemaRef, wires: &[Wire], batch_size: usize) -> Result<Self> {
        if wires.len() != schema.fields().len() {
            return Err(DecodeError(format!(
                "the query returns {} columns, {} were expected",
                wires.len(),
                schema.fields().len()
            )));
        }
        let columns = schema
            .fields()
            .iter()
            .zip(wires)
            .map(|(field, wire)| {
                let natural = natural_type(wire, field.data_type());
                let decoder = Decoder::new(wire, &natural, batch_size).ok_or_else(|| {
                    DecodeError(format!(
                        "column `{}`: cannot read {wire:?} as {natural}",
                        field.name()
                    ))
                })?;
                Ok(Column {
                    name: field.name().clone(),
                    decoder,
                    target: (natural != *field.data_type()).then(|| field.data_type().clone()),
                    nulled: 0,
                    truncated: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchDecoder {
            schema,
            columns,
            batch_size: batch_size.max(1),
            rows: 0,
            pending: BytesMut::new(),
            header_done: false,
            finished: false,
        })
    }

    /// Feeds one chunk of COPY data, appending each batch that fills up to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.pending.is_empty() {
            let used = self.decode_from(chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.decode_from(&pending, out)?;
            let mut rest = pending;
            rest.advance(used);
            self.pending = rest;
        }
        Ok(())
    }

    /// Ends the stream: the last, partly filled batch, if any rows are left.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if !self.pending.is_empty() {
            return Err(malformed("the stream ended inside a row"));
        }
        if !self.header_done {
            return Err(malformed("the stream ended before its header"));
        }
        if self.rows == 0 {
            return Ok(None);
        }
        self.flush().map(Some)
    }

    /// What had to be read as NULL or rounded so far.
    pub fn adjustments(&self) -> Adjustments {
        let pick = |f: fn(&Column) -> u64| {
            self.columns
                .iter()
                .filter(|c| f(c) > 0)
                .map(|c| (c.name.clone(), f(c)))
                .collect()
        };
        Adjustments {
            nulled: pick(|c| c.nulled),
            truncated: pick(|c| c.truncated),
        }
    }

    /// Decodes every whole tuple at the start of `data`; returns the bytes used.
    fn decode_from(&mut self, data: &[u8], out: &mut Vec<RecordBatch>) -> Result<usize> {
        let mut at = 0;
        if !self.header_done {
            match header_len(data)? {
                Some(n) => {
                    at = n;
                    self.header_done = true;
                }
                None => return Ok(0),
            }
        }
        while at < data.len() {
            if self.finished {
                return Err(malformed("data after the trailer"));
            }
            let Some(len) = tuple_len(&data[at..], self.columns.len())? else {
                break;
            };
            let tuple = &data[at..at + len];
            at += len;
            if tuple == [0xff, 0xff] {
                self.finished = true;
                continue;
            }
            self.decode_tuple(tuple)?;
            self.rows += 1;
            if self.rows == self.batch_size {
                out.push(self.flush()?);
            }
        }
        Ok(at)
    }

    fn decode_tuple(&mut self, tuple: &[u8]) -> Result<()> {
        let mut at = 2;
        for column in &mut self.columns {
            let len = i32::from_be_bytes(read4(tuple, at)?);
            at += 4;
            let value = if len < 0 {
                None
            } else {
                let end = at + len as usize;
                let bytes = &tuple[at..end];
                at = end;
                Some(bytes)
            };
            let outcome = column
                .decoder
                .append(value)
                .map_err(|e| DecodeError(format!("column `{}`: {}", column.name, e.0)))?;
            match outcome {
                Outcome::Exact => {}
                Outcome::Nulled => column.nulled += 1,
                Outcome::Truncated => column.truncated += 1,
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<RecordBatch> {
        // A scan of no columns (`count(*)` read apart) still has its rows.
        let rows = std::mem::take(&mut self.rows);
        let arrays = self
            .columns
            .iter_mut()
            .map(|c| {
                let array = c.decoder.finish();
                match &c.target {
                    Some(target) => cast(&array, target).map_err(|e| {
                        DecodeError(format!(
                            "column `{}`: cannot convert to {target}: {e}",
                            c.name
                        ))
                    }),
                    None => Ok(array),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)
            .map_err(|e| DecodeError(format!("cannot assemble a batch: {e}")))
    }
}

/// The length of the header at the start of `data`, once all of it has arrived.
fn header_len(data: &[u8]) -> Result<Option<usize>> {
    if data.len() < 19 {
        return Ok(None);
    }
    if &data[..11] != SIGNATURE {
        return Err(malformed("missing PGCOPY signature"));
    }
    let extension = u32::from_be_bytes(read4(data, 15)?) as usize;
    let total = 19 + extension;
    Ok((data.len() >= total).then_some(total))
}

/// The length of the tuple (or trailer) at the start of `data`, once all of it has arrived.
fn tuple_len(data: &[u8], columns: usize) -> Result<Option<usize>> {
    if data.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([data[0], data[1]]);
    if count == -1 {
        return Ok(Some(2));
    }
    if count as usize != columns {
        return Err(malformed(&format!(
            "a row has {count} fields, {columns} were expected"
        )));
    }
    let mut at = 2;
    for _ in 0..columns {
        if data.len() < at + 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes(read4(data, at)?);
        at += 4;
        if len > 0 {
            at += len as usize;
        } else if len < -1 {
            return Err(malformed("negative field length"));
        }
    }
    Ok((data.len() >= at).then_some(at))
}

fn read4(data: &[u8], at: usize) -> Result<[u8; 4]> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("truncated field"))
}

fn read8(data: &[u8], at: usize) -> Result<[u8; 8]> {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("truncated field"))
}

fn exact<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N]> {
    value
        .try_into()
        .map_err(|_| malformed(&format!("{what} of {} bytes", value.len())))
}

/// The Arrow type a wire format decodes to for a column of Arrow type `wanted`: the wanted
/// type where the decoder writes it directly, else the wire's own type (cast afterwards).
fn natural_type(wire: &Wire, wanted: &DataType) -> DataType {
    match (wire, wanted) {
        (Wire::Numeric, DataType::Decimal128(..) | DataType::Decimal256(..)) => wanted.clone(),
        (Wire::Numeric, _) => UNCONSTRAINED_NUMERIC,
        (Wire::Array(inner), DataType::List(field)) => DataType::List(
            field
                .as_ref()
                .clone()
                .with_data_type(natural_type(inner, field.data_type()))
                .into(),
        ),
        (Wire::Array(inner), _) => DataType::List(
            datafusion::arrow::datatypes::Field::new_list_field(
                natural_type(inner, &DataType::Null),
                true,
            )
            .into(),
        ),
        (Wire::Bool, _) => DataType::Boolean,
        (Wire::Int2, _) => DataType::Int16,
        (Wire::Int4, _) => DataType::Int32,
        (Wire::Int8 | Wire::Oid, _) => DataType::Int64,
        (Wire::Float4, _) => DataType::Float32,
        (Wire::Float8, _) => DataType::Float64,
        (Wire::Text | Wire::Jsonb | Wire::Char | Wire::Uuid, _) => DataType::Utf8,
        (Wire::Bytea, _) => DataType::Binary,
        (Wire::Date, _) => DataType::Date32,
        (Wire::Time, _) => DataType::Time64(TimeUnit::Microsecond),
        (Wire::Timestamp, _) => DataType::Timestamp(TimeUnit::Microsecond, None),
        (Wire::TimestampTz, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        (Wire::Interval, _) => {
            DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano)
        }
    }
}

/// What happened to one value.
enum Outcome {
    Exact,
    Nulled,
    Truncated,
}

/// Appends the values of one column to an Arrow builder.
enum Decoder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal128 {
        builder: Decimal128Builder,
        precision: u8,
        scale: i8,
    },
    Decimal256 {
        builder: Decimal256Builder,
        precision: u8,
        scale: i8,
    },
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Char(StringBuilder),
    Uuid(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        values: Box<Decoder>,
    },
}

impl Decoder {
    /// A decoder writing `wire` values as `arrow` (a type from [`natural_type`]).
    fn new(wire: &Wire, arrow: &DataType, capacity: usize) -> Option<Decoder> {
        Some(match (wire, arrow) {
            (Wire::Bool, _) => Decoder::Bool(BooleanBuilder::with_capacity(capacity)),
            (Wire::Int2, _) => Decoder::Int2(Int16Builder::with_capacity(capacity)),
            (Wire::Int4, _) => Decoder::Int4(Int32Builder::with_capacity(capacity)),
            (Wire::Int8, _) => Decoder::Int8(Int64Builder::with_capacity(capacity)),
            (Wire::Oid, _) => Decoder::Oid(Int64Builder::with_capacity(capacity)),
            (Wire::Float4, _) => Decoder::Float4(Float32Builder::with_capacity(capacity)),
            (Wire::Float8, _) => Decoder::Float8(Float64Builder::with_capacity(capacity)),
            (Wire::Numeric, DataType::Decimal128(precision, scale)) => Decoder::Decimal128 {
                builder: Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .ok()?,
                precision: *precision,
                scale: *scale,
            },
            (Wire::Numeric, DataType::Decimal256(precision, scale)) => Decoder::Decimal256 {
                builder: Decimal256Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .ok()?,
                precision: *precision,
                scale: *scale,
            },
            (Wire::Numeric, _) => return None,
            (Wire::Text, _) => Decoder::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            (Wire::Jsonb, _) => {
                Decoder::Jsonb(StringBuilder::with_capacity(capacity, capacity * 32))
            }
            (Wire::Char, _) => Decoder::Char(StringBuilder::with_capacity(capacity, capacity)),
            (Wire::Uuid, _) => Decoder::Uuid(StringBuilder::with_capacity(capacity, capacity * 36)),
            (Wire::Bytea, _) => {
                Decoder::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            (Wire::Date, _) => Decoder::Date(Date32Builder::with_capacity(capacity)),
            (Wire::Time, _) => Decoder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            (Wire::Timestamp, _) => {
                Decoder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            (Wire::TimestampTz, _) => Decoder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            (Wire::Interval, _) => {
                Decoder::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            (Wire::Array(inner), DataType::List(field)) => Decoder::List {
                field: Arc::clone(field),
                offsets: {
                    let mut offsets = Vec::with_capacity(capacity + 1);
                    offsets.push(0);
                    offsets
                },
                nulls: NullBufferBuilder::new(capacity),
                values: Box::new(Decoder::new(inner, field.data_type(), capacity)?),
            },
            (Wire::Array(_), _) => return None,
        })
    }

    fn append(&mut self, value: Option<&[u8]>) -> Result<Outcome> {
        let Some(v) = value else {
            self.append_null();
            return Ok(Outcome::Exact);
        };
        match self {
            Decoder::Bool(b) => b.append_value(exact::<1>(v, "bool")?[0] != 0),
            Decoder::Int2(b) => b.append_value(i16::from_be_bytes(exact(v, "int2")?)),
            Decoder::Int4(b) => b.append_value(i32::from_be_bytes(exact(v, "int4")?)),
            Decoder::Int8(b) => b.append_value(i64::from_be_bytes(exact(v, "int8")?)),
            Decoder::Oid(b) => b.append_value(i64::from(u32::from_be_bytes(exact(v, "oid")?))),
            Decoder::Float4(b) => b.append_value(f32::from_be_bytes(exact(v, "float4")?)),
            Decoder::Float8(b) => b.append_value(f64::from_be_bytes(exact(v, "float8")?)),
            Decoder::Decimal128 {
                builder,
                precision,
                scale,
            } => {
                return match numeric::<i128>(v, *precision, *scale)? {
                    Some((n, truncated)) => {
                        builder.append_value(n);
                        Ok(if truncated {
                            Outcome::Truncated
                        } else {
                            Outcome::Exact
                        })
                    }
                    None => {
                        builder.append_null();
                        Ok(Outcome::Nulled)
                    }
                };
            }
            Decoder::Decimal256 {
                builder,
                precision,
                scale,
            } => {
                return match numeric::<i256>(v, *precision, *scale)? {
                    Some((n, truncated)) => {
                        builder.append_value(n);
                        Ok(if truncated {
                            Outcome::Truncated
                        } else {
                            Outcome::Exact
                        })
                    }
                    None => {
                        builder.append_null();
                        Ok(Outcome::Nulled)
                    }
                };
            }
            Decoder::Text(b) => b.append_value(utf8(v)?),
            Decoder::Jsonb(b) => match v.split_first() {
                Some((1, json)) => b.append_value(utf8(json)?),
                _ => return Err(malformed("unknown jsonb version")),
            },
            Decoder::Char(b) => {
                let byte = exact::<1>(v, "\"char\"")?[0];
                if byte.is_ascii() {
                    b.append_value((byte as char).encode_utf8(&mut [0; 4]));
                } else {
                    // PostgreSQL shows a non-ASCII "char" byte as an octal escape.
                    b.append_value(format!("\\{byte:03o}"));
                }
            }
            Decoder::Uuid(b) => b.append_value(uuid_text(&exact::<16>(v, "uuid")?)),
            Decoder::Bytea(b) => b.append_value(v),
            Decoder::Date(b) => {
                let days = i32::from_be_bytes(exact(v, "date")?);
                match days.checked_add(PG_EPOCH_DAYS) {
                    Some(d) if days != i32::MAX && days != i32::MIN => b.append_value(d),
                    _ => {
                        b.append_null();
                        return Ok(Outcome::Nulled);
                    }
                }
            }
            Decoder::Time(b) => b.append_value(i64::from_be_bytes(exact(v, "time")?)),
            Decoder::Timestamp(b) => {
                let micros = i64::from_be_bytes(exact(v, "timestamp")?);
                match micros.checked_add(PG_EPOCH_MICROS) {
                    Some(t) if micros != i64::MAX && micros != i64::MIN => b.append_value(t),
                    _ => {
                        b.append_null();
                        return Ok(Outcome::Nulled);
                    }
                }
            }
            Decoder::Interval(b) => {
                let v: [u8; 16] = exact(v, "interval")?;
                let micros = i64::from_be_bytes(read8(&v, 0)?);
                let days = i32::from_be_bytes(read4(&v, 8)?);
                let months = i32::from_be_bytes(read4(&v, 12)?);
                let nanoseconds = micros
                    .checked_mul(1000)
                    .ok_or_else(|| DecodeError("interval too long for nanoseconds".into()))?;
                b.append_value(IntervalMonthDayNano::new(months, days, nanoseconds));
            }
            Decoder::List {
                offsets,
                nulls,
                values,
                ..
            } => {
                let mut outcome = Outcome::Exact;
                let count = array_elements(v, |element| {
                    match values.append(element)? {
                        Outcome::Exact => {}
                        other => outcome = other,
                    }
                    Ok(())
                })?;
                let last = *offsets.last().unwrap_or(&0);
                let next = i32::try_from(count)
                    .ok()
                    .and_then(|c| last.checked_add(c))
                    .ok_or_else(|| DecodeError("too many array elements in one batch".into()))?;
                offsets.push(next);
                nulls.append_non_null();
                return Ok(outcome);
            }
        }
        Ok(Outcome::Exact)
    }

    fn append_null(&mut self) {
        match self {
            Decoder::Bool(b) => b.append_null(),
            Decoder::Int2(b) => b.append_null(),
            Decoder::Int4(b) => b.append_null(),
            Decoder::Int8(b) | Decoder::Oid(b) => b.append_null(),
            Decoder::Float4(b) => b.append_null(),
            Decoder::Float8(b) => b.append_null(),
            Decoder::Decimal128 { builder, .. } => builder.append_null(),
            Decoder::Decimal256 { builder, .. } => builder.append_null(),
            Decoder::Text(b) | Decoder::Jsonb(b) | Decoder::Char(b) | Decoder::Uuid(b) => {
                b.append_null()
            }
            Decoder::Bytea(b) => b.append_null(),
            Decoder::Date(b) => b.append_null(),
            Decoder::Time(b) => b.append_null(),
            Decoder::Timestamp(b) => b.append_null(),
            Decoder::Interval(b) => b.append_null(),
            Decoder::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                nulls.append_null();
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Decoder::Bool(b) => Arc::new(b.finish()),
            Decoder::Int2(b) => Arc::new(b.finish()),
            Decoder::Int4(b) => Arc::new(b.finish()),
            Decoder::Int8(b) | Decoder::Oid(b) => Arc::new(b.finish()),
            Decoder::Float4(b) => Arc::new(b.finish()),
            Decoder::Float8(b) => Arc::new(b.finish()),
            Decoder::Decimal128 { builder, .. } => Arc::new(builder.finish()),
            Decoder::Decimal256 { builder, .. } => Arc::new(builder.finish()),
            Decoder::Text(b) | Decoder::Jsonb(b) | Decoder::Char(b) | Decoder::Uuid(b) => {
                Arc::new(b.finish())
            }
            Decoder::Bytea(b) => Arc::new(b.finish()),
            Decoder::Date(b) => Arc::new(b.finish()),
            Decoder::Time(b) => Arc::new(b.finish()),
            Decoder::Timestamp(b) => Arc::new(b.finish()),
            Decoder::Interval(b) => Arc::new(b.finish()),
            Decoder::List {
                field,
                offsets,
                nulls,
                values,
            } => {
                let values = values.finish();
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(
                    Arc::clone(field),
                    offsets,
                    values,
                    nulls.finish(),
                ))
            }
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        DecodeError(format!(
            "text is not valid UTF-8 ({e}); is the database encoding SQL_ASCII?"
        ))
    })
}

fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    out
}

/// Walks the elements of a binary array value (any number of dimensions, flattened in
/// row-major order); returns how many there were.
fn array_elements(v: &[u8], mut each: impl FnMut(Option<&[u8]>) -> Result<()>) -> Result<usize> {
    let dims = i32::from_be_bytes(read4(v, 0)?);
    if dims < 0 {
        return Err(malformed("negative array dimensions"));
    }
    let mut count: usize = if dims == 0 { 0 } else { 1 };
    let mut at = 12;
    for _ in 0..dims {
        let size = i32::from_be_bytes(read4(v, at)?);
        count = count
            .checked_mul(usize::try_from(size).map_err(|_| malformed("negative array size"))?)
            .ok_or_else(|| malformed("array too large"))?;
        at += 8;
    }
    for _ in 0..count {
        let len = i32::from_be_bytes(read4(v, at)?);
        at += 4;
        if len < 0 {
            each(None)?;
        } else {
            let end = at + len as usize;
            each(Some(
                v.get(at..end).ok_or_else(|| malformed("truncated array"))?,
            ))?;
            at = end;
        }
    }
    Ok(count)
}

/// Integer types a decimal column is stored in.
trait DecimalInt: Copy + PartialOrd {
    const ZERO: Self;
    fn from_i64(v: i64) -> Self;
    fn checked_mul(self, other: Self) -> Option<Self>;
    fn checked_add(self, other: Self) -> Option<Self>;
    fn div_rem(self, other: Self) -> (Self, Self);
    fn neg(self) -> Self;
    fn pow10(exp: u32) -> Option<Self>;
}

impl DecimalInt for i128 {
    const ZERO: Self = 0;

    fn from_i64(v: i64) -> Self {
        i128::from(v)
    }

    fn checked_mul(self, other: Self) -> Option<Self> {
        i128::checked_mul(self, other)
    }

    fn checked_add(self, other: Self) -> Option<Self> {
        i128::checked_add(self, other)
    }

    fn div_rem(self, other: Self) -> (Self, Self) {
        (self / other, self % other)
    }

    fn neg(self) -> Self {
        -self
    }

    fn pow10(exp: u32) -> Option<Self> {
        10i128.checked_pow(exp)
    }
}

impl DecimalInt for i256 {
    const ZERO: Self = i256::ZERO;

    fn from_i64(v: i64) -> Self {
        i256::from_i128(i128::from(v))
    }

    fn checked_mul(self, other: Self) -> Option<Self> {
        i256::checked_mul(self, other)
    }

    fn checked_add(self, other: Self) -> Option<Self> {
        i256::checked_add(self, other)
    }

    fn div_rem(self, other: Self) -> (Self, Self) {
        (self.wrapping_div(other), self.wrapping_rem(other))
    }

    fn neg(self) -> Self {
        self.wrapping_neg()
    }

    fn pow10(exp: u32) -> Option<Self> {
        i256::from_i128(10).checked_pow(exp)
    }
}

/// Decodes a binary `numeric` into an integer scaled by `10^scale`. Extra fraction digits
/// are truncated toward zero, as DataFusion truncates decimal averages, so a pushed-down
/// `avg` gives DataFusion's answer. `None` for NaN and infinities; the flag says whether
/// digits were cut.
fn numeric<T: DecimalInt>(v: &[u8], precision: u8, scale: i8) -> Result<Option<(T, bool)>> {
    if v.len() < 8 {
        return Err(malformed("numeric header"));
    }
    let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    if v.len() != 8 + 2 * ndigits {
        return Err(malformed("numeric length"));
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 | 0xD000 | 0xF000 => return Ok(None),
        _ => return Err(malformed("numeric sign")),
    }
    let out_of_range = || {
        DecodeError(format!(
            "a value does not fit decimal({precision}, {scale})"
        ))
    };
    // The base-10000 digits as one integer; it carries `frac_digits` decimal places.
    let base = T::from_i64(10_000);
    let mut n = T::ZERO;
    for i in 0..ndigits {
        let digit = u16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]);
        n = n
            .checked_mul(base)
            .and_then(|n| n.checked_add(T::from_i64(i64::from(digit))))
            .ok_or_else(out_of_range)?;
    }
    let frac_digits = 4 * (ndigits as i32 - 1 - weight);
    let shift = i32::from(scale) - frac_digits;
    let mut truncated = false;
    if shift >= 0 {
        let factor = T::pow10(shift as u32).ok_or_else(out_of_range)?;
        n = n.checked_mul(factor).ok_or_else(out_of_range)?;
    } else {
        match T::pow10((-shift) as u32) {
            Some(divisor) => {
                let (q, r) = n.div_rem(divisor);
                truncated = r > T::ZERO;
                n = q;
            }
            // The whole value is below the last digit the column keeps.
            None => {
                truncated = n > T::ZERO;
                n = T::ZERO;
            }
        }
    }
    let limit = T::pow10(u32::from(precision)).ok_or_else(out_of_range)?;
    if n >= limit {
        return Err(out_of_range());
    }
    if sign == 0x4000 {
        n = n.neg();
    }
    Ok(Some((n, truncated)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Field, Int32Type, Schema};

    /// Encodes a decimal string as PostgreSQL's binary numeric.
    fn pg_numeric(text: &str) -> Vec<u8> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, text),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        // Pad to whole base-10000 groups on both sides of the point.
        let int_pad = (4 - int.len() % 4) % 4;
        let frac_pad = (4 - frac.len() % 4) % 4;
        let all = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
        let groups: Vec<u16> = all
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let weight = ((int.len() + int_pad) / 4) as i16 - 1;
        let mut out = Vec::new();
        out.extend((groups.len() as u16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend((if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend((frac.len() as u16).to_be_bytes());
        for g in groups {
            out.extend(g.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_scale_and_truncate_like_datafusion() {
        let dec = |text: &str, p, s| numeric::<i128>(&pg_numeric(text), p, s).unwrap();
        assert_eq!(dec("123.45", 10, 2), Some((12345, false)));
        assert_eq!(dec("-123.45", 10, 2), Some((-12345, false)));
        assert_eq!(dec("123.45", 10, 4), Some((1234500, false)));
        assert_eq!(dec("0.005", 10, 2), Some((0, true)));
        assert_eq!(dec("-0.019", 10, 2), Some((-1, true)));
        assert_eq!(dec("0.0049", 10, 2), Some((0, true)));
        assert_eq!(dec("12345678.9", 10, 0), Some((12345678, true)));
        assert_eq!(dec("0", 5, 2), Some((0, false)));
        assert_eq!(dec("10000", 5, 0), Some((10000, false)));
        assert!(numeric::<i128>(&pg_numeric("100000"), 5, 0).is_err());
        assert_eq!(
            dec("99999999999999999999999999.9999999999", 38, 10),
            Some((999_999_999_999_999_999_999_999_999_999_999_999, false))
        );
        let big = numeric::<i256>(
            &pg_numeric("123456789012345678901234567890123456789012.59"),
            50,
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            big.0.to_string(),
            "1234567890123456789012345678901234567890125"
        );
        // NaN
        assert_eq!(
            numeric::<i128>(&[0, 0, 0, 0, 0xC0, 0, 0, 0], 10, 2).unwrap(),
            None
        );
    }

    fn copy_stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    Some(b) => {
                        out.extend((b.len() as i32).to_be_bytes());
                        out.extend(b);
                    }
                    None => out.extend((-1i32).to_be_bytes()),
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_split_anywhere_decode_the_same() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("t", DataType::Utf8, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]));
        let wires = [Wire::Int4, Wire::Text, Wire::Numeric];
        let rows: Vec<Vec<Option<Vec<u8>>>> = (0..7)
            .map(|i: i32| {
                vec![
                    Some(i.to_be_bytes().to_vec()),
                    (i % 3 != 0).then(|| format!("row {i} ✓").into_bytes()),
                    Some(pg_numeric(&format!("{i}.5"))),
                ]
            })
            .collect();
        let stream = copy_stream(&rows);
        for chunk_size in [1, 2, 3, 7, 19, 64, stream.len()] {
            let mut decoder = BatchDecoder::new(schema.clone(), &wires, 3).unwrap();
            let mut batches = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                decoder.push(chunk, &mut batches).unwrap();
            }
            batches.extend(decoder.finish().unwrap());
            assert_eq!(
                batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
                [3, 3, 1]
            );
            let ints: Vec<i32> = batches
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
                .collect();
            assert_eq!(ints, (0..7).collect::<Vec<_>>());
            let second = &batches[0];
            assert!(second.column(1).is_null(0));
            assert_eq!(second.column(1).as_string::<i32>().value(1), "row 1 ✓");
            assert_eq!(
                second.column(2).as_primitive::<Decimal128Type>().value(2),
                250
            );
        }
    }

    #[test]
    fn arrays_and_special_values() {
        let list = DataType::List(Field::new_list_field(DataType::Int32, true).into());
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", list, true),
            Field::new("u", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
        ]));
        let wires = [
            Wire::Array(Box::new(Wire::Int4)),
            Wire::Uuid,
            Wire::TimestampTz,
            Wire::Date,
        ];
        // int4[] {1,NULL,3} as a 1-dimensional array
        let mut array = Vec::new();
        array.extend(1i32.to_be_bytes()); // dims
        array.extend(1i32.to_be_bytes()); // has nulls
        array.extend(23u32.to_be_bytes()); // element type
        array.extend(3i32.to_be_bytes()); // size
        array.extend(1i32.to_be_bytes()); // lower bound
        for v in [Some(1i32), None, Some(3)] {
            match v {
                Some(v) => {
                    array.extend(4i32.to_be_bytes());
                    array.extend(v.to_be_bytes());
                }
                None => array.extend((-1i32).to_be_bytes()),
            }
        }
        let uuid: Vec<u8> = (0u8..16).collect();
        let rows = vec![
            vec![
                Some(array),
                Some(uuid),
                Some(0i64.to_be_bytes().to_vec()),
                Some(0i32.to_be_bytes().to_vec()),
            ],
            vec![
                None,
                None,
                Some(i64::MAX.to_be_bytes().to_vec()),
                Some(i32::MIN.to_be_bytes().to_vec()),
            ],
        ];
        let mut decoder = BatchDecoder::new(schema, &wires, 10).unwrap();
        let mut batches = Vec::new();
        decoder.push(&copy_stream(&rows), &mut batches).unwrap();
        let batch = decoder.finish().unwrap().unwrap();
        let lists = batch.column(0).as_list::<i32>();
        assert_eq!(
            lists
                .value(0)
                .as_primitive::<Int32Type>()
                .iter()
                .collect::<Vec<_>>(),
            [Some(1), None, Some(3)]
        );
        assert!(lists.is_null(1));
        assert_eq!(
            batch.column(1).as_string::<i32>().value(0),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        let ts = batch
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(ts.value(0), PG_EPOCH_MICROS);
        assert!(ts.is_null(1));
        assert!(batch.column(3).is_null(1));
        assert_eq!(
            decoder.adjustments().nulled,
            vec![("ts".to_string(), 1), ("d".to_string(), 1)]
        );
    }

    #[test]
    fn bad_streams_are_errors_not_panics() {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int32, true)]));
        let mut decoder = BatchDecoder::new(schema.clone(), &[Wire::Int4], 10).unwrap();
        assert!(
            decoder
                .push(b"NOTPGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0", &mut Vec::new())
                .is_err()
        );
        let mut decoder = BatchDecoder::new(schema.clone(), &[Wire::Int4], 10).unwrap();
        let stream = copy_stream(&[vec![Some(vec![1, 2])]]);
        let e = decoder.push(&stream, &mut Vec::new()).unwrap_err();
        assert!(e.0.contains("column `i`"), "{e}");
        let mut decoder = BatchDecoder::new(schema, &[Wire::Int4], 10).unwrap();
        let stream = copy_stream(&[vec![Some(vec![0, 0, 0, 1])]]);
        decoder
            .push(&stream[..stream.len() - 3], &mut Vec::new())
            .unwrap();
        assert!(decoder.finish().is_err());
    }
}

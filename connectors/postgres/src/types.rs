//! PostgreSQL types to Arrow: the one place that decides how each type is represented and
//! how its values travel in binary COPY.

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use tokio_postgres::types::{Kind, Type};

/// How the values of a column are read from binary COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// `bool`.
    Bool,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `oid` (unsigned 32-bit).
    Oid,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `numeric`, into the Arrow decimal type of the column.
    Numeric,
    /// UTF-8 text as is: `text`, `varchar`, `bpchar`, `name`, `json`, enum labels, and text
    /// casts of everything we do not decode natively.
    Text,
    /// `jsonb`: a version byte, then text.
    Jsonb,
    /// `bytea`.
    Bytea,
    /// `"char"`: one byte.
    Char,
    /// `date`: days since 2000-01-01.
    Date,
    /// `time`: microseconds since midnight.
    Time,
    /// `timestamp`: microseconds since 2000-01-01 00:00.
    Timestamp,
    /// `timestamptz`: microseconds since 2000-01-01 00:00 UTC.
    TimestampTz,
    /// `interval`: microseconds, days, months.
    Interval,
    /// `uuid`: 16 bytes, shown in its usual hyphenated form.
    Uuid,
    /// An array of the inner wire type (multi-dimensional arrays are flattened).
    Array(Box<Wire>),
}

/// How a column is represented in Arrow and read from PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The Arrow type of the column.
    pub arrow: DataType,
    /// How values are decoded; `None` means the query casts the column to `text` (or
    /// `text[]`), which is read as [`Wire::Text`].
    pub wire: Option<Wire>,
    /// Set when PostgreSQL's semantics for this type differ from DataFusion's for the
    /// Arrow type it becomes (case-insensitive text, blank-padded `char(n)`, values shown
    /// through their text form), so comparisons on it are never pushed down.
    pub opaque: bool,
    /// Set for types read as text only because they have no Arrow counterpart (as opposed
    /// to types whose text form is their natural representation, like `inet`).
    pub unknown: bool,
}

impl Mapping {
    fn native(arrow: DataType, wire: Wire) -> Self {
        Mapping {
            arrow,
            wire: Some(wire),
            opaque: false,
            unknown: false,
        }
    }

    fn as_text() -> Self {
        Mapping {
            arrow: DataType::Utf8,
            wire: None,
            opaque: true,
            unknown: false,
        }
    }

    fn unknown() -> Self {
        Mapping {
            unknown: true,
            ..Mapping::as_text()
        }
    }

    fn opaque(mut self) -> Self {
        self.opaque = true;
        self
    }
}

/// Arrow type of unconstrained `numeric` (no precision given): 28 integer and 10 fraction
/// digits; further fraction digits are truncated. Such columns are opaque: a filter on
/// them would see the server's exact values, DataFusion the truncated ones.
pub const UNCONSTRAINED_NUMERIC: DataType = DataType::Decimal128(38, 10);

/// The Arrow type and wire format for a PostgreSQL type. `typmod` is the column's type
/// modifier (`-1` when unknown), which carries `numeric` precision and scale.
pub fn map_type(ty: &Type, typmod: i32) -> Mapping {
    match ty.kind() {
        Kind::Domain(base) => return map_type(base, typmod),
        Kind::Enum(_) => return Mapping::native(DataType::Utf8, Wire::Text).opaque(),
        Kind::Array(element) => {
            let inner = map_type(element, typmod);
            let arrow = DataType::List(Field::new_list_field(inner.arrow.clone(), true).into());
            return match inner.wire {
                Some(wire) => Mapping {
                    arrow,
                    wire: Some(Wire::Array(Box::new(wire))),
                    opaque: true,
                    unknown: inner.unknown,
                },
                None => Mapping {
                    arrow,
                    wire: None,
                    opaque: true,
                    unknown: inner.unknown,
                },
            };
        }
        Kind::Simple => {}
        _ => return Mapping::unknown(),
    }
    match *ty {
        Type::BOOL => Mapping::native(DataType::Boolean, Wire::Bool),
        Type::INT2 => Mapping::native(DataType::Int16, Wire::Int2),
        Type::INT4 => Mapping::native(DataType::Int32, Wire::Int4),
        Type::INT8 => Mapping::native(DataType::Int64, Wire::Int8),
        // An oid compares as an unsigned 32-bit number and takes a negative integer modulo
        // 2^32 (`oid = -1` holds for 4294967295), so its comparisons stay in DataFusion.
        Type::OID => Mapping::native(DataType::Int64, Wire::Oid).opaque(),
        // Floats compare differently (-0.0 and 0.0 are equal in PostgreSQL, ordered in
        // DataFusion); the pushdown rules keep comparisons of floats in DataFusion.
        Type::FLOAT4 => Mapping::native(DataType::Float32, Wire::Float4),
        Type::FLOAT8 => Mapping::native(DataType::Float64, Wire::Float8),
        Type::NUMERIC => {
            let arrow = numeric_type(typmod);
            let exact = arrow != UNCONSTRAINED_NUMERIC || typmod == (38 << 16 | 10) + 4;
            let mapping = Mapping::native(arrow, Wire::Numeric);
            if exact { mapping } else { mapping.opaque() }
        }
        Type::TEXT | Type::VARCHAR | Type::NAME => Mapping::native(DataType::Utf8, Wire::Text),
        // char(n) compares ignoring trailing blanks in PostgreSQL; values arrive padded.
        Type::BPCHAR => Mapping::native(DataType::Utf8, Wire::Text).opaque(),
        Type::CHAR => Mapping::native(DataType::Utf8, Wire::Char).opaque(),
        Type::JSON => Mapping::native(DataType::Utf8, Wire::Text).opaque(),
        Type::JSONB => Mapping::native(DataType::Utf8, Wire::Jsonb).opaque(),
        Type::BYTEA => Mapping::native(DataType::Binary, Wire::Bytea),
        Type::DATE => Mapping::native(DataType::Date32, Wire::Date),
        Type::TIME => Mapping::native(DataType::Time64(TimeUnit::Microsecond), Wire::Time),
        Type::TIMESTAMP => Mapping::native(
            DataType::Timestamp(TimeUnit::Microsecond, None),
            Wire::Timestamp,
        ),
        Type::TIMESTAMPTZ => Mapping::native(
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Wire::TimestampTz,
        ),
        Type::INTERVAL => Mapping::native(
            DataType::Interval(IntervalUnit::MonthDayNano),
            Wire::Interval,
        )
        .opaque(),
        Type::UUID => Mapping::native(DataType::Utf8, Wire::Uuid).opaque(),
        _ if ty.name() == "citext" => Mapping::native(DataType::Utf8, Wire::Text).opaque(),
        // Types whose text form is how they are shown everywhere.
        Type::MONEY
        | Type::INET
        | Type::CIDR
        | Type::MACADDR
        | Type::MACADDR8
        | Type::TIMETZ
        | Type::XML
        | Type::BIT
        | Type::VARBIT
        | Type::TS_VECTOR
        | Type::TSQUERY
        | Type::PG_LSN => Mapping::as_text(),
        // Everything else (geometric types, ranges, composites, …) too, with a warning.
        _ => Mapping::unknown(),
    }
}

/// `numeric(p, s)` as a decimal: Decimal128 up to 38 digits, Decimal256 up to 76; wider or
/// unconstrained columns get [`UNCONSTRAINED_NUMERIC`].
fn numeric_type(typmod: i32) -> DataType {
    if typmod < 4 {
        return UNCONSTRAINED_NUMERIC;
    }
    let packed = typmod - 4;
    let precision = (packed >> 16) & 0xffff;
    // The scale is an 11-bit signed field (negative scales exist since PostgreSQL 15).
    let raw_scale = packed & 0x7ff;
    let scale = if raw_scale & 0x400 != 0 {
        raw_scale - 0x800
    } else {
        raw_scale
    };
    // A negative scale rounds to tens, hundreds…: keep the digits as whole numbers.
    let (precision, scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision, scale)
    };
    match (u8::try_from(precision), i8::try_from(scale)) {
        (Ok(p @ 1..=38), Ok(s)) => DataType::Decimal128(p, s),
        (Ok(p @ 39..=76), Ok(s)) => DataType::Decimal256(p, s),
        _ => UNCONSTRAINED_NUMERIC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typmod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    #[test]
    fn numeric_precision_and_scale() {
        assert_eq!(numeric_type(typmod(12, 2)), DataType::Decimal128(12, 2));
        assert_eq!(numeric_type(typmod(38, 0)), DataType::Decimal128(38, 0));
        assert_eq!(numeric_type(typmod(50, 10)), DataType::Decimal256(50, 10));
        assert_eq!(numeric_type(-1), UNCONSTRAINED_NUMERIC);
        assert_eq!(numeric_type(typmod(200, 2)), UNCONSTRAINED_NUMERIC);
        assert_eq!(numeric_type(typmod(5, -2)), DataType::Decimal128(7, 0));
    }

    #[test]
    fn builtins_and_kinds() {
        assert_eq!(map_type(&Type::INT4, -1).wire, Some(Wire::Int4));
        assert!(!map_type(&Type::TEXT, -1).opaque);
        assert!(map_type(&Type::BPCHAR, -1).opaque);
        assert_eq!(map_type(&Type::INET, -1), Mapping::as_text());
        let ints = map_type(&Type::INT4_ARRAY, -1);
        assert_eq!(ints.wire, Some(Wire::Array(Box::new(Wire::Int4))));
        assert!(matches!(ints.arrow, DataType::List(_)));
        let inets = map_type(&Type::INET_ARRAY, -1);
        assert_eq!(inets.wire, None);
        let domain = Type::new(
            "positive".into(),
            90000,
            Kind::Domain(Type::NUMERIC),
            "public".into(),
        );
        assert_eq!(
            map_type(&domain, typmod(10, 3)).arrow,
            DataType::Decimal128(10, 3)
        );
        let mood = Type::new(
            "mood".into(),
            90001,
            Kind::Enum(vec!["sad".into(), "ok".into()]),
            "public".into(),
        );
        assert_eq!(map_type(&mood, -1).wire, Some(Wire::Text));
        assert!(map_type(&mood, -1).opaque);
    }
}

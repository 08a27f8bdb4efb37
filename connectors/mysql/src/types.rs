//! MySQL and MariaDB column types to Arrow: the one place that decides how each type is
//! represented and how its comparisons may be pushed down.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use tributary_core::remote::ColumnTraits;

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnInfo {
    /// `DATA_TYPE`, lower case: `int`, `varchar`, `decimal`, …
    pub data_type: String,
    /// `COLUMN_TYPE`, lower case: `int(10) unsigned`, `tinyint(1)`, `enum('a','b')`, …
    pub column_type: String,
    /// `NUMERIC_PRECISION` (digits for decimals, bits for `bit`).
    pub precision: Option<u64>,
    /// `NUMERIC_SCALE`.
    pub scale: Option<u64>,
    /// `CHARACTER_SET_NAME`.
    pub charset: Option<String>,
    /// `COLLATION_NAME`.
    pub collation: Option<String>,
}

/// How a column is represented in Arrow.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The Arrow type.
    pub arrow: DataType,
    /// How the server compares it, for the pushdown rules.
    pub traits: ColumnTraits,
    /// Read through its text form only because no Arrow type fits.
    pub unknown: bool,
}

impl Mapping {
    fn plain(arrow: DataType) -> Self {
        Mapping {
            arrow,
            traits: ColumnTraits::default(),
            unknown: false,
        }
    }

    /// Compared by the server in ways DataFusion does not compare the Arrow values.
    fn opaque(arrow: DataType) -> Self {
        Mapping {
            arrow,
            traits: ColumnTraits {
                opaque: true,
                ..ColumnTraits::default()
            },
            unknown: false,
        }
    }

    fn text(info: &ColumnInfo, ordered: bool) -> Self {
        let exact = bytewise_collation(info);
        Mapping {
            arrow: DataType::Utf8,
            traits: ColumnTraits {
                opaque: false,
                bytewise_order: exact && ordered,
                collated: !exact,
                // An enum or set compared with a string compares its member's text, but
                // orders by position: only text columns.
                exact_as_bytes: ordered && utf8(info),
            },
            unknown: false,
        }
    }
}

/// The Arrow type and comparison traits of a column.
pub fn map_column(info: &ColumnInfo) -> Mapping {
    let unsigned = info.column_type.contains("unsigned");
    let int = |signed: DataType, unsigned_type: DataType| {
        Mapping::plain(if unsigned { unsigned_type } else { signed })
    };
    match info.data_type.as_str() {
        // BOOL is TINYINT(1); any non-zero value reads as true, so comparisons stay here.
        "tinyint" if info.column_type.starts_with("tinyint(1)") && !unsigned => {
            Mapping::opaque(DataType::Boolean)
        }
        "tinyint" => int(DataType::Int8, DataType::UInt8),
        "smallint" => int(DataType::Int16, DataType::UInt16),
        "mediumint" | "int" | "integer" => int(DataType::Int32, DataType::UInt32),
        "bigint" => int(DataType::Int64, DataType::UInt64),
        "decimal" | "numeric" | "fixed" => {
            let precision = info.precision.unwrap_or(10).clamp(1, 76) as u8;
            let scale = info.scale.unwrap_or(0).min(precision as u64) as i8;
            Mapping::plain(if precision <= 38 {
                DataType::Decimal128(precision, scale)
            } else {
                DataType::Decimal256(precision, scale)
            })
        }
        "float" => Mapping::plain(DataType::Float32),
        "double" | "double precision" | "real" => Mapping::plain(DataType::Float64),
        "bit" if info.precision == Some(1) => Mapping::opaque(DataType::Boolean),
        "bit" => Mapping::opaque(DataType::UInt64),
        "year" => Mapping::plain(DataType::Int16),
        "date" => Mapping::plain(DataType::Date32),
        "datetime" => Mapping::plain(DataType::Timestamp(TimeUnit::Microsecond, None)),
        // Read in a UTC session; literals are written without a zone, so the server's
        // comparison of them is not pushed.
        "timestamp" => Mapping::opaque(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        // Negative and beyond 24 hours: a duration, not a time of day.
        "time" => Mapping::opaque(DataType::Duration(TimeUnit::Microsecond)),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            if info.charset.as_deref() == Some("binary") {
                Mapping::plain(DataType::Binary)
            } else {
                Mapping::text(info, true)
            }
        }
        // Ordered by their position in the definition, not by their text.
        "enum" | "set" => Mapping::text(info, false),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Mapping::plain(DataType::Binary)
        }
        // JSON compares as JSON on MySQL (MariaDB's JSON is a LONGTEXT alias).
        "json" => Mapping::opaque(DataType::Utf8),
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => {
            Mapping::opaque(DataType::Binary)
        }
        // MariaDB's inet4, inet6 and uuid, and anything newer: their text form.
        "inet4" | "inet6" | "uuid" => Mapping::opaque(DataType::Utf8),
        _ => Mapping {
            unknown: true,
            ..Mapping::opaque(DataType::Utf8)
        },
    }
}

/// Whether a text column's collation compares like DataFusion: byte (code point) order on
/// a UTF-8 character set, and no padding of trailing spaces.
fn bytewise_collation(info: &ColumnInfo) -> bool {
    let ascii = info.charset.as_deref() == Some("ascii");
    let collation = info.collation.as_deref().unwrap_or_default();
    let binary_nopad = collation.ends_with("_bin")
        && (collation.contains("_nopad_") || collation.contains("_0900_"));
    (utf8(info) || ascii) && binary_nopad
}

/// Whether a text column holds UTF-8, the connection's character set: its bytes are those
/// of the string DataFusion reads, and of a literal written for it.
fn utf8(info: &ColumnInfo) -> bool {
    matches!(
        info.charset.as_deref(),
        Some("utf8mb4" | "utf8mb3" | "utf8")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &str, column_type: &str) -> ColumnInfo {
        ColumnInfo {
            data_type: data_type.into(),
            column_type: column_type.into(),
            ..ColumnInfo::default()
        }
    }

    #[test]
    fn integers_keep_their_sign() {
        assert_eq!(
            map_column(&column("bigint", "bigint(20) unsigned")).arrow,
            DataType::UInt64
        );
        assert_eq!(map_column(&column("int", "int(11)")).arrow, DataType::Int32);
        assert_eq!(
            map_column(&column("tinyint", "tinyint(1)")).arrow,
            DataType::Boolean
        );
        assert_eq!(
            map_column(&column("tinyint", "tinyint(4)")).arrow,
            DataType::Int8
        );
    }

    #[test]
    fn only_binary_no_pad_collations_compare_bytewise() {
        let text = |collation: &str| ColumnInfo {
            charset: Some("utf8mb4".into()),
            collation: Some(collation.into()),
            ..column("varchar", "varchar(10)")
        };
        for exact in ["utf8mb4_nopad_bin", "utf8mb4_0900_bin"] {
            let t = map_column(&text(exact)).traits;
            assert!(t.bytewise_order && !t.collated, "{exact}");
        }
        for loose in ["utf8mb4_general_ci", "utf8mb4_bin", "utf8mb4_0900_ai_ci"] {
            let t = map_column(&text(loose)).traits;
            assert!(!t.bytewise_order && t.collated, "{loose}");
        }
    }

    #[test]
    fn utf8_text_compares_as_bytes_whatever_its_collation() {
        let text = |data_type: &str, charset: &str| ColumnInfo {
            charset: Some(charset.into()),
            collation: Some(format!("{charset}_general_ci")),
            ..column(data_type, data_type)
        };
        for charset in ["utf8mb4", "utf8mb3", "utf8"] {
            assert!(map_column(&text("varchar", charset)).traits.exact_as_bytes);
        }
        // Other character sets' bytes are not the literal's; enums order by position.
        assert!(!map_column(&text("varchar", "latin1")).traits.exact_as_bytes);
        assert!(!map_column(&text("enum", "utf8mb4")).traits.exact_as_bytes);
    }

    #[test]
    fn wide_decimals_use_256_bits() {
        let decimal = ColumnInfo {
            precision: Some(65),
            scale: Some(30),
            ..column("decimal", "decimal(65,30)")
        };
        assert_eq!(map_column(&decimal).arrow, DataType::Decimal256(65, 30));
    }
}

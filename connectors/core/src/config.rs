//! Building blocks for connector configuration and construction.

use std::fmt;
use std::path::PathBuf;

use datafusion::arrow::datatypes::DataType;
use datafusion::execution::SessionState;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Visitor};

use crate::types::parse_sql_type;

/// What a connector gets when it is built from its config.
#[derive(Clone)]
pub struct SourceContext {
    /// The configured source name (its catalog name).
    pub name: String,
    /// The source's key path in the config file, e.g. `sources[2]`, for error messages.
    pub key: String,
    /// The folder relative paths in the config are resolved against.
    pub config_dir: PathBuf,
    /// A session sharing the engine's configuration and runtime (object stores, memory
    /// pool); connectors use it to infer schemas and register object stores.
    pub state: SessionState,
}

impl fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceContext")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("config_dir", &self.config_dir)
            .finish_non_exhaustive()
    }
}

impl SourceContext {
    /// The key path of a field of this source, e.g. `sources[2].url`.
    pub fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.key)
    }
}

/// A column type written as SQL (`bigint`, `decimal(12,2)`, …), checked when the config loads.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlType {
    /// The type as written.
    pub sql: String,
    /// The Arrow type DataFusion gives it.
    pub arrow: DataType,
}

impl<'de> Deserialize<'de> for SqlType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sql = String::deserialize(deserializer)?;
        let arrow = parse_sql_type(&sql).map_err(D::Error::custom)?;
        Ok(SqlType { sql, arrow })
    }
}

/// An option value that YAML may write as a string, number or boolean; kept as text, the
/// way DataFusion's `OPTIONS (…)` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionValue(pub String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = OptionValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Schemas (databases) to expose: `include` (all when empty) minus `exclude`. Sources hide
/// their system schemas on top of this.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFilter {
    /// Only these schemas.
    #[serde(default)]
    pub include: Vec<String>,
    /// Not these schemas.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl SchemaFilter {
    /// Whether the user's filter lets `schema` through.
    pub fn allows(&self, schema: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|s| s == schema))
            && !self.exclude.iter().any(|s| s == schema)
    }
}

/// How many parallel partitions a large scan of a SQL source uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitions {
    /// From the table's estimated size and DataFusion's target partitions.
    #[default]
    Auto,
    /// At most this many.
    Fixed(usize),
}

impl Partitions {
    /// How many parts to split a scan of a table of about `rows` rows into: the fixed
    /// number, or under `auto` `max_parts` once the table reaches `threshold` rows.
    pub fn wanted(self, rows: Option<usize>, threshold: u64, max_parts: usize) -> usize {
        match self {
            Partitions::Fixed(n) => n,
            Partitions::Auto if rows.is_some_and(|r| r as u64 >= threshold) => max_parts,
            Partitions::Auto => 1,
        }
    }
}

impl<'de> Deserialize<'de> for Partitions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let OptionValue(text) = OptionValue::deserialize(d)?;
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Partitions::Auto);
        }
        match text.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Partitions::Fixed(n)),
            _ => Err(D::Error::custom(format!(
                "expected `auto` or a number of partitions (1 or more), got `{text}`"
            ))),
        }
    }
}

/// Lenient `deserialize_with` helpers.
///
/// `${VAR}` interpolation always yields text, so numeric and duration fields accept both
/// YAML numbers and strings (`port: ${PG_PORT:-5432}`).
pub mod de {
    use std::str::FromStr;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de};

    use super::OptionValue;

    /// A value parsed from text (numbers, addresses), written as a YAML scalar or a string.
    pub fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let OptionValue(text) = OptionValue::deserialize(deserializer)?;
        text.trim()
            .parse()
            .map_err(|e| de::Error::custom(format!("invalid value `{text}`: {e}")))
    }

    /// An optional value parsed from text.
    pub fn option_parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        parsed(deserializer).map(Some)
    }

    /// A duration such as `30s`, `15m`, `1h 30m` or `250ms`.
    pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let OptionValue(text) = OptionValue::deserialize(deserializer)?;
        parse_duration(&text).map_err(de::Error::custom)
    }

    /// An optional duration such as `30s`.
    pub fn option_duration<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration(deserializer).map(Some)
    }

    /// Parses `30s`, `15m`, `1h 30m`, `250ms`.
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            format!("expected a duration such as `30s`, `15m` or `2h`, got `{text}` ({e})")
        })
    }
}

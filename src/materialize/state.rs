//! A materialization's state, committed in the same Delta commit as its data.
//!
//! Every sync commit carries Delta application transactions (`txn` actions):
//! `tributary/<name>/run` with the run number and, for cursor reads,
//! `tributary/<name>/watermark` with the highest cursor value copied. Reading the state is
//! reading the table's snapshot, so data and state never disagree: a run that dies before
//! its commit leaves both as they were, and one that committed left both moved.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{DFSchema, ScalarValue};
use deltalake::DeltaTable;
use deltalake::errors::DeltaResult;
use deltalake::kernel::Transaction;

use crate::config::Lookback;

/// What the last committed run left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Runs committed so far.
    pub runs: i64,
    /// The highest cursor value copied (encoded by [`Cursor`]).
    pub watermark: Option<i64>,
}

fn run_app_id(name: &str) -> String {
    format!("tributary/{name}/run")
}

fn watermark_app_id(name: &str) -> String {
    format!("tributary/{name}/watermark")
}

impl State {
    /// Reads the state from the table's current snapshot; an empty state for a table not
    /// created yet.
    pub async fn load(table: &DeltaTable, name: &str) -> DeltaResult<State> {
        let Ok(snapshot) = table.snapshot() else {
            return Ok(State::default());
        };
        let log = table.log_store();
        Ok(State {
            runs: snapshot
                .transaction_version(log.as_ref(), run_app_id(name))
                .await?
                .unwrap_or(0),
            watermark: snapshot
                .transaction_version(log.as_ref(), watermark_app_id(name))
                .await?,
        })
    }

    /// The transactions that record `self` in a commit of materialization `name`.
    pub fn transactions(&self, name: &str) -> Vec<Transaction> {
        let now = now_millis();
        let mut txns = vec![Transaction::new_with_last_update(
            run_app_id(name),
            self.runs,
            Some(now),
        )];
        if let Some(w) = self.watermark {
            txns.push(Transaction::new_with_last_update(
                watermark_app_id(name),
                w,
                Some(now),
            ));
        }
        txns
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A cursor column and how its values are kept as the watermark, an `i64`: integers as
/// they are, timestamps as microseconds since the epoch (UTC), dates as days.
#[derive(Debug, Clone)]
pub struct Cursor {
    name: String,
    kind: CursorKind,
}

#[derive(Debug, Clone)]
enum CursorKind {
    Integer,
    Timestamp(Option<Arc<str>>),
    Date,
}

impl Cursor {
    /// The cursor `name` of a source with `schema`.
    pub fn new(name: &str, schema: &DFSchema) -> Result<Cursor, String> {
        let (_, field) = schema
            .qualified_field_with_unqualified_name(name)
            .map_err(|_| {
                let columns: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!(
                    "cursor column `{name}` is not in the source (columns: {})",
                    columns.join(", ")
                )
            })?;
        let kind = match field.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => CursorKind::Integer,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                return Err(format!(
                    "cursor column `{name}` holds nanosecond timestamps; the watermark keeps microseconds (cast it in `from`)"
                ));
            }
            DataType::Timestamp(_, tz) => CursorKind::Timestamp(tz.clone()),
            DataType::Date32 | DataType::Date64 => CursorKind::Date,
            other => {
                return Err(format!(
                    "cursor column `{name}` is {other}; a cursor must be an integer, a timestamp or a date"
                ));
            }
        };
        Ok(Cursor {
            name: field.name().clone(),
            kind,
        })
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Encodes a value of the column; `None` for NULL.
    pub fn encode(&self, value: &ScalarValue) -> Result<Option<i64>, String> {
        use ScalarValue as S;
        let unexpected = || {
            format!(
                "cursor column `{}` gave {value:?}, not a {:?} value",
                self.name, self.kind
            )
        };
        if value.is_null() {
            return Ok(None);
        }
        let encoded = match (&self.kind, value) {
            (CursorKind::Integer, v) => v
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    S::Int64(n) => n,
                    _ => None,
                })
                .ok_or_else(unexpected)?,
            (CursorKind::Timestamp(_), S::TimestampSecond(Some(v), _)) => v
                .checked_mul(1_000_000)
                .ok_or_else(|| format!("cursor value {v}s is out of range"))?,
            (CursorKind::Timestamp(_), S::TimestampMillisecond(Some(v), _)) => v
                .checked_mul(1_000)
                .ok_or_else(|| format!("cursor value {v}ms is out of range"))?,
            (CursorKind::Timestamp(_), S::TimestampMicrosecond(Some(v), _)) => *v,
            (CursorKind::Date, S::Date32(Some(d))) => i64::from(*d),
            (CursorKind::Date, S::Date64(Some(ms))) => ms.div_euclid(86_400_000),
            _ => return Err(unexpected()),
        };
        Ok(Some(encoded))
    }

    /// The literal an encoded value compares with the column as.
    pub fn literal(&self, value: i64) -> ScalarValue {
        match &self.kind {
            CursorKind::Integer => ScalarValue::Int64(Some(value)),
            CursorKind::Timestamp(tz) => ScalarValue::TimestampMicrosecond(Some(value), tz.clone()),
            CursorKind::Date => ScalarValue::Date32(Some(value as i32)),
        }
    }

    /// An encoded value as people read it.
    pub fn display(&self, value: i64) -> String {
        let literal = self.literal(value);
        literal
            .to_array()
            .ok()
            .and_then(|a| array_value_to_string(&a, 0).ok())
            .unwrap_or_else(|| literal.to_string())
    }

    /// The value `lookback` before `value`.
    pub fn minus(&self, value: i64, lookback: Lookback) -> Result<i64, String> {
        let step = match (&self.kind, lookback) {
            (CursorKind::Integer, Lookback::Count(n)) => n,
            (CursorKind::Timestamp(_), Lookback::Time(d)) => {
                i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
            }
            (CursorKind::Date, Lookback::Time(d)) => d.as_secs().div_ceil(86_400) as i64,
            (CursorKind::Integer, Lookback::Time(_)) => {
                return Err(format!(
                    "`lookback` must be a number: cursor `{}` is an integer",
                    self.name
                ));
            }
            (_, Lookback::Count(_)) => {
                return Err(format!(
                    "`lookback` must be a duration such as `10m`: cursor `{}` is a time",
                    self.name
                ));
            }
        };
        Ok(value.saturating_sub(step))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn cursor(data_type: DataType) -> Result<Cursor, String> {
        let schema = DFSchema::try_from(Schema::new(vec![Field::new("c", data_type, true)]))
            .map_err(|e| e.to_string())?;
        Cursor::new("c", &schema)
    }

    #[test]
    fn timestamps_are_kept_as_utc_microseconds() {
        let c = cursor(DataType::Timestamp(
            TimeUnit::Millisecond,
            Some("+02:00".into()),
        ))
        .unwrap();
        let v = ScalarValue::TimestampMillisecond(Some(1_700_000_000_123), Some("+02:00".into()));
        let encoded = c.encode(&v).unwrap().unwrap();
        assert_eq!(encoded, 1_700_000_000_123_000);
        assert_eq!(
            c.literal(encoded),
            ScalarValue::TimestampMicrosecond(Some(encoded), Some("+02:00".into()))
        );
        assert_eq!(
            c.minus(encoded, Lookback::Time(Duration::from_secs(60)))
                .unwrap(),
            encoded - 60_000_000
        );
        assert!(c.minus(encoded, Lookback::Count(3)).is_err());
    }

    #[test]
    fn integers_dates_and_nulls() {
        let c = cursor(DataType::Int32).unwrap();
        assert_eq!(c.encode(&ScalarValue::Int32(Some(-7))).unwrap(), Some(-7));
        assert_eq!(c.encode(&ScalarValue::Int32(None)).unwrap(), None);
        assert_eq!(c.minus(10, Lookback::Count(3)).unwrap(), 7);
        let d = cursor(DataType::Date32).unwrap();
        assert_eq!(
            d.encode(&ScalarValue::Date32(Some(19000))).unwrap(),
            Some(19000)
        );
        assert_eq!(
            d.minus(19000, Lookback::Time(Duration::from_secs(3600)))
                .unwrap(),
            18999
        );
    }

    #[test]
    fn unusable_cursors_are_named() {
        let e = cursor(DataType::Utf8).unwrap_err();
        assert!(e.contains("cursor column `c` is Utf8"), "{e}");
        let e = cursor(DataType::Timestamp(TimeUnit::Nanosecond, None)).unwrap_err();
        assert!(e.contains("nanosecond"), "{e}");
        let schema = DFSchema::empty();
        let e = Cursor::new("updated_at", &schema).unwrap_err();
        assert!(e.contains("`updated_at` is not in the source"), "{e}");
    }
}

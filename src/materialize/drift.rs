//! Schema drift: how the source's columns differ from the copy's last committed ones,
//! compared as Delta types (what a write would store), and what each policy makes of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType as ArrowType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use deltalake::DeltaTable;
use deltalake::errors::{DeltaResult, DeltaTableError};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, MetadataValue, PrimitiveType, StructType, normalize_for_delta};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::quarantine::Kept;
use crate::config::DriftPolicy;

/// A column whose type changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retyped {
    /// The column.
    pub name: String,
    /// Its type in the copy.
    pub was: DataType,
    /// Its type in the source now.
    pub now: DataType,
}

/// How the source's columns differ from the copy's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// Columns the source has and the copy does not.
    pub added: Vec<(String, DataType)>,
    /// Columns the copy has, the source no longer has, and that are not deprecated yet.
    pub removed: Vec<(String, DataType)>,
    /// Columns whose source type is wider than the copy's and holds all its values.
    pub widened: Vec<Retyped>,
    /// Columns whose source type the copy's type cannot be widened to.
    pub incompatible: Vec<Retyped>,
}

impl Drift {
    /// Compares `source` with `target`. Source types narrower than the copy's (an `int`
    /// column feeding a `long` one) are not drift: writes cast them. Columns already
    /// marked deprecated (`deprecated`) are not reported as removed again.
    pub fn between(target: &StructType, source: &StructType, deprecated: &[String]) -> Drift {
        let mut drift = Drift::default();
        for field in source.fields() {
            match target.field(field.name()) {
                None => drift
                    .added
                    .push((field.name().clone(), field.data_type().clone())),
                Some(old) if old.data_type() == field.data_type() => {}
                Some(old) if widens(field.data_type(), old.data_type()) => {}
                Some(old) => {
                    let change = Retyped {
                        name: field.name().clone(),
                        was: old.data_type().clone(),
                        now: field.data_type().clone(),
                    };
                    if widens(old.data_type(), field.data_type()) {
                        drift.widened.push(change);
                    } else {
                        drift.incompatible.push(change);
                    }
                }
            }
        }
        for field in target.fields() {
            if source.field(field.name()).is_none() && !deprecated.contains(field.name()) {
                drift
                    .removed
                    .push((field.name().clone(), field.data_type().clone()));
            }
        }
        drift
    }

    /// Whether the columns are the same.
    pub fn is_empty(&self) -> bool {
        self == &Drift::default()
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let columns = |list: &[(String, DataType)]| {
            list.iter()
                .map(|(n, t)| format!("`{n}` ({t})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let retyped = |list: &[Retyped]| {
            list.iter()
                .map(|r| format!("`{}` {} -> {}", r.name, r.was, r.now))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.added.is_empty() {
            parts.push(format!("added {}", columns(&self.added)));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", columns(&self.removed)));
        }
        if !self.widened.is_empty() {
            parts.push(format!("widened {}", retyped(&self.widened)));
        }
        if !self.incompatible.is_empty() {
            parts.push(format!(
                "changed incompatibly {}",
                retyped(&self.incompatible)
            ));
        }
        if parts.is_empty() {
            parts.push("no change".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Whether every value of `from` fits `to` unchanged (Delta's type widening rules).
pub fn widens(from: &DataType, to: &DataType) -> bool {
    use PrimitiveType as P;
    let (DataType::Primitive(from), DataType::Primitive(to)) = (from, to) else {
        return false;
    };
    let rank = |p: &P| match p {
        P::Byte => Some(1),
        P::Short => Some(2),
        P::Integer => Some(3),
        P::Long => Some(4),
        _ => None,
    };
    match (from, to) {
        (a, b) if a == b => true,
        (a, b) if rank(a).is_some() && rank(b).is_some() => rank(a) < rank(b),
        (P::Byte | P::Short | P::Integer, P::Double) => true,
        (P::Float, P::Double) => true,
        (P::Date, P::TimestampNtz) => true,
        (P::Decimal(a), P::Decimal(b)) => {
            b.scale() >= a.scale()
                && i16::from(b.precision()) - i16::from(b.scale())
                    >= i16::from(a.precision()) - i16::from(a.scale())
        }
        (P::Byte | P::Short | P::Integer | P::Long, P::Decimal(d)) => {
            let digits = match from {
                P::Byte => 3,
                P::Short => 5,
                P::Integer => 10,
                _ => 20,
            };
            i16::from(d.precision()) - i16::from(d.scale()) >= digits
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use deltalake::kernel::{DecimalType, StructField};

    use super::*;

    fn schema(fields: &[(&str, DataType)]) -> StructType {
        StructType::try_new(
            fields
                .iter()
                .map(|(n, t)| StructField::nullable(*n, t.clone())),
        )
        .unwrap()
    }

    fn decimal(p: u8, s: u8) -> DataType {
        DataType::Primitive(PrimitiveType::Decimal(DecimalType::try_new(p, s).unwrap()))
    }

    #[test]
    fn each_kind_of_drift_is_told_apart() {
        let target = schema(&[
            ("id", DataType::INTEGER),
            ("name", DataType::STRING),
            ("amount", decimal(10, 2)),
            ("gone", DataType::LONG),
            ("old", DataType::LONG),
            ("wide", DataType::LONG),
        ]);
        let source = schema(&[
            ("id", DataType::LONG),
            ("name", DataType::INTEGER),
            ("amount", decimal(12, 2)),
            ("new", DataType::STRING),
            ("wide", DataType::INTEGER),
        ]);
        let drift = Drift::between(&target, &source, &["old".to_string()]);
        assert_eq!(drift.added, vec![("new".to_string(), DataType::STRING)]);
        assert_eq!(drift.removed, vec![("gone".to_string(), DataType::LONG)]);
        let widened: Vec<_> = drift.widened.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(widened, ["id", "amount"]);
        assert_eq!(drift.incompatible[0].name, "name");
        assert_eq!(drift.incompatible.len(), 1);
        let text = drift.to_string();
        assert!(text.contains("added `new` (string)"), "{text}");
        assert!(
            text.contains("changed incompatibly `name` string -> integer"),
            "{text}"
        );
        assert!(Drift::between(&target, &target, &[]).is_empty());
    }

    #[test]
    fn widening_follows_delta_rules() {
        assert!(widens(&DataType::BYTE, &DataType::LONG));
        assert!(!widens(&DataType::LONG, &DataType::INTEGER));
        assert!(widens(&DataType::FLOAT, &DataType::DOUBLE));
        assert!(widens(&DataType::DATE, &DataType::TIMESTAMP_NTZ));
        assert!(!widens(&DataType::DATE, &DataType::TIMESTAMP));
        assert!(widens(&decimal(10, 2), &decimal(12, 4)));
        assert!(!widens(&decimal(10, 2), &decimal(10, 3)));
        assert!(widens(&DataType::INTEGER, &decimal(12, 2)));
        assert!(!widens(&DataType::STRING, &DataType::LONG));
    }
}

/// The table property a paused materialization carries, with the reason.
pub const PAUSED: &str = "tributary.paused";

/// The field metadata key marking a column the source no longer has.
pub const DEPRECATED: &str = "tributary.deprecated";

/// How a run's schema may change the copy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchemaChange {
    /// Not at all: the columns match.
    #[default]
    Keep,
    /// Add the new columns.
    Merge,
    /// Replace it (a `full` run rewriting everything).
    Overwrite,
}

/// How a run adapts the copy to the source's columns; the default (nothing to adapt) is
/// what a table that does not exist yet gets.
#[derive(Debug, Clone, Default)]
pub struct Adaptation {
    /// How the write may change the schema.
    pub schema: SchemaChange,
    /// Columns to widen (name, new Arrow type), in a commit of their own, before the data.
    pub widen: Vec<(String, ArrowType)>,
    /// Columns to mark deprecated after the data commit.
    pub deprecate: Vec<String>,
    /// Columns the source does not have (written as NULL, never updated).
    pub absent: Vec<String>,
    /// Columns the copy does not have yet.
    pub added: Vec<String>,
    /// Columns whose source type changed incompatibly: the copy keeps its type and the
    /// source's values are cast to it ([`super::quarantine`]).
    pub keep: Vec<Kept>,
    /// What drifted and what was done, for the commit's record.
    pub note: Option<String>,
}

/// What a run does about drift.
pub enum Decision {
    /// Write `df` (the rows, with NULL for columns the source no longer has; boxed: a plan
    /// is large) as `adaptation` says.
    Proceed {
        /// The rows to write.
        df: Box<DataFrame>,
        /// How the copy changes.
        adaptation: Adaptation,
    },
    /// Stop the job and keep the copy (policy `pause`).
    Pause(String),
    /// Fail the run (policy `fail`, or a change `evolve` cannot apply).
    Fail(String),
}

/// Compares `df` with the copy in `table` (which exists) and applies `policy`.
pub fn decide(
    table: &DeltaTable,
    df: DataFrame,
    policy: DriftPolicy,
    full: bool,
) -> DeltaResult<Decision> {
    let snapshot = table.snapshot()?;
    let target = snapshot.schema();
    let target_arrow = snapshot.snapshot().arrow_schema();
    let source_arrow = normalize_for_delta(&Arc::new(df.schema().as_arrow().clone()));
    let source: StructType = source_arrow.as_ref().try_into_kernel()?;
    let deprecated = deprecated_columns(table);
    let drift = Drift::between(&target, &source, &deprecated);
    if !drift.is_empty() {
        match policy {
            DriftPolicy::Fail => {
                return Ok(Decision::Fail(format!(
                    "the source's columns changed ({drift}) and `drift: fail` stops here"
                )));
            }
            DriftPolicy::Pause => return Ok(Decision::Pause(drift.to_string())),
            DriftPolicy::Evolve => {}
        }
    }

    // Columns the copy has and the source does not are written as NULL, so every version
    // keeps them (their old values stay readable).
    let mut df = df;
    let mut absent = Vec::new();
    for field in target_arrow.fields() {
        if source_arrow.field_with_name(field.name()).is_err() {
            absent.push(field.name().clone());
            let null = ScalarValue::try_from(field.data_type())
                .map_err(|e| DeltaTableError::Generic(e.to_string()))?;
            df = df
                .with_column(field.name(), lit(null))
                .map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        }
    }
    let retyped = !drift.widened.is_empty() || !drift.incompatible.is_empty();
    let schema = match (drift.added.is_empty(), retyped && full) {
        (_, true) => SchemaChange::Overwrite,
        (false, false) => SchemaChange::Merge,
        (true, false) => SchemaChange::Keep,
    };
    let widen = if full {
        Vec::new()
    } else {
        drift
            .widened
            .iter()
            .filter_map(|r| {
                let field = source_arrow.field_with_name(&r.name).ok()?;
                Some((r.name.clone(), field.data_type().clone()))
            })
            .collect()
    };
    // Overwriting the schema drops the marks; put them back.
    let deprecate = absent
        .iter()
        .filter(|name| schema == SchemaChange::Overwrite || !deprecated.contains(name))
        .cloned()
        .collect();
    // Only a full run may change a column's type to one that does not hold its old
    // values; other runs keep the copy's type and cast what they read.
    let keep: Vec<Kept> = if full {
        Vec::new()
    } else {
        drift
            .incompatible
            .iter()
            .filter_map(|r| {
                let field = target_arrow.field_with_name(&r.name).ok()?;
                Some(Kept {
                    name: r.name.clone(),
                    to: field.data_type().clone(),
                    label: r.was.to_string(),
                })
            })
            .collect()
    };
    let note = (!drift.is_empty()).then(|| {
        let mut note = format!("evolved: {drift}");
        if !keep.is_empty() {
            let names: Vec<String> = keep.iter().map(|k| format!("`{}`", k.name)).collect();
            note.push_str(&format!(
                "; kept the copy's type of {} and cast the source's values (values that do not fit go by `on_invalid`)",
                names.join(", ")
            ));
        }
        note
    });
    Ok(Decision::Proceed {
        df: Box::new(df),
        adaptation: Adaptation {
            schema,
            widen,
            deprecate,
            absent,
            added: drift.added.iter().map(|(n, _)| n.clone()).collect(),
            keep,
            note,
        },
    })
}

/// The columns of `table` marked deprecated: the source no longer has them.
pub fn deprecated_columns(table: &DeltaTable) -> Vec<String> {
    let Ok(snapshot) = table.snapshot() else {
        return Vec::new();
    };
    snapshot
        .schema()
        .fields()
        .filter(|f| f.metadata().contains_key(DEPRECATED))
        .map(|f| f.name().clone())
        .collect()
}

/// The reason the materialization in `table` is paused, if it is.
pub fn paused(table: &DeltaTable) -> Option<String> {
    let snapshot = table.snapshot().ok()?;
    snapshot
        .metadata()
        .configuration()
        .get(PAUSED)
        .filter(|r| !r.is_empty())
        .cloned()
}

/// Marks the materialization in `table` paused with `reason` (empty: not paused), in a
/// commit of its own.
pub async fn set_paused(table: DeltaTable, reason: &str) -> DeltaResult<DeltaTable> {
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(PAUSED.to_string(), reason.to_string())]))
        .with_raise_if_not_exists(false)
        .await
}

/// Rewrites the copy with `columns` widened, keeping every row and its state.
pub async fn widen(
    table: DeltaTable,
    columns: &[(String, ArrowType)],
    note: &str,
) -> DeltaResult<DeltaTable> {
    let generic = |e: datafusion::error::DataFusionError| DeltaTableError::Generic(e.to_string());
    let ctx = SessionContext::new();
    let provider = table.table_provider().await.map_err(generic)?;
    let df = ctx.read_table(provider).map_err(generic)?;
    let exprs: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let column = ident(f.name());
            match columns.iter().find(|(n, _)| n == f.name()) {
                Some((_, to)) => cast(column, to.clone()).alias(f.name()),
                None => column,
            }
        })
        .collect();
    let plan = df.select(exprs).map_err(generic)?.into_unoptimized_plan();
    table
        .write(Vec::<RecordBatch>::new())
        .with_input_plan(plan)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "tributary".to_string(),
            serde_json::json!({ "drift": note }),
        )]))
        .await
}

/// Marks `columns` deprecated (the source no longer has them; new rows hold NULL).
pub async fn deprecate(
    mut table: DeltaTable,
    columns: &[String],
    run: i64,
) -> DeltaResult<DeltaTable> {
    for column in columns {
        table = table
            .update_field_metadata()
            .with_field_name(column)
            .with_metadata(HashMap::from([(
                DEPRECATED.to_string(),
                MetadataValue::String(format!(
                    "not in the source since run {run}; NULL in rows written since"
                )),
            )]))
            .await?;
    }
    Ok(table)
}

//! The write side of a run: one Delta commit per run, carrying the data and the state.

use datafusion::arrow::array::RecordBatch;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator, binary_expr, col, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use deltalake::DeltaTable;
use deltalake::errors::DeltaResult;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::drift::SchemaChange;
use super::source::Counters;

/// How a run changes the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// Replace everything (readers see the old or the new version, never a mix).
    Replace,
    /// Add the rows.
    Append,
    /// Replace the rows with `cursor >= from` by the rows read (an incremental run that
    /// reads back: rows re-read replace their earlier copies instead of doubling them).
    ReplaceFrom {
        /// The cursor column.
        cursor: String,
        /// The lowest cursor value read.
        from: ScalarValue,
    },
    /// Update rows whose key matches, insert the others, and optionally delete rows the
    /// source no longer has.
    Merge {
        /// The key columns.
        key: Vec<String>,
        /// Delete target rows with no source row.
        delete_missing: bool,
        /// Columns the source no longer has: updates leave their values alone.
        frozen: Vec<String>,
        /// Columns the copy does not have yet.
        added: Vec<String>,
    },
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Rows inserted or appended.
    pub inserted: u64,
    /// Rows updated in place (merge).
    pub updated: u64,
    /// Rows deleted (merge).
    pub deleted: u64,
    /// Rows set aside in the quarantine table (values that do not fit the copy).
    pub quarantined: u64,
}

/// Writes `input` to `table` as `change`, with `commit` (state and run metadata) in the
/// same commit. A table that does not exist yet is created by the first write. `read`
/// counts the rows the source yields and those quarantined on the way: all the others
/// are inserted unless `change` merges.
pub async fn commit(
    table: DeltaTable,
    input: LogicalPlan,
    read: &Counters,
    change: Change,
    partition_by: &[String],
    schema: SchemaChange,
    commit: CommitProperties,
) -> DeltaResult<(DeltaTable, Written)> {
    let exists = table.version().is_some();
    let columns: Vec<String> = input
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if let Change::Merge {
        key,
        delete_missing,
        frozen,
        added,
    } = &change
        && exists
    {
        let source = DataFrame::new(SessionContext::new().state(), input);
        let side = |side: &str, name: &str| col(Column::new(Some(side), name));
        let updated: Vec<&String> = columns.iter().filter(|c| !frozen.contains(c)).collect();
        let on = key
            .iter()
            .map(|k| side("target", k).eq(side("source", k)))
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(false));
        let mut merge = table
            .merge(source, on)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_streaming(true)
            .with_merge_schema(schema == SchemaChange::Merge)
            .with_commit_properties(commit)
            .when_matched_update(|u| {
                // Only rows that changed count (and are written) as updated.
                let changed = updated
                    .iter()
                    .filter(|c| !key.contains(c))
                    .map(|c| {
                        if added.contains(c) {
                            side("source", c).is_not_null()
                        } else {
                            binary_expr(
                                side("target", c),
                                Operator::IsDistinctFrom,
                                side("source", c),
                            )
                        }
                    })
                    .reduce(Expr::or)
                    .unwrap_or_else(|| lit(false));
                updated.iter().fold(u.predicate(changed), |u, c| {
                    u.update(Column::new_unqualified(*c), side("source", c))
                })
            })?
            .when_not_matched_insert(|i| {
                columns.iter().fold(i, |i, c| {
                    i.set(Column::new_unqualified(c), side("source", c))
                })
            })?;
        if *delete_missing {
            merge = merge.when_not_matched_by_source_delete(|d| d)?;
        }
        let (table, metrics) = merge.await?;
        let written = Written {
            inserted: metrics.num_target_rows_inserted as u64,
            updated: metrics.num_target_rows_updated as u64,
            deleted: metrics.num_target_rows_deleted as u64,
            quarantined: read.quarantined(),
        };
        return Ok((table, written));
    }

    let mut write = table
        .write(Vec::<RecordBatch>::new())
        .with_input_plan(input)
        .with_commit_properties(commit);
    if !partition_by.is_empty() {
        write = write.with_partition_columns(partition_by.to_vec());
    }
    match schema {
        SchemaChange::Keep => {}
        SchemaChange::Merge => write = write.with_schema_mode(SchemaMode::Merge),
        SchemaChange::Overwrite => write = write.with_schema_mode(SchemaMode::Overwrite),
    }
    write = match change {
        Change::Replace => write.with_save_mode(SaveMode::Overwrite),
        Change::ReplaceFrom { cursor, from } if exists => write
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(col(Column::new_unqualified(cursor)).gt_eq(lit(from))),
        Change::Append | Change::ReplaceFrom { .. } | Change::Merge { .. } => {
            write.with_save_mode(SaveMode::Append)
        }
    };
    let table = write.await?;
    Ok((
        table,
        Written {
            inserted: read.rows().saturating_sub(read.quarantined()),
            quarantined: read.quarantined(),
            ..Written::default()
        },
    ))
}

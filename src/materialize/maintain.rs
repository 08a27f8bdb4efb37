//! Delta maintenance of a materialization's table: small files compacted into large ones
//! (each run adds at least one file), and files that no version within the retention
//! period references removed — including those a killed run wrote but never committed.

use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::errors::{DeltaResult, DeltaTableError};
use deltalake::operations::vacuum::VacuumMode;

use super::{Job, SyncError, target};
use crate::Engine;
use crate::config::OnInvalid;

/// What maintenance did to one table.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    /// The materialization (or `sync_runs`).
    pub name: String,
    /// Small files replaced by compaction.
    pub files_compacted: u64,
    /// Files compaction wrote in their place.
    pub files_written: u64,
    /// Files vacuum deleted.
    pub files_deleted: usize,
    /// The table version after it.
    pub version: Option<u64>,
}

impl std::fmt::Display for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: compacted {} files into {}, vacuumed {} unreferenced files",
            self.name, self.files_compacted, self.files_written, self.files_deleted
        )?;
        if let Some(v) = self.version {
            write!(f, " (now version {v})")?;
        }
        Ok(())
    }
}

/// Compacts `table` and vacuums it with `retention`.
async fn compact_and_vacuum(
    name: &str,
    table: DeltaTable,
    retention: Duration,
) -> DeltaResult<Maintenance> {
    if table.version().is_none() {
        return Ok(Maintenance {
            name: name.to_string(),
            ..Maintenance::default()
        });
    }
    let (table, compacted) = table.optimize().await?;
    let retention = chrono::Duration::from_std(retention)
        .map_err(|e| DeltaTableError::Generic(format!("vacuum_retention: {e}")))?;
    let (table, vacuumed) = table
        .vacuum()
        .with_retention_period(retention)
        // The configured retention is the user's choice, even below Delta's 7-day default.
        .with_enforce_retention_duration(false)
        // Full: also files no commit ever mentioned (written by runs that were killed).
        .with_mode(VacuumMode::Full)
        .await?;
    Ok(Maintenance {
        name: name.to_string(),
        files_compacted: compacted.num_files_removed,
        files_written: compacted.num_files_added,
        files_deleted: vacuumed.files_deleted.len(),
        version: table.version(),
    })
}

/// Compacts and vacuums `job`'s table (and its quarantine table, when it has one),
/// holding its run lock (no run goes on meanwhile).
pub async fn maintain(engine: &Engine, job: &Job) -> Result<Vec<Maintenance>, SyncError> {
    let name = job.name().to_string();
    let materializer = engine.materializer();
    let _lock = materializer.lock(&name)?;
    let mut done = Vec::new();
    let mut tables = vec![(name.clone(), job.target.clone())];
    if job.config.on_invalid == OnInvalid::Quarantine {
        tables.push((format!("{name}__quarantine"), job.quarantine()));
    }
    for (table_name, url) in tables {
        let target_error = |source| SyncError::Target {
            name: name.clone(),
            target: url.clone(),
            source: Box::new(source),
        };
        let table = target::open(materializer.runtime(), &url)
            .await
            .map_err(target_error)?;
        if table.version().is_none() && table_name != name {
            continue;
        }
        done.push(
            compact_and_vacuum(&table_name, table, job.config.vacuum_retention)
                .await
                .map_err(target_error)?,
        );
    }
    Ok(done)
}

/// Compacts and vacuums the run history (one small file per run otherwise).
pub async fn maintain_history(engine: &Engine, retention: Duration) -> DeltaResult<Maintenance> {
    let materializer = engine.materializer();
    let table = target::open(materializer.runtime(), materializer.history().url()).await?;
    compact_and_vacuum("sync_runs", table, retention).await
}

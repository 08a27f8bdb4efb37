//! Materializations: source tables and queries copied into Delta tables by sync runs.
//!
//! A run plans `from` in the engine (so filters, including the cursor bounds, are pushed
//! down to the source), streams the rows into one Delta commit, and records its state in
//! that same commit ([`state`]): a run killed at any point leaves the table and its state
//! as the last committed run left them, and the next run neither skips nor doubles rows.

mod accelerate;
mod catalog;
mod drift;
mod health;
mod history;
mod lock;
mod maintain;
mod progress;
mod quarantine;
mod runtime_catalog;
mod scheduler;
mod source;
mod spool;
mod state;
mod target;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake::errors::DeltaTableError;
use deltalake::kernel::transaction::CommitProperties;
use url::Url;

pub use accelerate::AcceleratedCatalog;
pub use catalog::MaterializedCatalog;
pub use health::{Health, JobHealth, LastRun, Route};
pub use history::{History, RunRecord, RunStatus, Trigger};
pub use maintain::{Maintenance, maintain, maintain_history};
pub use progress::{ProgressDisplay, ProgressReporter};
pub use runtime_catalog::RuntimeCatalog;
pub use scheduler::run_schedules;
pub use source::{Counters, StreamFailure};
pub use state::{Cursor, State};
pub use write::Written;

use crate::Engine;
use crate::config::{Config, MaterializationConfig, OnInvalid, RefreshMode};
use drift::{Adaptation, Decision};
use spool::Spool;
use write::Change;

/// The catalog Tributary's own tables are queried in: `tributary.runtime.sync_runs`, …
pub const RUNTIME_CATALOG: &str = "tributary";

/// The schema of [`RUNTIME_CATALOG`].
pub const RUNTIME_SCHEMA: &str = "runtime";

/// The catalog materialized tables are queried in: `materialized.public.<name>`.
pub const CATALOG: &str = "materialized";

/// The schema of [`CATALOG`].
pub const SCHEMA: &str = "public";

/// A configured materialization and where its table lives.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its settings.
    pub config: MaterializationConfig,
    /// The folder URL of its Delta table.
    pub target: Url,
}

impl Job {
    /// The materializations of `config`, with their targets resolved.
    pub fn all(config: &Config) -> Result<Vec<Job>, String> {
        config
            .materializations
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let target = target::resolve(m, config)
                    .map_err(|e| format!("materializations[{i}].target: {e}"))?;
                Ok(Job {
                    config: m.clone(),
                    target,
                })
            })
            .collect()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The folder URL of its quarantine table, beside its table: `<target>__quarantine/`.
    pub fn quarantine(&self) -> Url {
        let mut url = self.target.clone();
        let path = format!("{}__quarantine/", self.target.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

/// The materializations of an engine and what is known of their runs.
#[derive(Debug)]
pub struct Materializer {
    jobs: Arc<[Job]>,
    locks: PathBuf,
    spool: PathBuf,
    history: History,
    health: Health,
    runtime: Arc<RuntimeEnv>,
}

impl Materializer {
    /// The materializations of `config`, their history and locks under its data folder,
    /// their tables opened through `runtime`'s object stores.
    pub fn new(config: &Config, runtime: Arc<RuntimeEnv>) -> Result<Materializer, String> {
        let jobs = Job::all(config)?;
        let data_dir = config.dir.join(&config.server.data_dir).join("_tributary");
        let history = tributary_files::resolve_root(
            &data_dir.join("sync_runs").to_string_lossy(),
            &config.dir,
        )
        .map_err(|e| format!("server.data_dir: {e}"))?;
        Ok(Materializer {
            jobs: jobs.into(),
            locks: data_dir.join("locks"),
            spool: data_dir.join("spool"),
            history: History::new(history, Arc::clone(&runtime)),
            health: Health::default(),
            runtime,
        })
    }

    /// The configured materializations, in config order.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The run history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// What is known of each materialization, filled from the history on first use.
    pub async fn health(&self) -> &Health {
        self.health.load(&self.history).await;
        &self.health
    }

    /// What is known of each materialization, as loaded so far (never waits).
    pub fn health_now(&self) -> &Health {
        &self.health
    }

    /// The object stores tables are opened through.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// Where a run of `name` spools its rows; its lock makes the file its own.
    fn spool_path(&self, name: &str) -> PathBuf {
        self.spool.join(format!("{name}.arrow"))
    }

    /// Takes the run lock of materialization `name`, failing at once if it is held.
    fn lock(&self, name: &str) -> Result<lock::JobLock, SyncError> {
        lock::acquire(&self.locks, name).map_err(|e| match e {
            lock::LockError::Held(lock) => SyncError::Running {
                name: name.to_string(),
                lock,
            },
            lock::LockError::Io(path, e) => SyncError::Invalid {
                name: name.to_string(),
                message: format!("cannot take the run lock {}: {e}", path.display()),
            },
        })
    }

    /// Records a finished run in the health and the history. The history failing to take
    /// it is logged, not raised: the run itself committed (or failed) already.
    async fn finished(&self, record: RunRecord) {
        self.health().await.finished(&record);
        if let Err(e) = self.history.record(std::slice::from_ref(&record)).await {
            tracing::warn!(history = %self.history.url(), error = %e, "cannot record the run in the history");
        }
    }
}

/// Why a run failed. No data and no state were committed (a pause, a widening or a
/// quarantine commit may have been): the next run reads what this one would have.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No materialization has that name.
    #[error("no materialization is named `{0}` (configured: {1})")]
    Unknown(String, String),
    /// The source could not be read.
    #[error("materialization `{name}`: reading `{from}`: {source}")]
    Source {
        /// The materialization.
        name: String,
        /// Its `from`.
        from: String,
        /// Why.
        source: DataFusionError,
    },
    /// The settings do not fit the source (e.g. the cursor column is missing).
    #[error("materialization `{name}`: {message}")]
    Invalid {
        /// The materialization.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The Delta table could not be read or written.
    #[error("materialization `{name}`: writing {target}: {source}")]
    Target {
        /// The materialization.
        name: String,
        /// The table's URL.
        target: Url,
        /// Why (boxed: Delta's errors are large).
        source: Box<DeltaTableError>,
    },
    /// The source's columns changed and the drift policy (or the change) stops the run.
    #[error("materialization `{name}`: {message}")]
    Drift {
        /// The materialization.
        name: String,
        /// What changed and why the run stopped.
        message: String,
    },
    /// The materialization is paused (policy `pause` met drift); the copy stays as it was.
    #[error(
        "materialization `{name}` is paused: the source's columns changed ({reason}); fix the source or the `drift` policy, then run `tributary sync {name} --resume`"
    )]
    Paused {
        /// The materialization.
        name: String,
        /// What drifted.
        reason: String,
    },
    /// Another run of the materialization is going on (in this process or another).
    #[error(
        "materialization `{name}` is already running (another run holds {}); runs of one materialization never overlap",
        lock.display()
    )]
    Running {
        /// The materialization.
        name: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The run was stopped because the server is shutting down.
    #[error("materialization `{name}`: stopped, the server is shutting down")]
    Cancelled {
        /// The materialization.
        name: String,
    },
    /// The run took longer than its `timeout`.
    #[error("materialization `{name}`: timed out after {}", humantime::format_duration(*.timeout))]
    TimedOut {
        /// The materialization.
        name: String,
        /// Its `timeout`.
        timeout: Duration,
    },
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The materialization.
    pub name: String,
    /// The run number (committed runs so far, this one included when it committed).
    pub run: i64,
    /// Rows read from the source.
    pub rows_read: u64,
    /// Arrow bytes read from the source.
    pub bytes_read: u64,
    /// What the commit changed.
    pub written: Written,
    /// The table version committed; `None` when there was nothing new to commit.
    pub version: Option<u64>,
    /// The cursor value now stored, as text.
    pub watermark: Option<String>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(
                f,
                "{}: run {} committed version {v}: {} rows read, {} inserted, {} updated, {} deleted",
                self.name,
                self.run,
                self.rows_read,
                self.written.inserted,
                self.written.updated,
                self.written.deleted
            )?,
            None => write!(f, "{}: nothing new", self.name)?,
        }
        if self.written.quarantined > 0 {
            write!(f, ", {} quarantined", self.written.quarantined)?;
        }
        if let Some(w) = &self.watermark {
            write!(f, "; cursor at {w}")?;
        }
        write!(f, " ({:.2?})", self.elapsed)
    }
}

/// Finds the materialization `name`.
pub fn job<'a>(engine: &'a Engine, name: &str) -> Result<&'a Job, SyncError> {
    engine
        .materializations()
        .iter()
        .find(|j| j.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = engine.materializations().iter().map(Job::name).collect();
            SyncError::Unknown(
                name.to_string(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
            )
        })
}

impl SyncError {
    /// Whether trying again later may succeed (the source or target failing, a timeout),
    /// as opposed to settings or drift that fail the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SyncError::Source { .. } | SyncError::Target { .. } | SyncError::TimedOut { .. }
        )
    }
}

/// How a run is started.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Resume a paused materialization (its drift is checked again under the current
    /// policy).
    pub resume: bool,
    /// What started it (recorded in the history).
    pub trigger: Trigger,
    /// Which try this is: 1 (or 0) for the first, 2 for the first retry, …
    pub attempt: u32,
    /// Stops the run when it turns `true` (server shutdown); nothing is committed then.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Runs `job` once, counting what it reads in `counters`, and records the run in the
/// history (`tributary.runtime.sync_runs`), failed or not. Fails at once with
/// [`SyncError::Running`] while another run of `job` goes on, here or in another process.
pub async fn sync(
    engine: &Engine,
    job: &Job,
    counters: Arc<Counters>,
    options: RunOptions,
) -> Result<RunReport, SyncError> {
    let name = job.name().to_string();
    let materializer = engine.materializer();
    let _lock = materializer.lock(&name)?;
    let started = SystemTime::now();
    materializer.health().await.started(&name, started);

    let span = tracing::info_span!("sync", materialization = %name);
    let work = tracing::Instrument::instrument(
        run(engine, job, Arc::clone(&counters), options.resume),
        span,
    );
    let bounded = async {
        match job.config.timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, work)
                    .await
                    .map_err(|_| SyncError::TimedOut {
                        name: name.clone(),
                        timeout,
                    })?
            }
            None => work.await,
        }
    };
    let result = match options.cancel.clone() {
        Some(mut cancel) => {
            let cancelled = async move {
                // A dropped sender means nobody will cancel.
                if cancel.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                result = bounded => result,
                () = cancelled => Err(SyncError::Cancelled { name: name.clone() }),
            }
        }
        None => bounded.await,
    };

    let record = RunRecord {
        job: name,
        run: result.as_ref().ok().and_then(|r| r.version.map(|_| r.run)),
        trigger: options.trigger,
        attempt: options.attempt.max(1),
        started,
        ended: SystemTime::now(),
        status: match &result {
            Ok(_) => RunStatus::Succeeded,
            Err(SyncError::Paused { .. }) => RunStatus::Paused,
            Err(_) => RunStatus::Failed,
        },
        rows_read: counters.rows(),
        bytes_read: counters.bytes(),
        written: result.as_ref().map(|r| r.written).unwrap_or_default(),
        version: result.as_ref().ok().and_then(|r| r.version),
        watermark: result.as_ref().ok().and_then(|r| r.watermark.clone()),
        error: result.as_ref().err().map(ToString::to_string),
    };
    materializer.finished(record).await;
    result
}

async fn run(
    engine: &Engine,
    job: &Job,
    counters: Arc<Counters>,
    resume: bool,
) -> Result<RunReport, SyncError> {
    let clock = Instant::now();
    let config = &job.config;
    let name = config.name.as_str();
    let source_error = |source| SyncError::Source {
        name: name.to_string(),
        from: config.from.clone(),
        source,
    };
    let target_error = |source| match counters.stream_failure() {
        // The writer met the failure in the stream it was reading.
        Some(StreamFailure::Source(failure)) => SyncError::Source {
            name: name.to_string(),
            from: config.from.clone(),
            source: DataFusionError::External(failure.into()),
        },
        Some(StreamFailure::Invalid(message)) => SyncError::Invalid {
            name: name.to_string(),
            message,
        },
        None => SyncError::Target {
            name: name.to_string(),
            target: job.target.clone(),
            source: Box::new(source),
        },
    };
    let invalid = |message| SyncError::Invalid {
        name: name.to_string(),
        message,
    };

    let mut table = target::open(&engine.context().runtime_env(), &job.target)
        .await
        .map_err(target_error)?;
    if let Some(reason) = drift::paused(&table) {
        if !resume {
            return Err(SyncError::Paused {
                name: name.to_string(),
                reason,
            });
        }
        table = drift::set_paused(table, "").await.map_err(target_error)?;
        tracing::info!("resumed");
    }
    let state = State::load(&table, name).await.map_err(target_error)?;
    let mut df = source::plan(engine, &config.from, config.accelerate)
        .await
        .map_err(source_error)?;
    let (key, cursor) = key_and_cursor(config, &df).map_err(invalid)?;
    let mut adaptation = Adaptation::default();
    if table.version().is_some() {
        let full = config.mode == RefreshMode::Full;
        match drift::decide(&table, df, config.drift, full).map_err(target_error)? {
            Decision::Fail(message) => {
                return Err(SyncError::Drift {
                    name: name.to_string(),
                    message,
                });
            }
            Decision::Pause(reason) => {
                tracing::warn!(drift = %reason, "paused: the source's columns changed");
                drift::set_paused(table, &reason)
                    .await
                    .map_err(target_error)?;
                return Err(SyncError::Paused {
                    name: name.to_string(),
                    reason,
                });
            }
            Decision::Proceed {
                df: adapted,
                adaptation: a,
            } => {
                df = *adapted;
                adaptation = a;
            }
        }
    }
    if let Some(note) = &adaptation.note {
        tracing::warn!(drift = %note, "the source's columns changed");
    }
    if !adaptation.widen.is_empty() {
        let note = adaptation.note.as_deref().unwrap_or("widened");
        table = drift::widen(table, &adaptation.widen, note)
            .await
            .map_err(target_error)?;
    }
    let mut next = State {
        runs: state.runs + 1,
        watermark: state.watermark,
    };
    let merge = Change::Merge {
        key,
        delete_missing: config.delete_missing,
        frozen: adaptation.absent,
        added: adaptation.added,
    };
    let mut watermark_text = None;
    // Held until the writer has read it.
    let mut spooled: Option<Spool> = None;
    let change = match (&cursor, config.mode) {
        (None, RefreshMode::Full) => Change::Replace,
        (None, RefreshMode::Append) => Change::Append,
        (None, RefreshMode::Upsert) => merge,
        // key_and_cursor refuses it; kept as an error rather than a panic.
        (None, RefreshMode::Incremental) => {
            return Err(invalid("`incremental` mode needs a `cursor`".to_string()));
        }
        (Some(column), mode) => {
            let cursor = Cursor::new(column, df.schema()).map_err(invalid)?;
            let (low, inclusive) = match (state.watermark, config.lookback) {
                (Some(w), Some(lookback)) => {
                    (Some(cursor.minus(w, lookback).map_err(invalid)?), true)
                }
                (w, _) => (w, false),
            };
            let changed =
                source::changed(df.clone(), &cursor, low, inclusive).map_err(source_error)?;
            let reread_costly = changed
                .clone()
                .create_physical_plan()
                .await
                .map(|plan| spool::costly_to_reread(&plan))
                .map_err(source_error)?;
            let high = if reread_costly {
                let path = engine.materializer().spool_path(name);
                let (filled, high) = Spool::fill(changed, &cursor, path)
                    .await
                    .map_err(source_error)?;
                spooled = Some(filled);
                high
            } else {
                source::upper_bound(changed, &cursor)
                    .await
                    .map_err(source_error)?
            };
            let Some(high) = high else {
                return Ok(RunReport {
                    name: name.to_string(),
                    run: state.runs,
                    rows_read: 0,
                    bytes_read: 0,
                    written: Written::default(),
                    version: None,
                    watermark: state.watermark.map(|w| cursor.display(w)),
                    elapsed: clock.elapsed(),
                });
            };
            df = match &spooled {
                Some(spool) => spool.read(engine.context()).await.map_err(source_error)?,
                None => source::between(df, &cursor, low, inclusive, high).map_err(source_error)?,
            };
            let high = high.max(state.watermark.unwrap_or(i64::MIN));
            next.watermark = Some(high);
            watermark_text = Some(cursor.display(high));
            match (mode, low) {
                (RefreshMode::Upsert, _) => merge,
                (_, Some(low)) if inclusive => Change::ReplaceFrom {
                    cursor: cursor.name().to_string(),
                    from: cursor.literal(low),
                },
                _ => Change::Append,
            }
        }
    };
    tracing::info!(run = next.runs, change = ?change, "sync starting");

    let conform = if adaptation.keep.is_empty() {
        None
    } else {
        let conform = quarantine::Conform::new(df.schema().as_arrow(), adaptation.keep.clone())
            .map_err(source_error)?;
        let misfit = match config.on_invalid {
            OnInvalid::Fail => quarantine::Misfit::Fail,
            OnInvalid::Quarantine => quarantine::Misfit::Quarantine(quarantine::Quarantine::new(
                job.quarantine(),
                engine.context().runtime_env(),
                name,
                next.runs,
            )),
        };
        Some((conform, misfit))
    };
    let input = source::stream_plan(df, Arc::clone(&counters), conform)
        .await
        .map_err(source_error)?;
    let metadata = serde_json::json!({
        "materialization": name,
        "run": next.runs,
        "mode": format!("{:?}", config.mode).to_lowercase(),
        "watermark": watermark_text,
        "drift": adaptation.note,
    });
    let commit = CommitProperties::default()
        .with_application_transactions(next.transactions(name))
        .with_metadata([("tributary".to_string(), metadata)]);
    let (table, written) = write::commit(
        table,
        input,
        &counters,
        change,
        &config.partition_by,
        adaptation.schema,
        commit,
    )
    .await
    .map_err(target_error)?;
    let mut version = table.version();
    if !adaptation.deprecate.is_empty() {
        // A commit of its own after the data, which is committed: failing here does not
        // fail the run (a retry would write its rows again); the next run finds the
        // columns unmarked and marks them.
        match drift::deprecate(table, &adaptation.deprecate, next.runs).await {
            Ok(table) => version = table.version(),
            Err(e) => {
                tracing::warn!(columns = ?adaptation.deprecate, error = %e, "cannot mark the columns the source dropped as deprecated; the next run will")
            }
        }
    }
    if source::crash_point("committed").is_some() {
        std::process::abort();
    }
    Ok(RunReport {
        name: name.to_string(),
        run: next.runs,
        rows_read: counters.rows(),
        bytes_read: counters.bytes(),
        written,
        version,
        watermark: watermark_text,
        elapsed: clock.elapsed(),
    })
}

/// The key and cursor of a run: as configured, or else as the `from` table declares them
/// (its primary key; a REST table's `cursor`). A cursor is taken from the table for
/// `incremental` and for `upsert` (which then reads only the changes) unless
/// `delete_missing` needs every row.
fn key_and_cursor(
    config: &MaterializationConfig,
    df: &datafusion::prelude::DataFrame,
) -> Result<(Vec<String>, Option<String>), String> {
    let table = source::scanned_table(df);
    let mut key = config.key.clone();
    if key.is_empty() && config.mode == RefreshMode::Upsert {
        key = table
            .as_ref()
            .and_then(source::primary_key)
            .ok_or_else(|| {
                format!(
                    "`upsert` mode needs the key columns: `{}` declares no primary key; set `key`",
                    config.from.trim()
                )
            })?;
    }
    let mut cursor = config.cursor.clone();
    let reads_changes = match config.mode {
        RefreshMode::Incremental => true,
        RefreshMode::Upsert => !config.delete_missing,
        RefreshMode::Full | RefreshMode::Append => false,
    };
    if cursor.is_none() && reads_changes {
        cursor = table
            .as_ref()
            .and_then(tributary_rest::RestTable::cursor_of);
    }
    if cursor.is_none() && config.mode == RefreshMode::Incremental {
        return Err(format!(
            "`incremental` mode needs a cursor column: `{}` declares none; set `cursor`",
            config.from.trim()
        ));
    }
    Ok((key, cursor))
}

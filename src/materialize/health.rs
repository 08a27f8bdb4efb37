//! What is known of each materialization's runs and reads, shared by the runs, the
//! scheduler, freshness routing, `tributary.runtime.materializations` and the metrics.
//!
//! It lives in memory and is filled from the run history on first use, so a restarted
//! server knows how fresh each copy is before its first run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::history::{History, Latest, RunRecord, RunStatus};

/// How a query on an accelerated table was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// From the copy, fresh enough.
    Copy,
    /// From the source, live: the copy was too old (or has no data yet).
    Live,
    /// From the copy although too old, because the source did not answer.
    Fallback,
}

impl Route {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Copy => "copy",
            Route::Live => "live",
            Route::Fallback => "fallback",
        }
    }
}

/// The last run of a materialization.
#[derive(Debug, Clone)]
pub struct LastRun {
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// How it ended.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
}

/// One materialization's health.
#[derive(Debug, Clone, Default)]
pub struct JobHealth {
    /// When the run going on now started.
    pub running_since: Option<SystemTime>,
    /// The last finished run.
    pub last_run: Option<LastRun>,
    /// When the last successful run started: the copy holds the source as of then.
    pub last_success: Option<SystemTime>,
    /// The cursor value the last successful run stored.
    pub watermark: Option<String>,
    /// Runs failed or paused since the last success.
    pub failures: u32,
    /// When the scheduler runs it next.
    pub next_run: Option<SystemTime>,
    /// Runs finished in this process, by status.
    pub runs: HashMap<RunStatus, u64>,
    /// Queries on its accelerated table in this process, by route.
    pub routes: HashMap<Route, u64>,
}

impl JobHealth {
    /// How old the copy's data is at `now`; `None` before the first successful run.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        self.last_success
            .map(|s| now.duration_since(s).unwrap_or_default())
    }

    fn merge(&mut self, latest: &Latest) {
        if self
            .last_run
            .as_ref()
            .is_none_or(|run| run.started < latest.started)
        {
            self.last_run = Some(LastRun {
                started: latest.started,
                ended: latest.ended,
                status: latest.status,
                error: latest.error.clone(),
            });
            self.failures = latest.failures;
        }
        if latest.success > self.last_success {
            self.last_success = latest.success;
            self.watermark = latest.watermark.clone();
        }
    }
}

/// The health of every materialization.
#[derive(Debug, Default)]
pub struct Health {
    jobs: Mutex<HashMap<String, JobHealth>>,
    loaded: tokio::sync::OnceCell<()>,
}

impl Health {
    fn update<T>(&self, job: &str, f: impl FnOnce(&mut JobHealth) -> T) -> T {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        f(jobs.entry(job.to_string()).or_default())
    }

    /// Fills in what `history` knows, once per process (later calls return at once); a
    /// read that failed is tried again by the next call.
    pub async fn load(&self, history: &History) {
        let _ = self
            .loaded
            .get_or_try_init(|| async {
                if self.reload(history).await {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .await;
    }

    /// Reads `history` (again, if it was loaded), to see runs other processes recorded.
    pub async fn refresh(&self, history: &History) {
        if self.loaded.initialized() {
            self.reload(history).await;
        } else {
            self.load(history).await;
        }
    }

    /// Reads `history` again, e.g. after another process committed a run; `false` if it
    /// could not be read (logged).
    pub async fn reload(&self, history: &History) -> bool {
        match history.latest().await {
            Ok(latest) => {
                for (job, latest) in &latest {
                    self.update(job, |h| h.merge(latest));
                }
                true
            }
            Err(e) => {
                tracing::warn!(history = %history.url(), error = %e, "cannot read the run history");
                false
            }
        }
    }

    /// A run of `job` started at `at`.
    pub fn started(&self, job: &str, at: SystemTime) {
        self.update(job, |h| h.running_since = Some(at));
    }

    /// A run ended as `record` says.
    pub fn finished(&self, record: &RunRecord) {
        self.update(&record.job, |h| {
            h.running_since = None;
            h.last_run = Some(LastRun {
                started: record.started,
                ended: record.ended,
                status: record.status,
                error: record.error.clone(),
            });
            *h.runs.entry(record.status).or_default() += 1;
            if record.status == RunStatus::Succeeded {
                h.failures = 0;
                if h.last_success < Some(record.started) {
                    h.last_success = Some(record.started);
                    h.watermark.clone_from(&record.watermark);
                }
            } else {
                h.failures = h.failures.saturating_add(1);
            }
        });
    }

    /// The scheduler runs `job` next at `at`.
    pub fn scheduled(&self, job: &str, at: Option<SystemTime>) {
        self.update(job, |h| h.next_run = at);
    }

    /// A query on `job`'s accelerated table went `route`.
    pub fn routed(&self, job: &str, route: Route) {
        self.update(job, |h| *h.routes.entry(route).or_default() += 1);
    }

    /// What is known of `job`.
    pub fn get(&self, job: &str) -> JobHealth {
        self.update(job, |h| h.clone())
    }
}

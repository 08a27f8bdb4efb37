//! The scheduler of `tributary serve`: runs each scheduled materialization on its
//! `schedule`, one run at a time per materialization, retrying transient failures with
//! exponential backoff and jitter.
//!
//! A tick that comes while the previous run is still going is skipped, not queued: the
//! next run reads everything new anyway. The run lock ([`super::lock`]) also keeps a
//! `tributary sync` in another process from overlapping a scheduled run.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{Counters, Job, RunOptions, SyncError, Trigger, sync};
use crate::Engine;
use crate::config::Schedule;

/// The longest wait between two tries of one run.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How often a maintenance tick that met a run tries again.
const RETRY_LOCK: Duration = Duration::from_secs(60);

/// How often the run history is compacted.
const HISTORY_MAINTENANCE: Duration = Duration::from_secs(24 * 3600);

/// The most a start is moved by jitter.
const MAX_JITTER: Duration = Duration::from_secs(30);

/// Runs the scheduled materializations of `engine` until `shutdown` turns `true`; runs
/// going on then are stopped (nothing is committed) and recorded as failed runs whose error
/// says so.
pub async fn run_schedules(engine: Engine, shutdown: watch::Receiver<bool>) {
    let jobs = engine.materializations();
    let mut tasks: Vec<_> = jobs
        .iter()
        .filter(|j| j.config.schedule.is_some())
        .map(|job| tokio::spawn(run_job(engine.clone(), job.clone(), shutdown.clone())))
        .collect();
    tasks.extend(
        jobs.iter()
            .filter(|j| j.config.optimize.is_some())
            .map(|job| {
                tokio::spawn(run_maintenance(
                    engine.clone(),
                    job.clone(),
                    shutdown.clone(),
                ))
            }),
    );
    // The history gains a file per run: compacted daily once anything is maintained, with
    // the shortest retention of those.
    if let Some(retention) = jobs
        .iter()
        .filter(|j| j.config.optimize.is_some())
        .map(|j| j.config.vacuum_retention)
        .min()
    {
        tasks.push(tokio::spawn(run_history_maintenance(
            engine.clone(),
            retention,
            shutdown.clone(),
        )));
    }
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a materialization's scheduler stopped");
        }
    }
}

/// Waits until `at`; `false` if shutdown came first.
async fn sleep_until(at: SystemTime, shutdown: &mut watch::Receiver<bool>) -> bool {
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = shutdown.wait_for(|s| *s) => false,
    }
}

async fn run_job(engine: Engine, job: Job, mut shutdown: watch::Receiver<bool>) {
    let Some(schedule) = job.config.schedule.clone() else {
        return;
    };
    let name = job.name().to_string();
    let health = engine.materializer().health().await;
    let last_success = health.get(&name).last_success;
    let mut tick = first_tick(&schedule, last_success, SystemTime::now());
    loop {
        let Some(at) = tick else {
            tracing::warn!(materialization = %name, %schedule, "the schedule has no next time; not scheduling");
            health.scheduled(&name, None);
            return;
        };
        health.scheduled(&name, Some(at));
        if !sleep_until(at, &mut shutdown).await {
            return;
        }
        health.scheduled(&name, None);
        if !run_with_retries(&engine, &job, &mut shutdown).await {
            return;
        }
        let now = SystemTime::now();
        let (next, skipped) = next_tick(&schedule, at, now);
        if skipped > 0 {
            tracing::warn!(materialization = %name, skipped, "the run outlasted its schedule; skipped the ticks that came meanwhile");
        }
        tick = next;
    }
}

/// Compacts and vacuums `job`'s table on its `optimize` schedule. A tick meeting a run of
/// the job waits for it (trying each minute) until the next tick is due.
async fn run_maintenance(engine: Engine, job: Job, mut shutdown: watch::Receiver<bool>) {
    let Some(schedule) = job.config.optimize.clone() else {
        return;
    };
    let name = job.name().to_string();
    let mut tick = first_tick(&schedule, Some(SystemTime::now()), SystemTime::now());
    while let Some(at) = tick {
        if !sleep_until(at, &mut shutdown).await {
            return;
        }
        let (next, _) = next_tick(&schedule, at, SystemTime::now());
        loop {
            // Stopping mid-way is safe: nothing is committed, and the files written so
            // far are vacuumed later.
            let result = tokio::select! {
                result = super::maintain(&engine, &job) => result,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match result {
                Ok(done) => {
                    for d in done {
                        tracing::info!(materialization = %name, "{d}");
                    }
                }
                Err(SyncError::Running { .. })
                    if next.is_none_or(|n| SystemTime::now() + RETRY_LOCK < n) =>
                {
                    if !sleep_until(SystemTime::now() + RETRY_LOCK, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(e @ SyncError::Running { .. }) => {
                    tracing::info!(materialization = %name, "maintenance tick skipped: {e}");
                }
                Err(e) => {
                    tracing::warn!(materialization = %name, error = %e, "maintenance failed");
                }
            }
            break;
        }
        tick = next_tick(&schedule, at, SystemTime::now()).0;
    }
}

/// Compacts and vacuums the run history once a day.
async fn run_history_maintenance(
    engine: Engine,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if !sleep_until(SystemTime::now() + HISTORY_MAINTENANCE, &mut shutdown).await {
            return;
        }
        let result = tokio::select! {
            result = super::maintain_history(&engine, retention) => result,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match result {
            Ok(done) => tracing::info!("{done}"),
            Err(e) => tracing::warn!(error = %e, "run history maintenance failed"),
        }
    }
}

/// One scheduled run and its retries; `false` if shutdown came.
async fn run_with_retries(
    engine: &Engine,
    job: &Job,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let name = job.name();
    let mut attempt = 1;
    loop {
        let options = RunOptions {
            resume: false,
            trigger: Trigger::Schedule,
            attempt,
            cancel: Some(shutdown.clone()),
        };
        match sync(engine, job, Arc::new(Counters::default()), options).await {
            Ok(report) => {
                tracing::info!(materialization = %name, attempt, "{report}");
                return true;
            }
            Err(SyncError::Cancelled { .. }) => return false,
            Err(e @ SyncError::Running { .. }) => {
                tracing::info!(materialization = %name, "tick skipped: {e}");
                return true;
            }
            Err(e) if e.is_transient() && attempt <= job.config.retries => {
                let wait = backoff(job.config.retry_backoff, attempt);
                tracing::warn!(
                    materialization = %name,
                    attempt,
                    retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                    error = %e,
                    "run failed; retrying"
                );
                if !sleep_until(SystemTime::now() + wait, shutdown).await {
                    return false;
                }
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(materialization = %name, attempt, error = %e, "run failed");
                return true;
            }
        }
    }
}

/// The wait before try `attempt + 1`: `base` doubled per try, within ±50 % so that jobs
/// failing together do not retry together, at most [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    // Capped before the jitter too, so the product cannot overflow.
    doubled
        .min(MAX_BACKOFF * 2)
        .mul_f64(0.5 + tributary_core::random_fraction())
        .min(MAX_BACKOFF)
}

/// A start delay spreading jobs that share a schedule: up to a tenth of the `period`,
/// at most [`MAX_JITTER`].
fn jitter(period: Duration) -> Duration {
    (period / 10)
        .min(MAX_JITTER)
        .mul_f64(tributary_core::random_fraction())
}

fn next_cron(expression: &str, after: SystemTime) -> Option<SystemTime> {
    let cron = Schedule::parse_cron(expression).ok()?;
    let after: DateTime<Utc> = after.into();
    let next = cron.find_next_occurrence(&after, false).ok()?;
    let period = cron
        .find_next_occurrence(&next, false)
        .ok()
        .and_then(|n| (n - next).to_std().ok())
        .unwrap_or_default();
    Some(SystemTime::from(next) + jitter(period))
}

/// The first run: for `every`, one interval after the last success (at once, give or take
/// jitter, if that has passed or there was none); for `cron`, its next time.
fn first_tick(
    schedule: &Schedule,
    last_success: Option<SystemTime>,
    now: SystemTime,
) -> Option<SystemTime> {
    match schedule {
        Schedule::Every(every) => {
            let due = last_success.map_or(now, |s| s + *every).max(now);
            Some(due + jitter(*every))
        }
        Schedule::Cron(expression) => next_cron(expression, now),
    }
}

/// The tick after `previous`, skipping those already past at `now` (a run that outlasted
/// its interval); also how many were skipped.
fn next_tick(
    schedule: &Schedule,
    previous: SystemTime,
    now: SystemTime,
) -> (Option<SystemTime>, u64) {
    match schedule {
        Schedule::Every(every) => {
            let mut next = previous + *every;
            let mut skipped = 0;
            if next < now {
                let behind = now.duration_since(next).unwrap_or_default();
                let steps = behind.as_nanos() / every.as_nanos().max(1) + 1;
                skipped = u64::try_from(steps).unwrap_or(u64::MAX);
                next += every.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
            }
            (Some(next), skipped)
        }
        Schedule::Cron(expression) => (next_cron(expression, now.max(previous)), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_ceiling() {
        let base = Duration::from_secs(10);
        for attempt in 1..=4 {
            let wait = backoff(base, attempt);
            let nominal = base * (1 << (attempt - 1));
            assert!(
                wait >= nominal / 2 && wait < nominal * 3 / 2,
                "{attempt}: {wait:?}"
            );
        }
        assert!(backoff(base, 30) < MAX_BACKOFF * 3 / 2);
    }

    #[test]
    fn every_skips_ticks_a_long_run_overlapped() {
        let every = Schedule::Every(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Finished within the interval: the next tick is one interval on.
        assert_eq!(
            next_tick(&every, t0, t0 + Duration::from_secs(10)),
            (Some(t0 + Duration::from_secs(60)), 0)
        );
        // Ran 150 s: the ticks at 60 s and 120 s are skipped, not run back to back.
        assert_eq!(
            next_tick(&every, t0, t0 + Duration::from_secs(150)),
            (Some(t0 + Duration::from_secs(180)), 2)
        );
    }

    #[test]
    fn first_every_tick_follows_the_last_success() {
        let every = Schedule::Every(Duration::from_secs(600));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let recent = now - Duration::from_secs(100);
        let first = first_tick(&every, Some(recent), now).unwrap();
        let due = recent + Duration::from_secs(600);
        assert!(first >= due && first <= due + Duration::from_secs(60));
        let never = first_tick(&every, None, now).unwrap();
        assert!(never >= now && never <= now + Duration::from_secs(60));
    }

    #[test]
    fn cron_ticks_fall_on_the_expression() {
        let cron = Schedule::Cron("0 * * * *".into());
        let now: SystemTime = "2026-01-01T10:20:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .into();
        let next: DateTime<Utc> = first_tick(&cron, None, now).unwrap().into();
        let hour: DateTime<Utc> = "2026-01-01T11:00:00Z".parse().unwrap();
        // Jitter is at most a tenth of the hour, capped at 30 s.
        assert!(
            next >= hour && next <= hour + chrono::Duration::seconds(30),
            "{next}"
        );
    }
}

//! Progress of a running sync: a bar on a terminal, a log line every few seconds
//! otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::source::Counters;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressDisplay {
    /// A live line on standard error (a terminal).
    Bar,
    /// `info` log lines every ten seconds.
    Log,
}

/// Shows the progress of one run until dropped.
pub struct ProgressReporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl ProgressReporter {
    /// Starts showing `counters` of materialization `name`.
    pub fn start(name: &str, counters: Arc<Counters>, display: ProgressDisplay) -> Self {
        let started = Instant::now();
        let name = name.to_string();
        match display {
            ProgressDisplay::Bar => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(name);
                let shown = bar.clone();
                let task = tokio::spawn(async move {
                    loop {
                        shown.set_message(summary(&counters, started.elapsed()));
                        shown.tick();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                ProgressReporter {
                    task,
                    bar: Some(bar),
                }
            }
            ProgressDisplay::Log => {
                let task = tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_secs(10));
                    every.tick().await;
                    loop {
                        every.tick().await;
                        tracing::info!(materialization = %name, progress = %summary(&counters, started.elapsed()), "sync running");
                    }
                });
                ProgressReporter { task, bar: None }
            }
        }
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1,234,567 rows, 96.1 MiB, 412,000 rows/s`.
fn summary(counters: &Counters, elapsed: Duration) -> String {
    let rows = counters.rows();
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "{} rows, {}, {} rows/s",
        indicatif::HumanCount(rows),
        indicatif::HumanBytes(counters.bytes()),
        indicatif::HumanCount((rows as f64 / secs) as u64)
    )
}

//! DuckDB's answers and times over a placement, from `benches/tpch/duckdb_tpch.py` run by
//! a Python that has `duckdb` and its scanner extensions' wheels.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::FileReader;
use serde::Deserialize;

use super::{Dataset, Placement, Query};

/// A Python with DuckDB and its scanners.
#[derive(Debug, Clone)]
pub struct DuckDb {
    python: PathBuf,
    threads: usize,
    timeout: Option<Duration>,
}

/// One query's outcome in DuckDB.
#[derive(Debug, Deserialize)]
pub struct DuckDbRun {
    /// The query's name (`q01`).
    pub name: String,
    /// Seconds per run.
    pub seconds: Vec<f64>,
    /// DuckDB's error, if the query failed.
    pub error: Option<String>,
    /// The answer, when it was asked for.
    #[serde(skip)]
    pub answer: Option<Vec<RecordBatch>>,
}

impl DuckDb {
    /// DuckDB run by `python` with `threads` threads.
    pub fn new(python: impl Into<PathBuf>, threads: usize) -> DuckDb {
        DuckDb {
            python: python.into(),
            threads,
            timeout: None,
        }
    }

    /// Interrupts queries still running after `timeout` (they are reported as errors).
    pub fn with_timeout(mut self, timeout: Duration) -> DuckDb {
        self.timeout = Some(timeout);
        self
    }

    /// Runs `queries` over `placement` of `data`, each `runs` times, calling `progress` as
    /// each finishes; keeps the answers (read back from Arrow IPC files) when `answers`.
    pub fn run(
        &self,
        data: &Dataset,
        placement: &Placement,
        queries: &[Query],
        runs: usize,
        answers: bool,
        mut progress: impl FnMut(&DuckDbRun),
    ) -> Vec<DuckDbRun> {
        let mut session = self.session(data, placement, runs, answers);
        queries
            .iter()
            .map(|query| {
                let outcome = session.run(query);
                progress(&outcome);
                outcome
            })
            .collect()
    }

    /// A DuckDB connected to `placement` of `data`, ready to run queries one at a time
    /// (each `runs` times, keeping the answers when `answers`), so that each can be timed
    /// right beside its other contenders.
    pub fn session(
        &self,
        data: &Dataset,
        placement: &Placement,
        runs: usize,
        answers: bool,
    ) -> DuckDbSession {
        let out = tempfile::tempdir().expect("a temporary folder");
        let mut spec = data.duckdb_spec(placement);
        spec["runs"] = runs.max(1).into();
        spec["threads"] = self.threads.into();
        spec["timeout"] = self.timeout.map(|t| t.as_secs_f64()).into();
        spec["out"] = if answers {
            out.path().to_string_lossy().into_owned().into()
        } else {
            serde_json::Value::Null
        };
        let script = crate::workspace_root().join("benches/tpch/duckdb_tpch.py");
        let mut child = Command::new(&self.python)
            .arg(&script)
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        DuckDbSession {
            child,
            stdin: Some(stdin),
            stdout,
            out,
            answers,
        }
    }
}

/// A running DuckDB runner (see [`DuckDb::session`]); it ends when dropped.
pub struct DuckDbSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    out: tempfile::TempDir,
    answers: bool,
}

impl DuckDbSession {
    /// Runs `query` and waits for its outcome.
    pub fn run(&mut self, query: &Query) -> DuckDbRun {
        let request = serde_json::json!({"name": query.name, "path": query.path});
        let stdin = self.stdin.as_mut().expect("the runner's input is open");
        if let Err(e) = writeln!(stdin, "{request}").and_then(|()| stdin.flush()) {
            // It ended (connecting failed, say): its status says more than the pipe.
            let status = self.child.wait();
            panic!(
                "the DuckDB runner cannot take {}: {e}; it ended: {status:?}",
                query.name
            );
        }
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("DuckDB runner output");
        assert!(
            read > 0,
            "the DuckDB runner ended before answering {}",
            query.name
        );
        let mut outcome: DuckDbRun = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("DuckDB runner said {line:?}: {e}"));
        if self.answers && outcome.error.is_none() {
            outcome.answer = Some(read_ipc(
                &self.out.path().join(format!("{}.arrow", outcome.name)),
            ));
        }
        outcome
    }
}

impl Drop for DuckDbSession {
    fn drop(&mut self) {
        // Closing its input ends the runner.
        drop(self.stdin.take());
        match self.child.wait() {
            Ok(status) if !status.success() && !std::thread::panicking() => {
                panic!("the DuckDB runner failed: {status}")
            }
            _ => {}
        }
    }
}

fn read_ipc(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    FileReader::try_new(file, None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

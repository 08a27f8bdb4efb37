//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::ExecutionPlan;
use tributary::{Config, Engine};

/// Loads `yaml` as a config file written into `dir`, and builds the engine.
pub fn engine(dir: &Path, yaml: &str) -> Engine {
    let path = dir.join("tributary.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("engine: {e}"))
}

/// Runs one statement and returns its batches.
pub async fn run(engine: &Engine, sql: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    engine.sql(sql).await?.collect().await
}

/// The physical plan of one statement.
pub async fn plan(engine: &Engine, sql: &str) -> Arc<dyn ExecutionPlan> {
    let frame = engine
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    frame
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The physical plan of one statement, one operator per line.
pub async fn physical_plan(engine: &Engine, sql: &str) -> String {
    let plan = plan(engine, sql).await;
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string()
}

/// Runs one statement and renders the result as a text table.
pub async fn table(engine: &Engine, sql: &str) -> String {
    let batches = run(engine, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// Checks `count(*)` over table `t` of 10,007 rows, read by a scan of no columns (the
/// source must not compute it): all of them, and none.
pub async fn assert_counts_without_columns(engine: &Engine) {
    let counts = table(
        engine,
        "SELECT (SELECT count(*) FROM t) AS all_rows, \
         (SELECT count(*) FROM t WHERE id > 20000) AS none",
    )
    .await;
    assert_eq!(
        counts,
        "+----------+------+\n\
         | all_rows | none |\n\
         +----------+------+\n\
         | 10007    | 0    |\n\
         +----------+------+"
    );
}

/// Runs one statement and returns its error message.
pub async fn error(engine: &Engine, sql: &str) -> String {
    match run(engine, sql).await {
        Ok(b) => panic!("{sql} succeeded: {}", pretty_format_batches(&b).unwrap()),
        Err(e) => e.to_string(),
    }
}

/// Every value of row `row` of a result, formatted, with its column name and Arrow type.
pub fn cells(batches: &[RecordBatch], row: usize) -> Vec<(String, String, String)> {
    let batch = &batches[0];
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let formatter =
                arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
            (
                field.name().clone(),
                field.data_type().to_string(),
                formatter.value(row).to_string(),
            )
        })
        .collect()
}

/// Rows that exercise what formats get wrong: NULLs, unicode, quotes, separators,
/// decimals and time zones.
pub fn people() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("balance", DataType::Decimal128(12, 2), true),
        Field::new("born", DataType::Date32, true),
        Field::new(
            "seen",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
        Arc::new(StringArray::from(vec![
            Some("Ada"),
            Some("Zoë \"Z\" O'Brien, Jr."),
            None,
            Some("東京 %_\\"),
        ])),
        Arc::new(Float64Array::from(vec![
            Some(1.5),
            None,
            Some(-0.25),
            Some(1e10),
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(12345), Some(-1), None, Some(99_999_999_999)])
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(Date32Array::from(vec![
            Some(0),
            Some(19_000),
            None,
            Some(-365),
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(1_700_000_000_000_000),
                None,
                Some(0),
                Some(-1_000_000),
            ])
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Writes `batch` as a Parquet file at `path`, creating folders.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = create(path);
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// Writes `batch` as CSV with a header at `path`.
pub fn write_csv(path: &Path, batch: &RecordBatch) {
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(create(path));
    writer.write(batch).unwrap();
}

/// Writes `batch` as newline-delimited JSON at `path`.
pub fn write_ndjson(path: &Path, batch: &RecordBatch) {
    let mut writer = arrow::json::LineDelimitedWriter::new(create(path));
    writer.write(batch).unwrap();
    writer.finish().unwrap();
}

/// Writes `batch` as an Arrow IPC file at `path`.
pub fn write_arrow(path: &Path, batch: &RecordBatch) {
    let mut writer =
        arrow::ipc::writer::FileWriter::try_new(create(path), &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
}

/// Writes `batch` as an Avro object container file at `path`.
pub fn write_avro(path: &Path, batch: &RecordBatch) {
    let mut writer =
        arrow_avro::writer::AvroWriter::new(create(path), batch.schema().as_ref().clone()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
}

fn create(path: &Path) -> std::fs::File {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::File::create(path).unwrap()
}

/// The `tributary` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tributary"))
}

/// A `tributary serve` process started by a test; killed when dropped unless stopped.
pub struct ServeProcess {
    child: std::process::Child,
    stderr: Option<std::io::BufReader<std::process::ChildStderr>>,
    /// The line announcing where it serves.
    pub banner: String,
}

impl ServeProcess {
    /// Runs `tributary <args>` (a `serve` command line) with `env` set and without
    /// `TRIBUTARY_CONFIG`, and waits for its banner.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("TRIBUTARY_CONFIG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        while !banner.contains("serving Flight SQL") {
            banner.clear();
            assert!(
                stderr.read_line(&mut banner).unwrap() > 0,
                "the server exited before serving"
            );
        }
        ServeProcess {
            child,
            stderr: Some(stderr),
            banner,
        }
    }

    /// What follows `marker` in the banner, up to a space or a `/`: an address or a port.
    pub fn after(&self, marker: &str) -> String {
        self.banner
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split([' ', '/']).next())
            .unwrap_or_else(|| panic!("no {marker} in {:?}", self.banner))
            .to_string()
    }

    /// Reads the log away in the background, for a server that logs more than a pipe
    /// holds and is never stopped with [`ServeProcess::stop`].
    pub fn discard_log(&mut self) {
        if let Some(mut stderr) = self.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        }
    }

    /// Stops it with SIGTERM, as a service manager would; its exit status and the rest of
    /// its log.
    pub async fn stop(mut self) -> (std::process::ExitStatus, String) {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let mut stderr = self.stderr.take().expect("the log was not discarded");
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            let mut log = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
            (status, log)
        })
        .await
        .unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Already exited when stopped; otherwise a failed test leaves no server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

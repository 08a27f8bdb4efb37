//! Materializations against the local PostgreSQL and local Delta folders: every mode,
//! the state committed with the data, runs killed at several points and rerun, and the
//! `materialized` catalog.

use std::path::Path;
use std::sync::Arc;

use tributary::materialize::{self, Counters, RunOptions, RunReport, SyncError};
use tributary::{Config, Engine};
use tributary_testkit::postgres::{Schema, url};

use crate::common::{binary, error, run, table};

/// An engine with source `pg` (limited to `schema`, small batches so runs have several)
/// and `materializations` (YAML list items), keeping its data under `dir`.
fn engine(dir: &Path, schema: &str, materializations: &str) -> Engine {
    let yaml = config_yaml(schema, materializations);
    let path = dir.join("tributary.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn config_yaml(schema: &str, materializations: &str) -> String {
    format!(
        "sources:\n  - name: pg\n    kind: postgres\n    url: {}\n    schemas: {{include: [{schema}]}}\n    batch_size: 1000\nmaterializations:\n{materializations}",
        url()
    )
}

/// Runs materialization `name` once with `options`.
pub async fn try_sync(
    engine: &Engine,
    name: &str,
    options: RunOptions,
) -> Result<RunReport, SyncError> {
    let job = materialize::job(engine, name).unwrap();
    materialize::sync(engine, job, Arc::new(Counters::default()), options).await
}

async fn sync(engine: &Engine, name: &str) -> RunReport {
    try_sync(engine, name, RunOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts the materialized table holds exactly the rows of `source` (a query), as a
/// multiset: nothing missing, nothing doubled, every value equal.
async fn assert_same_rows(engine: &Engine, name: &str, source: &str) {
    let copy = format!("materialized.public.{name}");
    let sql = format!(
        "SELECT 'missing' AS side, * FROM (({source}) EXCEPT ALL SELECT * FROM {copy}) \
         UNION ALL SELECT 'extra', * FROM (SELECT * FROM {copy} EXCEPT ALL ({source}))"
    );
    let diff = run(engine, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows: usize = diff.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        rows,
        0,
        "{name} differs from the source:\n{}",
        arrow::util::pretty::pretty_format_batches(&diff).unwrap()
    );
}

async fn count(engine: &Engine, sql: &str) -> String {
    let t = table(engine, sql).await;
    t.lines()
        .nth(3)
        .unwrap()
        .trim_matches(['|', ' '])
        .to_string()
}

const EVERY_KIND: &str = r#"
    CREATE TABLE items (
        id int PRIMARY KEY,
        name text,
        price numeric(12, 3),
        seen timestamptz,
        local_time timestamp,
        day date,
        ok bool,
        ratio float8,
        big bigint
    );
    INSERT INTO items VALUES
        (1, 'it''s "quoted" ünïcödé 東京', 12345678.125, '2024-06-01 12:00:00+02', '2024-06-01 12:00:00.5', '2024-02-29', true, 0.25, 9223372036854775807),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, '', -0.001, '1970-01-01 00:00:00+00', '1999-12-31 23:59:59', '1900-01-01', false, -1e300, -1);
"#;

#[tokio::test]
async fn full_runs_replace_the_copy_atomically_with_every_value_intact() {
    let schema = Schema::create("mz_full").await;
    schema.execute(EVERY_KIND).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        dir.path(),
        &schema.name,
        "  - name: items\n    from: pg.SCHEMA.items\n"
            .replace("SCHEMA", &schema.name)
            .as_str(),
    );
    let e = error(&engine, "SELECT * FROM materialized.public.items").await;
    assert!(
        e.contains("has no data yet: run `tributary sync items`"),
        "{e}"
    );

    let first = sync(&engine, "items").await;
    assert_eq!((first.run, first.rows_read, first.version), (1, 3, Some(0)));
    let source = format!("SELECT * FROM pg.{}.items", schema.name);
    assert_same_rows(&engine, "items", &source).await;
    let row = table(
        &engine,
        "SELECT name, price, seen, local_time, day FROM materialized.public.items WHERE id = 1",
    )
    .await;
    assert!(row.contains("it's \"quoted\" ünïcödé 東京"), "{row}");
    assert!(row.contains("12345678.125"), "{row}");
    assert!(row.contains("2024-06-01T10:00:00Z"), "{row}");
    assert!(row.contains("2024-06-01T12:00:00.500"), "{row}");

    schema
        .execute("DELETE FROM items WHERE id = 3; UPDATE items SET name = 'new' WHERE id = 2; INSERT INTO items (id) VALUES (4)")
        .await;
    let second = sync(&engine, "items").await;
    assert_eq!(
        (second.run, second.rows_read, second.version),
        (2, 3, Some(1))
    );
    assert_same_rows(&engine, "items", &source).await;

    // An empty source empties the copy.
    schema.execute("DELETE FROM items").await;
    let third = sync(&engine, "items").await;
    assert_eq!((third.rows_read, third.version), (0, Some(2)));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM materialized.public.items").await,
        "0"
    );
}

#[tokio::test]
async fn append_runs_add_every_row_read() {
    let schema = Schema::create("mz_append").await;
    schema.execute(EVERY_KIND).await;
    let dir = tempfile::tempdir().unwrap();
    let from = format!("SELECT id, name FROM pg.{}.items WHERE id < 3", schema.name);
    let engine = engine(
        dir.path(),
        &schema.name,
        &format!("  - name: log\n    from: {from}\n    mode: append\n"),
    );
    sync(&engine, "log").await;
    let second = sync(&engine, "log").await;
    assert_eq!((second.run, second.rows_read), (2, 2));
    assert_same_rows(&engine, "log", &format!("{from} UNION ALL {from}")).await;
}

#[tokio::test]
async fn incremental_runs_read_only_rows_past_the_committed_cursor() {
    let schema = Schema::create("mz_incr").await;
    schema
        .execute(
            "CREATE TABLE events (id int, body text, at timestamptz);
             INSERT INTO events SELECT g, 'e' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, 2500) g;",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "  - name: by_time\n    from: pg.{s}.events\n    mode: incremental\n    cursor: at\n  - name: by_id\n    from: pg.{s}.events\n    mode: incremental\n    cursor: id\n",
        s = schema.name
    );
    let engine = engine(dir.path(), &schema.name, &jobs);
    let source = format!("SELECT * FROM pg.{}.events", schema.name);
    for name in ["by_time", "by_id"] {
        let first = sync(&engine, name).await;
        assert_eq!(first.rows_read, 2500, "{name}");
    }
    assert_eq!(
        sync(&engine, "by_time").await.watermark.as_deref(),
        Some("2024-01-01T00:41:40Z")
    );

    schema
        .execute("INSERT INTO events SELECT g, 'late ' || g, timestamptz '2024-02-01 00:00:00+00' + g * interval '1 second' FROM generate_series(2501, 2600) g")
        .await;
    for name in ["by_time", "by_id"] {
        let next = sync(&engine, name).await;
        assert_eq!((next.rows_read, next.run), (100, 2), "{name}");
        assert_same_rows(&engine, name, &source).await;
        // Nothing new: nothing read, nothing committed, the cursor stays.
        let idle = sync(&engine, name).await;
        assert_eq!(
            (idle.rows_read, idle.version, idle.run),
            (0, None, 2),
            "{name}"
        );
    }
    assert_eq!(
        sync(&engine, "by_id").await.watermark.as_deref(),
        Some("2600")
    );
}

#[tokio::test]
async fn a_lookback_rereads_late_rows_without_doubling_them() {
    let schema = Schema::create("mz_lookback").await;
    schema
        .execute(
            "CREATE TABLE events (id int, at timestamptz);
             INSERT INTO events SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 100) g;",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "  - name: events\n    from: pg.{}.events\n    mode: incremental\n    cursor: at\n    lookback: 30m\n",
        schema.name
    );
    let engine = engine(dir.path(), &schema.name, &jobs);
    sync(&engine, "events").await;
    // A row that committed late, 10 minutes before the cursor, and a new one.
    schema
        .execute("INSERT INTO events VALUES (1000, timestamptz '2024-01-01 01:30:00+00'), (1001, timestamptz '2024-01-01 02:00:00+00')")
        .await;
    let next = sync(&engine, "events").await;
    // Rows from 30 minutes before the cursor on: 1:10 .. 1:40 (31) + the late + the new.
    assert_eq!(next.rows_read, 33);
    assert_same_rows(
        &engine,
        "events",
        &format!("SELECT * FROM pg.{}.events", schema.name),
    )
    .await;
}

#[tokio::test]
async fn upserts_merge_on_the_key_and_can_delete_missing_rows() {
    let schema = Schema::create("mz_upsert").await;
    schema.execute(EVERY_KIND).await;
    schema
        .execute(
            "ALTER TABLE items ADD COLUMN changed timestamptz DEFAULT '2024-01-01 00:00:00+00'",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "  - name: mirror\n    from: pg.{s}.items\n    mode: upsert\n    key: [id]\n    delete_missing: true\n  - name: changes\n    from: pg.{s}.items\n    mode: upsert\n    key: [id]\n    cursor: changed\n",
        s = schema.name
    );
    let engine = engine(dir.path(), &schema.name, &jobs);
    let source = format!("SELECT * FROM pg.{}.items", schema.name);
    for name in ["mirror", "changes"] {
        sync(&engine, name).await;
        assert_same_rows(&engine, name, &source).await;
    }
    schema
        .execute(
            "UPDATE items SET name = 'renamed', changed = '2024-02-01 00:00:00+00' WHERE id = 2;
             INSERT INTO items (id, name, changed) VALUES (10, 'ten', '2024-02-01 00:00:00+00');",
        )
        .await;
    let mirror = sync(&engine, "mirror").await;
    assert_eq!(
        (
            mirror.written.inserted,
            mirror.written.updated,
            mirror.written.deleted
        ),
        (1, 1, 0)
    );
    let changes = sync(&engine, "changes").await;
    assert_eq!(changes.rows_read, 2, "only rows past the cursor are read");
    assert_eq!((changes.written.inserted, changes.written.updated), (1, 1));
    for name in ["mirror", "changes"] {
        assert_same_rows(&engine, name, &source).await;
    }

    schema.execute("DELETE FROM items WHERE id IN (1, 3)").await;
    let mirror = sync(&engine, "mirror").await;
    assert_eq!(mirror.written.deleted, 2);
    assert_same_rows(&engine, "mirror", &source).await;
}

#[tokio::test]
async fn settings_that_do_not_fit_the_source_are_named() {
    let schema = Schema::create("mz_errors").await;
    schema.execute(EVERY_KIND).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "  - name: wrong_cursor\n    from: pg.{s}.items\n    mode: incremental\n    cursor: updated\n  - name: text_cursor\n    from: pg.{s}.items\n    mode: incremental\n    cursor: name\n  - name: no_table\n    from: pg.{s}.nope\n",
        s = schema.name
    );
    let engine = engine(dir.path(), &schema.name, &jobs);
    let run = |name: &'static str| {
        let engine = engine.clone();
        async move {
            let job = materialize::job(&engine, name).unwrap();
            materialize::sync(
                &engine,
                job,
                Arc::new(Counters::default()),
                RunOptions::default(),
            )
            .await
            .unwrap_err()
            .to_string()
        }
    };
    let e = run("wrong_cursor").await;
    assert!(
        e.contains("materialization `wrong_cursor`: cursor column `updated` is not in the source"),
        "{e}"
    );
    let e = run("text_cursor").await;
    assert!(e.contains("cursor column `name` is Utf8"), "{e}");
    let e = run("no_table").await;
    assert!(e.contains("materialization `no_table`: reading"), "{e}");
    assert!(e.contains("nope"), "{e}");
    let e = materialize::job(&engine, "typo").unwrap_err().to_string();
    assert!(
        e.contains(
            "no materialization is named `typo` (configured: wrong_cursor, text_cursor, no_table)"
        ),
        "{e}"
    );
}

/// Runs `tributary sync <name>` with `crash` as `TRIBUTARY_TEST_CRASH_AT` (if any); its
/// exit status and output.
fn sync_process(config: &Path, name: &str, crash: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new(binary());
    command.args(["-c", config.to_str().unwrap(), "sync", name]);
    if let Some(point) = crash {
        command.env("TRIBUTARY_TEST_CRASH_AT", point);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn runs_killed_at_any_point_neither_skip_nor_double_rows() {
    let schema = Schema::create("mz_crash").await;
    schema
        .execute(
            "CREATE TABLE events (id int, at timestamptz);
             INSERT INTO events SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, 20000) g;",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "  - name: events\n    from: pg.{s}.events\n    mode: incremental\n    cursor: at\n  - name: snapshot\n    from: pg.{s}.events\n    mode: append\n",
        s = schema.name
    );
    let path = dir.path().join("tributary.yaml");
    std::fs::write(&path, config_yaml(&schema.name, &jobs)).unwrap();
    let source = format!("SELECT * FROM pg.{}.events", schema.name);
    let mut next_id = 20_001;
    // Killed mid-stream (after a few batches) and right after the commit, then, for
    // timings no hook marks, killed from outside with SIGKILL.
    for crash in [
        "batch:1",
        "batch:5",
        "committed",
        "kill:30",
        "kill:120",
        "kill:400",
    ] {
        schema
            .execute(&format!(
                "INSERT INTO events SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series({next_id}, {}) g",
                next_id + 4999
            ))
            .await;
        next_id += 5000;
        for name in ["events", "snapshot"] {
            if let Some(ms) = crash.strip_prefix("kill:") {
                let mut child = std::process::Command::new(binary())
                    .args(["-c", path.to_str().unwrap(), "sync", name])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap())).await;
                let _ = child.kill();
                child.wait().unwrap();
            } else {
                let killed = sync_process(&path, name, Some(crash));
                assert!(!killed.status.success(), "{name} at {crash} was not killed");
            }
            let rerun = sync_process(&path, name, None);
            assert!(
                rerun.status.success(),
                "{name} after {crash}: {}",
                String::from_utf8_lossy(&rerun.stderr)
            );
        }
        let engine = Engine::new(&Config::load(&path).unwrap()).unwrap();
        assert_same_rows(&engine, "events", &source).await;
        // `append` copies the whole source per committed run: every row shows up as many
        // times as runs committed, never a partial run.
        let counts = count(
            &engine,
            "SELECT count(DISTINCT c) FROM (SELECT count(*) AS c FROM materialized.public.snapshot WHERE id <= 20000 GROUP BY id)",
        )
        .await;
        assert_eq!(
            counts, "1",
            "after {crash}, some rows of a committed run are missing"
        );
    }
}

/// The five kinds of drift, as SQL run on the source after a first sync; each also adds
/// row 4.
const DRIFTS: &[(&str, &str)] = &[
    (
        "add",
        "ALTER TABLE t ADD COLUMN d text; INSERT INTO t VALUES (4, 4, 'four', 4.5, 'dee')",
    ),
    (
        "drop",
        "ALTER TABLE t DROP COLUMN b; INSERT INTO t VALUES (4, 4, 4.5)",
    ),
    (
        "rename",
        "ALTER TABLE t RENAME COLUMN b TO b2; INSERT INTO t VALUES (4, 4, 'four', 4.5)",
    ),
    (
        "widen",
        "ALTER TABLE t ALTER COLUMN a TYPE bigint; INSERT INTO t VALUES (4, 1099511627776, 'four', 4.5)",
    ),
    (
        "incompatible",
        "ALTER TABLE t ALTER COLUMN a TYPE text USING a::text; INSERT INTO t VALUES (4, 'x', 'four', 4.5)",
    ),
];

async fn drift_case(policy: &str, mode: &str, drift: &str) -> (tempfile::TempDir, Schema, String) {
    let schema = Schema::create("mz_drift").await;
    schema
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY, a int, b text, c numeric(10, 2));
             INSERT INTO t VALUES (1, 1, 'one', 1.5), (2, NULL, NULL, NULL), (3, 3, 'thr''ee', 3.5);",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mode = match mode {
        "incremental" => "incremental\n    cursor: id",
        "upsert" => "upsert\n    key: [id]",
        other => other,
    };
    let jobs = format!(
        "  - name: t\n    from: pg.{}.t\n    mode: {mode}\n    drift: {policy}\n",
        schema.name
    );
    sync(&engine(dir.path(), &schema.name, &jobs), "t").await;
    let sql = DRIFTS.iter().find(|(n, _)| *n == drift).unwrap().1;
    schema.execute(sql).await;
    (dir, schema, jobs)
}

async fn sync_err(engine: &Engine, name: &str, options: RunOptions) -> String {
    match try_sync(engine, name, options).await {
        Ok(report) => panic!("{name} ran: {report}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn drift_policy_fail_stops_the_run_and_keeps_the_copy() {
    for (drift, _) in DRIFTS {
        let (dir, schema, jobs) = drift_case("fail", "incremental", drift).await;
        let engine = engine(dir.path(), &schema.name, &jobs);
        let e = sync_err(&engine, "t", RunOptions::default()).await;
        assert!(
            e.contains("materialization `t`: the source's columns changed ("),
            "{drift}: {e}"
        );
        assert!(e.contains("`drift: fail` stops here"), "{drift}: {e}");
        assert_eq!(
            count(&engine, "SELECT count(*) FROM materialized.public.t").await,
            "3",
            "{drift}"
        );
    }
}

#[tokio::test]
async fn drift_policy_pause_keeps_serving_until_resumed() {
    for (drift, _) in DRIFTS {
        let (dir, schema, jobs) = drift_case("pause", "incremental", drift).await;
        let paused = engine(dir.path(), &schema.name, &jobs);
        let e = sync_err(&paused, "t", RunOptions::default()).await;
        assert!(
            e.contains("materialization `t` is paused: the source's columns changed"),
            "{drift}: {e}"
        );
        assert!(e.contains("--resume"), "{drift}: {e}");
        // Still paused on the next run, whatever the policy says now; the old copy serves.
        let evolve = engine(
            dir.path(),
            &schema.name,
            &jobs.replace("drift: pause", "drift: evolve"),
        );
        let again = sync_err(&evolve, "t", RunOptions::default()).await;
        assert!(again.contains("is paused"), "{drift}: {again}");
        assert_eq!(
            count(&evolve, "SELECT count(*) FROM materialized.public.t").await,
            "3"
        );
        // Resumed under `evolve`, the run applies what evolve can.
        let job = materialize::job(&evolve, "t").unwrap();
        let resumed = materialize::sync(
            &evolve,
            job,
            Arc::new(Counters::default()),
            RunOptions {
                resume: true,
                ..RunOptions::default()
            },
        )
        .await;
        match *drift {
            // The copy keeps `a` an integer column, which 'x' does not fit.
            "incompatible" => {
                let e = resumed.unwrap_err().to_string();
                assert!(
                    e.contains("`a`: \"x\"")
                        && e.contains("does not fit the copy's integer column"),
                    "{e}"
                );
            }
            _ => {
                let report = resumed.unwrap_or_else(|e| panic!("{drift}: {e}"));
                assert_eq!(report.rows_read, 1, "{drift}");
                assert_eq!(
                    count(&evolve, "SELECT count(*) FROM materialized.public.t").await,
                    "4"
                );
            }
        }
    }
}

#[tokio::test]
async fn drift_policy_evolve_adds_keeps_and_widens_columns() {
    for mode in ["incremental", "upsert"] {
        for (drift, _) in DRIFTS {
            let (dir, schema, jobs) = drift_case("evolve", mode, drift).await;
            let engine = engine(dir.path(), &schema.name, &jobs);
            let job = materialize::job(&engine, "t").unwrap();
            let result = materialize::sync(
                &engine,
                job,
                Arc::new(Counters::default()),
                RunOptions::default(),
            )
            .await;
            let copy = "materialized.public.t";
            let context = format!("{mode} {drift}");
            match *drift {
                "add" => {
                    result.unwrap_or_else(|e| panic!("{context}: {e}"));
                    let t = table(&engine, &format!("SELECT id, d FROM {copy} ORDER BY id")).await;
                    assert!(
                        t.contains("| 4  | dee |") && t.contains("| 1  |     |"),
                        "{context}: {t}"
                    );
                }
                "drop" | "rename" => {
                    result.unwrap_or_else(|e| panic!("{context}: {e}"));
                    // The old column keeps its values and is NULL from now on.
                    let t = table(&engine, &format!("SELECT id, b FROM {copy} ORDER BY id")).await;
                    assert!(
                        t.contains("| 3  | thr'ee |") && t.contains("| 4  |        |"),
                        "{context}: {t}"
                    );
                    let log = std::fs::read_dir(dir.path().join("data/materialized/t/_delta_log"))
                        .unwrap()
                        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
                        .collect::<String>();
                    assert!(
                        log.contains("tributary.deprecated"),
                        "{context}: not marked"
                    );
                    if *drift == "rename" {
                        let t = table(
                            &engine,
                            &format!("SELECT id, b2 FROM {copy} WHERE id IN (1, 4) ORDER BY id"),
                        )
                        .await;
                        // An upsert re-reads old rows, which now carry the new column.
                        let row_1 = if mode == "upsert" {
                            "| 1  | one  |"
                        } else {
                            "| 1  |      |"
                        };
                        assert!(
                            t.contains("| 4  | four |") && t.contains(row_1),
                            "{context}: {t}"
                        );
                    }
                    // The next run sees no drift and keeps going.
                    schema.execute("INSERT INTO t (id, a) VALUES (5, 5)").await;
                    sync(&engine, "t").await;
                    assert_eq!(
                        count(&engine, &format!("SELECT count(*) FROM {copy}")).await,
                        "5",
                        "{context}"
                    );
                }
                "widen" => {
                    result.unwrap_or_else(|e| panic!("{context}: {e}"));
                    let t = table(
                        &engine,
                        &format!("SELECT id, a, arrow_typeof(a) AS t FROM {copy} ORDER BY id"),
                    )
                    .await;
                    assert!(
                        t.contains("| 4  | 1099511627776 | Int64 |")
                            && t.contains("| 3  | 3             | Int64 |"),
                        "{context}: {t}"
                    );
                }
                "incompatible" => {
                    // The copy keeps its type; the run fails on the value that does not
                    // fit it, naming the value and its row (`on_invalid: fail`).
                    let e = result.unwrap_err().to_string();
                    assert!(
                        e.contains("`a`: \"x\"")
                            && e.contains("does not fit the copy's integer column")
                            && e.contains(r#"in row {"id":4,"a":"x","b":"four","c":"#)
                            && e.contains("`on_invalid: quarantine`"),
                        "{context}: {e}"
                    );
                    assert_eq!(
                        count(&engine, &format!("SELECT count(*) FROM {copy}")).await,
                        "3"
                    );
                }
                _ => unreachable!(),
            }
            let source = format!("SELECT * FROM pg.{}.t", schema.name);
            if *drift == "add" || *drift == "widen" {
                assert_same_rows(&engine, "t", &source).await;
            }
        }
    }
}

#[tokio::test]
async fn a_full_run_under_evolve_applies_even_incompatible_changes() {
    let (dir, schema, jobs) = drift_case("evolve", "full", "incompatible").await;
    let engine = engine(dir.path(), &schema.name, &jobs);
    sync(&engine, "t").await;
    assert_same_rows(&engine, "t", &format!("SELECT * FROM pg.{}.t", schema.name)).await;
}

#[tokio::test]
async fn values_that_no_longer_fit_are_quarantined_with_their_reason() {
    for mode in ["incremental", "upsert"] {
        let (dir, schema, jobs) = drift_case("evolve", mode, "incompatible").await;
        let jobs = format!("{jobs}    on_invalid: quarantine\n");
        // Values that still parse as integers fit the copy's column.
        schema
            .execute("INSERT INTO t VALUES (5, '5', 'five', 5.5), (6, NULL, 'six', NULL)")
            .await;
        let engine = engine(dir.path(), &schema.name, &jobs);
        let report = sync(&engine, "t").await;
        assert_eq!(report.written.quarantined, 1, "{mode}: {report}");
        // Rows 5 and 6 inserted; row 4 quarantined, not inserted.
        assert_eq!(report.written.inserted, 2, "{mode}: {report}");
        assert!(report.to_string().contains("1 quarantined"), "{report}");
        let copy = table(
            &engine,
            "SELECT id, a, arrow_typeof(a) AS t FROM materialized.public.t ORDER BY id",
        )
        .await;
        assert!(
            copy.contains("| 5  | 5 | Int32 |") && copy.contains("| 6  |   | Int32 |"),
            "{mode}: {copy}"
        );
        assert!(!copy.contains("| 4 "), "{mode}: {copy}");
        let quarantine = table(
            &engine,
            "SELECT run, reason, raw FROM materialized.public.t__quarantine",
        )
        .await;
        assert!(
            quarantine.contains("| 2   | `a`: \"x\"")
                && quarantine.contains("does not fit the copy's integer column")
                && quarantine.contains(r#"{"id":4,"a":"x","b":"four","c":"#),
            "{mode}: {quarantine}"
        );
        let recorded = count(
            &engine,
            "SELECT rows_quarantined FROM tributary.runtime.sync_runs WHERE run = 2",
        )
        .await;
        assert_eq!(recorded, "1", "{mode}");

        // An incremental run does not read row 4 again and quarantines nothing; an
        // upsert reads every row, and row 4 still does not fit.
        schema
            .execute("INSERT INTO t VALUES (7, '7', 'seven', 7.5)")
            .await;
        let report = sync(&engine, "t").await;
        let again = u64::from(mode == "upsert");
        assert_eq!(report.written.quarantined, again, "{mode}: {report}");
        assert_eq!(
            count(
                &engine,
                "SELECT count(*) FROM materialized.public.t__quarantine"
            )
            .await,
            (1 + again).to_string(),
            "{mode}"
        );
        assert_eq!(
            count(&engine, "SELECT count(*) FROM materialized.public.t").await,
            "6",
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_run_killed_after_quarantining_quarantines_its_rows_once() {
    let (dir, schema, jobs) = drift_case("evolve", "incremental", "incompatible").await;
    let jobs = format!("{jobs}    on_invalid: quarantine\n");
    let path = dir.path().join("tributary.yaml");
    std::fs::write(&path, config_yaml(&schema.name, &jobs)).unwrap();
    // Killed between the quarantine's commit and the data's.
    let killed = sync_process(&path, "t", Some("quarantined"));
    assert!(!killed.status.success(), "not killed");
    let engine = Engine::new(&Config::load(&path).unwrap()).unwrap();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM materialized.public.t__quarantine"
        )
        .await,
        "1"
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM materialized.public.t").await,
        "3"
    );
    // Rerun: the same run number replaces the earlier try's rows.
    let rerun = sync_process(&path, "t", None);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM materialized.public.t__quarantine WHERE run = 2"
        )
        .await,
        "1"
    );
    // Killed again after quarantining, then the bad row is fixed at the source before
    // the rerun: the earlier try's quarantined row goes.
    schema
        .execute("INSERT INTO t VALUES (8, 'y', 'eight', 8.5)")
        .await;
    let killed = sync_process(&path, "t", Some("quarantined"));
    assert!(!killed.status.success(), "not killed");
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM materialized.public.t__quarantine"
        )
        .await,
        "2"
    );
    schema.execute("UPDATE t SET a = '8' WHERE id = 8").await;
    let rerun = sync_process(&path, "t", None);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM materialized.public.t__quarantine"
        )
        .await,
        "1"
    );
    assert_eq!(
        count(&engine, "SELECT a FROM materialized.public.t WHERE id = 8").await,
        "8"
    );
}

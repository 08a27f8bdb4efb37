//! The `tributary` binary, run as a process.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::common::{binary, people, write_parquet};

fn tributary(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn query_on_the_demo_with_no_config() {
    let o = tributary(&["query", "SELECT count(*) AS n FROM demo.tpch.lineitem"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "+-------+\n| n     |\n+-------+\n| 60175 |\n+-------+\n"
    );
}

#[test]
fn output_formats() {
    let sql = "SELECT n_nationkey AS k, n_name AS name, CASE WHEN n_nationkey = 1 THEN NULL ELSE n_regionkey END AS r \
               FROM nation WHERE n_nationkey < 3 ORDER BY k";

    let o = tributary(&["query", "--format", "csv", sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "k,name,r\n0,ALGERIA,0\n1,ARGENTINA,\n2,BRAZIL,1\n"
    );

    let o = tributary(&["query", "--format", "json", sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"k": 0, "name": "ALGERIA", "r": 0},
            {"k": 1, "name": "ARGENTINA", "r": null},
            {"k": 2, "name": "BRAZIL", "r": 1}
        ])
    );

    let o = tributary(&["query", "--format", "ndjson", sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[1],
        serde_json::json!({"k": 1, "name": "ARGENTINA", "r": null})
    );

    let o = tributary(&["query", "--format", "table", sql]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "+---+-----------+---+\n| k | name      | r |\n+---+-----------+---+\n| 0 | ALGERIA   | 0 |\n| 1 | ARGENTINA |   |\n| 2 | BRAZIL    | 1 |\n+---+-----------+---+\n"
    );

    // Empty results still say which columns they have.
    let empty = "SELECT n_name FROM nation WHERE false";
    assert_eq!(
        stdout(&tributary(&["query", "--format", "csv", empty])),
        "n_name\n"
    );
    assert_eq!(
        stdout(&tributary(&["query", "--format", "json", empty])),
        "[]\n"
    );
    assert_eq!(
        stdout(&tributary(&["query", "--format", "ndjson", empty])),
        ""
    );
}

#[tokio::test]
async fn parquet_output_to_a_file_reads_back() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("orders.parquet");
    let o = tributary(&[
        "query",
        "--format",
        "parquet",
        "--output",
        out.to_str().unwrap(),
        "SELECT o_orderkey, o_totalprice, o_orderdate FROM orders WHERE o_orderkey <= 100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let ctx = datafusion::prelude::SessionContext::new();
    let df = ctx
        .read_parquet(out.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await.unwrap();
    // Order keys are sparse: the first 8 of every 32 (1-7, 32-39, 64-71, 96-100).
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 28);
    assert_eq!(
        schema.field_with_name("o_totalprice").unwrap().data_type(),
        &arrow::datatypes::DataType::Decimal128(15, 2)
    );
}

#[test]
fn sql_from_a_file_and_from_stdin_with_several_statements() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT 1 AS a;\n-- a comment\nSELECT 'x;y' AS b;\n").unwrap();
    let o = tributary(&["query", "--format", "csv", "--file", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "a\n1\nb\nx;y\n");

    let mut child = Command::new(binary())
        .args(["query", "--format", "csv"])
        .env_remove("TRIBUTARY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS n FROM region")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "n\n5\n");
}

#[test]
fn errors_exit_non_zero_with_a_message() {
    let o = tributary(&["query", "SELECT * FROM demo.tpch.nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("demo.tpch.nope"), "{}", stderr(&o));

    let o = tributary(&["query", "SELEKT 1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));

    let o = tributary(&["query", "CREATE TABLE t (a int)"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));

    let o = tributary(&["--demo-scale", "0", "query", "SELECT 1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected a positive number, got `0`"),
        "{}",
        stderr(&o)
    );

    let o = tributary(&[
        "--demo-scale",
        "0.001",
        "query",
        "--format",
        "parquet",
        "SELECT 1",
    ]);
    // Not a terminal here, so Parquet to stdout is allowed and is a Parquet file.
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&o.stdout[..4], b"PAR1");
}

#[test]
fn explain_shows_what_the_source_receives_and_both_plans() {
    let o = tributary(&[
        "explain",
        "SELECT l_orderkey FROM lineitem WHERE l_quantity > 49 LIMIT 5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "== What each source receives ==\ndemo.tpch.lineitem\n  columns: l_orderkey, l_quantity"
        ),
        "{out}"
    );
    assert!(
        out.contains("TpchExec: table=lineitem, scale_factor=0.01"),
        "{out}"
    );
    assert!(out.contains("== Logical plan =="), "{out}");
    assert!(out.contains("== Physical plan =="), "{out}");

    let o = tributary(&["explain", "--analyze", "SELECT count(n_name) FROM nation"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let scan = out
        .lines()
        .find(|l| l.contains("TpchExec"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(scan.contains("output_rows=25"), "{out}");
}

#[test]
fn sources_lists_catalogs_schemas_and_tables() {
    let dir = TempDir::new().unwrap();
    write_parquet(&dir.path().join("lake/people.parquet"), &people());
    let config = dir.path().join("t.yaml");
    std::fs::write(
        &config,
        "sources:\n  - name: lake\n    kind: files\n    url: lake\n  - name: gen\n    kind: tpch\n    scale_factor: 0.001\n",
    )
    .unwrap();
    let o = tributary(&["--config", config.to_str().unwrap(), "sources"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "lake (files)\n  main\n    people\ngen (tpch)\n  tpch\n    customer\n    lineitem\n    nation\n    orders\n    part\n    partsupp\n    region\n    supplier\n"
    );
}

#[test]
fn check_reports_each_source_and_fails_if_one_is_down() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let config = dir.path().join("t.yaml");
    std::fs::write(
        &config,
        "sources:\n  - name: lake\n    kind: files\n    url: lake\n  - name: gen\n    kind: tpch\n",
    )
    .unwrap();
    let o = tributary(&["--config", config.to_str().unwrap(), "check"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("source  kind      status       latency  detail\n"),
        "{out}"
    );
    assert!(out.contains("\nlake    files     healthy  "), "{out}");
    assert!(out.contains("\ngen     tpch      healthy  "), "{out}");

    std::fs::remove_dir(dir.path().join("lake")).unwrap();
    let o = tributary(&["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("\nlake    files     unhealthy"), "{out}");
    assert!(out.contains("does not exist"), "{out}");
}

#[test]
fn config_from_the_environment_variable() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("t.yaml");
    std::fs::write(
        &config,
        "sources:\n  - name: gen\n    kind: tpch\n    scale_factor: 0.001\n",
    )
    .unwrap();
    let o = Command::new(binary())
        .args([
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM gen.tpch.supplier",
        ])
        .env("TRIBUTARY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "n\n10\n");
}

#[test]
fn a_config_named_by_a_relative_path_finds_its_relative_folders() {
    // `-c conf/t.yaml` from the folder above: the source's folder and the data
    // directory are relative to the config file, and become `file://` URLs.
    let dir = TempDir::new().unwrap();
    write_parquet(&dir.path().join("conf/lake/people.parquet"), &people());
    std::fs::write(
        dir.path().join("conf/t.yaml"),
        "sources:\n  - name: lake\n    kind: files\n    url: lake\n",
    )
    .unwrap();
    let o = Command::new(binary())
        .args([
            "--config",
            "conf/t.yaml",
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM lake.main.people",
        ])
        .current_dir(dir.path())
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("n\n{}\n", people().num_rows()));
}

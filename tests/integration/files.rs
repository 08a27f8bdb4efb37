//! The `files` source on local disk: every format, folders, globs, partitions, declared
//! schemas, discovery, and errors that name the table and path.

use std::io::Write;

use tempfile::TempDir;

use crate::common::*;

// (The table printer counts characters, so the CJK row looks narrower.)
const EXPECTED_PEOPLE: &str = "\
+----+----------------------+---------------+
| id | name                 | score         |
+----+----------------------+---------------+
| 1  | Ada                  | 1.5           |
| 2  | Zoë \"Z\" O'Brien, Jr. |               |
| 3  |                      | -0.25         |
| 4  | 東京 %_\\             | 10000000000.0 |
+----+----------------------+---------------+";

#[tokio::test]
async fn every_format_is_discovered_and_read() {
    let dir = TempDir::new().unwrap();
    let lake = dir.path().join("lake");
    let batch = people();
    write_parquet(&lake.join("p_parquet.parquet"), &batch);
    write_csv(&lake.join("p_csv.csv"), &batch);
    write_ndjson(&lake.join("p_json.json"), &batch);
    write_ndjson(&lake.join("p_jsonl.jsonl"), &batch);
    write_arrow(&lake.join("p_arrow.arrow"), &batch);
    write_avro(&lake.join("p_avro.avro"), &batch);
    // A gzip-compressed CSV, recognised by its double extension.
    let mut csv = Vec::new();
    arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(&mut csv)
        .write(&batch)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(lake.join("p_gzip.csv.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(&csv).unwrap();
    gz.finish().unwrap();
    // Files that are not data are not tables.
    std::fs::write(lake.join("README.md"), "notes").unwrap();
    std::fs::write(lake.join("_SUCCESS"), "").unwrap();

    let engine = engine(
        dir.path(),
        "sources:\n  - name: lake\n    kind: files\n    url: lake\n",
    );
    assert_eq!(
        table(&engine, "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'lake' AND table_schema = 'main' ORDER BY 1").await,
        "\
+------------+
| table_name |
+------------+
| p_arrow    |
| p_avro     |
| p_csv      |
| p_gzip     |
| p_json     |
| p_jsonl    |
| p_parquet  |
+------------+"
    );
    for t in [
        "p_parquet",
        "p_csv",
        "p_json",
        "p_jsonl",
        "p_arrow",
        "p_avro",
        "p_gzip",
    ] {
        let got = table(
            &engine,
            &format!("SELECT id, name, score FROM lake.main.{t} ORDER BY id"),
        )
        .await;
        assert_eq!(got, EXPECTED_PEOPLE, "table {t}");
    }
    // Typed columns survive the self-describing formats exactly.
    for t in ["p_parquet", "p_arrow", "p_avro"] {
        assert_eq!(
            table(
                &engine,
                &format!(
                    "SELECT sum(balance) AS b, min(born) AS d, max(seen) AS s FROM lake.main.{t}"
                )
            )
            .await,
            "\
+---------------+------------+----------------------+
| b             | d          | s                    |
+---------------+------------+----------------------+
| 1000000123.43 | 1969-01-01 | 2023-11-14T22:13:20Z |
+---------------+------------+----------------------+",
            "table {t}"
        );
    }
}

#[tokio::test]
async fn declared_tables_folders_globs_options_and_columns() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("data");
    let batch = people();
    write_parquet(&root.join("events/part-0.parquet"), &batch.slice(0, 2));
    write_parquet(&root.join("events/part-1.parquet"), &batch.slice(2, 2));
    write_parquet(&root.join("logs/2024-01/a.parquet"), &batch.slice(0, 1));
    write_parquet(&root.join("logs/2024-02/b.parquet"), &batch.slice(1, 1));
    write_parquet(&root.join("logs/2023-12/c.parquet"), &batch.slice(2, 2));
    std::fs::create_dir_all(root.join("raw")).unwrap();
    std::fs::write(
        root.join("raw/items.txt"),
        "1;widget;2.50\n2;\"gadget; large\";10\n3;;\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(
        root.join("export.json"),
        r#"[{"id": 1, "tags": "a"}, {"id": 2, "tags": null}, {"id": 3, "tags": "c\"d"}]"#,
    )
    .unwrap();

    let engine = engine(
        dir.path(),
        r#"
sources:
  - name: lake
    kind: files
    url: data
    schema: analytics
    tables:
      - name: events
        path: events
      - name: recent_logs
        path: logs/2024-*/*.parquet
      - name: items
        path: raw/items.txt
        format: csv
        format_options:
          has_header: false
          delimiter: ";"
        columns:
          - { name: id, type: bigint, nullable: false }
          - { name: label, type: varchar }
          - { name: price, type: "decimal(10,2)" }
      - name: exported
        path: export.json
        format_options: { newline_delimited: false }
      - name: nothing_yet
        schema: staging
        path: empty/
        format: parquet
        columns:
          - { name: id, type: bigint }
"#,
    );
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n, sum(id) AS s FROM lake.analytics.events"
        )
        .await,
        "+---+----+\n| n | s  |\n+---+----+\n| 4 | 10 |\n+---+----+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT id FROM lake.analytics.recent_logs ORDER BY id"
        )
        .await,
        "+----+\n| id |\n+----+\n| 1  |\n| 2  |\n+----+"
    );
    assert_eq!(
        table(&engine, "SELECT id, label, price, arrow_typeof(price) AS t FROM lake.analytics.items ORDER BY id").await,
        "\
+----+---------------+-------+-------------------+
| id | label         | price | t                 |
+----+---------------+-------+-------------------+
| 1  | widget        | 2.50  | Decimal128(10, 2) |
| 2  | gadget; large | 10.00 | Decimal128(10, 2) |
| 3  |               |       | Decimal128(10, 2) |
+----+---------------+-------+-------------------+"
    );
    assert_eq!(
        table(
            &engine,
            "SELECT id, tags FROM lake.analytics.exported ORDER BY id"
        )
        .await,
        "+----+------+\n| id | tags |\n+----+------+\n| 1  | a    |\n| 2  |      |\n| 3  | c\"d  |\n+----+------+"
    );
    // An empty folder with declared columns is an empty table, not an error.
    assert_eq!(
        table(
            &engine,
            "SELECT count(*) AS n FROM lake.staging.nothing_yet"
        )
        .await,
        "+---+\n| n |\n+---+\n| 0 |\n+---+"
    );
    // Only listed tables exist when `tables` is given.
    let e = error(&engine, "SELECT * FROM lake.analytics.logs").await;
    assert!(
        e.contains("lake.analytics.logs") && e.contains("not found"),
        "{e}"
    );
}

#[tokio::test]
async fn hive_partitions_are_columns_and_prune_files() {
    let dir = TempDir::new().unwrap();
    let batch = people();
    for (year, region, rows) in [
        (2023, "eu", (0, 1)),
        (2023, "us", (1, 1)),
        (2024, "eu", (2, 2)),
    ] {
        write_parquet(
            &dir.path()
                .join(format!("sales/year={year}/region={region}/part-0.parquet")),
            &batch.slice(rows.0, rows.1),
        );
    }
    let inferred = engine(
        dir.path(),
        "sources:\n  - name: lake\n    kind: files\n    url: .\n",
    );
    assert_eq!(
        table(
            &inferred,
            "SELECT year, region, count(*) AS n FROM lake.main.sales GROUP BY 1, 2 ORDER BY 1, 2"
        )
        .await,
        "\
+------+--------+---+
| year | region | n |
+------+--------+---+
| 2023 | eu     | 1 |
| 2023 | us     | 1 |
| 2024 | eu     | 2 |
+------+--------+---+"
    );
    let explained = inferred
        .explain("SELECT id FROM lake.main.sales WHERE year = '2024' AND region = 'eu'")
        .await
        .unwrap()
        .to_string();
    assert!(explained.contains("[exact]"), "{explained}");
    assert!(
        explained.contains("year=2024") && !explained.contains("year=2023"),
        "partition pruning should leave only 2024 files:\n{explained}"
    );

    let typed = engine(
        dir.path(),
        r#"
sources:
  - name: lake
    kind: files
    url: .
    tables:
      - name: sales
        path: sales/
        partitions:
          - { name: year, type: int }
          - { name: region, type: varchar }
"#,
    );
    assert_eq!(
        table(&typed, "SELECT sum(id) AS s, arrow_typeof(max(year)) AS t FROM lake.main.sales WHERE year > 2023").await,
        "+---+-------+\n| s | t     |\n+---+-------+\n| 7 | Int32 |\n+---+-------+"
    );
}

#[tokio::test]
async fn malformed_files_and_missing_paths_name_the_table_and_path() {
    let dir = TempDir::new().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    std::fs::write(lake.join("broken.parquet"), b"PAR1 this is not parquet").unwrap();
    std::fs::write(lake.join("bad.json"), b"{\"id\": 1}\n{not json at all\n").unwrap();
    write_parquet(&lake.join("good.parquet"), &people());
    let engine = engine(
        dir.path(),
        r#"
sources:
  - name: lake
    kind: files
    url: lake
    discover: true
    tables:
      - name: gone
        path: no/such/folder/
        format: parquet
"#,
    );
    let e = error(&engine, "SELECT * FROM lake.main.broken").await;
    assert!(
        e.contains("source `lake`: table `main.broken` at file://"),
        "{e}"
    );
    assert!(e.contains("lake/broken.parquet"), "{e}");

    let e = error(&engine, "SELECT * FROM lake.main.bad").await;
    assert!(e.contains("table `main.bad`"), "{e}");
    assert!(e.contains("bad.json"), "{e}");

    let e = error(&engine, "SELECT * FROM lake.main.gone").await;
    assert!(
        e.contains("source `lake`: table `main.gone` at file://"),
        "{e}"
    );
    assert!(e.contains("no/such/folder/"), "{e}");

    // The engine keeps answering, and the good table still works.
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM lake.main.good").await,
        "+---+\n| n |\n+---+\n| 4 |\n+---+"
    );
}

#[tokio::test]
async fn a_broken_source_only_fails_the_queries_that_touch_it() {
    let dir = TempDir::new().unwrap();
    let engine = engine(
        dir.path(),
        "sources:\n  - name: gone\n    kind: files\n    url: does-not-exist\n  - name: demo\n    kind: tpch\n",
    );
    assert_eq!(
        table(&engine, "SELECT count(*) AS n FROM demo.tpch.nation").await,
        "+----+\n| n  |\n+----+\n| 25 |\n+----+"
    );
    let e = error(&engine, "SELECT * FROM gone.main.anything").await;
    assert!(e.contains("gone.main.anything"), "{e}");
    // Listing everything still works; the broken source is left out.
    let t = table(
        &engine,
        "SELECT DISTINCT table_catalog FROM information_schema.tables WHERE table_schema <> 'information_schema' ORDER BY 1",
    )
    .await;
    assert!(t.contains("demo") && !t.contains("gone"), "{t}");
    let health = engine.check().await;
    assert_eq!(health[0].status, tributary_core::HealthStatus::Unhealthy);
    assert!(
        health[0].detail.contains("does not exist"),
        "{}",
        health[0].detail
    );
    assert_eq!(health[1].status, tributary_core::HealthStatus::Healthy);
}

#[tokio::test]
async fn errors_while_reading_name_the_table_and_path() {
    let dir = TempDir::new().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    // The bad value comes after the rows schema inference reads, so it fails mid-scan.
    let mut csv = String::from("id,name\n");
    for i in 0..5000 {
        csv.push_str(&format!("{i},n{i}\n"));
    }
    csv.push_str("oops,bad\n");
    std::fs::write(lake.join("late.csv"), csv).unwrap();
    let engine = engine(
        dir.path(),
        "sources:\n  - name: lake\n    kind: files\n    url: lake\n",
    );
    let e = error(&engine, "SELECT sum(id) FROM lake.main.late").await;
    assert!(
        e.contains("source `lake`: table `main.late` at file://"),
        "{e}"
    );
    assert!(e.contains("lake/late.csv"), "{e}");
    assert!(e.contains("'oops'"), "{e}");
    // The scan stays transparent: its plan still shows the file scan and what it reads.
    let plan = engine
        .explain("SELECT name FROM lake.main.late WHERE id = 7")
        .await
        .unwrap()
        .to_string();
    assert!(
        plan.contains("SourceScanExec: source=lake, table=main.late"),
        "{plan}"
    );
    assert!(plan.contains("DataSourceExec"), "{plan}");
}

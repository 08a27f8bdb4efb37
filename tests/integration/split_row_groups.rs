//! Parquet files with fewer row groups than the query has partitions are read in row
//! ranges, one piece per partition, and every answer equals DataFusion's own, which reads
//! each row group whole.
//!
//! The rows have NULLs, quotes and unicode in strings, decimals and timestamps with a time
//! zone; the queries cut across the pieces' boundaries, stop early at a LIMIT, and match
//! nothing.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::datasource::source::DataSourceExec;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::{ExecutionPlan, displayable};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tributary::Engine;

use crate::common::{engine, write_parquet};

const HOUR: i64 = 3_600_000_000;
/// 2024-01-01 00:00:00+02.
const FIRST: i64 = 1_704_060_000_000_000;

/// `rows` rows from id `first` on, in one row group; every 89th has NULLs.
fn rows(first: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (first..first + rows).collect();
    let null = |id: i64| id % 89 == 0;
    let k: Vec<Option<i32>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some((id % 1000) as i32))
        .collect();
    let name: Vec<Option<String>> = ids
        .iter()
        .map(|&id| {
            (!null(id)).then(|| match id % 4 {
                0 => format!("o'brien-{}", id % 300),
                1 => format!("東京 \"q\"-{}", id % 300),
                2 => format!("back\\slash-{}", id % 300),
                _ => format!("plain-{}", id % 300),
            })
        })
        .collect();
    let amount: Vec<Option<i128>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some(i128::from(id % 10_000) * 3 - 7_000))
        .collect();
    let at: Vec<Option<i64>> = ids
        .iter()
        .map(|&id| (!null(id)).then_some(FIRST + (id % 5_000) * HOUR))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int32, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(14, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
            true,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(Int32Array::from(k)),
        Arc::new(StringArray::from(name)),
        Arc::new(
            Decimal128Array::from(amount)
                .with_precision_and_scale(14, 2)
                .unwrap(),
        ),
        Arc::new(TimestampMicrosecondArray::from(at).with_timezone("+02:00")),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Queries over one table, `{T}`, each read in pieces.
const QUERIES: &[&str] = &[
    "SELECT count(id) AS n, count(k) AS ks, count(name) AS names, sum(amount) AS total, \
     min(at) AS first, max(at) AS last FROM {T}",
    // Rows on both sides of every boundary between pieces.
    "SELECT id, k, name, amount, at FROM {T} \
     WHERE id BETWEEN 66660 AND 66670 OR id BETWEEN 99990 AND 100010 \
        OR id BETWEEN 133330 AND 133340 OR id BETWEEN 149990 AND 150010 \
        OR id BETWEEN 199990 AND 200010 OR id BETWEEN 299990 AND 300010 ORDER BY id",
    "SELECT name, count(*) AS n, sum(amount) AS total, max(at) AS last FROM {T} \
     WHERE name LIKE 'o''brien%' OR name LIKE '東京 \"q\"%' OR name IS NULL \
     GROUP BY name ORDER BY name NULLS FIRST",
    "SELECT k, count(*) AS n FROM {T} WHERE k IS NULL OR k > 990 GROUP BY k ORDER BY k",
    "SELECT count(*) AS n FROM {T} WHERE at >= TIMESTAMP '2024-06-01T00:00:00Z' AND amount < 0",
    "SELECT id, name FROM {T} ORDER BY id DESC LIMIT 3",
    "SELECT id FROM {T} WHERE amount > 1000000",
];

/// The table's scans: how many files they read in pieces (entries with an access plan).
fn pieces(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut found = 0;
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
        {
            found += scan
                .file_groups
                .iter()
                .flat_map(|g| g.iter())
                .filter(|f| f.extensions.get::<ParquetAccessPlan>().is_some())
                .count();
        }
        stack.extend(node.children().into_iter().cloned());
    }
    found
}

fn tributary(dir: &Path, lake: &Path, partitions: usize, row_filters: bool) -> Engine {
    engine(
        dir,
        &format!(
            "server:\n  datafusion:\n    datafusion.execution.target_partitions: {partitions}\n    \
             datafusion.execution.parquet.pushdown_filters: {row_filters}\n\
             sources:\n  - name: lake\n    kind: files\n    url: {}\n",
            lake.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_are_read_in_pieces_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // One file of one 300,000-row group; a folder of a 200,000-row file and a small one;
    // a file of a 250,000-row group and three small ones.
    write_parquet(&lake.join("big.parquet"), &rows(0, 300_000));
    write_parquet(&lake.join("parts/a.parquet"), &rows(0, 200_000));
    write_parquet(&lake.join("parts/b.parquet"), &rows(200_000, 1_000));
    write_row_groups(
        &lake.join("groups.parquet"),
        &rows(0, 300_000),
        &[250_000, 20_000, 20_000, 10_000],
    );

    let reference = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (table, path) in [
        ("big", "big.parquet"),
        ("groups", "groups.parquet"),
        ("parts", "parts"),
    ] {
        reference
            .register_parquet(
                table,
                lake.join(path).to_str().unwrap(),
                ParquetReadOptions::default(),
            )
            .await
            .unwrap();
    }

    // Pieces per scan: 300,000 rows in 3 partitions are 3 pieces, in 2 partitions 2.
    // 201,000 rows in 3 partitions make pieces of about 67,000 rows: 3 of the 200,000-row
    // group, and the small file whole as a piece of its own; in 2 partitions, 2 and 1.
    // The file of four row groups: the large one in 3 (or 2) pieces, and the three small
    // ones, all in the last byte range of the file, together as one more.
    let mut failures = Vec::new();
    for (partitions, row_filters, big_pieces, parts_pieces, groups_pieces) in [
        (3, false, 3, 4, 4),
        (2, false, 2, 3, 3),
        (3, true, 3, 4, 4),
        (2, true, 2, 3, 3),
    ] {
        let tributary = tributary(dir.path(), &lake, partitions, row_filters);
        for (table, want_pieces) in [
            ("big", big_pieces),
            ("parts", parts_pieces),
            ("groups", groups_pieces),
        ] {
            for query in QUERIES {
                let ours = query.replace("{T}", &format!("lake.main.{table}"));
                let theirs = query.replace("{T}", table);
                let setting = format!("{partitions} partitions, row filters {row_filters}");
                check(
                    &tributary,
                    &reference,
                    &ours,
                    &theirs,
                    want_pieces,
                    &setting,
                    &mut failures,
                )
                .await;
            }
        }
        // Two tables: a join reads one after the other, so each splits; a union reads
        // them side by side, so they split only when that leaves cores idle. A scalar
        // subquery is computed before its query. Two subqueries run side by side, and here
        // with the query's grouping too (it starts early): three scans, never split.
        let side_by_side = if partitions > 2 {
            big_pieces + parts_pieces
        } else {
            0
        };
        let both = [
            (
                "SELECT a.id, a.name, b.amount, b.at FROM {A} a JOIN {B} b ON a.id = b.id \
                 WHERE a.k = 7 OR b.name LIKE '東京%-7' ORDER BY a.id",
                big_pieces + parts_pieces,
            ),
            (
                "SELECT count(*) AS n, sum(amount) AS total, count(DISTINCT name) AS names \
                 FROM (SELECT amount, name FROM {A} UNION ALL SELECT amount, name FROM {B})",
                side_by_side,
            ),
            (
                "SELECT count(*) AS n, min(at) AS first FROM {A} \
                 WHERE amount > (SELECT avg(amount) FROM {B})",
                big_pieces + parts_pieces,
            ),
            (
                "SELECT k, count(*) AS n FROM {A} WHERE k < 3 GROUP BY k \
                 HAVING count(*) > (SELECT count(*) / 1000 FROM {B} WHERE name LIKE 'o''b%') \
                    AND count(*) < (SELECT count(*) FROM {B} WHERE name LIKE 'plain%') \
                 ORDER BY k",
                0,
            ),
        ];
        for (query, want_pieces) in both {
            let ours = query
                .replace("{A}", "lake.main.big")
                .replace("{B}", "lake.main.parts");
            let theirs = query.replace("{A}", "big").replace("{B}", "parts");
            let setting = format!("{partitions} partitions, row filters {row_filters}");
            check(
                &tributary,
                &reference,
                &ours,
                &theirs,
                want_pieces,
                &setting,
                &mut failures,
            )
            .await;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Writes `batch` as a Parquet file at `path`, in row groups of `sizes` rows.
fn write_row_groups(path: &Path, batch: &RecordBatch, sizes: &[usize]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    let mut offset = 0;
    for &size in sizes {
        writer.write(&batch.slice(offset, size)).unwrap();
        writer.flush().unwrap();
        offset += size;
    }
    writer.close().unwrap();
}

/// Runs `ours` on Tributary and `theirs` on plain DataFusion, and notes in `failures` a
/// different answer, or a plan that reads another number of pieces than `want_pieces`.
async fn check(
    tributary: &Engine,
    reference: &SessionContext,
    ours: &str,
    theirs: &str,
    want_pieces: usize,
    setting: &str,
    failures: &mut Vec<String>,
) {
    let df = tributary
        .sql(ours)
        .await
        .unwrap_or_else(|e| panic!("{ours}: {e}"));
    let plan = df.clone().create_physical_plan().await.unwrap();
    let got = df.collect().await.unwrap_or_else(|e| panic!("{ours}: {e}"));
    let got = pretty_format_batches(&got).unwrap().to_string();
    let want = reference
        .sql(theirs)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let want = pretty_format_batches(&want).unwrap().to_string();
    if got != want {
        failures.push(format!(
            "{ours} ({setting})\ngot\n{got}\nDataFusion alone gives\n{want}"
        ));
    }
    if pieces(&plan) != want_pieces {
        failures.push(format!(
            "{ours} ({setting}): expected {want_pieces} pieces\n{}",
            displayable(plan.as_ref()).indent(true)
        ));
    }
}

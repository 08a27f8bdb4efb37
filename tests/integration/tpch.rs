//! Federated TPC-H at SF0.01: each of the 22 queries, in every placement of
//! `sql/tpch/placements`, gives DuckDB's answer over the same data (DuckDB reading
//! PostgreSQL and MariaDB through its scanners and Parquet itself), both with the sources'
//! default settings and with their scans split from 5,000 rows, so that the tables are
//! read in parallel parts and planned as at larger scales (MariaDB's joins over whole
//! tables read apart among them).

use tributary::{Config, Engine};
use tributary_testkit::mysql::Database;
use tributary_testkit::postgres::Schema;
use tributary_testkit::tpch::{Dataset, DuckDb, Placement, compare, queries, write_parquet};

use crate::common::run;

#[tokio::test]
async fn every_query_in_every_placement_gives_duckdbs_answer() {
    let scale = 0.01;
    let (schema, database) = tokio::join!(Schema::create("tpch"), Database::create("tpch"));
    let parquet = tempfile::tempdir().unwrap();
    tokio::join!(schema.load_tpch(scale), database.load_tpch(scale));
    write_parquet(parquet.path(), scale);
    let data = Dataset {
        postgres_schema: schema.name.clone(),
        mysql_database: database.name.clone(),
        parquet_dir: parquet.path().to_path_buf(),
    };
    let python = std::env::var("TRIBUTARY_PYTHON")
        .expect("TRIBUTARY_PYTHON names the test venv's python (scripts/test sets it)");
    let duckdb = DuckDb::new(python, 2);
    let queries = queries();
    let placements = Placement::all();
    assert!(placements.len() >= 5, "placements: {placements:?}");

    let mut failures = Vec::new();
    let mut compared = 0;
    let splits = [None, Some(5_000)];
    for placement in &placements {
        let answers = duckdb.run(&data, placement, &queries, 1, true, |_| {});
        for partition_rows in splits {
            let yaml = data.tributary_config_with(placement, partition_rows);
            let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
            let engine = Engine::new(&config).unwrap_or_else(|e| panic!("{e}"));
            for (query, duck) in queries.iter().zip(&answers) {
                let at = format!(
                    "{} in {} (partition_rows {partition_rows:?})",
                    query.name, placement.name
                );
                let Some(expected) = &duck.answer else {
                    failures.push(format!("{at}: DuckDB failed: {:?}", duck.error));
                    continue;
                };
                match run(&engine, &data.qualify(placement, &query.sql)).await {
                    Ok(answer) => match compare(expected, &answer, query.ordered) {
                        Ok(()) => compared += 1,
                        Err(e) => failures.push(format!("{at}: {e}")),
                    },
                    Err(e) => failures.push(format!("{at}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(compared, 22 * placements.len() * splits.len());
}

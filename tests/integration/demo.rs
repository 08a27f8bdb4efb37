//! The embedded demo: TPC-H generated in process, served as `demo.tpch`.

use tributary::{Config, Engine};

use crate::common::table;

#[tokio::test]
async fn demo_tables_have_the_tpch_row_counts() {
    let engine = Engine::new(&Config::demo(0.01)).unwrap();
    // `count(*)` may be answered from the scan's statistics; `sum(1)` reads every row. Both
    // must give the TPC-H counts.
    for count in ["count(*)", "sum(1)"] {
        let sql = [
            "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
        ]
        .map(|t| format!("SELECT '{t}' AS t, {count} AS n FROM demo.tpch.{t}"))
        .join(" UNION ALL ")
            + " ORDER BY n";
        assert_eq!(
            table(&engine, &sql).await,
            "\
+----------+-------+
| t        | n     |
+----------+-------+
| region   | 5     |
| nation   | 25    |
| supplier | 100   |
| customer | 1500  |
| part     | 2000  |
| partsupp | 8000  |
| orders   | 15000 |
| lineitem | 60175 |
+----------+-------+",
            "counted with {count}"
        );
    }
}

#[tokio::test]
async fn demo_is_the_default_schema_and_queries_join() {
    let engine = Engine::new(&Config::demo(0.01)).unwrap();
    // A join over unqualified names; the answer is what DuckDB's `dbgen(sf=0.01)` gives.
    let got = table(
        &engine,
        "SELECT n_name, count(*) AS suppliers FROM supplier JOIN nation ON s_nationkey = n_nationkey
         JOIN region ON n_regionkey = r_regionkey WHERE r_name = 'EUROPE' GROUP BY n_name ORDER BY n_name",
    )
    .await;
    assert_eq!(
        got,
        "\
+----------------+-----------+
| n_name         | suppliers |
+----------------+-----------+
| FRANCE         | 2         |
| GERMANY        | 5         |
| ROMANIA        | 5         |
| RUSSIA         | 5         |
| UNITED KINGDOM | 3         |
+----------------+-----------+"
    );
    assert_eq!(
        table(&engine, "SELECT sum(o_totalprice) AS s FROM orders").await,
        "+---------------+\n| s             |\n+---------------+\n| 2127396830.02 |\n+---------------+"
    );
}

#[tokio::test]
async fn split_generation_matches_single_stream_generation() {
    // At SF 0.1 the big tables are generated in parallel parts; the parts must add up to
    // exactly what one stream generates.
    let split = Engine::new(&Config::demo(0.1)).unwrap();
    let mut config = Config::demo(0.1);
    config.server.datafusion.insert(
        "datafusion.execution.target_partitions".into(),
        tributary_core::config::OptionValue("1".into()),
    );
    let single = Engine::new(&config).unwrap();
    let sql = "SELECT count(*) AS n, count(DISTINCT o_orderkey) AS k, sum(o_totalprice) AS s, \
               (SELECT count(*) FROM lineitem) AS l, (SELECT sum(l_quantity) FROM lineitem) AS q FROM orders";
    let plan = split.explain(sql).await.unwrap().to_string();
    assert!(
        plan.contains("table=orders, scale_factor=0.1, partitions=2"),
        "{plan}"
    );
    let got = table(&split, sql).await;
    assert_eq!(got, table(&single, sql).await);
    assert!(got.contains("| 150000 | 150000 |"), "{got}");
}

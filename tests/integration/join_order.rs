//! Joins across sources of tables that share column names. Every query runs with pushdown
//! and without (DataFusion computing everything) and must give the same answer; each also
//! says whether PostgreSQL must receive a sub-plan.
//!
//! The keys have NULLs and values with no match; the strings have quotes, backslashes and
//! unicode; amounts are decimals and times are timestamps with time zones.

use tributary::{Config, Engine};
use tributary_testkit::{mysql, postgres};

use crate::matrix::sub_plan_failures;

const PG_TABLES: &str = r#"
CREATE TABLE orders (id int PRIMARY KEY, cust int, amount numeric(12, 2), placed timestamptz, note text);
INSERT INTO orders
SELECT id,
       CASE WHEN id % 11 = 0 THEN NULL ELSE id % 40 END,
       (id % 17) * 1.25,
       timestamptz '2024-01-01 00:00:00+02' + id * interval '7 hours',
       CASE id % 3 WHEN 0 THEN 'o''brien' WHEN 1 THEN '東京 "q"' END
FROM generate_series(1, 300) AS id;
CREATE TABLE lines (order_id int, qty int, item text);
INSERT INTO lines
SELECT CASE WHEN n % 13 = 0 THEN NULL ELSE n % 320 END,
       n % 7,
       CASE n % 4 WHEN 0 THEN 'back\slash' WHEN 1 THEN 'ünï "q"' WHEN 2 THEN 'it''s' END
FROM generate_series(1, 900) AS n;
ANALYZE orders;
ANALYZE lines;
"#;

const MY_TABLES: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name varchar(40), region varchar(10));
INSERT INTO customers
SELECT seq,
       CASE seq % 3 WHEN 0 THEN CONCAT('Zoë ', seq) WHEN 1 THEN CONCAT('O''Neil ', seq) END,
       CASE WHEN seq % 2 = 0 THEN 'north' ELSE 'south' END
FROM seq_1_to_50;
ANALYZE TABLE customers;
"#;

/// Tributary over the PostgreSQL schema and the MariaDB database, with or without
/// pushdown.
fn engine(pg_schema: &str, my_database: &str, pushdown: bool) -> Engine {
    let yaml = format!(
        "sources:\n  - name: pg\n    kind: postgres\n    url: {}\n    schemas: {{include: [{pg_schema}]}}\n    pushdown: {pushdown}\n  - name: my\n    kind: mysql\n    url: {}\n    schemas: {{include: [{my_database}]}}\n    pushdown: {pushdown}\n",
        postgres::url(),
        mysql::server_url(),
    );
    let config = Config::parse(&yaml, None, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's tables, and Tributary over them with and without pushdown.
struct Fixture {
    pg: postgres::Schema,
    my: mysql::Database,
    pushed: Engine,
    local: Engine,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let pg = postgres::Schema::create(prefix).await;
        let my = mysql::Database::create(prefix).await;
        tokio::join!(pg.execute(PG_TABLES), my.execute(MY_TABLES));
        let pushed = engine(&pg.name, &my.name, true);
        let local = engine(&pg.name, &my.name, false);
        Fixture {
            pg,
            my,
            pushed,
            local,
        }
    }

    /// What went wrong running `queries`, their `C`, `O` and `L` naming the tables.
    async fn failures(&self, queries: &[(&str, bool)]) -> Vec<String> {
        let queries: Vec<(String, bool)> = queries
            .iter()
            .map(|(sql, federate)| {
                let sql = sql
                    .replace(" C ", &format!(" my.{}.customers ", self.my.name))
                    .replace(" O ", &format!(" pg.{}.orders ", self.pg.name))
                    .replace(" L ", &format!(" pg.{}.lines ", self.pg.name));
                (sql, *federate)
            })
            .collect();
        let queries: Vec<(&str, bool)> = queries.iter().map(|(q, f)| (q.as_str(), *f)).collect();
        sub_plan_failures(&self.pushed, &self.local, &queries).await
    }
}

/// Both tables have an `id`, so the join's output has two columns of that name. A
/// filter on `o.id` (here the semi join's dynamic filter, or a top-k bound) must not
/// reach `customers` as a filter on its `id`, which DataFusion 55's filter pushdown
/// would do (apache/datafusion#25244): the answer would lose every customer whose `id`
/// is not among the semi join's order ids.
#[tokio::test]
async fn a_filter_on_one_of_two_same_named_columns_keeps_to_its_own() {
    let fixture = Fixture::new("name_clash").await;
    let queries: &[(&str, bool)] = &[
        (
            "SELECT c.id, o.id FROM C c JOIN O o ON c.id = o.cust \
             WHERE o.id IN (SELECT order_id FROM L WHERE qty = 6) ORDER BY 1, 2",
            false,
        ),
        (
            "SELECT c.id, o.id FROM C c JOIN O o ON c.id = o.cust ORDER BY o.id DESC LIMIT 5",
            false,
        ),
        (
            "SELECT o.id, c.id FROM O o JOIN C c ON c.id = o.cust \
             WHERE c.id IN (SELECT qty FROM L WHERE order_id = 6) ORDER BY 1, 2",
            false,
        ),
    ];
    let failures = fixture.failures(queries).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

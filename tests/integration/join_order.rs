//! Join order across sources: tables of one source that the query joins with each other
//! are joined first, wherever the query names them, so the source runs that join itself.
//! Every query runs with pushdown and without (DataFusion computing everything) and must
//! give the same answer; each also says whether a source must receive a sub-plan.
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
CREATE TABLE visits (id int PRIMARY KEY, cust int);
INSERT INTO visits SELECT seq, CASE WHEN seq % 17 = 0 THEN NULL ELSE seq % 60 END FROM seq_1_to_12000;
ANALYZE TABLE visits;
"#;

/// Queries naming a MariaDB table between or before PostgreSQL tables (`C` and `V` are
/// MariaDB's `customers` and `visits`, `O` and `L` PostgreSQL's `orders` and `lines`),
/// and whether a source must receive a sub-plan (its tables joined there).
const QUERIES: &[(&str, bool)] = &[
    // FROM order puts the MariaDB table first: (c ⋈ o) ⋈ l, regrouped as c ⋈ (o ⋈ l).
    (
        "SELECT c.name, o.id, l.item, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id ORDER BY o.id, l.item, l.qty, c.name",
        true,
    ),
    // SELECT * keeps the columns in the order the query names the tables.
    (
        "SELECT * FROM C c JOIN O o ON c.id = o.cust JOIN L l ON o.id = l.order_id \
         ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11",
        true,
    ),
    // The MariaDB table between the two PostgreSQL tables.
    (
        "SELECT o.id, c.region, l.item FROM O o, C c, L l \
         WHERE o.cust = c.id AND l.order_id = o.id AND l.qty > 2 ORDER BY 1, 2, 3",
        true,
    ),
    // Filters on each side, with quotes, unicode, decimals and time zones.
    (
        "SELECT c.name, o.note, l.item, o.amount FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id \
           AND o.placed >= TIMESTAMP '2024-01-20 00:00:00+05:00' \
           AND o.amount > 3.75 AND (l.item LIKE '%\"q\"%' OR l.item = 'it''s') \
           AND c.name <> 'Zoë 3' ORDER BY 1, 2, 3, 4",
        true,
    ),
    // A join condition beside the equality, between the PostgreSQL tables.
    (
        "SELECT o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id AND l.qty < o.cust ORDER BY 1, 2",
        true,
    ),
    // Aggregated above the joins.
    (
        "SELECT c.region, count(*), sum(o.amount * l.qty), min(o.placed) FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id GROUP BY c.region ORDER BY 1",
        true,
    ),
    // Nothing matches.
    (
        "SELECT c.name, l.item FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id AND o.amount > 1000000 ORDER BY 1, 2",
        true,
    ),
    // Semi and anti joins on the PostgreSQL side move with it.
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id \
           AND o.id IN (SELECT order_id FROM L WHERE qty = 6) ORDER BY 1, 2, 3",
        true,
    ),
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id \
           AND NOT EXISTS (SELECT 1 FROM L l2 WHERE l2.order_id = o.id AND l2.qty = 0) \
         ORDER BY 1, 2, 3",
        true,
    ),
    // A semi join on the MariaDB side, and NOT IN (which NULLs make null-aware).
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id \
           AND c.id IN (SELECT id FROM C WHERE region = 'north') ORDER BY 1, 2, 3",
        true,
    ),
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND o.id = l.order_id \
           AND o.cust NOT IN (SELECT order_id FROM L WHERE qty = 1) ORDER BY 1, 2, 3",
        true,
    ),
    // The same PostgreSQL table twice.
    (
        "SELECT c.id, o1.id, o2.id FROM C c, O o1, O o2 \
         WHERE c.id = o1.cust AND o1.cust = o2.cust AND o1.id < o2.id ORDER BY 1, 2, 3",
        true,
    ),
    // MariaDB joins by nested loops: its small tables are regrouped, and two tables
    // over 10,000 rows stay apart.
    (
        "SELECT c1.id, o.id, c2.name FROM C c1, O o, C c2 \
         WHERE c1.id = o.cust AND c2.id = c1.id ORDER BY 1, 2, 3",
        true,
    ),
    (
        "SELECT v1.id, o.id, v2.cust FROM V v1, O o, V v2 \
         WHERE v1.cust = o.id AND v2.id = v1.id AND o.amount > 15 ORDER BY 1, 2, 3",
        false,
    ),
    // The PostgreSQL tables meet only through the MariaDB table, or only through an
    // inequality: no PostgreSQL join to send.
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND c.id = l.order_id ORDER BY 1, 2, 3",
        false,
    ),
    (
        "SELECT c.id, o.id, l.qty FROM C c, O o, L l \
         WHERE c.id = o.cust AND c.id = l.qty AND o.id < l.order_id ORDER BY 1, 2, 3",
        false,
    ),
    // An outer join is not regrouped: its side keeps the rows it must keep.
    (
        "SELECT c.id, o.id, l.qty FROM O o LEFT JOIN C c ON c.id = o.cust \
         JOIN L l ON o.id = l.order_id ORDER BY 1, 2, 3",
        false,
    ),
];

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

    /// `query` with its `C`, `V`, `O` and `L` naming the tables.
    fn named(&self, query: &str) -> String {
        query
            .replace(" C ", &format!(" my.{}.customers ", self.my.name))
            .replace(" V ", &format!(" my.{}.visits ", self.my.name))
            .replace(" O ", &format!(" pg.{}.orders ", self.pg.name))
            .replace(" L ", &format!(" pg.{}.lines ", self.pg.name))
    }

    /// The optimized plan of `query` (see [`Fixture::named`]) with pushdown.
    async fn optimized(&self, query: &str) -> String {
        let plan = self.pushed.sql(&self.named(query)).await.unwrap();
        plan.into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string()
    }

    /// What went wrong running `queries` (see [`Fixture::named`]).
    async fn failures(&self, queries: &[(&str, bool)]) -> Vec<String> {
        let queries: Vec<(String, bool)> = queries
            .iter()
            .map(|(sql, federate)| (self.named(sql), *federate))
            .collect();
        let queries: Vec<(&str, bool)> = queries.iter().map(|(q, f)| (q.as_str(), *f)).collect();
        sub_plan_failures(&self.pushed, &self.local, &queries).await
    }
}

#[tokio::test]
async fn one_sources_tables_join_there_first_and_change_no_answer() {
    let fixture = Fixture::new("join_order").await;
    let failures = fixture.failures(QUERIES).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A small filtered table named last starts the joins: `customers` of one region meets
/// `orders` before `visits` (12,000 rows) is joined, instead of every visit meeting its
/// order first. No two tables of one source join each other here.
#[tokio::test]
async fn the_smallest_filtered_dimension_starts_the_joins() {
    let fixture = Fixture::new("dimension_first").await;
    let queries: &[(&str, bool)] = &[
        (
            "SELECT v.id, o.id, c.name, o.amount FROM V v, O o, C c \
             WHERE v.cust = o.id AND o.cust = c.id AND c.region = 'north' \
             ORDER BY 1, 2, 3, 4",
            false,
        ),
        (
            "SELECT c.region, count(*), sum(o.amount) FROM V v, O o, C c \
             WHERE v.cust = o.id AND o.cust = c.id AND c.name LIKE 'O''Neil%' \
             GROUP BY c.region ORDER BY 1",
            false,
        ),
        // The filter keeps nothing.
        (
            "SELECT v.id, o.id FROM V v, O o, C c \
             WHERE v.cust = o.id AND o.cust = c.id AND c.region = 'east' ORDER BY 1, 2",
            false,
        ),
    ];
    let failures = fixture.failures(queries).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    let plan = fixture
        .optimized(
            "SELECT v.id, o.id FROM V v, O o, C c \
             WHERE v.cust = o.id AND o.cust = c.id AND c.region = 'north'",
        )
        .await;
    let first_scan = plan.lines().find(|line| line.contains("TableScan"));
    assert!(
        first_scan.is_some_and(|scan| scan.contains("customers")),
        "the joins start from customers:\n{plan}"
    );

    // The same inside a subquery DataFusion keeps as an expression (TPC-H q11's shape; an
    // average, which the groups' sums do not give, so the subquery stays one).
    let with_total = "SELECT o.id, sum(o.amount) FROM V v, O o, C c \
         WHERE v.cust = o.id AND o.cust = c.id AND c.region = 'north' GROUP BY o.id \
         HAVING sum(o.amount) > (SELECT avg(o.amount) * 3 FROM V v, O o, C c \
         WHERE v.cust = o.id AND o.cust = c.id AND c.region = 'north') ORDER BY 1";
    let failures = fixture.failures(&[(with_total, false)]).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let plan = fixture.optimized(with_total).await;
    let mut in_subquery = plan.lines().skip_while(|line| !line.contains("Subquery:"));
    let first_scan = in_subquery.find(|line| line.contains("TableScan"));
    assert!(
        first_scan.is_some_and(|scan| scan.contains("customers")),
        "the subquery's joins start from customers:\n{plan}"
    );
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

/// A filtered dimension that does not end a chain of joins keeps its place: where it joins
/// two tables, or its neighbour joins two more, the joins after it could meet on a column
/// that is a key of neither side (TPC-H q05's suppliers and customers of one nation).
#[tokio::test]
async fn a_filtered_dimension_off_a_chain_keeps_its_place() {
    let fixture = Fixture::new("off_chain").await;
    // `customers` joins both `orders` and `lines`, which do not join each other.
    let star = "SELECT v.id, o.id, l.item, c.name FROM V v, O o, L l, C c \
                WHERE v.cust = o.id AND o.cust = c.id AND l.qty = c.id AND c.region = 'north' \
                ORDER BY 1, 2, 3, 4";
    // `customers` joins `orders`, which joins two separate reads of `visits`.
    let fork = "SELECT v.id, w.id, o.id, c.name FROM V v, V w, O o, C c \
                WHERE v.cust = o.id AND w.id = o.id AND o.cust = c.id AND c.region = 'north' \
                ORDER BY 1, 2, 3, 4";
    let failures = fixture.failures(&[(star, false), (fork, false)]).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    for query in [star, fork] {
        let plan = fixture.optimized(query).await;
        let first_scan = plan.lines().find(|line| line.contains("TableScan"));
        assert!(
            first_scan.is_some_and(|scan| scan.contains("visits")),
            "the joins keep starting from visits:\n{plan}"
        );
    }
}

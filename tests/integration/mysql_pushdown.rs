//! Every operator pushed to MySQL/MariaDB returns exactly what DataFusion computes without
//! pushdown (see `matrix.rs`), over data that exposes MySQL's traps: case- and
//! accent-insensitive default collations, trailing spaces ignored by PAD SPACE
//! collations, backslashes, NULLs sorting first, decimal division, unsigned extremes.

use tributary_testkit::mysql::Database;

use crate::matrix::{filter_failures, shared_failures, sub_plan_failures};
use crate::mysql::my_engine;

const PD_TABLE: &str = r#"
CREATE TABLE pd (
    id int PRIMARY KEY,
    s varchar(20) COLLATE utf8mb4_general_ci,
    sb varchar(20) COLLATE utf8mb4_nopad_bin,
    sp varchar(20) COLLATE utf8mb4_bin,
    c char(4) COLLATE utf8mb4_nopad_bin,
    n decimal(10, 2),
    f double,
    i int,
    b bigint,
    u bigint unsigned,
    dt datetime(6),
    d date,
    flag bool,
    e enum('small', 'medium', 'large')
);
INSERT INTO pd VALUES
 (1, 'abc', 'abc', 'abc', 'ab', 1.50, 0.0, 5, 10, 0, '2024-01-01 00:00:00', '2024-01-01', true, 'small'),
 (2, 'ABC', 'ABC', 'ABC', 'ab', -1.50, -0.0, -5, -10, 18446744073709551615, '2024-01-01 01:30:00', '2023-12-31', false, 'large'),
 (3, 'abc ', 'abc ', 'abc ', 'abc', 0.00, 1e-300, 0, 0, 1, '2023-12-31 23:00:00', '2024-01-02', true, 'medium'),
 (4, 'a''b', 'a''b', 'a''b', 'a''b', 99999999.99, 1.5, 7, 9223372036854775807, 9223372036854775808, '1970-01-01 00:00:00', '1970-01-01', NULL, 'small'),
 (5, 'back\\slash', 'back\\slash', 'back\\slash', 'x\\y', -99999999.99, -1.5, -7, -9223372036854775808, 5, '2099-12-31 23:59:59.999999', '2099-12-31', false, 'large'),
 (6, '100%', '100%', '100%', '1%', 0.01, 2.0, 6, 6, 6, NULL, NULL, true, NULL),
 (7, 'under_score', 'under_score', 'under_score', 'u_s', -0.01, 2.5, 8, 8, 8, '2024-06-30 12:00:00', '2024-06-30', true, 'medium'),
 (8, 'ünïcödé', 'ünïcödé', 'ünïcödé', 'ü', 12.34, -2.5, 9, 9, 9, '2024-03-10 02:30:00', '2024-03-10', false, 'small'),
 (9, 'unicode', 'unicode', 'unicode', 'u', 5.00, 3.25, 10, 10, 10, '2024-01-01 00:00:00', '2024-01-01', 2, 'small'),
 (10, '東京', '東京', '東京', '東京', 0.10, 1e300, 11, 11, 11, '2024-01-01 00:00:00.000001', '2024-01-01', false, 'large'),
 (11, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (12, 'b', 'b', 'b', 'b', 2.00, 4.0, 12, 12, 12, '2024-01-01 00:00:00', '2024-01-01', true, 'medium'),
 (13, 'B', 'B', 'B', 'B', 3.00, 5.0, 13, 13, 13, '2024-01-01 00:00:00', '2024-01-01', true, 'small'),
 (14, '', '', '', '', 0.00, 0.0, 14, 14, 14, '2024-01-01 00:00:00', '2024-01-01', false, 'small');
ALTER TABLE pd ADD COLUMN cc char(4) COLLATE utf8mb4_general_ci,
 ADD COLUMN s3 varchar(20) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci;
UPDATE pd SET cc = c, s3 = s;
"#;

/// Filters and whether each must reach the server.
const FILTERS: &[(&str, bool)] = &[
    // The default collation is case- and accent-insensitive ('abc' = 'ABC' there), and
    // ignores trailing spaces; literals written as binary strings compare bytes.
    ("s = 'abc'", true),
    ("s = 'abc '", true),
    ("s = 'unicode'", true),
    ("s = 'ÜNÏCÖDÉ'", true),
    ("s = '東京'", true),
    ("s = 'a''b'", true),
    ("s = 'back\\slash'", true),
    ("s = ''", true),
    ("s <> 'abc'", true),
    ("s < 'b'", true),
    ("s >= 'B'", true),
    ("s BETWEEN 'B' AND 'b'", true),
    ("s IN ('abc', 'b')", true),
    ("s IN ('東京', 'abc ', 'nope')", true),
    ("s NOT IN ('abc', 'B')", true),
    ("s IS DISTINCT FROM 'abc'", true),
    ("s IS NOT DISTINCT FROM 'ABC'", true),
    ("NOT (s = 'abc' AND i > 0)", true),
    ("'abc' IN (s, 'zzz')", true),
    ("'abc' NOT IN (s, 'zzz')", true),
    // A utf8mb3 column holds no character beyond the Basic Multilingual Plane.
    ("s3 = 'abc'", true),
    ("s3 = '😀'", true),
    ("s3 IN ('abc', '😀')", true),
    // Only literals are written as binary strings: columns compare under the collation.
    ("s = sb", false),
    ("CASE s WHEN 'abc' THEN 1 ELSE 0 END = 1", false),
    ("nullif(s, 'abc') IS NULL", false),
    // CHAR drops trailing spaces as it reads, and so compares.
    ("cc = 'ab'", true),
    ("cc = 'AB'", true),
    ("cc = 'ab '", true),
    ("cc < 'b'", true),
    // utf8mb4_bin ignores trailing spaces ('abc' = 'abc ').
    ("sp = 'abc'", true),
    ("sp = 'abc '", true),
    ("sp < 'b'", true),
    // A binary NO PAD collation compares bytes, as DataFusion does.
    ("sb = 'abc'", true),
    ("sb <> 'abc'", true),
    ("sb = 'a''b'", true),
    ("sb = 'back\\slash'", true),
    // `:name` in a literal, as a prepared statement (no backslash) and as a plain query
    // (a backslash, which mysql_async's placeholder parser would misread).
    ("sb <> 'a:b'", true),
    ("sb <> 'x\\' AND sb <> 'a:b'", true),
    ("sb = ''", true),
    ("sb IS DISTINCT FROM 'abc'", true),
    ("sb IS NOT DISTINCT FROM 'abc'", true),
    ("sb < 'b'", true),
    ("sb >= 'B'", true),
    ("sb BETWEEN 'B' AND 'b'", true),
    ("sb IN ('abc', '東京', 'nope')", true),
    ("sb NOT IN ('abc', 'B')", true),
    ("c = 'ab'", true),
    ("sb IS NULL", true),
    ("character_length(sb) = 3", true),
    ("coalesce(sb, 'none') = 'none'", false),
    ("sb || '!' = 'abc!'", false),
    ("CASE WHEN i > 0 THEN 'pos' ELSE 'neg' END = 'POS'", false),
    // LIKE has no escape character without backslash escapes.
    ("sb LIKE 'a%'", false),
    ("sb LIKE '%\\%%'", false),
    ("s LIKE 'a%'", false),
    ("upper(sb) = 'ABC'", false),
    // Enums compare by text under their collation, order by position.
    ("e = 'small'", false),
    // Decimals: exact arithmetic; division scales differently.
    ("n > 1.00", true),
    ("n = -1.5", true),
    ("n * 2 > 2", true),
    ("n + n > 0", true),
    ("-n > 1", true),
    ("n / 3 > 0.3", false),
    // Floats: -0.0 and NaN.
    ("f = 0", false),
    ("f > 0", false),
    // Integers: `/` is decimal division in MySQL; overflow fails there.
    ("i / 2 = 2", false),
    ("b + i > 10", false),
    ("i > 5", true),
    ("nullif(i, 5) IS NULL", true),
    ("CAST(i AS BIGINT) = 5", true),
    ("b > 9223372036854775806", true),
    ("u > 9223372036854775807", true),
    ("u = 18446744073709551615", true),
    // Dates and times without zones.
    ("dt >= TIMESTAMP '2024-01-01 00:00:00'", true),
    ("dt < '2024-01-01 00:00:00.000001'", true),
    ("d BETWEEN DATE '2023-12-31' AND DATE '2024-01-02'", true),
    ("d > DATE '2024-01-01' - INTERVAL '1' DAY", true),
    ("d + INTERVAL '1' MONTH > DATE '2024-02-01'", true),
    // TINYINT(1) holds more than 0 and 1 (row 9 holds 2): any non-zero value is true,
    // as it reads. (`flag = true` is simplified to `flag` before it gets here.)
    ("flag", true),
    ("NOT flag", true),
    ("flag IS NOT TRUE", true),
    ("s = 'abc' OR i > 10", true),
    ("(sb < 'b' OR sb IS NULL) AND i <> 7", true),
];

/// Sub-plans and whether each must run on the server as one query.
const SUB_PLANS: &[(&str, bool)] = &[
    (
        "SELECT count(*), sum(n), min(sb), max(i), count(DISTINCT sb) FROM pd",
        true,
    ),
    ("SELECT count(DISTINCT s) FROM pd", false),
    ("SELECT min(s) FROM pd", false),
    (
        "SELECT s, count(*) AS k FROM pd GROUP BY s ORDER BY s",
        false,
    ),
    (
        "SELECT sp, count(*) AS k FROM pd GROUP BY sp ORDER BY sp",
        false,
    ),
    (
        "SELECT sb, count(*) AS k FROM pd GROUP BY sb ORDER BY sb NULLS FIRST LIMIT 20",
        true,
    ),
    // MySQL sorts NULLs first ascending and cannot be told otherwise.
    ("SELECT id, sb FROM pd ORDER BY sb, id LIMIT 4", false),
    ("SELECT id, sb FROM pd ORDER BY sb DESC, id LIMIT 4", false),
    ("SELECT id FROM pd ORDER BY id DESC LIMIT 3", true),
    ("SELECT avg(n) FROM pd", false),
    ("SELECT sum(n * 2) FROM pd", true),
    // Integer sums wrap on overflow in DataFusion (u's sum does).
    ("SELECT sum(u) FROM pd", false),
    (
        "SELECT flag, sum(b) FROM pd WHERE id < 4 GROUP BY flag ORDER BY flag",
        false,
    ),
    (
        "SELECT a.id AS x, b.id AS y FROM pd a JOIN pd b ON a.sb = b.sb ORDER BY x, y",
        true,
    ),
    (
        "SELECT a.id AS x, b.id AS y FROM pd a JOIN pd b ON a.s = b.s ORDER BY x, y",
        false,
    ),
    (
        "SELECT a.id AS x, b.i AS y FROM pd a LEFT JOIN pd b ON a.id = b.i ORDER BY x",
        true,
    ),
    // A collated column compared with literals, in the joined tables' query.
    (
        "SELECT a.id AS x, b.id AS y FROM pd a JOIN pd b ON a.id = b.i \
         WHERE a.s IN ('abc', 'b') AND b.s <> 'ABC' ORDER BY x, y",
        true,
    ),
    ("SELECT DISTINCT sb FROM pd ORDER BY sb", true),
    ("SELECT DISTINCT s FROM pd ORDER BY s", false),
    (
        "SELECT i, count(*) FROM pd GROUP BY i HAVING count(*) > 0 AND i > 5 ORDER BY i",
        true,
    ),
    // Uncorrelated scalar subqueries run in the same query.
    (
        "SELECT flag, count(*) AS k FROM pd WHERE n > (SELECT min(n) FROM pd WHERE flag) GROUP BY flag ORDER BY flag",
        true,
    ),
    (
        "SELECT flag, count(*) AS k FROM pd WHERE dt < (SELECT max(dt) FROM pd WHERE id > 100) GROUP BY flag ORDER BY flag",
        true,
    ),
];

/// Common table expressions read twice: the scans of the same pushed sub-plan share one
/// query (grouping binary-collated text with quotes, unicode and NULL, summing decimals).
const SHARED: &[(&str, bool)] = &[
    (
        "WITH r AS (SELECT sb, sum(n) AS total, max(dt) AS latest FROM pd GROUP BY sb) \
         SELECT r.sb, r.total, r.latest FROM r WHERE r.total = (SELECT max(total) FROM r) ORDER BY r.sb",
        true,
    ),
    (
        "WITH r AS (SELECT sb, sum(n) AS total FROM pd WHERE id > 100 GROUP BY sb) \
         SELECT sb, total FROM r WHERE total = (SELECT max(total) FROM r)",
        true,
    ),
];

#[tokio::test]
async fn scans_of_one_sub_plan_share_its_query() {
    let db = Database::create("shared").await;
    db.execute(PD_TABLE).await;
    let pushed = my_engine(&db.name, true, "");
    let local = my_engine(&db.name, false, "");
    let failures = shared_failures(&pushed, &local, SHARED).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn filters_give_datafusions_answer_and_push_what_is_safe() {
    let db = Database::create("pushdown").await;
    db.execute(PD_TABLE).await;
    let pushed = my_engine(&db.name, true, "");
    let local = my_engine(&db.name, false, "");
    let failures = filter_failures(&pushed, &local, "pd", FILTERS).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn sub_plans_give_datafusions_answer_and_run_remotely_when_safe() {
    let db = Database::create("subplans").await;
    db.execute(PD_TABLE).await;
    let pushed = my_engine(&db.name, true, "");
    let local = my_engine(&db.name, false, "");
    let failures = sub_plan_failures(&pushed, &local, SUB_PLANS).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

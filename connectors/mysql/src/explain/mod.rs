//! Reading MySQL's and MariaDB's `EXPLAIN`: the rows a query returns, and whether it would
//! join by reading a large table whole in one thread.

mod condition;
pub mod mariadb;

use tributary_core::remote::Estimate;

/// One row of `EXPLAIN`'s table: one table of one `SELECT` of the query.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// The `SELECT` it belongs to (`id`; 1 is the outer query, `NULL` a union's result).
    pub select: Option<u64>,
    /// The table's name or alias, or `<derived2>`, `<subquery3>`, … for the server's own.
    pub table: Option<String>,
    /// How the table is read (`type`): `ALL` is a full scan, `index` a full index scan.
    pub access: Option<String>,
    /// The rows the server expects to read from the table.
    pub rows: Option<u64>,
    /// The share of those rows the conditions on the table keep, in percent.
    pub filtered: Option<f64>,
    /// Whether the server filters the table by its own columns with a condition `filtered`
    /// may not count (known only from MariaDB's `EXPLAIN FORMAT=JSON`).
    pub unestimated_filter: bool,
}

/// The share of a table's rows kept by a condition the server did not estimate:
/// DataFusion's default selectivity of filters it cannot estimate
/// (`default_filter_selectivity`, 20%).
///
/// MariaDB estimates only conditions on indexed columns unless the table has histograms
/// (`ANALYZE TABLE … PERSISTENT FOR ALL`), and counts every row for the others
/// (`filtered` 100). TPC-H q10's `customer`–`orders` join, 1.5 million rows as MariaDB
/// estimates it, returns 57,000 (`o_orderdate` in one quarter), and DataFusion built its
/// hash join on `lineitem`'s 1.5 million returned items instead. MySQL 8 guesses such
/// shares itself (`filtered` under 100).
const UNESTIMATED_FILTER_SHARE: f64 = 0.2;

impl PlanRow {
    /// The share of the rows read that the table's conditions keep.
    fn kept(&self) -> f64 {
        let filtered = self.filtered.unwrap_or(100.0);
        if filtered >= 100.0 && self.unestimated_filter {
            UNESTIMATED_FILTER_SHARE
        } else {
            filtered / 100.0
        }
    }
}

/// What one index lookup costs the server beyond the rows it reads, in rows read in
/// order: descending the index to the key. On MariaDB 10.11 with TPC-H SF1 in memory,
/// TPC-H q14 sent whole (a scan of `lineitem`'s 6 million rows and 75,000 lookups) took
/// 1.5–1.7 s, about 0.24 µs a row scanned, while q05 sent whole (a scan of 1.5 million
/// orders, then about 1.6 million lookups in `customer`, `nation`, `lineitem` and
/// `supplier`) took 1.44 s, about 0.7 µs a lookup beyond the scan's 0.36 s.
const LOOKUP_COST: f64 = 2.0;

/// What returning one row costs, in rows read in order: the server writes it into the
/// protocol and Tributary decodes it. `benches/mysql_scan.py` at SF1 on MariaDB 10.11:
/// `lineitem`'s 6 million rows through one connection took 8.96 s, against 1.24 s for a
/// query that reads them all and returns 446, about 1.3 µs a row returned against 0.2 µs
/// a row read.
pub const RETURN_COST: f64 = 5.0;

/// The estimate of a query whose `EXPLAIN` is `plan`: the product of the outer query's
/// tables' rows, each times the share its conditions keep (its `filtered` share, or for a
/// condition the server did not estimate, [`UNESTIMATED_FILTER_SHARE`]); `None` if one of
/// them has no row count, as for an impossible `WHERE`.
///
/// `split(rows)` says whether a scan of a table of `rows` rows is read in parallel parts.
/// Where the outer query joins tables and reads one of those whole, the join may be
/// better run by DataFusion over its inputs read apart: the server runs the query in one
/// thread, while read apart, that table's scan is split into parallel parts and narrowed
/// by the join keys of the other side (a dynamic filter). TPC-H q21 over MariaDB:
/// `supplier` joined with a full scan of `lineitem` (no index on `l_suppkey`) took 9–11 s
/// there. Whether it is, the planner decides by the work of both ways
/// ([`Estimate::work`]).
pub fn estimate(plan: &[PlanRow], split: impl Fn(u64) -> bool) -> Option<Estimate> {
    let outer: Vec<&PlanRow> = plan.iter().filter(|r| r.select == Some(1)).collect();
    let mut rows: Option<f64> = None;
    for row in &outer {
        let read = row.rows? as f64 * row.kept();
        rows = Some(rows.unwrap_or(1.0) * read);
    }
    let rows = rows?;
    let reads_whole = |row: &&PlanRow| {
        let own_table = row.table.as_deref().is_some_and(|t| !t.starts_with('<'));
        let whole = matches!(row.access.as_deref(), Some("ALL" | "index"));
        own_table && whole && row.rows.is_some_and(&split)
    };
    Some(Estimate {
        rows: rows.round() as usize,
        joins_better_apart: outer.len() > 1 && outer.iter().any(reads_whole),
        work: Some(work(plan) + rows * RETURN_COST),
    })
}

/// The rows the server reads to run `plan` in one thread, each index lookup counting
/// [`LOOKUP_COST`] more: every `SELECT` runs its tables as nested loops in the order
/// listed, each table read once for each row the tables before it keep. MariaDB's
/// buffered join reads the table once per buffer but compares each of its rows with each
/// buffered row, which the same product counts; MySQL 8's hash join compares fewer, so
/// its work is overcounted, which leans towards reading the join apart. A subquery counts
/// once, though a dependent one runs for each row of the query around it.
fn work(plan: &[PlanRow]) -> f64 {
    // A select's tables may be listed around those of a subquery it materializes.
    let mut selects: Vec<Option<u64>> = Vec::new();
    for row in plan {
        if !selects.contains(&row.select) {
            selects.push(row.select);
        }
    }
    let mut work = 0.0;
    for select in selects {
        let mut loops = 1.0;
        for row in plan.iter().filter(|r| r.select == select) {
            let rows = row.rows.unwrap_or(0) as f64;
            let lookup = matches!(
                row.access.as_deref(),
                Some("ref" | "eq_ref" | "ref_or_null" | "unique_subquery" | "index_subquery")
            );
            work += loops * (rows + if lookup { LOOKUP_COST } else { 0.0 });
            loops *= rows * row.kept();
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(select: u64, table: &str, access: &str, rows: u64, filtered: f64) -> PlanRow {
        PlanRow {
            select: Some(select),
            table: Some(table.into()),
            access: Some(access.into()),
            rows: Some(rows),
            filtered: Some(filtered),
            unestimated_filter: false,
        }
    }

    fn unestimated(mut row: PlanRow) -> PlanRow {
        row.unestimated_filter = true;
        row
    }

    /// Tables of at least a million rows are split.
    fn million(rows: u64) -> bool {
        rows >= 1_000_000
    }

    #[test]
    fn rows_are_the_product_of_the_outer_tables_filtered_rows() {
        let plan = [
            row(1, "orders", "ALL", 1_500_000, 50.0),
            row(1, "customer", "eq_ref", 1, 10.0),
            // A subquery's table is not the outer query's.
            row(2, "lineitem", "ref", 4, 100.0),
        ];
        let e = estimate(&plan, million).unwrap();
        assert_eq!(e.rows, 75_000);
    }

    #[test]
    fn a_filter_the_server_did_not_estimate_keeps_the_default_share() {
        // TPC-H q10's `customer`–`orders` join on MariaDB without histograms.
        let plan = [
            unestimated(row(1, "orders", "ALL", 1_500_000, 100.0)),
            row(1, "customer", "eq_ref", 1, 100.0),
        ];
        assert_eq!(estimate(&plan, million).unwrap().rows, 300_000);
        // A lookup's filter too: customers of some balance, looked up per order.
        let lookup = [
            row(1, "orders", "ALL", 1_500_000, 100.0),
            unestimated(row(1, "customer", "eq_ref", 1, 100.0)),
        ];
        assert_eq!(estimate(&lookup, million).unwrap().rows, 300_000);
        // Where the server estimated a share itself, that share stands.
        let estimated = [unestimated(row(1, "orders", "ALL", 1_500_000, 3.8))];
        assert_eq!(estimate(&estimated, million).unwrap().rows, 57_000);
    }

    #[test]
    fn a_table_without_a_row_count_gives_no_estimate() {
        let mut impossible = row(1, "t", "ALL", 0, 100.0);
        impossible.rows = None;
        assert_eq!(estimate(&[impossible], million), None);
    }

    #[test]
    fn work_reads_each_table_once_per_row_kept_before_it() {
        // TPC-H q04's shape: `orders` scanned, its items looked up by key.
        let plan = [
            unestimated(row(1, "orders", "ALL", 1_000_000, 100.0)),
            row(1, "lineitem", "ref", 4, 50.0),
        ];
        let e = estimate(&plan, million).unwrap();
        assert_eq!(e.rows, 400_000);
        // 1,000,000 scanned; 200,000 lookups of 4 rows; 400,000 returned.
        let lookups = 200_000.0 * (4.0 + LOOKUP_COST);
        assert_eq!(
            e.work,
            Some(1_000_000.0 + lookups + 400_000.0 * RETURN_COST)
        );
    }

    #[test]
    fn a_subquery_is_worked_once_wherever_its_tables_are_listed() {
        let plan = [
            row(1, "<derived2>", "ALL", 10, 100.0),
            row(2, "region", "ALL", 100, 10.0),
            row(1, "nation", "eq_ref", 1, 100.0),
        ];
        let e = estimate(&plan, million).unwrap();
        // Ten looked up in `nation` after the derived table; `region` read once.
        assert_eq!(
            e.work,
            Some(10.0 + 10.0 * (1.0 + LOOKUP_COST) + 100.0 + 10.0 * RETURN_COST)
        );
    }

    #[test]
    fn a_join_reading_a_large_table_whole_is_better_apart() {
        // TPC-H q21's `supplier`–`lineitem` join on MariaDB.
        let plan = [
            row(1, "l1", "ALL", 5_787_333, 100.0),
            row(1, "supplier", "eq_ref", 1, 100.0),
        ];
        assert!(estimate(&plan, million).unwrap().joins_better_apart);
        let index_scan = [
            row(1, "l1", "index", 5_787_333, 100.0),
            row(1, "supplier", "eq_ref", 1, 100.0),
        ];
        assert!(estimate(&index_scan, million).unwrap().joins_better_apart);
    }

    #[test]
    fn joins_are_run_where_they_are_unless_a_split_table_is_read_whole() {
        let small = [
            row(1, "customer", "ALL", 150_000, 100.0),
            row(1, "nation", "eq_ref", 1, 100.0),
        ];
        assert!(!estimate(&small, million).unwrap().joins_better_apart);
        let by_key = [
            row(1, "orders", "range", 2_000_000, 100.0),
            row(1, "lineitem", "ref", 4, 100.0),
        ];
        assert!(!estimate(&by_key, million).unwrap().joins_better_apart);
        // Nothing to join: a large scan alone is split anyway.
        let alone = [row(1, "lineitem", "ALL", 5_787_333, 10.0)];
        assert!(!estimate(&alone, million).unwrap().joins_better_apart);
        // The server's own temporary tables cannot be read apart.
        let derived = [
            row(1, "<derived2>", "ALL", 5_000_000, 100.0),
            row(1, "nation", "eq_ref", 1, 100.0),
        ];
        assert!(!estimate(&derived, million).unwrap().joins_better_apart);
        // Where the source would not split the table, reading it apart gains no
        // parallel parts.
        let plan = [
            row(1, "l1", "ALL", 5_787_333, 100.0),
            row(1, "supplier", "eq_ref", 1, 100.0),
        ];
        assert!(!estimate(&plan, |_| false).unwrap().joins_better_apart);
    }
}

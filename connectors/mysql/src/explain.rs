//! Reading MySQL's and MariaDB's `EXPLAIN`: the rows a query returns, and whether it would
//! join by reading a large table whole in one thread.

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
}

/// The estimate of a query whose `EXPLAIN` is `plan`: the product of the outer query's
/// tables' rows, each times its `filtered` share (`None` if one of them has no row count,
/// as for an impossible `WHERE`).
///
/// `split(rows)` says whether a scan of a table of `rows` rows is read in parallel parts.
/// Where the outer query joins tables and reads one of those whole, the join is better
/// run by DataFusion over its inputs read apart: the server runs the query in one thread,
/// while read apart, that table's scan is split into parallel parts and narrowed by the
/// join keys of the other side (a dynamic filter). TPC-H q21 over MariaDB: `supplier`
/// joined with a full scan of `lineitem` (no index on `l_suppkey`) took 9–11 s there.
pub fn estimate(plan: &[PlanRow], split: impl Fn(u64) -> bool) -> Option<Estimate> {
    let outer: Vec<&PlanRow> = plan.iter().filter(|r| r.select == Some(1)).collect();
    let mut rows: Option<f64> = None;
    for row in &outer {
        let read = row.rows? as f64 * row.filtered.unwrap_or(100.0) / 100.0;
        rows = Some(rows.unwrap_or(1.0) * read);
    }
    let reads_whole = |row: &&PlanRow| {
        let own_table = row.table.as_deref().is_some_and(|t| !t.starts_with('<'));
        let whole = matches!(row.access.as_deref(), Some("ALL" | "index"));
        own_table && whole && row.rows.is_some_and(&split)
    };
    Some(Estimate {
        rows: rows?.round() as usize,
        joins_better_apart: outer.len() > 1 && outer.iter().any(reads_whole),
    })
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
        }
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
    fn a_table_without_a_row_count_gives_no_estimate() {
        let mut impossible = row(1, "t", "ALL", 0, 100.0);
        impossible.rows = None;
        assert_eq!(estimate(&[impossible], million), None);
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

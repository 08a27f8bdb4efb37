//! MariaDB's `EXPLAIN FORMAT=JSON`, read into the rows of its tabular `EXPLAIN` plus what
//! only the JSON shows: each table's own condition (`attached_condition`), from which we
//! learn whether the server filters the table by a condition it did not estimate.
//!
//! The JSON nests a `SELECT`'s tables under `query_block` → `nested_loop` (or under
//! `filesort` and `temporary_table` for a grouped query), a buffered join's table under
//! `block-nl-join`, a union's `SELECT`s under `union_result`, and a materialized
//! subquery or derived table's `SELECT` under its table's `materialized`. Rather than
//! follow each of these shapes, we take every `table` object wherever it sits, with the
//! `select_id` of the nearest `query_block` around it.

use serde_json::{Map, Value};

use super::PlanRow;
use super::condition::{self, Table};

/// How many times fewer rows a key holds InnoDB tells MariaDB's optimizer than it counts:
/// it halves them, "since MySQL seems to favor table scans too much over index searches"
/// (MySQL 8 reads the unhalved count). MariaDB's `EXPLAIN` shows the halved count for a
/// table looked up by another table's columns (`ref`); a lookup by constants is estimated
/// by descending the index instead, and the server's own tables (`<derived2>`) are not
/// InnoDB's. TPC-H's `lineitem` holds 4 items an order, and MariaDB 10.11 estimated 2,
/// so q21's join was priced sent whole at half the items it looks up. (Tables of other
/// engines, rare on MariaDB, or with `ANALYZE … PERSISTENT` statistics are overcounted as
/// much, which leans towards reading apart.)
pub const INNODB_KEY_ROWS_HALVED: u64 = 2;

/// The plan rows of MariaDB's `EXPLAIN FORMAT=JSON` output `json`, with the rows InnoDB
/// halves for a lookup by another table's columns doubled back.
pub fn plan_rows(json: &str) -> serde_json::Result<Vec<PlanRow>> {
    let plan: Value = serde_json::from_str(json)?;
    let mut tables = Vec::new();
    collect(&plan, None, &mut tables);
    let names: Vec<&str> = tables
        .iter()
        .filter_map(|(_, t)| t.get("table_name").and_then(Value::as_str))
        .collect();
    Ok(tables
        .iter()
        .map(|&(select, table)| plan_row(select, table, &names))
        .collect())
}

/// Every `table` object under `value`, with the `select_id` it belongs to.
fn collect<'a>(
    value: &'a Value,
    select: Option<u64>,
    out: &mut Vec<(Option<u64>, &'a Map<String, Value>)>,
) {
    match value {
        Value::Object(object) => {
            let select = object.get("select_id").and_then(Value::as_u64).or(select);
            for (key, child) in object {
                if key == "table"
                    && let Value::Object(table) = child
                {
                    out.push((select, table));
                }
                collect(child, select, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, select, out)),
        _ => {}
    }
}

fn plan_row(select: Option<u64>, table: &Map<String, Value>, names: &[&str]) -> PlanRow {
    let text = |key: &str| table.get(key).and_then(Value::as_str).map(str::to_string);
    let name = text("table_name");
    let access = text("access_type");
    let whole = matches!(access.as_deref(), Some("ALL" | "index"));
    let key_parts: Vec<String> = match table.get("used_key_parts") {
        Some(Value::Array(parts)) if !whole => parts
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let unestimated_filter = match (&name, table.get("attached_condition")) {
        (Some(name), Some(Value::String(condition))) => {
            let table = Table {
                name,
                key_parts: &key_parts,
                tables: names,
            };
            condition::filters(condition, &table)
        }
        _ => false,
    };
    let rows = table.get("rows").and_then(Value::as_u64);
    let per_key = access.as_deref() == Some("ref")
        && name.as_deref().is_some_and(|n| !n.starts_with('<'))
        && matches!(table.get("ref"), Some(Value::Array(refs))
            if refs.iter().any(|r| r.as_str() != Some("const")));
    PlanRow {
        select,
        table: name,
        access,
        rows: if per_key {
            rows.map(|r| r * INNODB_KEY_ROWS_HALVED)
        } else {
            rows
        },
        filtered: table.get("filtered").and_then(Value::as_f64),
        unestimated_filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT … FROM customer, orders WHERE c_custkey = o_custkey AND o_orderdate …`
    /// (TPC-H q10's join) on MariaDB 10.11 without histograms.
    const Q10_JOIN: &str = r#"{
      "query_block": {
        "select_id": 1,
        "nested_loop": [
          {"table": {"table_name": "orders", "access_type": "ALL", "rows": 1491821,
                     "filtered": 100,
                     "attached_condition": "orders.o_orderdate >= '1993-10-01' and orders.o_orderdate < '1994-01-01'"}},
          {"table": {"table_name": "customer", "access_type": "eq_ref",
                     "possible_keys": ["PRIMARY"], "key": "PRIMARY", "key_length": "8",
                     "used_key_parts": ["c_custkey"],
                     "ref": ["tributary_tpch_sf1.orders.o_custkey"],
                     "rows": 1, "filtered": 100, "using_index": true}}
        ]
      }
    }"#;

    #[test]
    fn each_table_is_a_row_with_its_unestimated_filter() {
        let rows = plan_rows(Q10_JOIN).unwrap();
        assert_eq!(
            rows,
            [
                PlanRow {
                    select: Some(1),
                    table: Some("orders".into()),
                    access: Some("ALL".into()),
                    rows: Some(1_491_821),
                    filtered: Some(100.0),
                    unestimated_filter: true,
                },
                PlanRow {
                    select: Some(1),
                    table: Some("customer".into()),
                    access: Some("eq_ref".into()),
                    rows: Some(1),
                    filtered: Some(100.0),
                    unestimated_filter: false,
                },
            ]
        );
    }

    #[test]
    fn rows_innodb_halves_for_a_lookup_by_another_tables_columns_are_doubled() {
        // TPC-H q21's join: 4 items an order, of which MariaDB 10.11 was told 2; then a
        // lookup of one order by a constant, estimated by descending the index.
        let join = r#"{"query_block": {"select_id": 1, "nested_loop": [
            {"table": {"table_name": "orders", "access_type": "ALL", "rows": 1491821,
                       "filtered": 100}},
            {"table": {"table_name": "l1", "access_type": "ref", "key": "PRIMARY",
                       "used_key_parts": ["l_orderkey"],
                       "ref": ["tributary_tpch_sf1.orders.o_orderkey"], "rows": 2,
                       "filtered": 100}},
            {"table": {"table_name": "l2", "access_type": "ref", "key": "PRIMARY",
                       "used_key_parts": ["l_orderkey"], "ref": ["const"], "rows": 7,
                       "filtered": 100}},
            {"table": {"table_name": "supplier", "access_type": "eq_ref", "key": "PRIMARY",
                       "used_key_parts": ["s_suppkey"],
                       "ref": ["tributary_tpch_sf1.l1.l_suppkey"], "rows": 1,
                       "filtered": 100}}
        ]}}"#;
        let rows: Vec<_> = plan_rows(join).unwrap().iter().map(|r| r.rows).collect();
        assert_eq!(rows, [Some(1_491_821), Some(4), Some(7), Some(1)]);
    }

    #[test]
    fn a_lookups_null_check_and_a_buffered_joins_condition_are_no_filters() {
        // `SELECT … FROM t2 JOIN w ON w.id = t2.wid` (`wid` nullable), then a buffered
        // join whose table's own condition is empty but the join's is not.
        let lookup = r#"{"query_block": {"select_id": 1, "nested_loop": [
            {"table": {"table_name": "t2", "access_type": "ALL", "rows": 2, "filtered": 100,
                       "attached_condition": "t2.wid is not null"}},
            {"table": {"table_name": "w", "access_type": "eq_ref", "used_key_parts": ["id"],
                       "rows": 1, "filtered": 100}}
        ]}}"#;
        assert!(
            plan_rows(lookup)
                .unwrap()
                .iter()
                .all(|r| !r.unestimated_filter)
        );
        let buffered = r#"{"query_block": {"select_id": 1, "nested_loop": [
            {"table": {"table_name": "w", "access_type": "ALL", "rows": 2, "filtered": 100}},
            {"block-nl-join": {
                "table": {"table_name": "t2", "access_type": "ALL", "rows": 2, "filtered": 100},
                "buffer_type": "flat", "join_type": "BNL",
                "attached_condition": "t2.wid = w.n"}}
        ]}}"#;
        let rows = plan_rows(buffered).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| !r.unestimated_filter));
    }

    #[test]
    fn tables_of_grouped_unioned_and_materialized_selects_are_found() {
        // A derived table grouped by `o_custkey`, joined with `customer`.
        let derived = r#"{"query_block": {"select_id": 1, "nested_loop": [
            {"table": {"table_name": "c", "access_type": "ALL", "rows": 148245, "filtered": 100,
                       "attached_condition": "c.c_acctbal > 100"}},
            {"table": {"table_name": "<derived2>", "access_type": "ref",
                       "used_key_parts": ["o_custkey"], "rows": 10, "filtered": 100,
                       "materialized": {"query_block": {"select_id": 2, "filesort": {
                           "sort_key": "orders.o_custkey",
                           "temporary_table": {"nested_loop": [
                               {"table": {"table_name": "orders", "access_type": "ALL",
                                          "rows": 1491821, "filtered": 100,
                                          "attached_condition": "orders.o_orderstatus = 'F'"}}
                           ]}}}}}}
        ]}}"#;
        let rows = plan_rows(derived).unwrap();
        let found: Vec<_> = rows
            .iter()
            .map(|r| (r.select, r.table.as_deref().unwrap(), r.unestimated_filter))
            .collect();
        assert_eq!(
            found,
            [
                (Some(1), "c", true),
                (Some(1), "<derived2>", false),
                (Some(2), "orders", true),
            ]
        );
        let union = r#"{"query_block": {"union_result": {"query_specifications": [
            {"query_block": {"select_id": 1, "nested_loop": [
                {"table": {"table_name": "customer", "access_type": "ALL", "rows": 148245,
                           "filtered": 100, "attached_condition": "customer.c_acctbal > 0"}}]}},
            {"query_block": {"select_id": 2, "operation": "UNION", "nested_loop": [
                {"table": {"table_name": "supplier", "access_type": "index",
                           "used_key_parts": ["s_suppkey"], "rows": 9762, "filtered": 100}}]}}
        ]}}}"#;
        let selects: Vec<_> = plan_rows(union).unwrap().iter().map(|r| r.select).collect();
        assert_eq!(selects, [Some(1), Some(2)]);
    }

    #[test]
    fn an_impossible_where_has_no_row_count() {
        let impossible =
            r#"{"query_block": {"select_id": 1, "table": {"message": "Impossible WHERE"}}}"#;
        let rows = plan_rows(impossible).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].rows, None);
    }
}

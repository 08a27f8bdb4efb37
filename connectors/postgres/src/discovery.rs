//! Reading PostgreSQL's catalog: schemas, relations, columns, keys and size estimates.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use tributary_core::remote::{ColumnTraits, RemoteTableInfo, TableKind, remote_name};
use tributary_core::{Error, Result};

use crate::connect::{Connector, describe_error};
use crate::types::map_type;

/// A relation in a schema, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Its name.
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, `m` materialized
    /// view, `f` foreign table.
    pub kind: char,
}

/// Names of the schemas the user may use.
pub async fn schemas(connector: &Connector) -> Result<Vec<String>> {
    let conn = connector.get().await?;
    let rows = conn
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace \
             WHERE has_schema_privilege(oid, 'USAGE') ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_failed("listing schemas", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Tables, views, materialized views, partitioned and foreign tables of `schema`
/// (partitions of a partitioned table are reached through their parent).
pub async fn relations(connector: &Connector, schema: &str) -> Result<Vec<Relation>> {
    let conn = connector.get().await?;
    let rows = conn
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND NOT c.relispartition ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(|e| query_failed("listing tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| Relation {
            name: r.get(0),
            kind: r.get::<_, String>(1).chars().next().unwrap_or('r'),
        })
        .collect())
}

/// Everything the shared scan needs to know about `schema.table`, or `None` if there is
/// no such relation.
pub async fn describe(
    connector: &Connector,
    source: &str,
    schema: &str,
    table: &str,
) -> Result<Option<RemoteTableInfo>> {
    let conn = connector.get().await?;
    let Some(class) = conn
        .query_opt(
            "SELECT c.oid, c.relkind::text, \
               CASE WHEN c.relkind = 'p' THEN \
                 (SELECT sum(greatest(p.reltuples, 0))::float8 FROM pg_catalog.pg_partition_tree(c.oid) t \
                  JOIN pg_catalog.pg_class p ON p.oid = t.relid WHERE t.isleaf) \
               ELSE c.reltuples::float8 END, \
               CASE WHEN c.relkind = 'p' THEN \
                 (SELECT sum(p.relpages)::float8 FROM pg_catalog.pg_partition_tree(c.oid) t \
                  JOIN pg_catalog.pg_class p ON p.oid = t.relid WHERE t.isleaf) \
               ELSE c.relpages::float8 END, \
               current_setting('block_size')::float8 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[&schema, &table],
        )
        .await
        .map_err(|e| query_failed("reading the table's definition", &e))?
    else {
        return Ok(None);
    };
    let oid: u32 = class.get(0);
    let relkind: String = class.get(1);
    let tuples: Option<f64> = class.get(2);
    let pages: Option<f64> = class.get(3);
    let block_size: f64 = class.get(4);

    // Column types with their full kinds (enums, domains, arrays of those) come from
    // describing the relation; modifiers, nullability and collations from pg_attribute.
    let statement = conn
        .prepare(&format!(
            "SELECT * FROM {}.{}",
            quote_ident(schema),
            quote_ident(table)
        ))
        .await
        .map_err(|e| query_failed("describing the table", &e))?;
    let attributes = conn
        .query(
            "SELECT a.attname::text, \
               CASE WHEN a.atttypmod = -1 AND t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
               a.attnotnull, a.attnum, \
               coalesce(col.collname::text, ''), coalesce(col.collisdeterministic, true), \
               (SELECT datcollate::text FROM pg_catalog.pg_database WHERE datname = current_database()), \
               (SELECT s.n_distinct::float8 FROM pg_catalog.pg_stats s \
                WHERE s.schemaname = $2 AND s.tablename = $3 AND s.attname = a.attname \
                ORDER BY s.inherited DESC LIMIT 1) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_collation col ON col.oid = a.attcollation \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid, &schema, &table],
        )
        .await
        .map_err(|e| query_failed("reading the table's columns", &e))?;
    let key: Vec<i16> = conn
        .query(
            "SELECT k.n FROM pg_catalog.pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(n, pos) \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.pos",
            &[&oid],
        )
        .await
        .map_err(|e| query_failed("reading the primary key", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let attnums: Vec<i16> = attributes.iter().map(|a| a.get(3)).collect();

    if statement.columns().len() != attributes.len() {
        return Err(Error::Unavailable(format!(
            "table {schema}.{table} changed while it was being described; try again"
        )));
    }
    let mut fields = Vec::with_capacity(attributes.len());
    let mut columns = Vec::with_capacity(attributes.len());
    for (column, attribute) in statement.columns().iter().zip(&attributes) {
        let name: String = attribute.get(0);
        let typmod: i32 = attribute.get(1);
        let not_null: bool = attribute.get(2);
        let collation: String = attribute.get(4);
        let deterministic: bool = attribute.get(5);
        let database_collation: String = attribute.get(6);
        let mapping = map_type(column.type_(), typmod);
        if mapping.unknown {
            tracing::warn!(
                source, table = %format!("{schema}.{table}"), column = %name,
                pg_type = column.type_().name(),
                "no Arrow mapping for this PostgreSQL type; reading it as text"
            );
        }
        let effective = if collation == "default" {
            &database_collation
        } else {
            &collation
        };
        // C.UTF-8 sorts by code point, which for UTF-8 is byte order.
        let bytewise = matches!(
            effective.as_str(),
            "C" | "POSIX" | "ucs_basic" | "C.UTF-8" | "C.utf8" | "pg_c_utf8"
        );
        columns.push(ColumnTraits {
            opaque: mapping.opaque || !deterministic,
            bytewise_order: bytewise,
            collated: false,
            exact_as_bytes: false,
        });
        fields.push(Field::new(&name, mapping.arrow, !not_null));
    }
    let primary_key = key
        .iter()
        .filter_map(|k| attnums.iter().position(|a| a == k))
        .collect();
    let kind = match relkind.as_str() {
        "v" | "m" => TableKind::View,
        _ => TableKind::Table,
    };
    // reltuples is -1 (or 0) before the first ANALYZE: no estimate then.
    let rows = tuples.filter(|t| *t > 0.0).map(|t| t as usize);
    let distinct = attributes
        .iter()
        .map(|a| distinct_values(a.get(7), rows))
        .collect();
    let bytes = pages
        .filter(|p| *p > 0.0)
        .map(|p| (p * block_size) as usize);
    Ok(Some(RemoteTableInfo {
        source: source.to_string(),
        remote: remote_name(schema, table),
        schema: Arc::new(Schema::new(fields)),
        columns,
        primary_key,
        rows,
        distinct,
        bytes,
        kind,
    }))
}

/// A column's number of distinct values from `pg_stats.n_distinct`, which ANALYZE writes
/// as a count, or as minus the share of the rows when it expects the count to grow with
/// the table.
fn distinct_values(n_distinct: Option<f64>, rows: Option<usize>) -> Option<usize> {
    match n_distinct? {
        n if n > 0.0 => Some(n.round() as usize),
        n if n < 0.0 => rows.map(|rows| (-n * rows as f64).round().max(1.0) as usize),
        _ => None,
    }
}

/// The relation's kind and its current size in blocks (for partitioned tables, the
/// largest partition's), for splitting scans into ctid ranges.
pub async fn blocks(
    connector: &Connector,
    schema: &str,
    table: &str,
) -> Result<Option<(char, u64)>> {
    let conn = connector.get().await?;
    let row = conn
        .query_opt(
            "SELECT c.relkind::text, \
               CASE WHEN c.relkind = 'p' THEN \
                 (SELECT max(pg_catalog.pg_relation_size(t.relid)) FROM pg_catalog.pg_partition_tree(c.oid) t WHERE t.isleaf) \
               ELSE pg_catalog.pg_relation_size(c.oid) END / current_setting('block_size')::bigint \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| query_failed("measuring the table", &e))?;
    Ok(row.map(|r| {
        let kind: String = r.get(0);
        let blocks: Option<i64> = r.get(1);
        (
            kind.chars().next().unwrap_or('r'),
            blocks.unwrap_or(0).max(0) as u64,
        )
    }))
}

/// `"name"`, with embedded quotes doubled, as PostgreSQL quotes identifiers.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn query_failed(what: &str, e: &tokio_postgres::Error) -> Error {
    Error::Unavailable(format!("{what} failed: {}", describe_error(e)))
}

#[cfg(test)]
mod tests {
    use super::distinct_values;

    #[test]
    fn n_distinct_is_a_count_or_a_share_of_the_rows() {
        assert_eq!(distinct_values(Some(25.0), Some(1000)), Some(25));
        assert_eq!(distinct_values(Some(25.0), None), Some(25));
        // -1: every row distinct; -0.25: a quarter of the rows.
        assert_eq!(distinct_values(Some(-1.0), Some(1000)), Some(1000));
        assert_eq!(distinct_values(Some(-0.25), Some(1000)), Some(250));
        assert_eq!(distinct_values(Some(-0.25), None), None);
        // 0: unknown; no statistics at all.
        assert_eq!(distinct_values(Some(0.0), Some(1000)), None);
        assert_eq!(distinct_values(None, Some(1000)), None);
    }
}

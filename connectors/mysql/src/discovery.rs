//! Reading the server's catalog (`information_schema`): databases, tables, columns, keys
//! and size estimates.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use mysql_async::prelude::Queryable;
use tributary_core::remote::{RemoteTableInfo, TableKind, remote_name};
use tributary_core::{Error, Result};

use crate::connect::{Connector, Flavor, describe_error};
use crate::explain::mariadb::INNODB_KEY_ROWS_HALVED;
use crate::types::{ColumnInfo, map_column};

/// The server's own databases, never exposed.
pub const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "mysql", "performance_schema", "sys"];

/// Names of the databases the user can see.
pub async fn schemas(connector: &Connector) -> Result<Vec<String>> {
    let mut conn = connector.get().await?;
    conn.query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")
        .await
        .map_err(|e| query_failed("listing databases", &e))
}

/// Tables and views of `schema`.
pub async fn relations(connector: &Connector, schema: &str) -> Result<Vec<String>> {
    let mut conn = connector.get().await?;
    conn.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1",
        (schema,),
    )
    .await
    .map_err(|e| query_failed("listing tables", &e))
}

type ColumnRow = (
    String,
    String,
    String,
    String,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<String>,
);

/// An index column: index, position in it, column, cardinality, length of a prefix.
type IndexRow = (String, u64, String, Option<u64>, Option<u64>);

/// Everything the shared scan needs to know about `schema.table`, or `None` if there is
/// no such table or view.
pub async fn describe(
    connector: &Connector,
    source: &str,
    schema: &str,
    table: &str,
) -> Result<Option<RemoteTableInfo>> {
    let mut conn = connector.get().await?;
    if connector.flavor() == Some(Flavor::Mysql) {
        // MySQL 8 caches table statistics for a day by default; ask for current ones.
        conn.query_drop("SET SESSION information_schema_stats_expiry = 0")
            .await
            .map_err(|e| query_failed("reading table statistics", &e))?;
    }
    let Some((table_type, engine, rows, bytes)) = conn
        .exec_first::<(String, Option<String>, Option<u64>, Option<u64>), _, _>(
            "SELECT TABLE_TYPE, ENGINE, TABLE_ROWS, DATA_LENGTH FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .map_err(|e| query_failed("reading the table's definition", &e))?
    else {
        return Ok(None);
    };
    let columns: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), IS_NULLABLE, \
               NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_SET_NAME, COLLATION_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        .await
        .map_err(|e| query_failed("reading the table's columns", &e))?;
    // The primary key's columns in order, and the cardinality the server estimates for the
    // first column of each index: that column's number of distinct values, unless the index
    // holds only a prefix of it. (MySQL's functional indexes name no column.)
    let indexes: Vec<IndexRow> = conn
        .exec(
            "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, CARDINALITY, SUB_PART \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME IS NOT NULL \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (schema, table),
        )
        .await
        .map_err(|e| query_failed("reading the table's indexes", &e))?;
    let key: Vec<&str> = indexes
        .iter()
        .filter(|(index, ..)| index == "PRIMARY")
        .map(|(_, _, column, ..)| column.as_str())
        .collect();

    let mut fields = Vec::with_capacity(columns.len());
    let mut traits = Vec::with_capacity(columns.len());
    for (name, data_type, column_type, nullable, precision, scale, charset, collation) in columns {
        let mapping = map_column(&ColumnInfo {
            data_type,
            column_type,
            precision,
            scale,
            charset,
            collation,
        });
        if mapping.unknown {
            tracing::warn!(
                source, table = %format!("{schema}.{table}"), column = %name,
                "no Arrow mapping for this MySQL type; reading it as text"
            );
        }
        traits.push(mapping.traits);
        fields.push(Field::new(&name, mapping.arrow, nullable == "YES"));
    }
    let primary_key = key
        .iter()
        .filter_map(|k| fields.iter().position(|f| f.name() == k))
        .collect();
    let halved = connector.flavor() == Some(Flavor::Mariadb) && engine.as_deref() == Some("InnoDB");
    let distinct = fields
        .iter()
        .map(|f| {
            indexes
                .iter()
                .filter(|(_, seq, column, _, prefix)| {
                    *seq == 1 && column == f.name() && prefix.is_none()
                })
                .filter_map(|(_, _, _, cardinality, _)| cardinality.filter(|c| *c > 0))
                .max()
                .map(|c| distinct_values(c, rows, halved) as usize)
        })
        .collect();
    let kind = if table_type.contains("VIEW") {
        TableKind::View
    } else {
        TableKind::Table
    };
    Ok(Some(RemoteTableInfo {
        source: source.to_string(),
        remote: remote_name(schema, table),
        schema: Arc::new(Schema::new(fields)),
        columns: traits,
        primary_key,
        // InnoDB's estimate; 0 usually means "not measured yet" rather than empty.
        rows: rows.filter(|r| *r > 0).map(|r| r as usize),
        distinct,
        bytes: bytes.filter(|b| *b > 0).map(|b| b as usize),
        kind,
    }))
}

/// The distinct values of a column whose index's first column has `cardinality` as the
/// server reports it, in a table of `rows` rows. `halved`: the table is MariaDB's InnoDB,
/// which tells the server half the rows a key holds ([`INNODB_KEY_ROWS_HALVED`]) and
/// reports `rows` over that as the cardinality, twice the values there are: 2,978,076
/// for `lineitem.l_orderkey`'s 1,500,000. A cardinality of `rows` says only that a key
/// holds fewer than 4 rows, and is left as it is.
fn distinct_values(cardinality: u64, rows: Option<u64>, halved: bool) -> u64 {
    match rows {
        Some(rows) if halved && cardinality < rows => (cardinality / INNODB_KEY_ROWS_HALVED).max(1),
        _ => cardinality,
    }
}

/// The smallest and largest value of an integer column, for splitting a scan into ranges.
pub async fn key_range(
    connector: &Connector,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<Option<(i128, i128)>> {
    let mut conn = connector.get().await?;
    let sql = format!(
        "SELECT CAST(MIN({c}) AS CHAR), CAST(MAX({c}) AS CHAR) FROM {}.{}",
        quote_ident(schema),
        quote_ident(table),
        c = quote_ident(column),
    );
    let row: Option<(Option<String>, Option<String>)> = conn
        .query_first(sql)
        .await
        .map_err(|e| query_failed("measuring the key range", &e))?;
    Ok(match row {
        Some((Some(min), Some(max))) => match (min.parse(), max.parse()) {
            (Ok(min), Ok(max)) => Some((min, max)),
            _ => None,
        },
        _ => None,
    })
}

/// `` `name` ``, with embedded backticks doubled, as MySQL quotes identifiers.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn query_failed(what: &str, e: &mysql_async::Error) -> Error {
    Error::Unavailable(format!("{what} failed: {}", describe_error(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadbs_innodb_cardinality_counts_each_value_twice() {
        // `lineitem.l_orderkey` at SF1: 4 items an order, 2 as InnoDB tells MariaDB.
        assert_eq!(distinct_values(2_978_076, Some(5_956_152), true), 1_489_038);
        // Fewer than 4 rows a key: the count says no more.
        assert_eq!(distinct_values(5_956_152, Some(5_956_152), true), 5_956_152);
        // MySQL 8, another engine, or no row count: as reported.
        assert_eq!(
            distinct_values(2_978_076, Some(5_956_152), false),
            2_978_076
        );
        assert_eq!(distinct_values(2_978_076, None, true), 2_978_076);
    }
}

//! Answers to Flight SQL's metadata commands: server facts (`GetSqlInfo`), the types the
//! SQL dialect knows (`GetXdbcTypeInfo`), and the catalogs, schemas, tables and keys of
//! the engine's session.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use arrow::array::{BooleanArray, Scalar, StringArray};
use arrow::compute::kernels::comparison::like;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, Nullable, Searchable, SqlInfo,
    SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction, XdbcDataType,
};
use datafusion::catalog::TableProvider;
use datafusion::common::Constraint;
use datafusion::logical_expr::TableType;
use tonic::Status;

use super::wire::wire_schema;
use crate::engine::Engine;

/// The server facts JDBC, ODBC and ADBC drivers ask for.
pub fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Tributary");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, arrow::ARROW_VERSION);
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    // DataFusion folds unquoted names to lower case and keeps quoted ones as written.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // Ascending sorts put NULLs last and descending ones first: NULL is the highest value.
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlMaxColumnNameLength, 0i64);
    b.append(SqlInfo::SqlMaxStatementLength, 0i64);
    b.append(
        SqlInfo::SqlKeywords,
        &[
            "ANTI", "EXPLAIN", "FORMAT", "ILIKE", "QUALIFY", "SEMI", "SHOW", "UNNEST",
        ][..],
    );
    b.append(
        SqlInfo::SqlNumericFunctions,
        &[
            "ABS", "ACOS", "ASIN", "ATAN", "ATAN2", "CEIL", "COS", "DEGREES", "EXP", "FLOOR", "LN",
            "LOG", "LOG10", "LOG2", "MOD", "PI", "POWER", "RADIANS", "RANDOM", "ROUND", "SIGNUM",
            "SIN", "SQRT", "TAN", "TRUNC",
        ][..],
    );
    b.append(
        SqlInfo::SqlStringFunctions,
        &[
            "ASCII",
            "BTRIM",
            "CHAR_LENGTH",
            "CHR",
            "CONCAT",
            "CONCAT_WS",
            "INITCAP",
            "LEFT",
            "LENGTH",
            "LOWER",
            "LPAD",
            "LTRIM",
            "MD5",
            "OCTET_LENGTH",
            "REPEAT",
            "REPLACE",
            "REVERSE",
            "RIGHT",
            "RPAD",
            "RTRIM",
            "SPLIT_PART",
            "STARTS_WITH",
            "STRPOS",
            "SUBSTR",
            "TRANSLATE",
            "TRIM",
            "UPPER",
        ][..],
    );
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        &[
            "CURRENT_DATE",
            "CURRENT_TIME",
            "DATE_BIN",
            "DATE_PART",
            "DATE_TRUNC",
            "EXTRACT",
            "FROM_UNIXTIME",
            "MAKE_DATE",
            "NOW",
            "TO_CHAR",
            "TO_DATE",
            "TO_TIMESTAMP",
            "TO_UNIXTIME",
        ][..],
    );
    b.append(
        SqlInfo::SqlSystemFunctions,
        &["ARROW_TYPEOF", "VERSION"][..],
    );
    b.build().expect("the built-in SQL info is well formed")
}

/// A SQL type: name, ODBC/JDBC type, column size, literal prefix, case-sensitive.
type SqlType = (
    &'static str,
    XdbcDataType,
    Option<i32>,
    Option<&'static str>,
    bool,
);

/// The SQL types the dialect accepts, for `GetXdbcTypeInfo`.
pub fn xdbc_types() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let types: &[SqlType] = &[
        ("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None, false),
        ("TINYINT", XdbcDataType::XdbcTinyint, Some(3), None, false),
        ("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), None, false),
        ("INTEGER", XdbcDataType::XdbcInteger, Some(10), None, false),
        ("BIGINT", XdbcDataType::XdbcBigint, Some(19), None, false),
        ("REAL", XdbcDataType::XdbcReal, Some(24), None, false),
        ("DOUBLE", XdbcDataType::XdbcDouble, Some(53), None, false),
        ("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), None, false),
        ("VARCHAR", XdbcDataType::XdbcVarchar, None, Some("'"), true),
        (
            "BYTEA",
            XdbcDataType::XdbcVarbinary,
            None,
            Some("X'"),
            false,
        ),
        (
            "DATE",
            XdbcDataType::XdbcDate,
            Some(10),
            Some("DATE '"),
            false,
        ),
        (
            "TIME",
            XdbcDataType::XdbcTime,
            Some(15),
            Some("TIME '"),
            false,
        ),
        (
            "TIMESTAMP",
            XdbcDataType::XdbcTimestamp,
            Some(26),
            Some("TIMESTAMP '"),
            false,
        ),
        (
            "INTERVAL",
            XdbcDataType::XdbcInterval,
            None,
            Some("INTERVAL '"),
            false,
        ),
    ];
    for (name, data_type, size, prefix, case_sensitive) in types {
        let numeric = matches!(
            data_type,
            XdbcDataType::XdbcTinyint
                | XdbcDataType::XdbcSmallint
                | XdbcDataType::XdbcInteger
                | XdbcDataType::XdbcBigint
                | XdbcDataType::XdbcReal
                | XdbcDataType::XdbcDouble
                | XdbcDataType::XdbcDecimal
        );
        b.append(XdbcTypeInfo {
            type_name: (*name).into(),
            data_type: *data_type,
            column_size: *size,
            literal_prefix: prefix.map(Into::into),
            literal_suffix: prefix.map(|_| "'".into()),
            create_params: (*name == "DECIMAL").then(|| vec!["precision".into(), "scale".into()]),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: *case_sensitive,
            searchable: if *case_sensitive {
                Searchable::Full
            } else {
                Searchable::Basic
            },
            unsigned_attribute: numeric.then_some(false),
            fixed_prec_scale: false,
            auto_increment: numeric.then_some(false),
            local_type_name: Some((*name).into()),
            minimum_scale: (*name == "DECIMAL").then_some(0),
            maximum_scale: (*name == "DECIMAL").then_some(38),
            sql_data_type: *data_type,
            datetime_subcode: None,
            num_prec_radix: numeric.then_some(if *name == "DECIMAL" { 10 } else { 2 }),
            interval_precision: None,
        });
    }
    b.build().expect("the built-in type list is well formed")
}

/// Flight SQL's name for a DataFusion table type.
fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

/// Every table type a listing can show.
pub const TABLE_TYPES: [&str; 3] = ["LOCAL TEMPORARY", "TABLE", "VIEW"];

/// Which of `names` match the SQL `LIKE` pattern (`%`, `_`; case-sensitive), or all of
/// them without a pattern.
fn matching(names: Vec<String>, pattern: Option<&str>) -> Result<Vec<String>, Status> {
    let Some(pattern) = pattern else {
        return Ok(names);
    };
    let array = StringArray::from(names.clone());
    let hits: BooleanArray = like(&array, &Scalar::new(StringArray::from(vec![pattern])))
        .map_err(|e| Status::invalid_argument(format!("bad name pattern `{pattern}`: {e}")))?;
    Ok(names
        .into_iter()
        .zip(hits.iter())
        .filter(|(_, hit)| hit.unwrap_or(false))
        .map(|(name, _)| name)
        .collect())
}

/// The catalogs a command may list: `catalog` if given (and known), else all.
fn catalogs(engine: &Engine, catalog: Option<&str>) -> Vec<String> {
    let mut names = engine.context().catalog_names();
    if let Some(wanted) = catalog {
        names.retain(|n| n == wanted);
    }
    names.sort();
    names
}

/// `(catalog, schema)` pairs matching a `GetDbSchemas` command, after refreshing discovery
/// so every source's schemas are listed.
pub async fn schemas(
    engine: &Engine,
    catalog: Option<&str>,
    pattern: Option<&str>,
) -> Result<Vec<(String, String)>, Status> {
    engine.discover_all().await;
    let mut out = Vec::new();
    for name in catalogs(engine, catalog) {
        let Some(provider) = engine.context().catalog(&name) else {
            continue;
        };
        let mut schemas = matching(provider.schema_names(), pattern)?;
        schemas.sort();
        out.extend(schemas.into_iter().map(|s| (name.clone(), s)));
    }
    Ok(out)
}

/// The rows of a `GetDbSchemas` answer.
pub async fn db_schemas(engine: &Engine, cmd: CommandGetDbSchemas) -> Result<RecordBatch, Status> {
    let found = schemas(
        engine,
        cmd.catalog.as_deref(),
        cmd.db_schema_filter_pattern.as_deref(),
    )
    .await?;
    let mut builder = cmd.into_builder();
    for (catalog, schema) in found {
        builder.append(catalog, schema);
    }
    builder.build().map_err(|e| Status::internal(e.to_string()))
}

/// The rows of a `GetTables` answer; with `include_schema`, each matching table is opened
/// for its columns.
pub async fn tables(engine: &Engine, cmd: CommandGetTables) -> Result<RecordBatch, Status> {
    let found = schemas(
        engine,
        cmd.catalog.as_deref(),
        cmd.db_schema_filter_pattern.as_deref(),
    )
    .await?;
    let pattern = cmd.table_name_filter_pattern.clone();
    let include_schema = cmd.include_schema;
    let types = cmd.table_types.clone();
    let mut builder = cmd.into_builder();
    let empty = Schema::empty();
    for (catalog, schema) in found {
        let Some(provider) = engine
            .context()
            .catalog(&catalog)
            .and_then(|c| c.schema(&schema))
        else {
            continue;
        };
        let mut names = matching(provider.table_names(), pattern.as_deref())?;
        names.sort();
        for table in names {
            let opened = match provider.table(&table).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    // One broken table must not hide the rest of the listing.
                    tracing::warn!(catalog, schema, table, error = %e, "table left out of the listing");
                    continue;
                }
            };
            let kind = table_type_name(opened.table_type());
            if !types.is_empty() && !types.iter().any(|t| t == kind) {
                continue;
            }
            let columns = include_schema.then(|| wire_schema(opened.schema()));
            builder
                .append(
                    &catalog,
                    &schema,
                    &table,
                    kind,
                    columns.as_deref().unwrap_or(&empty),
                )
                .map_err(|e| Status::internal(e.to_string()))?;
        }
    }
    builder.build().map_err(|e| Status::internal(e.to_string()))
}

/// The schema of `GetPrimaryKeys` answers.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The table a `GetPrimaryKeys` command names (the session's default catalog and schema
/// where it names none), as `(catalog, schema, table)`; an error if it does not exist.
pub async fn key_table(
    engine: &Engine,
    cmd: &CommandGetPrimaryKeys,
) -> Result<(String, String, Arc<dyn TableProvider>), Status> {
    let state = engine.context().state();
    let defaults = &state.config().options().catalog;
    let catalog = cmd
        .catalog
        .clone()
        .unwrap_or_else(|| defaults.default_catalog.clone());
    let schema = cmd
        .db_schema
        .clone()
        .unwrap_or_else(|| defaults.default_schema.clone());
    let table = open_table(engine, &catalog, &schema, &cmd.table).await?;
    Ok((catalog, schema, table))
}

/// The rows of a `GetPrimaryKeys` answer, from the table's declared primary key.
pub async fn primary_keys(
    engine: &Engine,
    cmd: CommandGetPrimaryKeys,
) -> Result<RecordBatch, Status> {
    let (catalog, schema, table) = key_table(engine, &cmd).await?;
    let mut catalogs = StringBuilder::new();
    let mut schemas = StringBuilder::new();
    let mut tables = StringBuilder::new();
    let mut columns = StringBuilder::new();
    let mut key_names = StringBuilder::new();
    let mut sequences = Int32Builder::new();
    let fields = table.schema();
    for constraint in table.constraints().map(|c| c.iter()).into_iter().flatten() {
        let Constraint::PrimaryKey(indices) = constraint else {
            continue;
        };
        for (position, index) in indices.iter().enumerate() {
            catalogs.append_value(&catalog);
            schemas.append_value(&schema);
            tables.append_value(&cmd.table);
            columns.append_value(fields.field(*index).name());
            key_names.append_null();
            sequences.append_value(i32::try_from(position + 1).unwrap_or(i32::MAX));
        }
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(catalogs.finish()),
        Arc::new(schemas.finish()),
        Arc::new(tables.finish()),
        Arc::new(columns.finish()),
        Arc::new(key_names.finish()),
        Arc::new(sequences.finish()),
    ];
    RecordBatch::try_new(primary_keys_schema(), arrays).map_err(|e| Status::internal(e.to_string()))
}

/// The schema of imported and exported keys and cross references; Tributary knows no
/// foreign keys, so these answers are always empty.
pub fn foreign_keys_schema() -> SchemaRef {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8("pk_catalog_name", true),
        utf8("pk_db_schema_name", true),
        utf8("pk_table_name", false),
        utf8("pk_column_name", false),
        utf8("fk_catalog_name", true),
        utf8("fk_db_schema_name", true),
        utf8("fk_table_name", false),
        utf8("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        utf8("fk_key_name", true),
        utf8("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// Opens a table named by a key command, so a typo is an error rather than an empty
/// answer.
async fn open_table(
    engine: &Engine,
    catalog: &str,
    schema: &str,
    table: &str,
) -> Result<Arc<dyn TableProvider>, Status> {
    let provider = engine
        .context()
        .catalog(catalog)
        .and_then(|c| c.schema(schema))
        .ok_or_else(|| Status::not_found(format!("schema `{catalog}.{schema}` not found")))?;
    provider
        .table(table)
        .await
        .map_err(super::status::status)?
        .ok_or_else(|| Status::not_found(format!("table `{catalog}.{schema}.{table}` not found")))
}

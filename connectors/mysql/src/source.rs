//! The `mysql` source.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::error::Result as DfResult;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, Ident, Value};
use datafusion::sql::unparser::dialect::Dialect;
use mysql_async::prelude::Queryable;
use tributary_core::config::Partitions;
use tributary_core::remote::{
    Estimate, Federation, PushdownRules, RemoteReader, RemoteSource, RemoteTable, RemoteTableInfo,
    TableKind,
};
use tributary_core::{Error, Health, Result, Source, SourceContext};

use crate::config::MysqlConfig;
use crate::connect::{Connector, Flavor, describe_error};
use crate::dialect::MysqlDialect;
use crate::discovery::{self, SYSTEM_SCHEMAS};
use crate::explain::{self, PlanRow};
use crate::reader::{MysqlReader, Shared};

/// What MySQL and MariaDB evaluate exactly as DataFusion does; the tests in
/// `tests/integration/mysql_pushdown.rs` check each entry against DataFusion's answer.
/// String comparisons are governed per column by its collation (see `types.rs`).
pub static RULES: PushdownRules = PushdownRules {
    dialect_name: "MySQL",
    functions: &["coalesce", "nullif", "character_length"],
    // Without backslash escapes (the session's mode) LIKE has no escape character, where
    // DataFusion's is `\`. (`COLLATE utf8mb4_bin ESCAPE '\'` would make it exact, but
    // MariaDB 10.11 matches `'%special%requests%'` at about 0.55 µs a row in one thread:
    // TPC-H q13 took 1.9 s with it pushed against 1.0 s reading `o_comment`.)
    like: false,
    // `/` on integers gives a decimal in MySQL.
    integer_division: false,
    string_equality: true,
    computed_strings_exact: false,
    null_ordering: false,
    // AVG rounds at scale + 4 where DataFusion truncates.
    decimal_avg: false,
    cast_to: mysql_cast_target,
    // Nested loops over indexes: TPC-H q07 with orders and customer in MariaDB took 2.3 s
    // with their join regrouped to run there, 0.66 s with both read apart.
    hash_joins: false,
    integer_arrays: false,
    // Default collations ignore case, accents and trailing spaces; binary string literals
    // make comparisons with UTF-8 text exact (see `types.rs`).
    exact_strings: true,
};

/// Types the MySQL dialect writes as valid `CAST` targets (`SIGNED`, `DECIMAL(p,s)`,
/// `DATE`, `DATETIME`, `CHAR`).
fn mysql_cast_target(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int32
            | DataType::Int64
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
            | DataType::Date32
            | DataType::Timestamp(_, None)
            | DataType::Utf8
            | DataType::LargeUtf8
    )
}

/// A MySQL or MariaDB server as a catalog.
pub struct MysqlSource {
    remote: Arc<MysqlRemote>,
    federation: Federation,
    config: MysqlConfig,
}

impl fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSource")
            .field("name", &self.remote.shared.name)
            .field("target", &self.remote.shared.connector.target())
            .finish()
    }
}

impl MysqlSource {
    /// Builds the source from its config; connects only when first used.
    pub fn new(ctx: &SourceContext, config: MysqlConfig) -> Result<Self> {
        let connector = Connector::new(&config, &ctx.key, &ctx.config_dir)?;
        if config.batch_size == Some(0) {
            return Err(Error::config(
                ctx.key("batch_size"),
                "expected a positive number",
            ));
        }
        let remote = Arc::new(MysqlRemote {
            shared: Arc::new(Shared {
                name: ctx.name.clone(),
                connector,
                batch_size: config.batch_size,
                protocol: config.protocol,
            }),
            partitions: config.partitions,
            partition_rows: config.partition_rows,
            pushdown: config.pushdown,
        });
        let federation = Federation::new(Arc::clone(&remote) as Arc<dyn RemoteSource>);
        Ok(MysqlSource {
            remote,
            federation,
            config,
        })
    }

    fn exposed(&self, schema: &str) -> bool {
        !SYSTEM_SCHEMAS.contains(&schema) && self.config.schemas.allows(schema)
    }
}

#[async_trait]
impl Source for MysqlSource {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    async fn schema_names(&self) -> Result<Vec<String>> {
        let all = discovery::schemas(&self.remote.shared.connector).await?;
        Ok(all.into_iter().filter(|s| self.exposed(s)).collect())
    }

    async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
        if !self.exposed(schema) {
            return Ok(Vec::new());
        }
        discovery::relations(&self.remote.shared.connector, schema).await
    }

    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.exposed(schema) {
            return Ok(None);
        }
        let info = discovery::describe(
            &self.remote.shared.connector,
            &self.remote.shared.name,
            schema,
            table,
        )
        .await?;
        Ok(info.map(|info| {
            self.federation.table(RemoteTable::new(
                Arc::clone(&self.remote) as Arc<dyn RemoteSource>,
                info,
            ))
        }))
    }

    async fn check(&self) -> Result<Health> {
        let mut conn = self.remote.shared.connector.get().await?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| Error::Unavailable(describe_error(&e)))?;
        let version = version.unwrap_or_default();
        let product = if version.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        };
        Ok(Health::ok(format!(
            "{product} {} at {}",
            version.split('-').next().unwrap_or(&version),
            self.remote.shared.connector.target()
        )))
    }
}

/// The source as the shared remote scan sees it.
#[derive(Debug)]
pub struct MysqlRemote {
    shared: Arc<Shared>,
    partitions: Partitions,
    partition_rows: u64,
    pushdown: bool,
}

impl MysqlRemote {
    /// How many parallel parts a scan of a table of `rows` rows asks for, at most
    /// `max_parts`: by the `partitions` setting, never more than the pool's connections.
    fn parts(&self, rows: Option<usize>, max_parts: usize) -> usize {
        self.partitions
            .wanted(rows, self.partition_rows, max_parts)
            .min(self.shared.connector.max_connections())
            .max(1)
    }
}

#[async_trait]
impl RemoteSource for MysqlRemote {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn compute_context(&self) -> String {
        format!("mysql://{}", self.shared.connector.target())
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        Arc::new(MysqlDialect::new())
    }

    fn rules(&self) -> &PushdownRules {
        &RULES
    }

    fn pushdown(&self) -> bool {
        self.pushdown
    }

    /// Splits a table into ranges of its integer primary key's first column, which InnoDB
    /// reads as contiguous stretches of its clustered index. Each part reads its own
    /// consistent snapshot (MySQL cannot share one across connections).
    async fn split(
        &self,
        table: &RemoteTableInfo,
        max_parts: usize,
    ) -> DfResult<Vec<Option<ast::Expr>>> {
        let parts = self.parts(table.rows, max_parts);
        let key = table
            .primary_key
            .first()
            .map(|i| table.schema.field(*i))
            .filter(|f| f.data_type().is_integer());
        let (Some(key), true) = (key, parts > 1 && table.kind == TableKind::Table) else {
            return Ok(vec![None]);
        };
        let (schema, name) = (
            table.remote.schema().unwrap_or_default(),
            table.remote.table(),
        );
        let Some((low, high)) =
            discovery::key_range(&self.shared.connector, schema, name, key.name())
                .await
                .map_err(|e| e.in_source(&self.shared.name))?
        else {
            return Ok(vec![None]);
        };
        let span = high - low + 1;
        let parts = (parts as i128).min(span).max(1);
        if parts == 1 {
            return Ok(vec![None]);
        }
        let bound = |i: i128| low + span * i / parts;
        let column = || ast::Expr::Identifier(Ident::with_quote('`', key.name()));
        let compare = |op: BinaryOperator, value: i128| ast::Expr::BinaryOp {
            left: Box::new(column()),
            op,
            right: Box::new(ast::Expr::value(Value::Number(value.to_string(), false))),
        };
        Ok((0..parts)
            .map(|i| {
                // The first and last parts are open-ended, for rows added since measuring.
                let lower = (i > 0).then(|| compare(BinaryOperator::GtEq, bound(i)));
                let upper = (i + 1 < parts).then(|| compare(BinaryOperator::Lt, bound(i + 1)));
                match (lower, upper) {
                    (Some(l), Some(u)) => Some(ast::Expr::BinaryOp {
                        left: Box::new(l),
                        op: BinaryOperator::And,
                        right: Box::new(u),
                    }),
                    (l, u) => l.or(u),
                }
            })
            .collect())
    }

    /// The server's estimate of the rows `sql` returns: over the tables of the outermost
    /// `SELECT`, the product of the rows each examines per row of the tables before it and
    /// the share its filter keeps. MariaDB's plan is read as JSON, which shows each table's
    /// condition, because MariaDB does not estimate conditions on most columns (see
    /// [`explain`]); MySQL 8 does, and its tabular `EXPLAIN` shows the share. The server
    /// does not estimate groups, so for an aggregate this is the rows it reads, an upper
    /// bound.
    async fn estimate(&self, sql: &str) -> Option<Estimate> {
        let mut conn = self.shared.connector.get().await.ok()?;
        let plan = match self.shared.connector.flavor() {
            Some(Flavor::Mariadb) => {
                let json: String = conn
                    .query_first(format!("EXPLAIN FORMAT=JSON {sql}"))
                    .await
                    .ok()??;
                explain::mariadb::plan_rows(&json)
                    .inspect_err(|e| {
                        tracing::warn!(source = %self.shared.name, error = %e, "unreadable EXPLAIN FORMAT=JSON")
                    })
                    .ok()?
            }
            _ => {
                let rows: Vec<mysql_async::Row> =
                    conn.query(format!("EXPLAIN {sql}")).await.ok()?;
                rows.iter().map(plan_row).collect()
            }
        };
        explain::estimate(&plan, |rows| self.parts(Some(rows as usize), 2) > 1)
    }

    fn reader(&self, parts: usize) -> Arc<dyn RemoteReader> {
        Arc::new(MysqlReader::new(Arc::clone(&self.shared), parts))
    }

    fn work_per_returned_row(&self) -> f64 {
        explain::RETURN_COST
    }
}

/// A MySQL 8 `EXPLAIN` row's columns the estimate uses; a column missing or of another type reads
/// as unknown.
fn plan_row(row: &mysql_async::Row) -> PlanRow {
    fn column<T: mysql_async::prelude::FromValue>(row: &mysql_async::Row, name: &str) -> Option<T> {
        row.get_opt::<Option<T>, _>(name)
            .and_then(Result::ok)
            .flatten()
    }
    PlanRow {
        select: column(row, "id"),
        table: column(row, "table"),
        access: column(row, "type"),
        rows: column(row, "rows"),
        filtered: column(row, "filtered"),
        unestimated_filter: false,
    }
}

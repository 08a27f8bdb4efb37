//! The `postgres` source.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::error::Result as DfResult;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, CastKind, Ident, ObjectName, Value};
use datafusion::sql::unparser::dialect::{Dialect, PostgreSqlDialect};
use tokio_postgres::SimpleQueryMessage;
use tributary_core::remote::{
    Estimate, Federation, PushdownRules, RemoteReader, RemoteSource, RemoteTable, RemoteTableInfo,
    TableKind,
};
use tributary_core::{Error, Health, Result, Source, SourceContext};

use tributary_core::config::Partitions;

use crate::config::PostgresConfig;
use crate::connect::{Connector, describe_error};
use crate::discovery;
use crate::explain;
use crate::reader::{PgReader, Shared};

/// What PostgreSQL evaluates exactly as DataFusion does; the tests in
/// `tests/integration/postgres_pushdown.rs` check each entry against DataFusion's answer.
pub static RULES: PushdownRules = PushdownRules {
    dialect_name: "PostgreSQL",
    functions: &["coalesce", "nullif", "character_length", "substr"],
    like: true,
    integer_division: true,
    string_equality: true,
    computed_strings_exact: true,
    null_ordering: true,
    decimal_avg: true,
    cast_to: |_| true,
    hash_joins: true,
    integer_arrays: true,
    // Deterministic collations already compare bytes for equality; a nondeterministic
    // one makes its column opaque.
    exact_strings: false,
};

/// A PostgreSQL database as a catalog.
pub struct PostgresSource {
    remote: Arc<PgRemote>,
    federation: Federation,
    config: PostgresConfig,
}

impl fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSource")
            .field("name", &self.remote.shared.name)
            .field("target", &self.remote.shared.connector.target())
            .finish()
    }
}

impl PostgresSource {
    /// Builds the source from its config; connects only when first used.
    pub fn new(ctx: &SourceContext, config: PostgresConfig) -> Result<Self> {
        let connector = Connector::new(&config, &ctx.key, &ctx.config_dir)?;
        if config.batch_size == Some(0) {
            return Err(Error::config(
                ctx.key("batch_size"),
                "expected a positive number",
            ));
        }
        let remote = Arc::new(PgRemote {
            shared: Arc::new(Shared {
                name: ctx.name.clone(),
                connector,
                batch_size: config.batch_size,
            }),
            partitions: config.partitions,
            partition_rows: config.partition_rows,
            pushdown: config.pushdown,
        });
        let federation = Federation::new(Arc::clone(&remote) as Arc<dyn RemoteSource>);
        Ok(PostgresSource {
            remote,
            federation,
            config,
        })
    }
}

#[async_trait]
impl Source for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn schema_names(&self) -> Result<Vec<String>> {
        let all = discovery::schemas(&self.remote.shared.connector).await?;
        Ok(all
            .into_iter()
            .filter(|s| exposed(&self.config, s))
            .collect())
    }

    async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
        if !exposed(&self.config, schema) {
            return Ok(Vec::new());
        }
        let relations = discovery::relations(&self.remote.shared.connector, schema).await?;
        Ok(relations.into_iter().map(|r| r.name).collect())
    }

    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if !exposed(&self.config, schema) {
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
        let conn = self.remote.shared.connector.get().await?;
        let row = conn
            .query_one("SELECT current_setting('server_version')", &[])
            .await
            .map_err(|e| Error::Unavailable(describe_error(&e)))?;
        let version: String = row.get(0);
        Ok(Health::ok(format!(
            "PostgreSQL {version} at {}",
            self.remote.shared.connector.target()
        )))
    }
}

/// The source as the shared remote scan sees it.
#[derive(Debug)]
pub struct PgRemote {
    shared: Arc<Shared>,
    partitions: Partitions,
    partition_rows: u64,
    pushdown: bool,
}

#[async_trait]
impl RemoteSource for PgRemote {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn compute_context(&self) -> String {
        format!("postgres://{}", self.shared.connector.target())
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        Arc::new(PostgreSqlDialect {})
    }

    fn rules(&self) -> &PushdownRules {
        &RULES
    }

    fn pushdown(&self) -> bool {
        self.pushdown
    }

    /// Splits a table into ranges of physical blocks (`ctid`), which PostgreSQL reads with
    /// TID range scans: each part is one sequential stretch of the heap, whatever the keys.
    async fn split(
        &self,
        table: &RemoteTableInfo,
        max_parts: usize,
    ) -> DfResult<Vec<Option<ast::Expr>>> {
        // One connection holds the shared snapshot while the parts run.
        let ceiling = self.shared.connector.max_connections().saturating_sub(1);
        let wanted = self
            .partitions
            .wanted(table.rows, self.partition_rows, max_parts);
        let parts = wanted.min(ceiling).max(1);
        if parts == 1 || table.kind != TableKind::Table {
            return Ok(vec![None]);
        }
        let (schema, name) = (
            table.remote.schema().unwrap_or_default(),
            table.remote.table(),
        );
        let Some((kind, blocks)) = discovery::blocks(&self.shared.connector, schema, name)
            .await
            .map_err(|e| e.in_source(&self.shared.name))?
        else {
            return Ok(vec![None]);
        };
        // Foreign tables have no ctid to split on.
        if kind == 'f' || blocks < parts as u64 {
            return Ok(vec![None]);
        }
        let step = blocks.div_ceil(parts as u64);
        Ok((0..parts as u64)
            .map(|i| {
                let low = (i > 0).then(|| ctid_compare(BinaryOperator::GtEq, i * step));
                // The last part is open-ended, for rows added after the size was measured.
                let high = (i + 1 < parts as u64)
                    .then(|| ctid_compare(BinaryOperator::Lt, (i + 1) * step));
                match (low, high) {
                    (Some(l), Some(h)) => Some(ast::Expr::BinaryOp {
                        left: Box::new(l),
                        op: BinaryOperator::And,
                        right: Box::new(h),
                    }),
                    (l, h) => l.or(h),
                }
            })
            .collect())
    }

    async fn estimate(&self, sql: &str) -> Option<Estimate> {
        let conn = self.shared.connector.get().await.ok()?;
        // The simple protocol returns the plan as text, which the JSON is.
        let messages = conn
            .simple_query(&format!("EXPLAIN (FORMAT JSON) {sql}"))
            .await
            .ok()?;
        messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(explain::estimate),
            _ => None,
        })
    }

    /// PostgreSQL's planner estimates the groups of an aggregate from its column
    /// statistics.
    fn estimates_groups(&self) -> bool {
        true
    }

    fn reader(&self, parts: usize) -> Arc<dyn RemoteReader> {
        Arc::new(PgReader::new(Arc::clone(&self.shared), parts))
    }
}

/// Whether `schema` is shown: the user's filter allows it and it is not one of
/// PostgreSQL's own (`pg_catalog`, `information_schema`, `pg_toast`, temporary schemas).
fn exposed(config: &PostgresConfig, schema: &str) -> bool {
    let system = matches!(schema, "pg_catalog" | "information_schema" | "pg_toast")
        || schema.starts_with("pg_temp_")
        || schema.starts_with("pg_toast_temp_");
    !system && config.schemas.allows(schema)
}

/// `ctid <op> '(block,0)'::tid`.
fn ctid_compare(op: BinaryOperator, block: u64) -> ast::Expr {
    ast::Expr::BinaryOp {
        left: Box::new(ast::Expr::Identifier(Ident::new("ctid"))),
        op,
        right: Box::new(ast::Expr::Cast {
            kind: CastKind::DoubleColon,
            expr: Box::new(ast::Expr::value(Value::SingleQuotedString(format!(
                "({block},0)"
            )))),
            data_type: ast::DataType::Custom(ObjectName::from(vec![Ident::new("tid")]), vec![]),
            array: false,
            format: None,
        }),
    }
}

//! The shared scan of SQL-speaking sources (PostgreSQL, MySQL, Flight SQL).
//!
//! [`RemoteTable`] turns the projection, the filters the source evaluates exactly (see
//! [`pushdown`]) and the limit into one `SELECT` per partition, written by DataFusion's
//! unparser in the source's dialect; [`RemoteScanExec`] runs those queries through the
//! connector's [`RemoteReader`] and streams the batches back. A connector provides a
//! [`RemoteSource`]: its dialect and pushdown rules, how to split a large scan, and how to
//! run a query and turn its rows into Arrow.

pub mod connections;
pub mod dynamic;
pub mod early_probe;
mod estimated;
mod exact_strings;
mod exec;
mod federate;
mod group_bound;
mod join_order;
mod name_clash;
pub mod pushdown;
mod shared;
mod sql;
mod sub_plan_sql;
mod table;
pub mod unselective_filters;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::common::tree_node::Transformed;
use datafusion::error::Result;
use datafusion::logical_expr::{LogicalPlan, Subquery};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::unparser::dialect::Dialect;

pub use exec::RemoteScanExec;
pub use federate::{Federation, remote_table};
pub use join_order::SameSourceJoinsFirst;
pub use name_clash::GuardedFilterPushdown;
pub use pushdown::{ColumnTraits, NotPushed, PushdownRules, check_expr};
pub use shared::ShareSubPlans;
pub use sql::{ScanSpec, scan_sql, unqualify};
pub use table::{RemoteTable, RemoteTableInfo, TableKind};

/// A SQL-speaking source, as the shared scan sees it.
#[async_trait]
pub trait RemoteSource: fmt::Debug + Send + Sync + 'static {
    /// The configured source name.
    fn name(&self) -> &str;

    /// Identifies where a query runs: sub-plans touching only tables with the same context
    /// (one database, one set of credentials) can run there as one query.
    fn compute_context(&self) -> String;

    /// How DataFusion's unparser writes SQL for this source.
    fn dialect(&self) -> Arc<dyn Dialect>;

    /// What the source evaluates exactly as DataFusion does.
    fn rules(&self) -> &PushdownRules;

    /// Whether filters, limits and sub-plans are pushed at all (`pushdown: false` turns it
    /// off, to compare against DataFusion computing everything).
    fn pushdown(&self) -> bool;

    /// Predicates that split a full scan of `table` into at most `max_parts` parallel,
    /// disjoint parts covering every row; one `None` for a single part.
    async fn split(
        &self,
        table: &RemoteTableInfo,
        max_parts: usize,
    ) -> Result<Vec<Option<ast::Expr>>>;

    /// What the source's planner expects of `sql`, if it can tell cheaply.
    async fn estimate(&self, sql: &str) -> Option<Estimate>;

    /// Whether [`estimate`](Self::estimate) counts the groups of a `GROUP BY`
    /// (rather than the rows the aggregate reads), so aggregates can be placed by it.
    fn estimates_groups(&self) -> bool {
        false
    }

    /// A reader for the `parts` queries of one scan (they may share a snapshot).
    fn reader(&self, parts: usize) -> Arc<dyn RemoteReader>;

    /// The share of [`Estimate::work`] each row a query returns adds, so the planner can
    /// price a scan whose rows a dynamic filter narrows: the source still reads them, but
    /// returns fewer.
    fn work_per_returned_row(&self) -> f64 {
        0.0
    }
}

/// A source planner's expectations of one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The rows the query returns.
    pub rows: usize,
    /// Whether DataFusion may run the query's topmost join better over the join's inputs
    /// read apart than the source runs it: PostgreSQL before 16 hashes the larger input of
    /// a parallel outer join or any anti join, where DataFusion hashes the smaller one;
    /// MySQL and MariaDB run a query in one thread, so a join that reads a large table
    /// whole may be faster with that table read apart in parallel parts. Where the source
    /// gives the query's [`work`](Self::work), the planner reads the join apart only if
    /// its inputs' work, each read in its parallel parts, is less.
    pub joins_better_apart: bool,
    /// The work the source does to run the query as one query, in rows read (an index
    /// lookup counts as a few rows), if the source can tell: comparable between queries
    /// of one source, not between sources.
    pub work: Option<f64>,
}

impl Estimate {
    /// An estimate of `rows` rows and nothing more.
    pub fn rows(rows: usize) -> Self {
        Estimate {
            rows,
            joins_better_apart: false,
            work: None,
        }
    }
}

/// `plan` (one node) with the plans of its subquery expressions replaced by what `f` makes
/// of each subquery.
fn map_subquery_plans(
    plan: LogicalPlan,
    mut f: impl FnMut(&Subquery) -> Result<Transformed<LogicalPlan>>,
) -> Result<Transformed<LogicalPlan>> {
    plan.map_subqueries(|expr| {
        let LogicalPlan::Subquery(mut subquery) = expr else {
            return Ok(Transformed::no(expr));
        };
        let inner = f(&subquery)?;
        if inner.transformed {
            subquery.subquery = Arc::new(inner.data);
        }
        Ok(Transformed::new_transformed(
            LogicalPlan::Subquery(subquery),
            inner.transformed,
        ))
    })
}

/// Runs the queries of one scan.
pub trait RemoteReader: fmt::Debug + Send + Sync {
    /// Streams the rows of `sql`, part `part` of the scan, as batches of `schema` of about
    /// `batch_size` rows.
    fn read(
        &self,
        part: usize,
        sql: String,
        schema: SchemaRef,
        batch_size: usize,
    ) -> Result<SendableRecordBatchStream>;

    /// Where the scan's connections come from when its source's pool is limited: work
    /// started before what it waits for reserves them first
    /// ([`connections::reserve_now`]). `None` when connections are not pooled.
    fn connections(&self) -> Option<Arc<connections::Reservation>> {
        None
    }
}

/// Why `filter` is evaluated by DataFusion rather than by the source of `provider`.
pub fn why_not_pushed(
    provider: &dyn TableProvider,
    filter: &datafusion::logical_expr::Expr,
) -> String {
    match remote_table(provider) {
        Some(table) => match table.check_filter(filter) {
            Err(reason) => reason.to_string(),
            Ok(()) => {
                "the source could take it, but DataFusion kept it (e.g. it came after a limit)"
                    .to_string()
            }
        },
        None => "the source does not apply it".to_string(),
    }
}

/// The name of a table on its server, as the unparser writes it.
pub fn remote_name(schema: &str, table: &str) -> TableReference {
    TableReference::partial(schema, table)
}

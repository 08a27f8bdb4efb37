//! The query engine: one DataFusion session with a catalog per configured source.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ResolvedTableReference, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_plan::{ExecutionPlan, displayable};
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use datafusion_federation::{FederatedQueryPlanner, FederationOptimizerRule};
use object_store::memory::InMemory;
use tributary_core::remote::{RemoteScanExec, SameSourceJoinsFirst, ShareSubPlans};
use tributary_core::subquery_keys::NarrowGroupedSubqueries;
use tributary_core::subquery_window::AggregateSubqueriesAsWindows;
use tributary_core::window_memory::CountWindowInputs;
use tributary_core::{CatalogOptions, HealthReport, Source, SourceCatalog, SourceContext};
use tributary_files::FilesSource;
use tributary_mysql::MysqlSource;
use tributary_postgres::PostgresSource;
use tributary_rest::RestSource;
use tributary_tpch::TpchSource;
use url::Url;

use crate::config::{Config, SourceConfig, SourceKind};
use crate::materialize::{
    self, AcceleratedCatalog, Job, MaterializedCatalog, Materializer, RuntimeCatalog,
};

/// Why the engine could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A source's settings are wrong (the message names the key).
    #[error("{origin}: {error}")]
    Source {
        /// The config file, or `built-in demo`.
        origin: String,
        /// What is wrong.
        error: tributary_core::Error,
    },
    /// A materialization's target is not usable.
    #[error("{origin}: {message}")]
    Materialization {
        /// The config file, or `built-in demo`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// DataFusion refused a setting.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
}

/// The engine: a DataFusion session whose catalogs are the configured sources.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
    catalogs: Vec<SourceCatalog>,
    materializer: Arc<Materializer>,
    /// Whether queries reading a SQL source get long dynamic-filter key lists (unless the
    /// config sets the lists' limits itself).
    remote_in_lists: bool,
}

/// How many build-side keys per partition a hash join lists for its probe side in a query
/// that reads a SQL source: the source answers `IN (…)` of tens of thousands of keys faster
/// than it sends every row (TPC-H q09 at SF1 lists 10,800 part keys: 1.0 s instead of 2.6 s;
/// q21 in the mixed placement 72,110 order keys, against two scans of `lineitem` that
/// otherwise send 6.1 and 3.8 million rows: 2.5 s instead of 3.7 s). The lists of all
/// partitions together stop at [`MAX_IN_VALUES`](tributary_core::remote::dynamic::MAX_IN_VALUES).
/// Other queries keep DataFusion's 150: building a long list costs a join a few percent, and
/// file scans gain nothing from one (they get lists of at most 150 anyway,
/// `tributary_core::short_lists`).
const REMOTE_IN_LIST_KEYS: usize = 100_000;
/// The most bytes of such a list per partition.
const REMOTE_IN_LIST_BYTES: usize = 4 * 1024 * 1024;

/// The table `reference` names, completed with the session's default catalog and schema
/// (unquoted names folded to lower case, as in SQL).
fn resolve(ctx: &SessionContext, reference: &str) -> ResolvedTableReference {
    let state = ctx.state();
    let defaults = &state.config_options().catalog;
    TableReference::parse_str(reference.trim())
        .resolve(&defaults.default_catalog, &defaults.default_schema)
}

/// The tables accelerated by materializations: `(catalog, schema, table, job)`, each
/// `from` resolved against the session's default catalog and schema.
fn accelerated_tables(
    config: &Config,
    ctx: &SessionContext,
    jobs: &[Job],
) -> Result<Vec<(String, String, String, Job)>, EngineError> {
    let mut tables = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        if !job.config.accelerate {
            continue;
        }
        let table = resolve(ctx, &job.config.from);
        if !config.sources.iter().any(|s| *s.name == *table.catalog) {
            return Err(EngineError::Materialization {
                origin: config.origin(),
                message: format!(
                    "materializations[{i}].accelerate: `{}` is not in a configured source (catalog `{}`)",
                    job.config.from, table.catalog
                ),
            });
        }
        tables.push((
            table.catalog.to_string(),
            table.schema.to_string(),
            table.table.to_string(),
            job.clone(),
        ));
    }
    Ok(tables)
}

impl Engine {
    /// Builds the session and registers every source as a catalog. No source is contacted:
    /// discovery happens when a query first needs it.
    pub fn new(config: &Config) -> Result<Engine, EngineError> {
        install_crypto_provider();
        let mut session = SessionConfig::new().with_information_schema(true);
        // A folder table holds every file below it, so globs can span folders
        // (`logs/2024-*/*.parquet`); hive `key=value` folders are read either way.
        session
            .options_mut()
            .execution
            .listing_table_ignore_subdirectory = false;
        // An optimizer rule that fails (e.g. sub-plan pushdown meeting a plan shape it
        // cannot handle) is skipped: the query still runs, only less is pushed down.
        session.options_mut().optimizer.skip_failed_rules = true;
        for (key, value) in &config.server.datafusion {
            session.options_mut().set(key, &value.0)?;
        }
        let remote_in_lists = !config
            .server
            .datafusion
            .keys()
            .any(|k| k.contains("hash_join_inlist_pushdown"));
        if let Some(catalog) = &config.server.default_catalog {
            let schema = config.server.default_schema.as_deref().unwrap_or("public");
            session = session
                .with_default_catalog_and_schema(catalog, schema)
                .with_create_default_catalog_and_schema(false);
        }
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = config.server.memory_limit {
            runtime = runtime.with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX), 1.0);
        }
        let runtime = runtime.build_arc()?;
        // One shared in-memory store, so `memory://` tables written by one part of the
        // process (tests, materializations) are readable by the others.
        let memory = Url::parse("memory:///").expect("a valid URL");
        runtime.register_object_store(&memory, Arc::new(InMemory::new()));

        // Sub-plans that touch one SQL source run there: the federation rule runs after
        // DataFusion's own rules, so filters and projections are already in place, and
        // after inner joins are regrouped so that one source's tables join each other first.
        let mut physical_rules = ShareSubPlans::with_default_rules();
        tributary_core::start_early::add_to(&mut physical_rules);
        // After StartEarly's insertion, so it runs before it: a probe side that no longer
        // waits for a filter may start early.
        tributary_core::remote::unselective_filters::add_to(&mut physical_rules);
        tributary_files::split_row_groups::add_to(
            &mut physical_rules,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        physical_rules.push(Arc::new(CountWindowInputs));
        // Subqueries become windows before DataFusion decorrelates them into joins.
        let mut logical_rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> =
            vec![Arc::new(AggregateSubqueriesAsWindows)];
        logical_rules.extend(Optimizer::new().rules);
        let state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rules(logical_rules)
            .with_optimizer_rule(Arc::new(NarrowGroupedSubqueries))
            .with_optimizer_rule(Arc::new(SameSourceJoinsFirst))
            .with_optimizer_rule(Arc::new(FederationOptimizerRule::new()))
            .with_query_planner(Arc::new(FederatedQueryPlanner::new()))
            .with_physical_optimizer_rules(physical_rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let options = CatalogOptions {
            metadata_ttl: config.server.metadata_ttl,
            probe_timeout: config.server.probe_timeout,
        };

        let materializer = Materializer::new(config, ctx.runtime_env()).map_err(|message| {
            EngineError::Materialization {
                origin: config.origin(),
                message,
            }
        })?;
        let materializer = Arc::new(materializer);
        let accelerated = accelerated_tables(config, &ctx, materializer.jobs())?;

        let mut catalogs = Vec::with_capacity(config.sources.len());
        for source in &config.sources {
            let context = SourceContext {
                name: source.name.clone(),
                key: source.key.clone(),
                config_dir: config.dir.clone(),
                state: ctx.state(),
            };
            let built = build_source(&context, source).map_err(|error| EngineError::Source {
                origin: config.origin(),
                error,
            })?;
            let catalog = SourceCatalog::new(&source.name, built, options.clone());
            let mine: Vec<_> = accelerated
                .iter()
                .filter(|(c, ..)| *c == source.name)
                .map(|(_, schema, table, job)| (schema.clone(), table.clone(), job.clone()))
                .collect();
            if mine.is_empty() {
                ctx.register_catalog(&source.name, Arc::new(catalog.clone()));
            } else {
                let wrapped =
                    AcceleratedCatalog::new(catalog.clone(), mine, Arc::clone(&materializer));
                ctx.register_catalog(&source.name, Arc::new(wrapped));
            }
            catalogs.push(catalog);
        }
        if !materializer.jobs().is_empty() {
            let catalog = MaterializedCatalog::new(materializer.jobs(), ctx.runtime_env());
            ctx.register_catalog(materialize::CATALOG, Arc::new(catalog));
            let runtime = RuntimeCatalog::new(Arc::clone(&materializer));
            ctx.register_catalog(materialize::RUNTIME_CATALOG, Arc::new(runtime));
        }
        Ok(Engine {
            ctx,
            catalogs,
            materializer,
            remote_in_lists,
        })
    }

    /// The DataFusion session.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The source catalogs, in config order.
    pub fn catalogs(&self) -> &[SourceCatalog] {
        &self.catalogs
    }

    /// The configured materializations, in config order.
    pub fn materializations(&self) -> &[Job] {
        self.materializer.jobs()
    }

    /// The materializations with their run history and health.
    pub fn materializer(&self) -> &Arc<Materializer> {
        &self.materializer
    }

    /// Splits `sql` into statements, in the session's SQL dialect.
    pub fn parse(&self, sql: &str) -> Result<VecDeque<Statement>> {
        // Read under the lock: cloning the whole session state (its function registries)
        // for one option costs every statement the server plans.
        let dialect_name = self
            .ctx
            .state_ref()
            .read()
            .config()
            .options()
            .sql_parser
            .dialect;
        let dialect = dialect_from_str(dialect_name).ok_or_else(|| {
            DataFusionError::Plan(format!("unsupported SQL dialect {dialect_name}"))
        })?;
        DFParser::parse_sql_with_dialect(sql, dialect.as_ref())
    }

    /// Plans one statement. Statements that list names (`information_schema`, `SHOW
    /// TABLES`) first refresh discovery of every source, so they see every table; Tributary
    /// is read-only, so DDL and DML are refused.
    pub async fn plan(&self, statement: Statement) -> Result<DataFrame> {
        let state = self.ctx.state();
        let lists_names = state
            .resolve_table_references(&statement)?
            .iter()
            .any(|t| t.schema() == Some("information_schema"));
        if lists_names {
            self.discover_all().await;
        }
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .verify_plan(&plan)
            .map_err(|e| {
                DataFusionError::Plan(format!("Tributary is read-only: {}", e.message()))
            })?;
        let mut state = state;
        if self.remote_in_lists && reads_sql_source(&plan)? {
            let optimizer = &mut state.config_mut().options_mut().optimizer;
            optimizer.hash_join_inlist_pushdown_max_distinct_values = REMOTE_IN_LIST_KEYS;
            optimizer.hash_join_inlist_pushdown_max_size = REMOTE_IN_LIST_BYTES;
        }
        Ok(DataFrame::new(state, plan))
    }

    /// The source table `reference` (`catalog.schema.table`, or shorter with the session's
    /// defaults) read from its source, past any acceleration that stands in for it.
    pub async fn source_table(&self, reference: &str) -> Result<DataFrame> {
        let table = resolve(&self.ctx, reference);
        let catalog = self
            .catalogs
            .iter()
            .find(|c| c.name() == &*table.catalog)
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "`{reference}`: no source is named `{}`",
                    table.catalog
                ))
            })?;
        let provider = catalog
            .table(&table.schema, &table.table)
            .await?
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "table `{}.{}` not found in source `{}`",
                    table.schema, table.table, table.catalog
                ))
            })?;
        let plan =
            LogicalPlanBuilder::scan(table.clone(), provider_as_source(provider), None)?.build()?;
        Ok(DataFrame::new(self.ctx.state(), plan))
    }

    /// Parses `sql`, which must hold exactly one statement.
    pub fn statement(&self, sql: &str) -> Result<Statement> {
        let mut statements = self.parse(sql)?;
        match (statements.pop_front(), statements.is_empty()) {
            (Some(statement), true) => Ok(statement),
            (None, _) => Err(DataFusionError::Plan("no SQL statement given".into())),
            (Some(_), false) => Err(DataFusionError::Plan(
                "expected one SQL statement, got several".into(),
            )),
        }
    }

    /// Plans a single SQL statement.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        self.plan(self.statement(sql)?).await
    }

    /// Fills every catalog's name cache. A source that fails is logged and left out of
    /// the listing instead of failing the statement.
    pub async fn discover_all(&self) {
        let results = futures::future::join_all(self.catalogs.iter().map(|c| c.discover())).await;
        for (catalog, result) in self.catalogs.iter().zip(results) {
            if let Err(e) = result {
                tracing::warn!(source = catalog.name(), error = %e, "discovery failed; its tables are not listed");
            }
        }
    }

    /// Probes every source concurrently.
    pub async fn check(&self) -> Vec<HealthReport> {
        futures::future::join_all(self.catalogs.iter().map(|c| c.check())).await
    }

    /// Describes how a query runs: what each source is asked for, the optimized logical
    /// plan and the physical plan.
    pub async fn explain(&self, sql: &str) -> Result<Explanation> {
        // The query's own state: planning sets options per query (`Engine::plan`).
        let (state, plan) = self.sql(sql).await?.into_parts();
        let optimized = state.optimize(&plan)?;
        let physical = state.create_physical_plan(&plan).await?;
        Ok(Explanation {
            scans: scans_of(&optimized, &state)?,
            queries: queries_of(&physical),
            leaves: leaves_of(&physical),
            logical: optimized.display_indent().to_string(),
            physical: displayable(physical.as_ref()).indent(true).to_string(),
        })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.catalogs.iter().map(|c| c.name()).collect();
        f.debug_struct("Engine").field("catalogs", &names).finish()
    }
}

/// Makes ring the process's TLS crypto provider. Both of rustls's providers are compiled
/// in (tonic and the database drivers use ring; deltalake's HTTP client asks for
/// aws-lc-rs), so rustls cannot choose one by itself and would panic at the first TLS
/// connection that relies on the default.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn build_source(
    context: &SourceContext,
    config: &SourceConfig,
) -> tributary_core::Result<Arc<dyn Source>> {
    Ok(match &config.kind {
        SourceKind::Files(files) => Arc::new(FilesSource::new(context, files.clone())?),
        SourceKind::Mysql(mysql) => Arc::new(MysqlSource::new(context, mysql.clone())?),
        SourceKind::Postgres(pg) => Arc::new(PostgresSource::new(context, pg.clone())?),
        SourceKind::Rest(rest) => Arc::new(RestSource::new(context, rest.clone())?),
        SourceKind::Tpch(tpch) => Arc::new(TpchSource::new(context, tpch.clone())?),
    })
}

/// What one table scan asks of its source.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// `catalog.schema.table`.
    pub table: String,
    /// Columns read; all when `None`.
    pub columns: Option<Vec<String>>,
    /// Filters handed to the source, with whether the source applies them exactly
    /// (`exact`) or DataFusion checks them again (`inexact`).
    pub filters: Vec<(String, &'static str)>,
    /// Filters DataFusion evaluates after the scan, each with why the source did not
    /// take it.
    pub not_pushed: Vec<(String, String)>,
    /// Row limit handed to the source.
    pub limit: Option<usize>,
}

/// The explanation of a query.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// What each table scan asks of its source.
    pub scans: Vec<ScanRequest>,
    /// The queries sent to SQL sources: (source, SQL), one per partition or sub-plan.
    pub queries: Vec<(String, String)>,
    /// The physical source operators, one line each.
    pub leaves: Vec<String>,
    /// The optimized logical plan.
    pub logical: String,
    /// The physical plan.
    pub physical: String,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "== What each source receives ==")?;
        for scan in &self.scans {
            writeln!(f, "{}", scan.table)?;
            match &scan.columns {
                Some(c) => writeln!(f, "  columns: {}", c.join(", "))?,
                None => writeln!(f, "  columns: all")?,
            }
            if scan.filters.is_empty() {
                writeln!(f, "  filters: none")?;
            }
            for (filter, how) in &scan.filters {
                writeln!(f, "  filter:  {filter}  [{how}]")?;
            }
            for (filter, why) in &scan.not_pushed {
                writeln!(f, "  kept in DataFusion: {filter}  [{why}]")?;
            }
            match scan.limit {
                Some(n) => writeln!(f, "  limit:   {n}")?,
                None => writeln!(f, "  limit:   none")?,
            }
        }
        for leaf in &self.leaves {
            writeln!(f, "  -> {leaf}")?;
        }
        if !self.queries.is_empty() {
            writeln!(f, "\n== SQL sent to sources ==")?;
            for (source, sql) in &self.queries {
                writeln!(f, "{source}: {sql}")?;
            }
        }
        writeln!(f, "\n== Logical plan ==\n{}", self.logical)?;
        write!(f, "\n== Physical plan ==\n{}", self.physical)
    }
}

fn scans_of(plan: &LogicalPlan, state: &SessionState) -> Result<Vec<ScanRequest>> {
    let defaults = &state.config().options().catalog;
    // Predicates left in a filter right above a scan are the ones the source did not take.
    let mut kept: Vec<(*const LogicalPlan, Vec<Expr>)> = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Filter(filter) = node
            && matches!(filter.input.as_ref(), LogicalPlan::TableScan(_))
        {
            let conjuncts = split_conjunction(&filter.predicate)
                .into_iter()
                .cloned()
                .collect();
            kept.push((Arc::as_ptr(&filter.input), conjuncts));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut scans = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source).ok();
            let not_pushed = kept
                .iter()
                .filter(|(ptr, _)| std::ptr::eq(*ptr, node))
                .flat_map(|(_, conjuncts)| conjuncts)
                .filter(|c| !scan.filters.contains(c))
                .map(|c| {
                    let reason = match &provider {
                        Some(p) => tributary_core::remote::why_not_pushed(p.as_ref(), c),
                        None => "the source cannot apply it".to_string(),
                    };
                    (c.to_string(), reason)
                })
                .collect();
            let schema = scan.source.schema();
            let columns = scan.projection.as_ref().map(|p| {
                p.iter()
                    .map(|&i| schema.field(i).name().clone())
                    .collect::<Vec<_>>()
            });
            let refs: Vec<_> = scan.filters.iter().collect();
            let support = scan.source.supports_filters_pushdown(&refs)?;
            let filters = scan
                .filters
                .iter()
                .zip(support)
                .map(|(f, s)| {
                    let how = match s {
                        datafusion::logical_expr::TableProviderFilterPushDown::Exact => "exact",
                        _ => "inexact: DataFusion checks it again",
                    };
                    (f.to_string(), how)
                })
                .collect();
            scans.push(ScanRequest {
                table: scan
                    .table_name
                    .clone()
                    .resolve(&defaults.default_catalog, &defaults.default_schema)
                    .to_string(),
                columns,
                filters,
                not_pushed,
                limit: scan.fetch,
            });
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(scans)
}

/// Whether `plan` reads a table of a SQL source (PostgreSQL, MySQL).
fn reads_sql_source(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && tributary_core::remote::remote_table(provider.as_ref()).is_some()
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

fn queries_of(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(remote) = node.downcast_ref::<RemoteScanExec>() {
            for sql in remote.sqls() {
                queries.push((remote.source().to_string(), sql.clone()));
            }
        }
        stack.extend(node.children().into_iter().rev().cloned());
    }
    queries
}

fn leaves_of(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut leaves = Vec::new();
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        let children = node.children();
        if children.is_empty() {
            leaves.push(
                displayable(node.as_ref())
                    .one_line()
                    .to_string()
                    .trim()
                    .to_string(),
            );
        }
        stack.extend(children.into_iter().rev().cloned());
    }
    leaves
}

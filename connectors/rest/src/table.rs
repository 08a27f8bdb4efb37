//! A REST table and its scan: pages fetched one after another by a task that runs a page
//! ahead of the decoding, each page decoded into one batch; filters mapped to query
//! parameters, and a limit that stops paging early.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraint, Constraints, Result as DfResult, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use tokio::sync::mpsc;
use tracing::Instrument;
use tributary_core::{Error, Result, TaggedTable};
use url::Url;

use crate::auth::set_param;
use crate::client::{Http, Response};
use crate::config::{FilterParam, Method, OnInvalid};
use crate::decode::{Column, RecordDecoder, reason};
use crate::filters;
use crate::jsonpath::{self, JsonPath};
use crate::paging::{Pager, Paging};
use crate::rejects::Rejects;

/// Everything about one configured table but its columns when they are inferred.
#[derive(Debug)]
pub struct TableSpec {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// The endpoint with the table's parameters.
    pub endpoint: Url,
    /// HTTP method.
    pub method: Method,
    /// Where the records are in a response.
    pub records: JsonPath,
    /// Declared columns.
    pub columns: Option<Vec<Column>>,
    /// Key columns.
    pub primary_key: Vec<String>,
    /// The growing column.
    pub cursor: Option<String>,
    /// Filters the API applies.
    pub filters: Vec<FilterParam>,
    /// How pages follow one another.
    pub paging: Paging,
    /// What becomes of records that do not fit.
    pub on_invalid: OnInvalid,
    /// The table's key in the config, for errors.
    pub key: String,
}

impl TableSpec {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Checks that the columns the table's settings name exist.
    pub fn check_columns(&self, columns: &[Column]) -> Result<()> {
        let has = |name: &str| columns.iter().any(|c| c.name == name);
        let named = self
            .primary_key
            .iter()
            .map(|c| ("primary_key", c))
            .chain(self.cursor.iter().map(|c| ("cursor", c)))
            .chain(self.filters.iter().map(|f| ("filters", &f.column)));
        for (field, column) in named {
            if !has(column) {
                let known: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                return Err(Error::config(
                    format!("{}.{field}", self.key),
                    format!(
                        "table `{}` has no column `{column}` (its columns: {})",
                        self.qualified(),
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A response with the place of each of its records in the body: cut by the fetching
/// task (which needs their number to find the next page) and decoded by the scan.
pub struct Fetched {
    /// The response.
    pub response: Response,
    spans: Vec<Range<usize>>,
}

impl Fetched {
    /// Checks `response` and finds its records (see [`records`]).
    pub fn cut(spec: &TableSpec, response: Response) -> Result<Self> {
        let base = response.body.as_ptr() as usize;
        let spans = records(spec, &response)?
            .iter()
            .map(|r| {
                let start = r.as_ptr() as usize - base;
                start..start + r.len()
            })
            .collect();
        Ok(Fetched { response, spans })
    }

    /// How many records the page holds.
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// The records, as byte slices of the body.
    pub fn records(&self) -> Vec<&[u8]> {
        let body = &self.response.body[..];
        self.spans.iter().map(|r| &body[r.clone()]).collect()
    }
}

/// The records of a response, as byte slices: the body is checked to be JSON and the
/// table's records path to name an array (or null: no records).
pub fn records<'a>(spec: &TableSpec, response: &'a Response) -> Result<Vec<&'a [u8]>> {
    let body = &response.body[..];
    let fail = |message: String| Error::Unavailable(format!("{}: {message}", response.url));
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| fail(format!("the response is not valid JSON: {e}")))?;
    let Some(records) = spec.records.find(body).map_err(&fail)? else {
        let keys = jsonpath::keys(body);
        let found = if keys.is_empty() {
            format!(
                "the response is {}",
                jsonpath::describe(body, first_byte(body))
            )
        } else {
            format!("the response's top-level keys are: {}", keys.join(", "))
        };
        return Err(fail(format!(
            "the records path `{}` of table `{}` (`{}.records`) is not in the response; {found}",
            spec.records,
            spec.qualified(),
            spec.key
        )));
    };
    if records == b"null" {
        return Ok(Vec::new());
    }
    jsonpath::elements(records).map_err(|e| {
        fail(format!(
            "the records path `{}` of table `{}` does not name an array of records: {e}",
            spec.records,
            spec.qualified()
        ))
    })
}

/// Decodes a page's records as `on_invalid` says: the records that fit.
pub async fn read_page(
    spec: &TableSpec,
    decoder: &RecordDecoder,
    rejects: Option<&Rejects>,
    page: &Fetched,
) -> Result<RecordBatch> {
    let response = &page.response;
    let fail = |message: String| Error::Unavailable(format!("{}: {message}", response.url));
    let items = page.records();
    Ok(match spec.on_invalid {
        OnInvalid::Fail => match decoder.decode(&items) {
            Ok(batch) => batch,
            Err(_) => {
                let (_, misfits) = decoder
                    .decode_lenient(&items)
                    .map_err(|e| fail(reason(e)))?;
                let first = misfits.first().map(|m| (m.index, m.reason.clone()));
                let (index, why) = first.unwrap_or((0, "cannot be decoded".into()));
                return Err(fail(format!(
                    "record {index} of the page does not fit table `{}`: {why}; the record: {}. Set `on_invalid: skip` or `dead_letter` to read on without such records",
                    spec.qualified(),
                    shorten(items[index])
                )));
            }
        },
        OnInvalid::Skip | OnInvalid::DeadLetter => {
            let (batch, misfits) = decoder
                .decode_lenient(&items)
                .map_err(|e| fail(reason(e)))?;
            if let Some(first) = misfits.first() {
                tracing::warn!(table = %spec.qualified(), url = %response.url, records = misfits.len(),
                    first = %first.reason, "records that do not fit the table were left out");
            }
            if let (Some(rejects), false) = (rejects, misfits.is_empty()) {
                let rows: Vec<(String, &[u8])> = misfits
                    .into_iter()
                    .map(|m| (m.reason, items[m.index]))
                    .collect();
                rejects
                    .keep(&spec.schema, &spec.name, &response.url, &rows)
                    .await?;
            }
            batch
        }
    })
}

fn first_byte(body: &[u8]) -> usize {
    body.iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len())
}

/// A record as shown in an error: at most 300 characters.
fn shorten(record: &[u8]) -> String {
    let text = String::from_utf8_lossy(record);
    let cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A table of a `rest` source.
#[derive(Debug)]
pub struct RestTable {
    spec: Arc<TableSpec>,
    columns: Vec<Column>,
    schema: SchemaRef,
    constraints: Option<Constraints>,
    http: Arc<Http>,
    rejects: Option<Rejects>,
}

impl RestTable {
    /// The table `spec` with `columns` (declared or inferred).
    pub fn new(
        spec: Arc<TableSpec>,
        columns: Vec<Column>,
        http: Arc<Http>,
        rejects: Option<Rejects>,
    ) -> Self {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        let key: Vec<usize> = spec
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let constraints = (!key.is_empty())
            .then(|| Constraints::new_unverified(vec![Constraint::PrimaryKey(key)]));
        RestTable {
            spec,
            columns,
            schema,
            constraints,
            http,
            rejects,
        }
    }

    /// The column the table says grows as records change, if it says.
    pub fn cursor(&self) -> Option<&str> {
        self.spec.cursor.as_deref()
    }

    /// The cursor `provider` declares when it is a REST table (wrapped or not).
    pub fn cursor_of(provider: &Arc<dyn TableProvider>) -> Option<String> {
        let inner = match provider.downcast_ref::<TaggedTable>() {
            Some(tagged) => tagged.inner(),
            None => provider,
        };
        inner
            .downcast_ref::<RestTable>()
            .and_then(|t| t.cursor().map(str::to_string))
    }
}

#[async_trait]
impl TableProvider for RestTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if filters::can_serve(&self.spec.filters, f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columns = match projection {
            Some(p) => p.iter().map(|&i| self.columns[i].clone()).collect(),
            None => self.columns.clone(),
        };
        let decoder = RecordDecoder::new(columns).map_err(DataFusionError::Plan)?;
        let mut endpoint = self.spec.endpoint.clone();
        for (param, value) in filters::params(&self.spec.filters, filters) {
            set_param(&mut endpoint, &param, &value);
        }
        Ok(Arc::new(RestScanExec::new(
            Arc::clone(&self.spec),
            decoder,
            endpoint,
            limit,
            Arc::clone(&self.http),
            self.rejects.clone(),
        )))
    }
}

/// Reads a REST table's pages, in order, as one partition.
#[derive(Debug)]
pub struct RestScanExec {
    spec: Arc<TableSpec>,
    decoder: RecordDecoder,
    endpoint: Url,
    limit: Option<usize>,
    http: Arc<Http>,
    rejects: Option<Rejects>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RestScanExec {
    fn new(
        spec: Arc<TableSpec>,
        decoder: RecordDecoder,
        endpoint: Url,
        limit: Option<usize>,
        http: Arc<Http>,
        rejects: Option<Rejects>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(decoder.schema())),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        RestScanExec {
            spec,
            decoder,
            endpoint,
            limit,
            http,
            rejects,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The first request's URL, as it may be shown.
    pub fn url(&self) -> String {
        self.http.display(&self.endpoint)
    }
}

impl DisplayAs for RestScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self.spec.method {
            Method::Get => "GET",
            Method::Post => "POST",
        };
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "RestScanExec: {method} {}, pagination={}",
                    self.url(),
                    self.spec.paging.name()
                )?;
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "url={}", self.url())?;
                write!(f, "pagination={}", self.spec.paging.name())
            }
        }
    }
}

/// Pages fetched ahead of the one being decoded: the next request is on its way while a
/// page decodes, and at most this many more wait, so memory stays a few pages.
const PREFETCH: usize = 1;

/// Fetches a table's pages in order and hands them to its scan. Stops at the list's end,
/// once `wanted` records came, after sending an error, or when the scan is dropped.
async fn fetch_pages(
    spec: Arc<TableSpec>,
    http: Arc<Http>,
    mut pager: Pager,
    mut wanted: Option<usize>,
    pages: mpsc::Sender<Result<Fetched>>,
) {
    while wanted != Some(0) {
        let Some(url) = pager.next().cloned() else {
            return;
        };
        let page = fetch_page(&spec, &http, &mut pager, &url).await;
        if let (Ok(page), Some(wanted)) = (&page, wanted.as_mut()) {
            *wanted = wanted.saturating_sub(page.count());
        }
        let failed = page.is_err();
        if pages.send(page).await.is_err() || failed {
            return;
        }
    }
}

/// Fetches the page at `url`, cuts its records out and moves `pager` past it.
async fn fetch_page(
    spec: &TableSpec,
    http: &Http,
    pager: &mut Pager,
    url: &Url,
) -> Result<Fetched> {
    let response = http.fetch(spec.method, url).await?;
    let page = Fetched::cut(spec, response)?;
    let number = pager.pages() + 1;
    let response = &page.response;
    pager
        .advance(url, &response.headers, &response.body, page.count())
        .map_err(|m| {
            Error::Unavailable(format!(
                "{} (page {number} of table `{}`): {m}",
                response.url,
                spec.qualified()
            ))
        })?;
    Ok(page)
}

struct ScanState {
    spec: Arc<TableSpec>,
    decoder: RecordDecoder,
    rejects: Option<Rejects>,
    pages: mpsc::Receiver<Result<Fetched>>,
    /// Aborted when the scan is dropped; joined once it has sent everything.
    fetcher: Option<SpawnedTask<()>>,
    remaining: Option<usize>,
}

impl ScanState {
    /// The next non-empty batch, or `None` at the end of the list (or the limit).
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            let Some(page) = self.pages.recv().await else {
                // The fetcher is done: the list ended, or it panicked.
                if let Some(task) = self.fetcher.take() {
                    task.join().await.map_err(|e| {
                        Error::Unavailable(format!(
                            "fetching the pages of table `{}` failed: {e}",
                            self.spec.qualified()
                        ))
                    })?;
                }
                return Ok(None);
            };
            let page = page?;
            let mut batch =
                read_page(&self.spec, &self.decoder, self.rejects.as_ref(), &page).await?;
            if let Some(remaining) = self.remaining.as_mut() {
                if batch.num_rows() > *remaining {
                    batch = batch.slice(0, *remaining);
                }
                *remaining -= batch.num_rows();
            }
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }
}

impl ExecutionPlan for RestScanExec {
    fn name(&self) -> &'static str {
        "RestScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("RestScanExec has no children")
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("RestScanExec has one partition, asked for {partition}");
        }
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let (sender, pages) = mpsc::channel(PREFETCH);
        // Records and rows are one with `on_invalid: fail`, so the fetcher can stop at the
        // limit; otherwise misfits left out may call for more pages, and the scan stops
        // the fetcher by dropping it.
        let wanted = self
            .limit
            .filter(|_| self.spec.on_invalid == OnInvalid::Fail);
        let pager = self.spec.paging.start(self.endpoint.clone(), self.limit);
        // In the query's span, so the fetcher's retries are logged under its id.
        let fetch = fetch_pages(
            Arc::clone(&self.spec),
            Arc::clone(&self.http),
            pager,
            wanted,
            sender,
        )
        .in_current_span();
        let state = ScanState {
            spec: Arc::clone(&self.spec),
            decoder: self.decoder.clone(),
            rejects: self.rejects.clone(),
            pages,
            fetcher: Some(SpawnedTask::spawn(fetch)),
            remaining: self.limit,
        };
        let stream = futures::stream::try_unfold(state, move |mut state| {
            let metrics = metrics.clone();
            async move {
                let batch = state
                    .next_batch()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(batch.map(|b| {
                    metrics.record_output(b.num_rows());
                    (b, state)
                }))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.decoder.schema()),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

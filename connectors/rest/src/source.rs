//! The `rest` source: its tables, column inference from a first page, and health.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use arrow::json::reader::infer_json_schema;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use tributary_core::{Error, Health, Result, ScanTag, Source, SourceContext, TaggedTable};
use url::Url;

use crate::RestConfig;
use crate::auth::{Auth, set_param};
use crate::client::{Http, Response, header_map};
use crate::config::{ColumnConfig, OnInvalid};
use crate::decode::{Column, RecordDecoder};
use crate::jsonpath::JsonPath;
use crate::paging::Paging;
use crate::rejects::{self, Rejects};
use crate::table::{RestTable, TableSpec, records};

/// A `rest` source: endpoints of one API as tables.
#[derive(Debug)]
pub struct RestSource {
    name: String,
    http: Arc<Http>,
    tables: Vec<Arc<TableSpec>>,
    rejects: Option<Rejects>,
}

impl RestSource {
    /// Builds the source from its config, checking every value it can without a request
    /// (URLs, paths, headers, types, pagination), so mistakes are reported at startup.
    pub fn new(ctx: &SourceContext, config: RestConfig) -> Result<Self> {
        let base = Url::parse(&config.base_url).map_err(|e| {
            Error::config(
                ctx.key("base_url"),
                format!("`{}` is not a URL: {e}", config.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::config(
                ctx.key("base_url"),
                "must be an http:// or https:// URL",
            ));
        }
        // `path` values are relative to the base's folder, whether or not it ends in `/`.
        let mut base = base;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let headers =
            header_map(&config.headers).map_err(|m| Error::config(ctx.key("headers"), m))?;
        let auth = Auth::new(&config.auth, &ctx.key("auth"))?;
        let http = Http::new(
            headers,
            auth,
            config.timeout,
            config.rate_limit,
            config.retry,
        )?;
        let default_paging = Paging::new(&config.pagination, &ctx.key("pagination"))?;

        let mut tables: Vec<Arc<TableSpec>> = Vec::with_capacity(config.tables.len());
        for (i, table) in config.tables.iter().enumerate() {
            let key = ctx.key(&format!("tables[{i}]"));
            let schema = table
                .schema
                .clone()
                .unwrap_or_else(|| config.schema.clone());
            if tables
                .iter()
                .any(|t| t.schema == schema && t.name == table.name)
            {
                return Err(Error::config(
                    format!("{key}.name"),
                    format!("table `{schema}.{}` is listed twice", table.name),
                ));
            }
            if table.name.ends_with(rejects::SUFFIX) {
                return Err(Error::config(
                    format!("{key}.name"),
                    format!(
                        "names ending in `{}` are kept for rejected records",
                        rejects::SUFFIX
                    ),
                ));
            }
            let mut endpoint = base.join(table.path.trim_start_matches('/')).map_err(|e| {
                Error::config(
                    format!("{key}.path"),
                    format!("`{}` is not a path or URL: {e}", table.path),
                )
            })?;
            for (name, value) in &table.params {
                set_param(&mut endpoint, name, &value.0);
            }
            let records = JsonPath::parse(&table.records)
                .map_err(|m| Error::config(format!("{key}.records"), m))?;
            let columns = table
                .columns
                .as_deref()
                .map(|c| columns(c).map_err(|m| Error::config(format!("{key}.columns"), m)))
                .transpose()?;
            let paging = match &table.pagination {
                Some(p) => Paging::new(p, &format!("{key}.pagination"))?,
                None => default_paging.clone(),
            };
            let spec = TableSpec {
                schema,
                name: table.name.clone(),
                endpoint,
                method: table.method,
                records,
                columns,
                primary_key: table.primary_key.clone(),
                cursor: table.cursor.clone(),
                filters: table.filters.clone(),
                paging,
                on_invalid: table.on_invalid.unwrap_or(config.on_invalid),
                key,
            };
            if let Some(columns) = &spec.columns {
                spec.check_columns(columns)?;
            }
            tables.push(Arc::new(spec));
        }

        let dead_letters = tables.iter().any(|t| t.on_invalid == OnInvalid::DeadLetter);
        let rejects = match (&config.rejects, dead_letters) {
            (Some(path), _) => {
                let root = tributary_files::resolve_root(path, &ctx.config_dir)
                    .map_err(|m| Error::config(ctx.key("rejects"), m))?;
                let runtime = ctx.state.runtime_env();
                tributary_files::ensure_store(runtime, &root, &BTreeMap::new())
                    .map_err(|m| Error::config(ctx.key("rejects"), m))?;
                let store = runtime.object_store_registry.get_store(&root)?;
                Some(Rejects::new(root, store))
            }
            (None, true) => {
                return Err(Error::config(
                    ctx.key("rejects"),
                    "`on_invalid: dead_letter` needs a `rejects` folder to keep the records in",
                ));
            }
            (None, false) => None,
        };

        Ok(RestSource {
            name: ctx.name.clone(),
            http: Arc::new(http),
            tables,
            rejects,
        })
    }

    fn spec(&self, schema: &str, table: &str) -> Option<&Arc<TableSpec>> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == table)
    }

    /// The table's columns: declared, or inferred from its first page.
    async fn columns_of(&self, spec: &TableSpec) -> Result<Vec<Column>> {
        if let Some(columns) = &spec.columns {
            return Ok(columns.clone());
        }
        let response = self.first_page(spec, None).await?;
        let items = records(spec, &response)?;
        let cannot = |why: String| {
            Error::Unavailable(format!(
                "cannot infer the columns of table `{}` from {}: {why}; declare `columns` in `{}`",
                spec.qualified(),
                response.url,
                spec.key
            ))
        };
        if items.is_empty() {
            return Err(cannot("its first page has no records".into()));
        }
        let mut lines = Vec::with_capacity(response.body.len());
        for item in items {
            lines.extend_from_slice(item);
            lines.push(b'\n');
        }
        let (schema, _) =
            infer_json_schema(Cursor::new(lines), None).map_err(|e| cannot(e.to_string()))?;
        let columns: Vec<Column> = schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                path: vec![f.name().clone()],
                data_type: f.data_type().clone(),
                nullable: true,
            })
            .collect();
        spec.check_columns(&columns)?;
        Ok(columns)
    }

    /// The first page of `spec`, at most `limit` records where the API takes a size.
    async fn first_page(&self, spec: &TableSpec, limit: Option<usize>) -> Result<Response> {
        let pager = spec.paging.start(spec.endpoint.clone(), limit);
        let url = pager.next().expect("a scan starts with a page");
        self.http.fetch(spec.method, url).await
    }

    fn tag(&self, spec_schema: &str, name: &str, location: String) -> ScanTag {
        ScanTag {
            source: self.name.clone(),
            table: format!("{spec_schema}.{name}"),
            location,
        }
    }
}

/// Declared columns, checked.
fn columns(declared: &[ColumnConfig]) -> Result<Vec<Column>, String> {
    let mut seen = BTreeSet::new();
    let mut columns = Vec::with_capacity(declared.len());
    for c in declared {
        if !seen.insert(c.name.as_str()) {
            return Err(format!("column `{}` is declared twice", c.name));
        }
        let text = c.path.clone().unwrap_or_else(|| format!("$['{}']", c.name));
        let path = JsonPath::parse(&text).map_err(|m| format!("column `{}`: {m}", c.name))?;
        let keys = path.keys().filter(|k| !k.is_empty()).ok_or_else(|| {
            format!(
                "column `{}`: `{text}` must name a member of the record by keys (`$.a.b`); indexes are not supported in column paths",
                c.name
            )
        })?;
        // JSON carries at most microseconds in practice, and microseconds are what Delta
        // copies and cursors keep: a declared timestamp reads as microseconds.
        let data_type = match &c.data_type.arrow {
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
                DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
            }
            other => other.clone(),
        };
        columns.push(Column {
            name: c.name.clone(),
            path: keys.into_iter().map(str::to_string).collect(),
            data_type,
            nullable: c.nullable,
        });
    }
    RecordDecoder::new(columns.clone())?;
    Ok(columns)
}

#[async_trait]
impl Source for RestSource {
    fn kind(&self) -> &'static str {
        "rest"
    }

    async fn schema_names(&self) -> Result<Vec<String>> {
        let schemas: BTreeSet<String> = self.tables.iter().map(|t| t.schema.clone()).collect();
        Ok(schemas.into_iter().collect())
    }

    async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for t in self.tables.iter().filter(|t| t.schema == schema) {
            names.insert(t.name.clone());
            if t.on_invalid == OnInvalid::DeadLetter {
                names.insert(format!("{}{}", t.name, rejects::SUFFIX));
            }
        }
        Ok(names.into_iter().collect())
    }

    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(spec) = self.spec(schema, table) {
            let columns = self.columns_of(spec).await?;
            let location = self.http.display(&spec.endpoint);
            let rest = RestTable::new(
                Arc::clone(spec),
                columns,
                Arc::clone(&self.http),
                self.rejects.clone(),
            );
            return Ok(Some(Arc::new(TaggedTable::new(
                Arc::new(rest),
                self.tag(schema, table, location),
            ))));
        }
        let rejected = table
            .strip_suffix(rejects::SUFFIX)
            .and_then(|t| self.spec(schema, t))
            .filter(|s| s.on_invalid == OnInvalid::DeadLetter);
        match (rejected, &self.rejects) {
            (Some(spec), Some(rejects)) => Ok(Some(rejects.table(&spec.schema, &spec.name)?)),
            _ => Ok(None),
        }
    }

    async fn check(&self) -> Result<Health> {
        let Some(spec) = self.tables.first() else {
            return Ok(Health::ok("no tables"));
        };
        let response = self.first_page(spec, Some(1)).await?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&response.body).map_err(|e| {
            Error::Unavailable(format!(
                "{}: the response is not valid JSON: {e}",
                response.url
            ))
        })?;
        Ok(Health::ok(format!(
            "{}: {} bytes of JSON",
            response.url,
            response.body.len()
        )))
    }
}

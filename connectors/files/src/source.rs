//! The `files` source: discovery, table resolution and health.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::SessionState;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ListResult, ObjectStore};
use tributary_core::config::OptionValue;
use tributary_core::{Error, Health, Result, ScanTag, Source, SourceContext, TaggedTable};
use url::Url;

use crate::format::{FileKind, build_format, classify};
use crate::location::{TableLocation, ensure_store, resolve_root};
use crate::{ColumnConfig, FileFormatKind, FilesConfig};

/// A `files` source: a folder or bucket whose files are tables.
pub struct FilesSource {
    name: String,
    root: Url,
    default_schema: String,
    default_format: Option<FileFormatKind>,
    default_format_options: BTreeMap<String, OptionValue>,
    declared: Vec<TableSpec>,
    discover: bool,
    state: SessionState,
}

impl fmt::Debug for FilesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesSource")
            .field("name", &self.name)
            .field("root", &self.root.as_str())
            .field("tables", &self.declared.len())
            .field("discover", &self.discover)
            .finish()
    }
}

/// Everything needed to open one table.
#[derive(Debug, Clone)]
struct TableSpec {
    schema: String,
    name: String,
    location: TableLocation,
    format: Option<FileFormatKind>,
    format_options: BTreeMap<String, OptionValue>,
    extension: Option<String>,
    columns: Option<SchemaRef>,
    partitions: Option<Vec<(String, DataType)>>,
}

impl FilesSource {
    /// Builds the source from its config. Checks every value it can without I/O (URLs,
    /// object-store options, format options, declared types), so a mistake is reported at
    /// startup with its config key; reading files waits until a table is used.
    pub fn new(ctx: &SourceContext, config: FilesConfig) -> Result<Self> {
        let state = ctx.state.clone();
        let root = resolve_root(&config.url, &ctx.config_dir)
            .map_err(|m| Error::config(ctx.key("url"), m))?;
        ensure_store(state.runtime_env(), &root, &config.options).map_err(|m| {
            let key = if config.options.is_empty() {
                "url"
            } else {
                "options"
            };
            Error::config(ctx.key(key), m)
        })?;
        if let Some(format) = config.format {
            build_format(&state, format, &config.format_options, &[])
                .map_err(|m| Error::config(ctx.key("format_options"), m))?;
        }

        let mut declared: Vec<TableSpec> = Vec::with_capacity(config.tables.len());
        for (i, table) in config.tables.iter().enumerate() {
            let key = ctx.key(&format!("tables[{i}]"));
            let schema = table
                .schema
                .clone()
                .unwrap_or_else(|| config.schema.clone());
            if declared
                .iter()
                .any(|t| t.schema == schema && t.name == table.name)
            {
                return Err(Error::config(
                    format!("{key}.name"),
                    format!("table `{schema}.{}` is listed twice", table.name),
                ));
            }
            let location = TableLocation::resolve(&table.path, &root)
                .map_err(|m| Error::config(format!("{key}.path"), m))?;
            // The source's options configure its own store; a table elsewhere (another
            // bucket or scheme) gets its credentials from the environment.
            if !same_store(&location.url, &root) {
                ensure_store(state.runtime_env(), &location.url, &BTreeMap::new())
                    .map_err(|m| Error::config(format!("{key}.path"), m))?;
            }
            let format = table.format.or(config.format);
            let format_options = if table.format_options.is_empty() {
                config.format_options.clone()
            } else {
                table.format_options.clone()
            };
            if let Some(format) = format {
                build_format(&state, format, &format_options, &[])
                    .map_err(|m| Error::config(format!("{key}.format_options"), m))?;
            }
            let columns = table
                .columns
                .as_deref()
                .map(|c| declared_schema(c).map_err(|m| Error::config(format!("{key}.columns"), m)))
                .transpose()?;
            let partitions = table.partitions.as_ref().map(|cols| {
                cols.iter()
                    .map(|c| (c.name.clone(), c.data_type.arrow.clone()))
                    .collect()
            });
            declared.push(TableSpec {
                schema,
                name: table.name.clone(),
                location,
                format,
                format_options,
                extension: table.extension.clone(),
                columns: columns.map(Arc::new),
                partitions,
            });
        }

        Ok(FilesSource {
            name: ctx.name.clone(),
            discover: config.discover.unwrap_or(config.tables.is_empty()),
            root,
            default_schema: config.schema,
            default_format: config.format,
            default_format_options: config.format_options,
            declared,
            state,
        })
    }

    fn store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        Ok(self
            .state
            .runtime_env()
            .object_store_registry
            .get_store(url)?)
    }

    /// One level of the root folder: its files and subfolders.
    async fn list_root(&self) -> Result<ListResult> {
        let store = self.store(&self.root)?;
        let prefix =
            StorePath::from_url_path(self.root.path()).map_err(|e| Error::External(e.into()))?;
        store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| Error::Unavailable(format!("cannot list {}: {e}", self.root)))
    }

    /// The files and folders directly under the root, as tables of the default schema.
    async fn discovered(&self) -> Result<Vec<TableSpec>> {
        let listing = self.list_root().await?;

        let mut found = BTreeMap::new();
        let folders = listing.common_prefixes.iter().filter_map(|p| {
            let name = p.filename()?;
            (!name.starts_with(['.', '_'])).then(|| (name.to_string(), format!("{name}/")))
        });
        let files = listing.objects.iter().filter_map(|o| {
            let file = o.location.filename()?;
            classify(file)?;
            let stem = file.split('.').next()?;
            Some((stem.to_string(), file.to_string()))
        });
        for (name, path) in folders.chain(files) {
            if self
                .declared
                .iter()
                .any(|t| t.schema == self.default_schema && t.name == name)
            {
                continue;
            }
            if let Some(previous) = found.get(&name) {
                tracing::warn!(source = %self.name, table = %name, kept = %previous, ignored = %path,
                    "two entries under the root give the same table name; keeping the first");
                continue;
            }
            found.insert(name, path);
        }
        found
            .into_iter()
            .map(|(name, path)| {
                let location =
                    TableLocation::resolve(&path, &self.root).map_err(Error::Unavailable)?;
                Ok(TableSpec {
                    schema: self.default_schema.clone(),
                    name,
                    location,
                    format: self.default_format,
                    format_options: self.default_format_options.clone(),
                    extension: None,
                    columns: None,
                    partitions: None,
                })
            })
            .collect()
    }

    async fn spec(&self, schema: &str, table: &str) -> Result<Option<TableSpec>> {
        if let Some(spec) = self
            .declared
            .iter()
            .find(|t| t.schema == schema && t.name == table)
        {
            return Ok(Some(spec.clone()));
        }
        if !self.discover || schema != self.default_schema {
            return Ok(None);
        }
        Ok(self
            .discovered()
            .await?
            .into_iter()
            .find(|t| t.name == table))
    }

    /// Opens a table: settles its format, extension, partitions and schema (reading a sample
    /// of its files where the config leaves them open) and builds DataFusion's listing table.
    async fn open(&self, spec: &TableSpec) -> Result<Arc<dyn TableProvider>> {
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
            Error::table(
                format!("{}.{}", spec.schema, spec.name),
                spec.location.to_string(),
                e,
            )
        };
        let url = spec.location.listing_url().map_err(|e| fail(e.into()))?;
        let store = self.store(&spec.location.url)?;
        let state = &self.state;

        let sample = if spec.location.is_folder() {
            let mut files = url
                .list_all_files(state, store.as_ref(), "")
                .await
                .map_err(|e| fail(e.into()))?;
            let mut kind = None;
            while let Some(meta) = files.try_next().await.map_err(|e| fail(e.into()))? {
                if let Some(k) = meta.location.filename().and_then(classify) {
                    kind = Some(k);
                    break;
                }
            }
            kind
        } else {
            spec.location
                .url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .and_then(classify)
        };

        let format = spec
            .format
            .or(sample.as_ref().map(|k| k.format))
            .ok_or_else(|| {
                fail(if spec.location.is_folder() {
                    "no data files found; add files or declare the table's format and columns"
                        .into()
                } else {
                    "the format cannot be told from the file name; declare `format`".into()
                })
            })?;
        let implied = sample
            .as_ref()
            .filter(|k| k.format == format)
            .map(|k| k.implied_options.clone())
            .unwrap_or_default();
        let extension = match (&spec.extension, &sample) {
            (Some(ext), _) => ext.clone(),
            _ if !spec.location.is_folder() || spec.location.glob.is_some() => String::new(),
            (
                None,
                Some(FileKind {
                    format: f,
                    extension,
                    ..
                }),
            ) if *f == format => extension.clone(),
            (None, _) => format!(".{}", format.name()),
        };
        let file_format = build_format(state, format, &spec.format_options, &implied)
            .map_err(|m| fail(m.into()))?;
        let mut options = ListingOptions::new(file_format).with_file_extension(extension);

        let partitions = match &spec.partitions {
            Some(p) => p.clone(),
            None if spec.location.is_folder() => options
                .infer_partitions(state, &url)
                .await
                .map_err(|e| fail(e.into()))?
                .into_iter()
                .map(|name| (name, DataType::Utf8))
                .collect(),
            None => Vec::new(),
        };
        options = options.with_table_partition_cols(partitions);

        let schema = match &spec.columns {
            Some(schema) => Arc::clone(schema),
            None => options
                .infer_schema(state, &url)
                .await
                .map_err(|e| fail(e.into()))?,
        };
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        let table = ListingTable::try_new(config).map_err(|e| fail(e.into()))?;
        Ok(Arc::new(TaggedTable::new(
            Arc::new(table),
            ScanTag {
                source: self.name.clone(),
                table: format!("{}.{}", spec.schema, spec.name),
                location: spec.location.to_string(),
            },
        )))
    }
}

#[async_trait]
impl Source for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }

    async fn schema_names(&self) -> Result<Vec<String>> {
        let mut schemas: BTreeSet<String> =
            self.declared.iter().map(|t| t.schema.clone()).collect();
        if self.discover {
            schemas.insert(self.default_schema.clone());
        }
        Ok(schemas.into_iter().collect())
    }

    async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
        let mut names: BTreeSet<String> = self
            .declared
            .iter()
            .filter(|t| t.schema == schema)
            .map(|t| t.name.clone())
            .collect();
        if self.discover && schema == self.default_schema {
            names.extend(self.discovered().await?.into_iter().map(|t| t.name));
        }
        Ok(names.into_iter().collect())
    }

    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.spec(schema, table).await? {
            Some(spec) => self.open(&spec).await.map(Some),
            None => Ok(None),
        }
    }

    async fn check(&self) -> Result<Health> {
        if self.root.scheme() == "file" {
            let path = self
                .root
                .to_file_path()
                .map_err(|()| Error::Unavailable(format!("{} is not a local path", self.root)))?;
            if !path.is_dir() {
                return Err(Error::Unavailable(format!(
                    "folder {} does not exist",
                    path.display()
                )));
            }
        }
        let listing = self.list_root().await?;
        Ok(Health::ok(format!(
            "{}: {} entries",
            self.root,
            listing.common_prefixes.len() + listing.objects.len()
        )))
    }
}

fn same_store(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

fn declared_schema(columns: &[ColumnConfig]) -> Result<Schema, String> {
    let mut seen = BTreeSet::new();
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        if !seen.insert(c.name.as_str()) {
            return Err(format!("column `{}` is declared twice", c.name));
        }
        fields.push(Field::new(&c.name, c.data_type.arrow.clone(), c.nullable));
    }
    Ok(Schema::new(fields))
}

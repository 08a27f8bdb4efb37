//! Records set aside by `on_invalid: dead_letter`: newline-delimited JSON files under the
//! source's `rejects` folder (one file per page that had any), read back as the table
//! `<table>__rejects` of the same schema. A file is named by what it holds, so a page
//! rejected again (the same query run twice, a sync retried) replaces its file instead of
//! adding the same records once more; `rejected_at` is then the latest rejection.

use std::hash::Hasher;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tributary_core::{Error, Result};
use url::Url;

/// The suffix of the table holding a table's rejected records.
pub const SUFFIX: &str = "__rejects";

/// Where a source keeps its rejected records.
#[derive(Debug, Clone)]
pub struct Rejects {
    root: Url,
    store: Arc<dyn ObjectStore>,
}

#[derive(Serialize)]
struct Row<'a> {
    rejected_at: String,
    url: &'a str,
    reason: &'a str,
    raw: &'a str,
}

impl Rejects {
    /// Rejects under `root` (a folder URL ending in `/`), stored in `store`.
    pub fn new(root: Url, store: Arc<dyn ObjectStore>) -> Self {
        Rejects { root, store }
    }

    fn folder(&self, schema: &str, table: &str) -> Url {
        let mut url = self.root.clone();
        url.path_segments_mut()
            .expect("a folder URL")
            .pop_if_empty()
            .push(schema)
            .push(table)
            .push("");
        url
    }

    /// Keeps the records `rows` (reason, raw record) that the page at `url` of
    /// `schema.table` rejected, in the file named by them.
    pub async fn keep(
        &self,
        schema: &str,
        table: &str,
        url: &str,
        rows: &[(String, &[u8])],
    ) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at = arrow::temporal_conversions::timestamp_ns_to_datetime(now.as_nanos() as i64)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
            .unwrap_or_default();
        let mut lines = Vec::new();
        let mut content = twox_hash::XxHash64::with_seed(0);
        content.write(url.as_bytes());
        for (reason, raw) in rows {
            content.write(&[0]);
            content.write(reason.as_bytes());
            content.write(&[0]);
            content.write(raw);
            let raw = String::from_utf8_lossy(raw);
            let row = Row {
                rejected_at: at.clone(),
                url,
                reason,
                raw: &raw,
            };
            serde_json::to_writer(&mut lines, &row).map_err(|e| Error::External(e.into()))?;
            lines.push(b'\n');
        }
        let name = format!("{:016x}.json", content.finish());
        let folder = self.folder(schema, table);
        let path = StorePath::from_url_path(folder.path())
            .map_err(|e| Error::External(e.into()))?
            .join(name.as_str());
        self.store.put(&path, lines.into()).await.map_err(|e| {
            Error::Unavailable(format!("cannot keep rejected records in {folder}: {e}"))
        })?;
        Ok(())
    }

    /// The table of `schema.table`'s rejected records.
    pub fn table(&self, schema: &str, table: &str) -> Result<Arc<dyn TableProvider>> {
        let folder = self.folder(schema, table);
        let url = ListingTableUrl::parse(folder.as_str())?;
        let options =
            ListingOptions::new(Arc::new(JsonFormat::default())).with_file_extension(".json");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema_of_rejects());
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

/// The columns of a rejects table.
pub fn schema_of_rejects() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "rejected_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("url", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

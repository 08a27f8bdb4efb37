//! Where a materialization's Delta table lives, and opening it through the engine's
//! object stores (so `s3://`, `gs://`, `az://`, local folders and `memory://` work the
//! same for reads and writes).

use std::collections::BTreeMap;

use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake::errors::DeltaTableError;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::StreamExt;
use url::Url;

use crate::config::{Config, MaterializationConfig};

/// The folder URL of `m`'s table: its `target`, or `<data_dir>/materialized/<name>/`.
pub fn resolve(m: &MaterializationConfig, config: &Config) -> Result<Url, String> {
    match &m.target {
        Some(target) => tributary_files::resolve_root(target, &config.dir),
        None => {
            let folder = config
                .dir
                .join(&config.server.data_dir)
                .join("materialized");
            let root = tributary_files::resolve_root(&folder.to_string_lossy(), &config.dir)?;
            root.join(&format!("{}/", m.name))
                .map_err(|e| format!("cannot place `{}` under {root}: {e}", m.name))
        }
    }
}

/// Opens the table at `url` at its latest version; a table that does not exist yet comes
/// back unloaded (`version()` is `None`) and is created by the first write.
pub async fn open(runtime: &RuntimeEnv, url: &Url) -> Result<DeltaTable, DeltaTableError> {
    tributary_files::ensure_store(runtime, url, &BTreeMap::new())
        .map_err(DeltaTableError::Generic)?;
    let store = runtime
        .object_store_registry
        .get_store(url)
        .map_err(|e| DeltaTableError::Generic(e.to_string()))?;
    // Delta's kernel refuses a local folder that does not exist yet; object stores have
    // no folders to create.
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|e| {
            DeltaTableError::Generic(format!("cannot create {}: {e}", path.display()))
        })?;
    }
    // Loading a folder without a log works but makes the kernel log an error; look first.
    let log = object_store::path::Path::from_url_path(url.path())
        .map_err(|e| DeltaTableError::Generic(e.to_string()))?
        .clone()
        .join("_delta_log");
    let created = store.list(Some(&log)).next().await.transpose()?.is_some();
    let mut table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_backend(store, url.clone())
        .build()?;
    if !created {
        return Ok(table);
    }
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
        Err(e) => Err(e),
    }
}

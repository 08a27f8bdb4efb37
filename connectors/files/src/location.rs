//! Where a source's files live: root URLs, table paths, globs and object stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::Result as DfResult;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreScheme};
use tributary_core::Secret;
use url::Url;

use crate::format::classify;

/// Resolves a source's `url` (a URL, or a local path relative to the config file) to the
/// URL of a folder, ending in `/`.
pub fn resolve_root(url: &str, config_dir: &Path) -> Result<Url, String> {
    let mut root = match parse_absolute_url(url) {
        Some(u) => u,
        None => {
            let path = config_dir.join(url);
            Url::from_directory_path(&path)
                .map_err(|()| format!("`{url}` is neither a URL nor a usable local path"))?
        }
    };
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    Ok(root)
}

/// A URL with a scheme (not a Windows drive letter), or `None` for a plain path.
fn parse_absolute_url(s: &str) -> Option<Url> {
    Url::parse(s).ok().filter(|u| u.scheme().len() > 1)
}

/// Where one table's files are: a single file, a folder, or a folder plus a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLocation {
    /// A file, or a folder ending in `/`.
    pub url: Url,
    /// A glob over the paths below `url`, e.g. `*/data-*.parquet`.
    pub glob: Option<String>,
}

impl TableLocation {
    /// Resolves a table `path` written in the config: an absolute URL, an absolute local
    /// path, or a path relative to the source `root`.
    pub fn resolve(path: &str, root: &Url) -> Result<Self, String> {
        let (base, glob) = match path.find(['*', '?', '[']) {
            Some(i) => {
                let cut = path[..i].rfind('/').map_or(0, |j| j + 1);
                (&path[..cut], Some(path[cut..].to_string()))
            }
            None => (path, None),
        };
        let mut url = if let Some(u) = parse_absolute_url(base) {
            u
        } else if Path::new(base).is_absolute() {
            Url::from_file_path(base).map_err(|()| format!("`{path}` is not a usable path"))?
        } else {
            root.join(base)
                .map_err(|e| format!("`{path}` cannot be joined to {root}: {e}"))?
        };
        let is_folder = glob.is_some() || url.path().ends_with('/') || looks_like_folder(&url);
        if is_folder && !url.path().ends_with('/') {
            let folder = format!("{}/", url.path());
            url.set_path(&folder);
        }
        Ok(TableLocation { url, glob })
    }

    /// A folder table (possibly globbed), as opposed to a single file.
    pub fn is_folder(&self) -> bool {
        self.url.path().ends_with('/')
    }

    /// The location as DataFusion's listing table takes it.
    pub fn listing_url(&self) -> DfResult<ListingTableUrl> {
        let url = ListingTableUrl::try_new(self.url.clone(), None)?;
        match &self.glob {
            Some(glob) => url.with_glob(glob),
            None => Ok(url),
        }
    }
}

impl std::fmt::Display for TableLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.url, self.glob.as_deref().unwrap_or(""))
    }
}

/// Whether a path without a trailing `/` names a folder: on local disk, ask the disk;
/// elsewhere, a last segment that is not a data file name is taken as a folder.
fn looks_like_folder(url: &Url) -> bool {
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
        && path.exists()
    {
        return path.is_dir();
    }
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    classify(last).is_none()
}

/// Makes sure the session can reach the object store holding `url`: reuses a store already
/// registered for it (local disk, the engine's shared `memory://` store, or another source's
/// bucket when no options are given), else builds one from `options` plus the environment
/// and registers it.
pub fn ensure_store(
    runtime: &RuntimeEnv,
    url: &Url,
    options: &BTreeMap<String, Secret>,
) -> Result<(), String> {
    let registered = runtime.object_store_registry.get_store(url).is_ok();
    let (scheme, _) = ObjectStoreScheme::parse(url)
        .map_err(|_| format!("`{url}` has no object store (use file://, s3://, gs://, az://, http(s):// or memory://)"))?;
    // `key: ${VAR:-}` means "not set here": leave it to the environment.
    let options: BTreeMap<&String, &Secret> = options
        .iter()
        .filter(|(_, v)| !v.expose().is_empty())
        .collect();
    let local = matches!(scheme, ObjectStoreScheme::Local | ObjectStoreScheme::Memory);
    if local && !options.is_empty() {
        return Err(format!(
            "object-store options do not apply to {}:// locations",
            url.scheme()
        ));
    }
    if registered {
        if options.is_empty() || local {
            return Ok(());
        }
        return Err(format!(
            "another source already set up the object store for {}; give each bucket's options in one source only",
            store_key(url)
        ));
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
        ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(parse_key::<AmazonS3ConfigKey>(k, "S3")?, v.expose());
            }
            Arc::new(
                b.build()
                    .map_err(|e| format!("cannot set up S3 access: {e}"))?,
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(parse_key::<GoogleConfigKey>(k, "GCS")?, v.expose());
            }
            Arc::new(
                b.build()
                    .map_err(|e| format!("cannot set up GCS access: {e}"))?,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(parse_key::<AzureConfigKey>(k, "Azure")?, v.expose());
            }
            Arc::new(
                b.build()
                    .map_err(|e| format!("cannot set up Azure access: {e}"))?,
            )
        }
        ObjectStoreScheme::Http => {
            let mut b = HttpBuilder::new().with_url(store_key(url));
            for (k, v) in options {
                b = b.with_config(parse_key::<ClientConfigKey>(k, "HTTP")?, v.expose());
            }
            Arc::new(
                b.build()
                    .map_err(|e| format!("cannot set up HTTP access: {e}"))?,
            )
        }
        other => return Err(format!("object store {other:?} is not supported")),
    };
    runtime.register_object_store(url, store);
    Ok(())
}

fn parse_key<K: FromStr>(key: &str, store: &str) -> Result<K, String> {
    K::from_str(&key.to_ascii_lowercase()).map_err(|_| format!("unknown {store} option `{key}`"))
}

/// `scheme://authority`, the part of a URL that selects an object store.
fn store_key(url: &Url) -> String {
    url[..url::Position::BeforePath].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_resolve_against_the_config_folder() {
        let root = resolve_root("data/lake", Path::new("/etc/tributary")).unwrap();
        assert_eq!(root.as_str(), "file:///etc/tributary/data/lake/");
        let root = resolve_root("/srv/lake", Path::new("/etc")).unwrap();
        assert_eq!(root.as_str(), "file:///srv/lake/");
        let root = resolve_root("s3://bucket/prefix", Path::new("/etc")).unwrap();
        assert_eq!(root.as_str(), "s3://bucket/prefix/");
        let root = resolve_root("memory:///", Path::new("/etc")).unwrap();
        assert_eq!(root.as_str(), "memory:///");
    }

    #[test]
    fn table_paths_resolve_to_files_folders_and_globs() {
        let root = Url::parse("s3://bucket/lake/").unwrap();
        let t = TableLocation::resolve("orders.parquet", &root).unwrap();
        assert_eq!(t.url.as_str(), "s3://bucket/lake/orders.parquet");
        assert!(!t.is_folder());

        let t = TableLocation::resolve("events", &root).unwrap();
        assert_eq!(t.url.as_str(), "s3://bucket/lake/events/");
        assert!(t.is_folder());

        let t = TableLocation::resolve("logs/2024-*/part-*.csv", &root).unwrap();
        assert_eq!(t.url.as_str(), "s3://bucket/lake/logs/");
        assert_eq!(t.glob.as_deref(), Some("2024-*/part-*.csv"));
        assert_eq!(t.to_string(), "s3://bucket/lake/logs/2024-*/part-*.csv");

        let t = TableLocation::resolve("gs://other/x.csv", &root).unwrap();
        assert_eq!(t.url.as_str(), "gs://other/x.csv");

        let t = TableLocation::resolve("/data/x.json", &root).unwrap();
        assert_eq!(t.url.as_str(), "file:///data/x.json");
    }
}

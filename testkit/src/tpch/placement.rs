//! Placements: which source holds each TPC-H table (`sql/tpch/placements/*.yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tributary_tpch::TpchTable;

/// Where a table lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// The local PostgreSQL.
    Postgres,
    /// The local MariaDB.
    Mysql,
    /// One Parquet file per table in a local folder.
    Parquet,
}

impl Store {
    /// The key placement files use for it.
    pub fn name(self) -> &'static str {
        match self {
            Store::Postgres => "postgres",
            Store::Mysql => "mysql",
            Store::Parquet => "parquet",
        }
    }

    /// The catalog Tributary's generated config gives it.
    pub fn catalog(self) -> &'static str {
        match self {
            Store::Postgres => "pg",
            Store::Mysql => "my",
            Store::Parquet => "pq",
        }
    }
}

/// One placement file: every TPC-H table and the store that holds it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The file's name without `.yaml`.
    pub name: String,
    tables: BTreeMap<&'static str, Store>,
}

impl Placement {
    /// The folder the placement files live in.
    pub fn dir() -> PathBuf {
        crate::workspace_root().join("sql/tpch/placements")
    }

    /// Every placement file, by name.
    pub fn all() -> Vec<Placement> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(Self::dir())
            .expect("sql/tpch/placements is readable")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| Self::read(path).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// The placement `sql/tpch/placements/<name>.yaml`.
    pub fn named(name: &str) -> Result<Placement, String> {
        Self::read(&Self::dir().join(format!("{name}.yaml")))
    }

    /// Reads a placement file: a list of tables under each store's key, every TPC-H table
    /// exactly once.
    pub fn read(path: &Path) -> Result<Placement, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let by_store: BTreeMap<Store, Vec<String>> =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        let mut tables = BTreeMap::new();
        for (store, names) in by_store {
            for name in names {
                let table = TpchTable::from_name(&name)
                    .ok_or_else(|| format!("{shown}: `{name}` is not a TPC-H table"))?;
                if tables.insert(table.name(), store).is_some() {
                    return Err(format!("{shown}: `{name}` is placed twice"));
                }
            }
        }
        if let Some(missing) = TpchTable::ALL
            .iter()
            .find(|t| !tables.contains_key(t.name()))
        {
            return Err(format!("{shown}: `{}` is not placed", missing.name()));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Placement { name, tables })
    }

    /// Where `table` lives.
    pub fn store(&self, table: &str) -> Option<Store> {
        self.tables.get(table).copied()
    }

    /// Each table and its store.
    pub fn tables(&self) -> impl Iterator<Item = (&'static str, Store)> + '_ {
        self.tables.iter().map(|(t, s)| (*t, *s))
    }

    /// The stores this placement uses.
    pub fn stores(&self) -> BTreeSet<Store> {
        self.tables.values().copied().collect()
    }
}

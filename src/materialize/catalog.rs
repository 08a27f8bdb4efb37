//! The `materialized` catalog: each materialization's Delta table, at its latest version.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake::DeltaTable;
use deltalake::errors::DeltaTableError;
use tokio::sync::Mutex;

use super::{Job, SCHEMA};
use crate::config::OnInvalid;

/// The catalog of materialized tables.
#[derive(Debug)]
pub struct MaterializedCatalog {
    schema: Arc<MaterializedSchema>,
}

impl MaterializedCatalog {
    /// A catalog over `jobs` (and the quarantine tables of those that quarantine rows:
    /// `<name>__quarantine`); tables are opened through `runtime`'s object stores.
    pub fn new(jobs: &[Job], runtime: Arc<RuntimeEnv>) -> Self {
        let mut tables = BTreeMap::new();
        for job in jobs {
            tables.insert(job.config.name.clone(), Arc::new(Slot::new(job.clone())));
            if job.config.on_invalid == OnInvalid::Quarantine {
                let quarantine = Job {
                    config: job.config.clone(),
                    target: job.quarantine(),
                };
                let slot = Slot {
                    empty: Some(super::quarantine::schema()),
                    ..Slot::new(quarantine)
                };
                tables.insert(format!("{}__quarantine", job.config.name), Arc::new(slot));
            }
        }
        MaterializedCatalog {
            schema: Arc::new(MaterializedSchema { tables, runtime }),
        }
    }
}

impl CatalogProvider for MaterializedCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        (name == SCHEMA).then(|| Arc::clone(&self.schema) as _)
    }
}

#[derive(Debug)]
struct MaterializedSchema {
    tables: BTreeMap<String, Arc<Slot>>,
    runtime: Arc<RuntimeEnv>,
}

/// One materialization's table, kept open between queries and brought up to date by each.
#[derive(Debug)]
pub(super) struct Slot {
    job: Job,
    table: Mutex<Option<DeltaTable>>,
    /// The columns of an empty table to show while it has no data (instead of an error).
    empty: Option<SchemaRef>,
}

impl Slot {
    /// A slot for `job`'s table, opened on first use.
    pub(super) fn new(job: Job) -> Slot {
        Slot {
            job,
            table: Mutex::new(None),
            empty: None,
        }
    }

    /// The materialization.
    pub(super) fn job(&self) -> &Job {
        &self.job
    }

    /// The table at its latest version, or `None` while it has no data yet.
    pub(super) async fn latest(
        &self,
        runtime: &RuntimeEnv,
    ) -> std::result::Result<Option<DeltaTable>, DeltaTableError> {
        let mut open = self.table.lock().await;
        let table = match open.take() {
            Some(mut table) if table.version().is_some() => {
                table.update_state().await?;
                table
            }
            _ => super::target::open(runtime, &self.job.target).await?,
        };
        let table = open.insert(table);
        Ok(table.version().is_some().then(|| table.clone()))
    }
}

#[async_trait]
impl SchemaProvider for MaterializedSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(slot) = self.tables.get(name) else {
            return Ok(None);
        };
        let table = slot.latest(&self.runtime).await.map_err(|e| {
            DataFusionError::Plan(format!(
                "materialized table `{name}` ({}): {e}",
                slot.job.target
            ))
        })?;
        let Some(table) = table else {
            if let Some(schema) = &slot.empty {
                return Ok(Some(Arc::new(EmptyTable::new(Arc::clone(schema)))));
            }
            return Err(DataFusionError::Plan(format!(
                "materialized table `{name}` has no data yet: run `tributary sync {name}`"
            )));
        };
        let provider = table
            .table_provider()
            .await
            .map_err(|e| DataFusionError::Plan(format!("materialized table `{name}`: {e}")))?;
        Ok(Some(provider))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

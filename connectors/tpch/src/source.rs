//! The `tpch` source and its table provider.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{Result as DfResult, Statistics};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use serde::Deserialize;
use tributary_core::{Error, Health, Result, ScanTag, Source, SourceContext, TaggedTable};

use crate::TpchTable;
use crate::exec::TpchExec;

/// Rows a partition should hold at least before a scan is split further.
const ROWS_PER_PARTITION: usize = 50_000;

/// `kind: tpch`: the TPC-H tables at a scale factor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpchConfig {
    /// TPC-H scale factor: 1 is about 1 GB of data, `lineitem` about 6 million rows.
    #[serde(
        default = "default_scale",
        deserialize_with = "tributary_core::config::de::parsed"
    )]
    pub scale_factor: f64,
    /// The schema the tables appear in.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_scale() -> f64 {
    0.01
}

fn default_schema() -> String {
    "tpch".to_string()
}

impl Default for TpchConfig {
    fn default() -> Self {
        TpchConfig {
            scale_factor: default_scale(),
            schema: default_schema(),
        }
    }
}

/// The TPC-H tables, generated on every scan.
#[derive(Debug)]
pub struct TpchSource {
    name: String,
    scale: f64,
    schema: String,
}

impl TpchSource {
    /// The source `context` names, with the given config.
    pub fn new(context: &SourceContext, config: TpchConfig) -> Result<Self> {
        if !(config.scale_factor.is_finite() && config.scale_factor > 0.0) {
            return Err(Error::config(
                format!("{}.scale_factor", context.key),
                format!("expected a positive number, got {}", config.scale_factor),
            ));
        }
        Ok(TpchSource {
            name: context.name.clone(),
            scale: config.scale_factor,
            schema: config.schema,
        })
    }
}

#[async_trait]
impl Source for TpchSource {
    fn kind(&self) -> &'static str {
        "tpch"
    }

    async fn schema_names(&self) -> Result<Vec<String>> {
        Ok(vec![self.schema.clone()])
    }

    async fn table_names(&self, schema: &str) -> Result<Vec<String>> {
        if schema != self.schema {
            return Ok(vec![]);
        }
        let mut names: Vec<String> = TpchTable::ALL
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn table(&self, schema: &str, table: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if schema != self.schema {
            return Ok(None);
        }
        Ok(TpchTable::from_name(table).map(|table| {
            let tag = ScanTag {
                source: self.name.clone(),
                table: format!("{schema}.{}", table.name()),
                location: format!("generated at scale factor {}", self.scale),
            };
            let provider = Arc::new(TpchTableProvider {
                table,
                scale: self.scale,
            });
            Arc::new(TaggedTable::new(provider, tag)) as Arc<dyn TableProvider>
        }))
    }

    async fn check(&self) -> Result<Health> {
        Ok(Health::ok(format!(
            "generated in process at scale factor {}",
            self.scale
        )))
    }
}

/// One generated TPC-H table.
#[derive(Debug)]
struct TpchTableProvider {
    table: TpchTable,
    scale: f64,
}

#[async_trait]
impl TableProvider for TpchTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partitions = if self.table.splittable() {
            let (rows, _) = self.table.row_count(self.scale, 1, 1);
            (rows / ROWS_PER_PARTITION).clamp(1, state.config().target_partitions())
        } else {
            1
        };
        Ok(Arc::new(TpchExec::new(
            self.table,
            self.scale,
            partitions,
            projection.cloned(),
        )?))
    }

    fn statistics(&self) -> Option<Statistics> {
        let (rows, exact) = self.table.row_count(self.scale, 1, 1);
        let rows = if exact {
            Precision::Exact(rows)
        } else {
            Precision::Inexact(rows)
        };
        Some(Statistics::new_unknown(&self.table.schema()).with_num_rows(rows))
    }
}

//! A run's changed rows, read once when every read of the source is costly.
//!
//! An incremental run fixes its upper bound before it reads, so that a row changing while
//! it runs is taken whole by this run or the next (see [`super::source::upper_bound`]). A
//! database answers that bound from an index; a REST table can only walk every changed
//! page for it, and then again for the rows. For such sources the changed rows are read
//! once into a local Arrow IPC file, the bound being the highest cursor value seen, and
//! the writer reads the file. Memory stays one batch; the file is removed with the spool.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions_aggregate::min_max::MaxAccumulator;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use tributary_rest::RestScanExec;

use super::state::Cursor;

/// Whether `plan` reads a source whose every read costs what reading all of it does: a
/// REST API's pages.
pub fn costly_to_reread(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut costly = false;
    let _ = plan.apply(|node| {
        costly = node.downcast_ref::<RestScanExec>().is_some();
        Ok(if costly {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    costly
}

/// A local file holding a run's rows; removed when dropped.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
}

impl Spool {
    /// Reads `df` into the file at `path` (replacing what a crashed run may have left),
    /// returning the spool and the highest value of `cursor` in it, encoded (`None` when
    /// `df` had no row with a cursor).
    pub async fn fill(
        df: DataFrame,
        cursor: &Cursor,
        path: PathBuf,
    ) -> Result<(Spool, Option<i64>)> {
        let column = df.schema().as_arrow().index_of(cursor.name())?;
        let mut max = MaxAccumulator::try_new(df.schema().field(column).data_type())?;
        let mut stream = df.execute_stream().await?;
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| io(&path, e))?;
        }
        let file = File::create(&path).map_err(|e| io(&path, e))?;
        // From here on the file is the spool's to remove, however this ends.
        let spool = Spool { path };
        let mut writer = FileWriter::try_new(BufWriter::new(file), &stream.schema())?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            max.update_batch(&[Arc::clone(batch.column(column))])?;
            writer.write(&batch)?;
        }
        writer.finish()?;
        let high = cursor
            .encode(&max.evaluate()?)
            .map_err(DataFusionError::Plan)?;
        Ok((spool, high))
    }

    /// The spooled rows, as a query of `ctx`.
    pub async fn read(&self, ctx: &SessionContext) -> Result<DataFrame> {
        let path = self.path.to_string_lossy();
        ctx.read_arrow(path.as_ref(), ArrowReadOptions::default())
            .await
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a run's spool file");
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> DataFusionError {
    DataFusionError::Execution(format!("the run's spool file {}: {e}", path.display()))
}

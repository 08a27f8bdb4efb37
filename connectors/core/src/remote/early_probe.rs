//! Starting a hash join's remote probe side with the join, when its connections and the
//! build side's can all be reserved first.
//!
//! A hash join polls its probe side only once its build side is read. When the probe side
//! is a query to a source, the source's work (TPC-H q13's `orders` scan filters 1.5 M
//! comments in PostgreSQL) could overlap the build side instead of waiting for it. But a
//! probe side started early holds its pooled connections until the build side is read:
//! if the build side needed one of them, or connections others hold while waiting in turn,
//! it would wait for ever. [`EarlyProbeExec`] therefore starts the probe side (buffered by
//! DataFusion's [`BufferExec`]) only when every pooled connection that both sides' scans
//! will hold can be reserved at once, without waiting ([`reserve_now`]); otherwise the
//! probe side starts when the join polls it, as it would without this node.

use std::sync::{Arc, Mutex};

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use crate::pass_through::{PassThrough, PassThroughExec};

use super::RemoteScanExec;
use super::connections::{Reservation, reserve_now};

/// The connections a probe side started early needs reserved, with its build side's:
/// `None` if it cannot start early safely. Every scan of the probe side must run its own
/// queries over a pool that reserves connections (a scan reading a shared query, or one
/// whose connections are not counted, might wait for a connection while holding others);
/// so must every scan of the build side over such a pool. A build side's scan whose
/// connections are not counted (another kind of source) draws from a pool no early start
/// holds, and is not reserved.
pub fn connections_to_reserve(
    build: &Arc<dyn ExecutionPlan>,
    probe: &Arc<dyn ExecutionPlan>,
) -> Result<Option<Connections>> {
    let mut reservations: Vec<Arc<Reservation>> = Vec::new();
    let mut scans = 0;
    let mut safe = true;
    probe.apply(|node| {
        if let Some(scan) = node.downcast_ref::<RemoteScanExec>() {
            scans += 1;
            match scan.connections() {
                Some(reservation) if !scan.is_shared() => reservations.push(reservation),
                _ => {
                    safe = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if !safe || scans == 0 {
        return Ok(None);
    }
    let probe = unique(reservations);
    let mut reservations: Vec<Arc<Reservation>> = Vec::new();
    build.apply(|node| {
        if let Some(scan) = node.downcast_ref::<RemoteScanExec>() {
            if scan.is_shared() {
                safe = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            reservations.extend(scan.connections());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if !safe {
        return Ok(None);
    }
    Ok(Some(Connections {
        probe,
        build: unique(reservations),
    }))
}

/// The pooled connections of a join's two sides (see [`connections_to_reserve`]).
#[derive(Debug, Clone)]
pub struct Connections {
    probe: Vec<Arc<Reservation>>,
    build: Vec<Arc<Reservation>>,
}

fn unique(reservations: Vec<Arc<Reservation>>) -> Vec<Arc<Reservation>> {
    let mut unique: Vec<Arc<Reservation>> = Vec::with_capacity(reservations.len());
    for reservation in reservations {
        if !unique.iter().any(|r| Arc::ptr_eq(r, &reservation)) {
            unique.push(reservation);
        }
    }
    unique
}

/// Bytes of batches a probe side started early may read ahead of its join. The source's
/// work before its first rows is what overlaps the build side; the buffer only saves
/// waiting on each hand-over afterwards.
const BUFFER_BYTES: usize = 4 << 20;

/// A hash join's probe side that starts with the join when the connections it and the
/// build side need can all be reserved at that moment (see the module documentation).
pub type EarlyProbeExec = PassThroughExec<EarlyProbe>;

/// What an [`EarlyProbeExec`] reserves, and what it decided for each run.
pub struct EarlyProbe {
    input: Arc<dyn ExecutionPlan>,
    connections: Connections,
    /// Whether the run of this context started early: decided once per run, at the first
    /// partition it executes.
    decided: Mutex<Option<(Arc<TaskContext>, bool)>>,
}

impl EarlyProbeExec {
    /// `input` (a probe side), started early when `connections` can be reserved.
    pub fn new(input: Arc<dyn ExecutionPlan>, connections: Connections) -> Self {
        PassThroughExec::wrap(EarlyProbe::new(input, connections))
    }
}

impl EarlyProbe {
    fn new(input: Arc<dyn ExecutionPlan>, connections: Connections) -> Self {
        EarlyProbe {
            input,
            connections,
            decided: Mutex::new(None),
        }
    }

    fn starts_early(&self, context: &Arc<TaskContext>) -> bool {
        let mut decided = self.decided.lock().unwrap_or_else(|e| e.into_inner());
        match &*decided {
            Some((run, early)) if Arc::ptr_eq(run, context) => *early,
            _ => {
                // The build side may have started (and reserved its own) already: a
                // collected build side's partitions start as the join executes them.
                let early = reserve_now(&self.connections.probe, &self.connections.build);
                if !early {
                    tracing::debug!(
                        "probe side not started early: its connections are not all free"
                    );
                }
                *decided = Some((Arc::clone(context), early));
                early
            }
        }
    }
}

impl PassThrough for EarlyProbe {
    const NAME: &'static str = "EarlyProbeExec";

    fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    fn with_input(&self, input: Arc<dyn ExecutionPlan>) -> Self {
        EarlyProbe::new(input, self.connections.clone())
    }

    fn details(&self) -> Option<String> {
        Some(format!(
            "reservations={}+{}",
            self.connections.probe.len(),
            self.connections.build.len()
        ))
    }

    fn run(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if self.starts_early(&context) {
            BufferExec::new(Arc::clone(&self.input), BUFFER_BYTES).execute(partition, context)
        } else {
            self.input.execute(partition, context)
        }
    }
}

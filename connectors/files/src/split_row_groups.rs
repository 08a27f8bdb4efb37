//! Parquet scans whose row groups are fewer than the query's partitions read them in row
//! ranges, so every core decodes.
//!
//! DataFusion splits a Parquet scan into byte ranges of its files, and a row group is read
//! by the range holding its first page. A file of one large row group (what most writers
//! produce below about a million rows: arrow-rs and DuckDB write up to 1 Mi and 122,880
//! rows per group, Spark 128 MB) is then decoded by one partition while the others find
//! nothing to read: TPC-H's `partsupp`, 800,000 rows in one row group, was decoded on one
//! core of two. [`SplitRowGroups`] turns such a scan into pieces, each the file with a
//! [`ParquetAccessPlan`] that reads one row range of one row group; the reader skips the
//! pages outside the range when the file has an offset index, and skips the rows without
//! decoding them otherwise. The pieces go to the scan's partitions in equal shares (and a
//! partition that runs ahead takes the others' unread pieces: DataFusion's file-stream
//! work stealing).
//!
//! Pieces cost CPU (see `MIN_PIECE_ROWS`), so a scan splits only when cores would
//! otherwise idle: when fewer such scans run at the same time than the query has
//! partitions. A join reads its build side before its probe side, and a scalar subquery
//! before its query, unless [`StartEarly`] started the later input with the query. In
//! TPC-H q16 (mixed placement, SF1), `part` and then `partsupp` are read alone and split
//! (0.056 s → 0.046 s); in q02 two `part` scans run side by side, then two of `partsupp`,
//! and splitting them made the query slower (0.038 s → 0.041 s).
//!
//! Only unordered Parquet scans split: a scan that keeps an order, or whose files already
//! carry an access plan (or any other per-file extension), is left as DataFusion planned
//! it. The row groups come from DataFusion's file metadata cache, filled when the table's
//! statistics were read; a file missing from it leaves its scan unchanged.
//!
//! [`StartEarly`]: tributary_core::start_early::StartEarly

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::buffer::BufferExec;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use tributary_core::start_early::StartsEarlyExec;

/// Pieces are never smaller than this many rows: each piece opens its file again, decodes
/// the pages its range cuts in full, and decodes each column's dictionary page again (for
/// TPC-H's `partsupp`, half a megabyte for the 200,000 part keys). That last cost is also
/// why a scan splits into no more pieces than it has partitions: four pieces of
/// `partsupp` for two partitions took twice the CPU of one, two pieces 1.2 times.
const MIN_PIECE_ROWS: usize = 65_536;

/// Splits the row groups of Parquet scans into row ranges (see the module documentation).
/// Runs after DataFusion has planned the scans' partitions, and keeps their number.
#[derive(Debug)]
pub struct SplitRowGroups {
    metadata: Arc<FileMetadataCache>,
}

impl SplitRowGroups {
    /// The rule, reading row groups from `metadata` (the session's file metadata cache,
    /// `runtime_env().cache_manager.get_file_metadata_cache()`).
    pub fn new(metadata: Arc<FileMetadataCache>) -> Self {
        SplitRowGroups { metadata }
    }

    /// The metadata of the file `file` names, if the cache holds it for this version of
    /// the file.
    fn metadata(&self, file: &PartitionedFile) -> Option<Arc<ParquetMetaData>> {
        let cached = self.metadata.get(&file.object_meta.location)?;
        if !cached.is_valid_for(&file.object_meta) {
            return None;
        }
        let parquet = cached
            .file_metadata
            .as_any()
            .downcast_ref::<CachedParquetMetaData>()?;
        Some(Arc::clone(parquet.parquet_metadata()))
    }

    /// The file groups of `scan` with its row groups split into pieces, or `None` when
    /// there is nothing to split.
    fn split(&self, scan: &FileScanConfig) -> Option<Vec<FileGroup>> {
        let partitions = scan.file_groups.len();
        if partitions < 2
            || scan.preserve_order
            || !scan.output_ordering.is_empty()
            || scan.output_partitioning.is_some()
        {
            return None;
        }
        let mut entries = Vec::new();
        for file in scan.file_groups.iter().flat_map(FileGroup::iter) {
            if !file.extensions.is_empty() {
                return None;
            }
            let metadata = self.metadata(file)?;
            entries.push(Entry::new(file, &metadata));
        }
        let row_groups = || {
            entries
                .iter()
                .flat_map(|e| e.owned.iter().map(|&(_, rows)| rows))
        };
        let total: usize = row_groups().sum();
        let piece_rows = MIN_PIECE_ROWS.max(total.div_ceil(partitions));
        if row_groups().all(|rows| piece_count(rows, piece_rows) < 2) {
            return None;
        }
        let pieces: Vec<Piece> = entries
            .iter()
            .flat_map(|entry| entry.pieces(piece_rows))
            .collect();
        Some(deal(pieces, partitions, total))
    }

    /// The scans of `plan` that could be split, grouped by when they run: scans in one
    /// phase run at the same time. Each scan's split form is kept in `splits`.
    fn phases(&self, plan: &Arc<dyn ExecutionPlan>, splits: &mut Splits) -> Vec<Vec<ScanKey>> {
        if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
            let Some((scan, groups)) = exec
                .downcast_to_file_source::<ParquetSource>()
                .and_then(|(scan, _)| Some((scan, self.split(scan)?)))
            else {
                return Vec::new();
            };
            let key = scan_key(plan);
            let scan = FileScanConfigBuilder::from(scan.clone())
                .with_file_groups(groups)
                .build();
            splits.insert(key, DataSourceExec::from_data_source(scan));
            return vec![vec![key]];
        }
        let children = plan.children();
        // A scalar subquery node whose independent work starts early runs its inputs side
        // by side.
        if plan.downcast_ref::<StartsEarlyExec>().is_some() {
            let inputs = children.into_iter().flat_map(|c| c.children());
            return side_by_side(inputs.map(|c| self.phases(c, splits)));
        }
        // A scalar subquery node computes its subqueries (side by side), then its input.
        if plan.downcast_ref::<ScalarSubqueryExec>().is_some()
            && let Some((input, subqueries)) = children.split_first()
        {
            let mut phases = side_by_side(subqueries.iter().map(|c| self.phases(c, splits)));
            phases.extend(self.phases(input, splits));
            return phases;
        }
        let inputs = children.into_iter().map(|c| self.phases(c, splits));
        if reads_inputs_in_turn(plan) {
            inputs.flatten().collect()
        } else {
            side_by_side(inputs)
        }
    }
}

/// A scan node, by address: the rule finds the scans it chose in the same plan.
type ScanKey = *const ();

/// The scans that could be split, as they read split.
type Splits = HashMap<ScanKey, Arc<dyn ExecutionPlan>>;

fn scan_key(plan: &Arc<dyn ExecutionPlan>) -> ScanKey {
    Arc::as_ptr(plan).cast::<()>()
}

/// Whether `plan` is a join that reads its build side to the end before it starts its
/// probe side (unless the probe side was started early, under a [`BufferExec`]).
fn reads_inputs_in_turn(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        return join.right().downcast_ref::<BufferExec>().is_none();
    }
    plan.downcast_ref::<CrossJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
}

/// The phases of inputs that run side by side: their first phases at the same time, then
/// their second ones, and so on.
fn side_by_side(inputs: impl Iterator<Item = Vec<Vec<ScanKey>>>) -> Vec<Vec<ScanKey>> {
    let mut phases: Vec<Vec<ScanKey>> = Vec::new();
    for input in inputs {
        for (i, phase) in input.into_iter().enumerate() {
            if phases.len() <= i {
                phases.push(Vec::new());
            }
            phases[i].extend(phase);
        }
    }
    phases
}

impl PhysicalOptimizerRule for SplitRowGroups {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let cores = config.execution.target_partitions;
        let mut splits = Splits::new();
        let chosen: HashSet<ScanKey> = self
            .phases(&plan, &mut splits)
            .into_iter()
            .filter(|phase| phase.len() < cores)
            .flatten()
            .collect();
        splits.retain(|key, _| chosen.contains(key));
        if splits.is_empty() {
            return Ok(plan);
        }
        // The chosen scans are leaves of `plan`, visited before anything above them is
        // rebuilt, so their addresses still name them.
        plan.transform_up(|node| {
            Ok(match splits.remove(&scan_key(&node)) {
                Some(split) => Transformed::yes(split),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "SplitRowGroups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `rules` (DataFusion's physical optimizer rules) with [`SplitRowGroups`] after the rules
/// that plan the scans' partitions and hand them their filters, and after [`StartEarly`]
/// (which decides what runs side by side).
///
/// [`StartEarly`]: tributary_core::start_early::StartEarly
pub fn add_to(
    rules: &mut Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
    metadata: Arc<FileMetadataCache>,
) {
    let after = |name: &str| rules.iter().position(|r| r.name() == name);
    let at = after("StartEarly")
        .or_else(|| after("FilterPushdown(Post)"))
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(SplitRowGroups::new(metadata)));
}

/// A file entry of the scan and the row groups it reads.
struct Entry<'a> {
    file: &'a PartitionedFile,
    /// The file's number of row groups.
    row_groups: usize,
    /// The row groups the entry reads (index and rows): all of them, or, when DataFusion
    /// gave it a byte range of its file, those whose first page lies in the range (as the
    /// Parquet reader decides).
    owned: Vec<(usize, usize)>,
}

impl<'a> Entry<'a> {
    fn new(file: &'a PartitionedFile, metadata: &ParquetMetaData) -> Self {
        let owned = metadata
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, group)| {
                file.range.as_ref().is_none_or(|range| {
                    let column = group.column(0);
                    range.contains(
                        column
                            .dictionary_page_offset()
                            .unwrap_or_else(|| column.data_page_offset()),
                    )
                })
            })
            .map(|(index, group)| (index, usize::try_from(group.num_rows()).unwrap_or(0)))
            .collect();
        Entry {
            file,
            row_groups: metadata.num_row_groups(),
            owned,
        }
    }

    /// The entry as pieces: each large row group in [`piece_count`] equal row ranges, and
    /// the rest of its row groups together as one piece.
    fn pieces(&self, piece_rows: usize) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut whole = ParquetAccessPlan::new_none(self.row_groups);
        let mut whole_rows = None;
        for &(index, rows) in &self.owned {
            let count = piece_count(rows, piece_rows);
            if count == 1 {
                whole.scan(index);
                *whole_rows.get_or_insert(0) += rows;
                continue;
            }
            for i in 0..count {
                let start = rows * i / count;
                let end = rows * (i + 1) / count;
                let mut plan = ParquetAccessPlan::new_none(self.row_groups);
                plan.set(
                    index,
                    RowGroupAccess::Selection(range_selection(start, end, rows)),
                );
                pieces.push(self.piece(plan, end - start));
            }
        }
        if let Some(rows) = whole_rows {
            pieces.push(self.piece(whole, rows));
        }
        pieces
    }

    /// The entry's file reading what `plan` selects, `rows` rows.
    fn piece(&self, plan: ParquetAccessPlan, rows: usize) -> Piece {
        let mut file = self.file.clone();
        file.range = None;
        file.statistics = file
            .statistics
            .as_ref()
            .map(|s| Arc::new(piece_statistics(s, rows)));
        Piece {
            file: file.with_extension(plan),
            rows,
        }
    }
}

/// A piece of a scan: a file entry reading only its access plan's rows.
struct Piece {
    file: PartitionedFile,
    rows: usize,
}

/// How many pieces of about `piece_rows` rows a row group of `rows` rows makes: the
/// nearest whole number, at least one.
fn piece_count(rows: usize, piece_rows: usize) -> usize {
    ((rows + piece_rows / 2) / piece_rows).max(1)
}

/// Rows `start..end` of a row group of `rows` rows.
fn range_selection(start: usize, end: usize, rows: usize) -> RowSelection {
    let selectors = [
        RowSelector::skip(start),
        RowSelector::select(end - start),
        RowSelector::skip(rows - end),
    ];
    RowSelection::from(
        selectors
            .into_iter()
            .filter(|s| s.row_count > 0)
            .collect::<Vec<_>>(),
    )
}

/// The statistics of a piece of `rows` rows of a file with statistics `file`: its row
/// count, and the file's bounds as bounds the piece stays within (inexact).
fn piece_statistics(file: &Statistics, rows: usize) -> Statistics {
    let share = |bytes: Precision<usize>| {
        bytes.map(|b| match file.num_rows.get_value() {
            Some(&all) if all > 0 => b.saturating_mul(rows) / all,
            _ => b,
        })
    };
    let mut piece = file.clone().to_inexact();
    piece.num_rows = Precision::Exact(rows);
    piece.total_byte_size = share(piece.total_byte_size).to_inexact();
    for column in &mut piece.column_statistics {
        column.null_count = Precision::Absent;
        column.distinct_count = Precision::Absent;
        column.sum_value = Precision::Absent;
        column.byte_size = share(column.byte_size).to_inexact();
    }
    piece
}

/// `pieces` dealt in order into `partitions` groups of about equal rows (`total` in all).
fn deal(pieces: Vec<Piece>, partitions: usize, total: usize) -> Vec<FileGroup> {
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    let mut before = 0;
    for piece in pieces {
        let middle = before + piece.rows / 2;
        let group = (middle * partitions / total.max(1)).min(partitions - 1);
        before += piece.rows;
        groups[group].push(piece.file);
    }
    groups.into_iter().map(FileGroup::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_split_into_the_nearest_number_of_pieces() {
        assert_eq!(piece_count(800_000, 400_000), 2);
        assert_eq!(piece_count(200_000, 100_500), 2);
        assert_eq!(piece_count(200_000, 67_000), 3);
        assert_eq!(piece_count(1_000, 67_000), 1);
        assert_eq!(piece_count(0, 65_536), 1);
    }

    #[test]
    fn a_range_selects_its_rows_and_skips_the_rest() {
        let selection = range_selection(10, 25, 40);
        assert_eq!(
            Vec::<RowSelector>::from(selection),
            vec![
                RowSelector::skip(10),
                RowSelector::select(15),
                RowSelector::skip(15)
            ]
        );
        let first = range_selection(0, 5, 10);
        assert_eq!(
            Vec::<RowSelector>::from(first),
            vec![RowSelector::select(5), RowSelector::skip(5)]
        );
        let last = range_selection(5, 10, 10);
        assert_eq!(
            Vec::<RowSelector>::from(last),
            vec![RowSelector::skip(5), RowSelector::select(5)]
        );
    }

    #[test]
    fn a_piece_keeps_its_row_count_exact_and_the_files_bounds_as_bounds() {
        use datafusion::common::ColumnStatistics;
        use datafusion::common::ScalarValue;
        let file = Statistics {
            num_rows: Precision::Exact(1000),
            total_byte_size: Precision::Exact(8000),
            column_statistics: vec![ColumnStatistics {
                null_count: Precision::Exact(3),
                max_value: Precision::Exact(ScalarValue::Int64(Some(99))),
                min_value: Precision::Exact(ScalarValue::Int64(Some(1))),
                sum_value: Precision::Exact(ScalarValue::Int64(Some(5000))),
                distinct_count: Precision::Exact(99),
                byte_size: Precision::Exact(8000),
            }],
        };
        let piece = piece_statistics(&file, 250);
        assert_eq!(piece.num_rows, Precision::Exact(250));
        assert_eq!(piece.total_byte_size, Precision::Inexact(2000));
        let column = &piece.column_statistics[0];
        assert_eq!(column.null_count, Precision::Absent);
        assert_eq!(column.sum_value, Precision::Absent);
        assert_eq!(column.distinct_count, Precision::Absent);
        assert_eq!(
            column.max_value,
            Precision::Inexact(ScalarValue::Int64(Some(99)))
        );
        assert_eq!(
            column.min_value,
            Precision::Inexact(ScalarValue::Int64(Some(1)))
        );
        assert_eq!(column.byte_size, Precision::Inexact(2000));
    }
}

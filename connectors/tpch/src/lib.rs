//! The `tpch` source: the eight TPC-H tables, generated in process by `tpchgen` at a chosen
//! scale factor. Nothing is stored: each scan generates its rows as a stream, split into
//! parallel partitions, so any scale factor runs in bounded memory. It backs the embedded
//! `demo` catalog and the benchmarks.

mod exec;
mod source;
mod tables;

pub use source::{TpchConfig, TpchSource};
pub use tables::TpchTable;

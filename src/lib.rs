//! Tributary: a SQL federation engine. One SQL endpoint over databases, files and APIs,
//! built on Apache DataFusion and Arrow.
//!
//! - [`config`]: the YAML configuration.
//! - [`engine`]: the DataFusion session with one catalog per source.
//! - [`materialize`]: sync runs that copy sources into Delta tables.
//! - [`output`]: writing results as a table, CSV, JSON or Parquet.

pub mod config;
pub mod engine;
pub mod materialize;
pub mod output;
pub mod server;

pub use config::Config;
pub use engine::Engine;

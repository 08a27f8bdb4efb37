//! The `postgres` source: discovery of schemas, tables and views with their keys and size
//! estimates, an explicit type mapping, pushdown through the shared remote scan, and fast
//! reads with binary `COPY` decoded straight into Arrow, split into parallel partitions.

mod coalesce;
mod config;
mod connect;
mod copy;
mod discovery;
mod explain;
mod reader;
mod socket;
mod source;
mod types;

pub use config::{PostgresConfig, SslMode};
pub use source::{PostgresSource, RULES};

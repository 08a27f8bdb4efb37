//! The `mysql` source (MySQL 8 and MariaDB): discovery of databases, tables and views with
//! their keys and size estimates, an explicit type mapping, pushdown through the shared
//! remote scan with collation-aware rules, and streaming reads decoded straight into
//! Arrow, split into parallel ranges of the primary key.

mod config;
mod connect;
mod decode;
mod dialect;
mod discovery;
mod explain;
mod reader;
mod source;
mod types;

pub use config::{MysqlConfig, SslMode};
pub use source::{MysqlSource, RULES};

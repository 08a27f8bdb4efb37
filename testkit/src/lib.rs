//! Support for tests and benchmarks that run against the real services `scripts/test`
//! starts: connection settings, throwaway schemas and databases, and TPC-H loaded into PostgreSQL.

pub mod mysql;
pub mod postgres;

//! Support for tests and benchmarks that run against the real services `scripts/test`
//! starts: connection settings, throwaway schemas, and TPC-H loaded into PostgreSQL.

pub mod postgres;

//! Support for tests and benchmarks that run against the real services `scripts/test`
//! starts (connection settings, throwaway schemas and databases, TPC-H loaded into PostgreSQL),
//! and a JSON API on loopback for the `rest` source.

pub mod mysql;
pub mod postgres;
pub mod rest_api;

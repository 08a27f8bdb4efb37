//! Integration tests: the engine and the `tributary` binary against real files, object
//! stores and services. Run them with `scripts/test`, which starts what they need.

mod cli;
mod common;
mod config_errors;
mod demo;
mod docs;
mod dynamic_filters;
mod early_probe;
mod files;
mod flight_sql;
mod flight_sql_security;
mod join_order;
mod materialize;
mod materialize_runtime;
mod matrix;
mod mysql;
mod mysql_pushdown;
mod object_stores;
mod pool_timeout;
mod postgres;
mod postgres_pushdown;
mod rest;
mod soak;
mod split_row_groups;
mod start_early;
mod subquery_keys;
mod subquery_window;
mod tpch;

//! The connector contract shared by every Tributary source.
//!
//! A configured source is one DataFusion catalog. A connector implements [`Source`]
//! (schema and table discovery, a table provider per table, a health probe);
//! [`SourceCatalog`] turns it into a lazily discovered, cached [`CatalogProvider`].
//!
//! [`CatalogProvider`]: datafusion::catalog::CatalogProvider

mod catalog;
pub mod config;
mod error;
pub mod pass_through;
mod random;
pub mod remote;
mod scan;
mod secret;
pub mod short_lists;
mod source;
pub mod start_early;
pub mod subquery_keys;
pub mod subquery_window;
pub mod types;
pub mod window_memory;

pub use catalog::{CatalogOptions, SourceCatalog};
pub use config::SourceContext;
pub use error::{Error, Result, SourceFailure};
pub use random::random_fraction;
pub use scan::{ScanTag, SourceScanExec, TaggedTable};
pub use secret::Secret;
pub use source::{Health, HealthReport, HealthStatus, Source};

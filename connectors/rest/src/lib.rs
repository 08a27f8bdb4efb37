//! The `rest` source: endpoints of a JSON-over-HTTP API as tables, configured without code.
//!
//! Each table is an endpoint listing records. Pages are fetched in order (offset, page
//! number, cursor, `Link` header or next URL in the body) and each is decoded by arrow-json
//! straight from the response bytes into one Arrow batch, reading only the fields of the
//! columns a query uses. Filters on columns mapped to query parameters are sent to the
//! API (DataFusion checks them again); a `LIMIT` stops paging early. Requests are paced,
//! authenticated (Basic, bearer, API key, OAuth 2 with renewal) and retried (`429` after
//! its `Retry-After`, `5xx` and timeouts with backoff).

mod auth;
mod client;
mod config;
mod decode;
mod filters;
mod jsonpath;
mod paging;
mod rejects;
mod source;
mod table;

pub use config::{
    AuthConfig, ClientAuth, ColumnConfig, FilterOp, FilterParam, Grant, KeyLocation, Method,
    OnInvalid, Pagination, RateLimit, RestConfig, RestTableConfig, RetryConfig, ValueFormat,
};
pub use rejects::SUFFIX as REJECTS_SUFFIX;
pub use source::RestSource;
pub use table::{RestScanExec, RestTable};

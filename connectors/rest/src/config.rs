//! Configuration of a `rest` source.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::Secret;
use tributary_core::config::{OptionValue, SqlType, de};

/// `kind: rest`: one catalog over a JSON-over-HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// The API's root; table paths are resolved against it.
    pub base_url: String,
    /// Headers sent with every request (e.g. `Accept`, an API version).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The schema tables appear in unless a table says otherwise (default `main`).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Pagination of tables that set none.
    #[serde(default)]
    pub pagination: Pagination,
    /// The longest one request may take, body included (default 30s).
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Request pacing and retries.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// How failed requests are tried again.
    #[serde(default)]
    pub retry: RetryConfig,
    /// What to do with a record that does not fit its table's columns, for tables that
    /// set nothing (default `fail`).
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Where `on_invalid: dead_letter` keeps rejected records: a folder (relative to the
    /// config file) or an object-store URL, one subfolder per table.
    pub rejects: Option<String>,
    /// The tables.
    pub tables: Vec<RestTableConfig>,
}

fn default_schema() -> String {
    "main".to_string()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One table: an endpoint listing records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestTableConfig {
    /// Table name.
    pub name: String,
    /// Schema; defaults to the source's `schema`.
    pub schema: Option<String>,
    /// The endpoint, relative to `base_url` (or an absolute URL).
    pub path: String,
    /// HTTP method (default `GET`).
    #[serde(default)]
    pub method: Method,
    /// Query parameters sent with every request of this table.
    #[serde(default)]
    pub params: BTreeMap<String, OptionValue>,
    /// JSONPath to the array of records in a response (default `$`: the body is the array).
    #[serde(default = "root_path")]
    pub records: String,
    /// Columns; inferred from the first page when absent.
    pub columns: Option<Vec<ColumnConfig>>,
    /// Columns that identify a record.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The column that grows as records are created or changed.
    pub cursor: Option<String>,
    /// Filters sent to the API as query parameters.
    #[serde(default)]
    pub filters: Vec<FilterParam>,
    /// Pagination; defaults to the source's.
    pub pagination: Option<Pagination>,
    /// What to do with a record that does not fit the columns; defaults to the source's.
    pub on_invalid: Option<OnInvalid>,
}

fn root_path() -> String {
    "$".to_string()
}

/// The HTTP methods a table can list records with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST`, with the query parameters in the URL and an empty body.
    Post,
}

/// A declared column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name.
    pub name: String,
    /// JSONPath to the value within a record (default `$.<name>`).
    pub path: Option<String>,
    /// SQL type, e.g. `bigint`, `text`, `decimal(12,2)`, `timestamp with time zone`
    /// (timestamps read with microsecond precision; text in RFC 3339, numbers as
    /// microseconds since the epoch).
    #[serde(rename = "type")]
    pub data_type: SqlType,
    /// Whether the column may be NULL or missing (default true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// A filter the API applies: `column op value` is sent as `param=value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParam {
    /// The filtered column.
    pub column: String,
    /// The comparison the parameter expresses (default `=`).
    #[serde(default)]
    pub op: FilterOp,
    /// The query parameter.
    pub param: String,
    /// How the value is written (default: its text; timestamps in RFC 3339, UTC).
    #[serde(default)]
    pub format: ValueFormat,
}

/// The comparisons a query parameter can stand for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FilterOp {
    /// `column = value`.
    #[default]
    #[serde(rename = "=")]
    Eq,
    /// `column > value`.
    #[serde(rename = ">")]
    Gt,
    /// `column >= value`.
    #[serde(rename = ">=")]
    GtEq,
    /// `column < value`.
    #[serde(rename = "<")]
    Lt,
    /// `column <= value`.
    #[serde(rename = "<=")]
    LtEq,
}

/// How a filter value is written into its query parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// The value's text; timestamps as RFC 3339 in UTC, dates as `YYYY-MM-DD`.
    #[default]
    Text,
    /// Timestamps as seconds since the Unix epoch.
    UnixSeconds,
    /// Timestamps as milliseconds since the Unix epoch.
    UnixMillis,
}

/// How requests authenticate. Secrets are `${ENV}` references.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No authentication (the default).
    #[default]
    None,
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// A key in a header or a query parameter.
    ApiKey {
        /// The header or parameter name (e.g. `X-Api-Key`, `api_key`).
        name: String,
        /// The key.
        value: Secret,
        /// Where it goes (default `header`).
        #[serde(default, rename = "in")]
        location: KeyLocation,
    },
    /// OAuth 2 access tokens from a token endpoint, renewed before they expire and when
    /// the API refuses one.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// How tokens are obtained (default `client_credentials`).
        #[serde(default)]
        grant: Grant,
        /// The client's id.
        client_id: String,
        /// The client's secret.
        client_secret: Option<Secret>,
        /// The refresh token (`grant: refresh_token`).
        refresh_token: Option<Secret>,
        /// Space-separated scopes to ask for.
        scope: Option<String>,
        /// How the client proves itself to the token endpoint (default `basic`).
        #[serde(default)]
        client_auth: ClientAuth,
    },
}

/// Where an API key is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    /// A request header.
    #[default]
    Header,
    /// A query parameter.
    Query,
}

/// OAuth 2 grant types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// The client's own credentials.
    #[default]
    ClientCredentials,
    /// A long-lived refresh token exchanged for access tokens.
    RefreshToken,
}

/// How an OAuth 2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// How a table's records are split into pages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request returns every record.
    #[default]
    None,
    /// `?offset=N&limit=M`, the offset advancing by the records received.
    Offset {
        /// The offset parameter (default `offset`).
        #[serde(default = "offset_param")]
        offset_param: String,
        /// The page-size parameter (default `limit`).
        #[serde(default = "limit_param")]
        limit_param: String,
        /// Records asked per page (default 100).
        #[serde(default = "page_size", deserialize_with = "de::parsed")]
        page_size: usize,
        /// JSONPath to the total number of records, if the API reports it.
        total_path: Option<String>,
        /// Stop at a page with fewer records than asked (saves the last, empty request;
        /// wrong for APIs that cap the page size below `page_size`).
        #[serde(default)]
        stop_on_short_page: bool,
        /// Stop after this many pages.
        #[serde(default, deserialize_with = "de::option_parsed")]
        max_pages: Option<usize>,
    },
    /// `?page=N&per_page=M`.
    Page {
        /// The page-number parameter (default `page`).
        #[serde(default = "page_param")]
        page_param: String,
        /// The number of the first page (default 1).
        #[serde(default = "one", deserialize_with = "de::parsed")]
        first_page: usize,
        /// The page-size parameter, if the API takes one.
        size_param: Option<String>,
        /// Records asked per page, with `size_param`.
        #[serde(default, deserialize_with = "de::option_parsed")]
        page_size: Option<usize>,
        /// JSONPath to the number of pages, if the API reports it.
        total_pages_path: Option<String>,
        /// Stop at a page with fewer records than `page_size`.
        #[serde(default)]
        stop_on_short_page: bool,
        /// Stop after this many pages.
        #[serde(default, deserialize_with = "de::option_parsed")]
        max_pages: Option<usize>,
    },
    /// The body says where the next page starts: `cursor_path` is sent back as
    /// `cursor_param`.
    Cursor {
        /// JSONPath to the next page's cursor; absent, null or empty on the last page.
        cursor_path: String,
        /// The parameter the cursor is sent as.
        cursor_param: String,
        /// JSONPath to a boolean that is false on the last page, if the API has one.
        has_more_path: Option<String>,
        /// The page-size parameter, if the API takes one.
        size_param: Option<String>,
        /// Records asked per page, with `size_param`.
        #[serde(default, deserialize_with = "de::option_parsed")]
        page_size: Option<usize>,
        /// Stop after this many pages.
        #[serde(default, deserialize_with = "de::option_parsed")]
        max_pages: Option<usize>,
    },
    /// The next page's URL is the `Link` header's `rel="next"` (RFC 8288).
    Link {
        /// The page-size parameter of the first request, if the API takes one.
        size_param: Option<String>,
        /// Records asked per page, with `size_param`.
        #[serde(default, deserialize_with = "de::option_parsed")]
        page_size: Option<usize>,
        /// Stop after this many pages.
        #[serde(default, deserialize_with = "de::option_parsed")]
        max_pages: Option<usize>,
    },
    /// The body holds the next page's URL (absolute, or relative to the page's).
    NextUrl {
        /// JSONPath to the next page's URL; absent, null or empty on the last page.
        next_path: String,
        /// The page-size parameter of the first request, if the API takes one.
        size_param: Option<String>,
        /// Records asked per page, with `size_param`.
        #[serde(default, deserialize_with = "de::option_parsed")]
        page_size: Option<usize>,
        /// Stop after this many pages.
        #[serde(default, deserialize_with = "de::option_parsed")]
        max_pages: Option<usize>,
    },
}

fn offset_param() -> String {
    "offset".to_string()
}

fn limit_param() -> String {
    "limit".to_string()
}

fn page_param() -> String {
    "page".to_string()
}

fn page_size() -> usize {
    100
}

fn one() -> usize {
    1
}

/// Request pacing per source.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At most this many requests start per second; unlimited if unset.
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub requests_per_second: Option<f64>,
    /// At most this many requests in flight at once (default 4).
    #[serde(default, deserialize_with = "de::option_parsed")]
    pub concurrency: Option<usize>,
}

/// How failed requests are tried again: `5xx`, timeouts and refused connections after an
/// exponential backoff with jitter; `429` after its `Retry-After`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// How many more times a request is tried (default 5).
    #[serde(default = "default_retries", deserialize_with = "de::parsed")]
    pub max_retries: u32,
    /// The wait before the first retry; it doubles for each next one (default 200ms).
    #[serde(default = "default_backoff", deserialize_with = "de::duration")]
    pub backoff: Duration,
    /// The longest wait before a retry, `Retry-After` included (default 60s).
    #[serde(default = "default_max_backoff", deserialize_with = "de::duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: default_retries(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_retries() -> u32 {
    5
}

fn default_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

/// What happens to a record that does not fit its table's columns (a value of another
/// type, a required field missing, not an object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// The query fails, naming the record and why (the default).
    #[default]
    Fail,
    /// The record is left out, with a warning in the log.
    Skip,
    /// The record is left out and kept in the table `<table>__rejects` of the same schema,
    /// with the reason and the raw record.
    DeadLetter,
}

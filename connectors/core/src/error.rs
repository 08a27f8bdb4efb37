//! The error type shared by connectors.

use datafusion::error::DataFusionError;

/// A boxed error from a library a connector calls.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the connector [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong inside a connector.
///
/// Messages name what the user can act on (the config key, the table, the path) and never
/// carry a secret: connection strings and passwords are redacted before they reach here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` is its path in the config file.
    #[error("{key}: {message}")]
    Config {
        /// Key path, e.g. `sources[2].tables[0].path`.
        key: String,
        /// What was expected.
        message: String,
    },

    /// A table could not be opened or read.
    #[error("table `{table}` at {location}: {source}")]
    Table {
        /// The table as the user names it (`schema.table`).
        table: String,
        /// Where its data lives (a URL or remote object name).
        location: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// The source could not be reached, refused the credentials, or timed out.
    #[error("{0}")]
    Unavailable(String),

    /// A failure inside DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// Any other failure from a library the connector uses.
    #[error(transparent)]
    External(BoxError),
}

impl Error {
    /// A configuration error at `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A failure opening or reading `table` stored at `location`.
    pub fn table(
        table: impl Into<String>,
        location: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Table {
            table: table.into(),
            location: location.into(),
            source: source.into(),
        }
    }

    /// Converts into a [`DataFusionError`] whose message starts with the source's name, so a
    /// failing query says which source failed.
    pub fn in_source(self, source_name: &str) -> DataFusionError {
        DataFusionError::External(Box::new(SourceFailure {
            source_name: source_name.to_string(),
            error: self,
        }))
    }
}

/// An [`Error`] attributed to a named source.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {error}")]
pub struct SourceFailure {
    /// The configured name of the source.
    pub source_name: String,
    /// What went wrong.
    #[source]
    pub error: Error,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::External(Box::new(e))
    }
}

//! DataFusion's errors as gRPC statuses, keeping DataFusion's message.

use datafusion::error::DataFusionError;
use tonic::Status;
use tributary_core::{Error, SourceFailure};

/// The status for a failed query: the client's mistakes (bad SQL, unknown names, wrong
/// parameters) are `InvalidArgument`, an unreachable source `Unavailable`, and so on.
pub fn status(e: DataFusionError) -> Status {
    let message = e.to_string();
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_) => Status::invalid_argument(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        DataFusionError::External(inner) => match inner.downcast_ref::<SourceFailure>() {
            Some(SourceFailure {
                error: Error::Unavailable(_),
                ..
            }) => Status::unavailable(message),
            _ => Status::internal(message),
        },
        _ => Status::internal(message),
    }
}

/// What every write gets.
pub fn read_only() -> Status {
    Status::invalid_argument(
        "Tributary is read-only: INSERT, UPDATE, DELETE, DDL and bulk ingestion are not accepted",
    )
}

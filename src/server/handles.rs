//! Statement handles and tickets. They carry everything a node needs to run the query (the
//! SQL and any bound parameters), so no node keeps per-statement state and any node behind a
//! load balancer can serve any ticket.

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use prost::Message;
use tonic::Status;

/// A statement: its SQL and, once bound, one row of parameter values (as an Arrow IPC
/// stream). Used as the prepared-statement handle and, inside a ticket, to run it.
#[derive(Clone, PartialEq, Message)]
pub struct StatementHandle {
    /// The SQL text.
    #[prost(string, tag = "1")]
    pub sql: String,
    /// Bound parameters as an Arrow IPC stream; empty when none are bound.
    #[prost(bytes = "bytes", tag = "2")]
    pub parameters: Bytes,
}

impl StatementHandle {
    /// A handle for `sql` with nothing bound.
    pub fn new(sql: impl Into<String>) -> Self {
        StatementHandle {
            sql: sql.into(),
            parameters: Bytes::new(),
        }
    }

    /// The handle as opaque bytes for the client.
    pub fn encode(&self) -> Bytes {
        self.encode_to_vec().into()
    }

    /// A handle the client sent back; malformed bytes are the client's error.
    pub fn decode(bytes: &[u8]) -> Result<Self, Status> {
        <Self as Message>::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("malformed statement handle: {e}")))
    }

    /// This handle with `batch` (one row of values) bound as its parameters.
    pub fn with_parameters(&self, batch: &RecordBatch) -> Result<Self, Status> {
        let failed =
            |e: arrow::error::ArrowError| Status::internal(format!("encoding parameters: {e}"));
        let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(failed)?;
        writer.write(batch).map_err(failed)?;
        writer.finish().map_err(failed)?;
        let buffer = writer.into_inner().map_err(failed)?;
        Ok(StatementHandle {
            sql: self.sql.clone(),
            parameters: buffer.into(),
        })
    }

    /// The bound parameters, if any.
    pub fn parameters(&self) -> Result<Option<RecordBatch>, Status> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        let malformed = |e: arrow::error::ArrowError| {
            Status::invalid_argument(format!("malformed parameters in statement handle: {e}"))
        };
        let reader = StreamReader::try_new(std::io::Cursor::new(&self.parameters), None)
            .map_err(malformed)?;
        let mut batches = reader.collect::<Result<Vec<_>, _>>().map_err(malformed)?;
        Ok(batches.pop())
    }
}

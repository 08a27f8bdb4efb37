//! Batches made small enough to send: view columns (`Utf8View`, `BinaryView`) of a batch
//! cut from larger ones (by `LIMIT`, a top-k or a join) still hold all the string data of
//! the batches they came from, and Arrow IPC sends every buffer a view array holds. A
//! 20-row answer over Parquet strings became one 10 MB message, over the 4 MiB that gRPC
//! clients (JDBC, Go, arrow-flight) accept by default. Such columns are copied down to
//! the bytes their rows use before encoding.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericByteViewArray, RecordBatch};
use arrow::datatypes::{ByteViewType, DataType};

/// Data buffers below this are sent as they are: copying would cost more than it saves.
const SMALL: usize = 1 << 20;

/// `batch` with each view column that holds more than twice the bytes its rows use
/// compacted (`gc`); other columns untouched, and the batch itself when none needs it.
pub fn compact_views(batch: RecordBatch) -> RecordBatch {
    let mut compacted = false;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|column| {
            let smaller = match column.data_type() {
                DataType::Utf8View => compact(column.as_string_view()),
                DataType::BinaryView => compact(column.as_binary_view()),
                _ => None,
            };
            compacted |= smaller.is_some();
            smaller.unwrap_or_else(|| Arc::clone(column))
        })
        .collect();
    if !compacted {
        return batch;
    }
    RecordBatch::try_new(batch.schema(), columns)
        .expect("compacting keeps every column's type and length")
}

fn compact<T: ByteViewType + ?Sized>(array: &GenericByteViewArray<T>) -> Option<ArrayRef> {
    let held: usize = array.data_buffers().iter().map(|b| b.len()).sum();
    let used = array.total_buffer_bytes_used();
    (held > SMALL && held > 2 * used).then(|| Arc::new(array.gc()) as ArrayRef)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringViewArray};

    use super::*;

    fn held(batch: &RecordBatch) -> usize {
        batch
            .column(1)
            .as_string_view()
            .data_buffers()
            .iter()
            .map(|b| b.len())
            .sum()
    }

    #[test]
    fn view_columns_cut_from_large_batches_keep_only_their_bytes() {
        let long = |i: usize| format!("{i:04}{}", "x".repeat(50_000));
        let strings: StringViewArray = (0..100).map(|i| Some(long(i))).collect();
        let ids = Int32Array::from_iter_values(0..100);
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("s", Arc::new(strings) as ArrayRef),
        ])
        .unwrap();
        let two = batch.slice(40, 2);
        assert!(held(&two) > 4_000_000, "the slice holds all 5 MB");

        let sent = compact_views(two.clone());
        assert!(held(&sent) < 200_000, "{} bytes held", held(&sent));
        assert_eq!(sent, two, "same rows and values");

        // A batch whose views use their buffers is passed through as it is.
        let whole = compact_views(batch.clone());
        assert!(Arc::ptr_eq(whole.column(1), batch.column(1)));
    }
}

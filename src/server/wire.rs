//! Results as clients can read them.
//!
//! DataFusion reads strings as views (`Utf8View`, `BinaryView`; every Parquet, Delta and
//! CSV string column). Arrow Java's Flight SQL JDBC driver (18.x, the one DBeaver, Tableau
//! and most JDBC tools bundle) refuses a result, or a table's columns in `GetTables`, with
//! any view column ("Unsupported ArrowType Utf8View"), as do drivers built on older Arrow.
//! View columns, at any depth, are therefore sent as `Utf8` and `Binary`, and announced so.
//! This also keeps messages small: a view column cut from a larger batch (by `LIMIT`, a
//! top-k or a join) still holds all of its source batch's string data, which Arrow IPC
//! would send whole (a 20-row answer over Parquet strings was one 10 MB message, over the
//! 4 MiB gRPC clients accept by default); the plain column holds just its rows' bytes.
//!
//! Dictionary columns are sent as their values, by arrow-flight's encoder; [`wire_schema`]
//! asks it, so that the announced schema is the one on the wire.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow_flight::encode::FlightDataEncoderBuilder;

/// `schema` as clients receive it: view types as their plain types, dictionaries as their
/// values.
pub fn wire_schema(schema: SchemaRef) -> SchemaRef {
    let fields: Fields = schema
        .fields()
        .iter()
        .map(|field| {
            let wire = wire_type(field.data_type());
            if wire == *field.data_type() {
                Arc::clone(field)
            } else {
                Arc::new(field.as_ref().clone().with_data_type(wire))
            }
        })
        .collect();
    let plain = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    FlightDataEncoderBuilder::new()
        .with_schema(Arc::clone(&plain))
        .build(futures::stream::empty())
        .known_schema()
        .unwrap_or(plain)
}

/// `batch` with each column whose type differs from `wire`'s (the [`wire_schema`] of the
/// batches' schema, derived once per query) cast to it; the batch itself when none does.
/// Field names and nullability stay the batch's own.
pub fn to_wire(batch: RecordBatch, wire: &Schema) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if schema
        .fields()
        .iter()
        .zip(wire.fields())
        .all(|(ours, sent)| ours.data_type() == sent.data_type())
    {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for ((field, column), sent) in schema
        .fields()
        .iter()
        .zip(batch.columns())
        .zip(wire.fields())
    {
        if field.data_type() == sent.data_type() {
            fields.push(Arc::clone(field));
            columns.push(Arc::clone(column));
        } else {
            fields.push(Arc::new(
                field
                    .as_ref()
                    .clone()
                    .with_data_type(sent.data_type().clone()),
            ));
            columns.push(cast(column, sent.data_type())?);
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
}

/// The type a column of `data_type` is sent as: views (also inside lists, structs and
/// maps) replaced by their plain types, where Arrow can cast the column so; otherwise the
/// type as it is.
fn wire_type(data_type: &DataType) -> DataType {
    let plain = plain_type(data_type);
    if plain != *data_type && can_cast_types(data_type, &plain) {
        plain
    } else {
        data_type.clone()
    }
}

fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::ListView(item) => DataType::List(plain_item(item)),
        DataType::LargeListView(item) => DataType::LargeList(plain_item(item)),
        DataType::List(item) => DataType::List(plain_item(item)),
        DataType::LargeList(item) => DataType::LargeList(plain_item(item)),
        DataType::FixedSizeList(item, size) => DataType::FixedSizeList(plain_item(item), *size),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_data_type(plain_type(f.data_type()))))
                .collect(),
        ),
        DataType::Map(entries, sorted) => DataType::Map(plain_item(entries), *sorted),
        DataType::Dictionary(key, value) => {
            DataType::Dictionary(key.clone(), Box::new(plain_type(value)))
        }
        other => other.clone(),
    }
}

fn plain_item(item: &FieldRef) -> FieldRef {
    Arc::new(
        item.as_ref()
            .clone()
            .with_data_type(plain_type(item.data_type())),
    )
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        Array, ArrayRef, AsArray, BinaryViewArray, Int32Array, ListArray, StringViewArray,
        StructArray,
    };

    use arrow::array::DictionaryArray;
    use arrow::datatypes::{Field, Int32Type};

    use super::*;

    #[test]
    fn view_columns_are_sent_and_announced_as_plain_ones_at_any_depth() {
        let strings: StringViewArray = [
            Some("ünïcode 'quoted'"),
            None,
            Some("a longer string than twelve bytes"),
        ]
        .into_iter()
        .collect();
        let binaries: BinaryViewArray = [Some(b"\x00\x01".as_slice()), Some(b""), None]
            .into_iter()
            .collect();
        let strings: ArrayRef = Arc::new(strings);
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Utf8View, true)),
            arrow::buffer::OffsetBuffer::from_lengths([2, 0, 1]),
            Arc::clone(&strings),
            None,
        );
        let nested = StructArray::from(vec![(
            Arc::new(Field::new("s", DataType::Utf8View, true)),
            Arc::clone(&strings),
        )]);
        let ids: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::clone(&ids)),
            ("s", strings),
            ("b", Arc::new(binaries) as ArrayRef),
            ("l", Arc::new(list) as ArrayRef),
            ("st", Arc::new(nested) as ArrayRef),
        ])
        .unwrap();

        let announced = wire_schema(batch.schema());
        let sent = to_wire(batch.clone(), &announced).unwrap();
        assert_eq!(sent.schema(), announced);
        let types: Vec<String> = announced
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(
            types,
            [
                "Int32",
                "Utf8",
                "Binary",
                "List(Utf8)",
                "Struct(\"s\": Utf8)"
            ]
        );
        // The same values, NULLs included; columns without views are not copied.
        assert!(Arc::ptr_eq(sent.column(0), batch.column(0)));
        for (sent, original) in sent.columns().iter().zip(batch.columns()) {
            assert_eq!(&cast(sent, original.data_type()).unwrap(), original);
        }
        assert_eq!(
            sent.column(1).as_string::<i32>().value(0),
            "ünïcode 'quoted'"
        );
        assert!(sent.column(1).is_null(1));
    }

    #[test]
    fn a_batch_without_views_is_sent_as_it_is() {
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(wire_schema(batch.schema()), batch.schema());
        let sent = to_wire(batch.clone(), &wire_schema(batch.schema())).unwrap();
        assert!(Arc::ptr_eq(sent.column(0), batch.column(0)));
    }

    #[test]
    fn dictionaries_are_announced_and_sent_as_their_values() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View)),
            true,
        )]));
        assert_eq!(wire_schema(schema).field(0).data_type(), &DataType::Utf8);

        let keys: DictionaryArray<Int32Type> = [Some("a"), None, Some("a")].into_iter().collect();
        let batch = RecordBatch::try_from_iter([("d", Arc::new(keys) as ArrayRef)]).unwrap();
        let sent = to_wire(batch.clone(), &wire_schema(batch.schema())).unwrap();
        assert_eq!(sent.column(0).data_type(), &DataType::Utf8);
        let values = sent.column(0).as_string::<i32>();
        assert_eq!((values.value(0), values.is_null(1)), ("a", true));
    }

    #[test]
    fn view_columns_cut_from_large_batches_send_only_their_bytes() {
        let long = |i: usize| format!("{i:04}{}", "x".repeat(50_000));
        let strings: StringViewArray = (0..100).map(|i| Some(long(i))).collect();
        let batch = RecordBatch::try_from_iter([("s", Arc::new(strings) as ArrayRef)]).unwrap();
        let two = batch.slice(40, 2);
        let sent = to_wire(two.clone(), &wire_schema(two.schema())).unwrap();
        let bytes = sent.column(0).get_buffer_memory_size();
        assert!(bytes < 200_000, "{bytes} bytes held");
        assert_eq!(sent.column(0).as_string::<i32>().value(1), long(41));
    }
}

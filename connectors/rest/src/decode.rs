//! Records (JSON byte slices) to Arrow: arrow-json's decoder fills the builders straight
//! from the bytes, reading only the fields the chosen columns name; nested paths
//! (`$.attributes.updated_at`) are decoded as structs and their leaves lifted out.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, make_array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::ReaderBuilder;

/// A column of a table: where its value sits in a record, and its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// The keys leading to the value from the record's root.
    pub path: Vec<String>,
    /// The column's Arrow type.
    pub data_type: DataType,
    /// Whether the value may be NULL or missing.
    pub nullable: bool,
}

impl Column {
    /// The path as JSONPath, for messages.
    pub fn path_text(&self) -> String {
        let mut text = "$".to_string();
        for key in &self.path {
            if key
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                text.push('.');
                text.push_str(key);
            } else {
                text.push_str(&format!("['{key}']"));
            }
        }
        text
    }
}

/// A record that does not fit the columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// Its position in the page.
    pub index: usize,
    /// Why it does not fit.
    pub reason: String,
}

/// Decodes records into batches of some of a table's columns.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    /// What arrow-json decodes: the chosen columns' paths as nested structs.
    decode_schema: SchemaRef,
    /// For each output column, the field indexes leading to it in `decode_schema`.
    leaves: Vec<Vec<usize>>,
    /// The chosen columns, in output order.
    columns: Vec<Column>,
    output: SchemaRef,
}

/// The decode schema under construction: a tree of keys.
#[derive(Debug, Default)]
struct Branch {
    children: Vec<(String, Node)>,
}

#[derive(Debug)]
enum Node {
    Leaf(DataType, String),
    Branch(Branch),
}

impl Branch {
    fn insert(&mut self, path: &[String], column: &Column) -> Result<(), String> {
        let (key, rest) = path
            .split_first()
            .ok_or_else(|| format!("column `{}` has an empty path", column.name))?;
        let existing = self.children.iter_mut().find(|(k, _)| k == key);
        match (existing, rest.is_empty()) {
            (None, true) => self.children.push((
                key.clone(),
                Node::Leaf(column.data_type.clone(), column.name.clone()),
            )),
            (None, false) => {
                let mut branch = Branch::default();
                branch.insert(rest, column)?;
                self.children.push((key.clone(), Node::Branch(branch)));
            }
            (Some((_, Node::Branch(b))), false) => b.insert(rest, column)?,
            (Some((_, Node::Leaf(t, _))), true) if *t == column.data_type => {}
            (Some((_, Node::Leaf(_, other))), true) => {
                return Err(format!(
                    "columns `{other}` and `{}` read the same value ({}) as different types",
                    column.name,
                    column.path_text()
                ));
            }
            (Some((_, node)), _) => {
                let other = match node {
                    Node::Leaf(_, name) => name.clone(),
                    Node::Branch(_) => "another column".to_string(),
                };
                return Err(format!(
                    "the path of column `{}` ({}) overlaps that of `{other}`: one is inside the other",
                    column.name,
                    column.path_text()
                ));
            }
        }
        Ok(())
    }

    fn fields(&self) -> Fields {
        self.children
            .iter()
            .map(|(key, node)| match node {
                // Everything nullable: a missing or NULL value is reported by the
                // column's own check, with its name and path.
                Node::Leaf(t, _) => Field::new(key, t.clone(), true),
                Node::Branch(b) => Field::new(key, DataType::Struct(b.fields()), true),
            })
            .collect()
    }

    fn locate(&self, path: &[String]) -> Vec<usize> {
        let mut indexes = Vec::with_capacity(path.len());
        let mut branch = self;
        for key in path {
            let i = branch
                .children
                .iter()
                .position(|(k, _)| k == key)
                .expect("inserted above");
            indexes.push(i);
            if let Node::Branch(b) = &branch.children[i].1 {
                branch = b;
            }
        }
        indexes
    }
}

impl RecordDecoder {
    /// A decoder of `columns` (the table's columns, all of them or a projection).
    pub fn new(columns: Vec<Column>) -> Result<Self, String> {
        let mut root = Branch::default();
        for column in &columns {
            root.insert(&column.path, column)?;
        }
        let leaves = columns.iter().map(|c| root.locate(&c.path)).collect();
        let output = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        Ok(RecordDecoder {
            decode_schema: Arc::new(Schema::new(root.fields())),
            leaves,
            columns,
            output,
        })
    }

    /// The schema of the batches this decoder makes.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    /// Decodes `records`; any record that does not fit fails the whole call.
    pub fn decode(&self, records: &[&[u8]]) -> Result<RecordBatch, ArrowError> {
        if self.columns.is_empty() {
            return RecordBatch::try_new_with_options(
                Arc::clone(&self.output),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(records.len())),
            );
        }
        let mut decoder = ReaderBuilder::new(Arc::clone(&self.decode_schema))
            .with_batch_size(records.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        for record in records {
            if record.first() != Some(&b'{') {
                return Err(ArrowError::JsonError(
                    "the record is not a JSON object".to_string(),
                ));
            }
            decoder.decode(record)?;
            // Top-level values must be separated by whitespace.
            decoder.decode(b"\n")?;
        }
        let Some(decoded) = decoder.flush()? else {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.output)));
        };
        let columns = self
            .leaves
            .iter()
            .zip(&self.columns)
            .map(|(leaf, column)| {
                let array = lift(&decoded, leaf)?;
                if !column.nullable && array.null_count() > 0 {
                    return Err(ArrowError::JsonError(format!(
                        "column `{}` ({}) is missing or null, and declared `nullable: false`",
                        column.name,
                        column.path_text()
                    )));
                }
                Ok(array)
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(Arc::clone(&self.output), columns)
    }

    /// Decodes `records`, setting aside those that do not fit, with why.
    ///
    /// A page is decoded in one pass; only a page holding a misfit is decoded again record
    /// by record to tell which.
    pub fn decode_lenient(
        &self,
        records: &[&[u8]],
    ) -> Result<(RecordBatch, Vec<Misfit>), ArrowError> {
        if let Ok(batch) = self.decode(records) {
            return Ok((batch, Vec::new()));
        }
        let mut fit = Vec::with_capacity(records.len());
        let mut misfits = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.decode(&[record]) {
                Ok(_) => fit.push(*record),
                Err(e) => misfits.push(Misfit {
                    index,
                    reason: reason(e),
                }),
            }
        }
        Ok((self.decode(&fit)?, misfits))
    }
}

/// The message of a decoding error without arrow's prefix.
pub fn reason(error: ArrowError) -> String {
    match error {
        ArrowError::JsonError(m) | ArrowError::ParseError(m) | ArrowError::CastError(m) => m,
        other => other.to_string(),
    }
}

/// The leaf at field indexes `path` of `batch`, NULL wherever a struct above it is.
fn lift(batch: &RecordBatch, path: &[usize]) -> Result<ArrayRef, ArrowError> {
    let (first, rest) = path.split_first().expect("paths are not empty");
    let mut array = Arc::clone(batch.column(*first));
    let mut nulls = array.nulls().cloned();
    for &i in rest {
        let child = Arc::clone(array.as_struct().column(i));
        nulls = NullBuffer::union(nulls.as_ref(), child.nulls());
        array = child;
    }
    if nulls.as_ref() == array.nulls() {
        return Ok(array);
    }
    let data = array.to_data().into_builder().nulls(nulls).build()?;
    Ok(make_array(data))
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::TimeUnit;
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn column(name: &str, path: &[&str], data_type: DataType, nullable: bool) -> Column {
        Column {
            name: name.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            data_type,
            nullable,
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            column("id", &["id"], DataType::Int64, false),
            column("name", &["name"], DataType::Utf8, true),
            column(
                "updated_at",
                &["meta", "updated"],
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            column(
                "amount",
                &["meta", "amount"],
                DataType::Decimal128(10, 2),
                true,
            ),
        ]
    }

    #[test]
    fn records_decode_with_nested_paths_and_unused_fields_skipped() {
        let decoder = RecordDecoder::new(columns()).unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "Zo\u00eb \"Z\"", "meta": {"updated": "2024-03-01T12:00:00+02:00", "amount": "12.50"}, "junk": [1, {"x": 2}]}"#,
            br#"{"id": 2, "meta": null}"#,
            br#"{"id": "3", "name": 42, "meta": {"amount": 7}}"#,
        ];
        let batch = decoder.decode(&records).unwrap();
        assert_eq!(
            pretty_format_batches(&[batch]).unwrap().to_string(),
            "\
+----+---------+----------------------+--------+
| id | name    | updated_at           | amount |
+----+---------+----------------------+--------+
| 1  | Zoë \"Z\" | 2024-03-01T10:00:00Z | 12.50  |
| 2  |         |                      |        |
| 3  | 42      |                      | 7.00   |
+----+---------+----------------------+--------+"
        );
    }

    #[test]
    fn misfits_are_told_apart_from_the_records_that_fit() {
        let decoder = RecordDecoder::new(columns()).unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"id": 1}"#,
            br#"{"id": "one"}"#,
            br#"{"name": "no id"}"#,
            br#"[1, 2]"#,
            br#"{"id": 5, "meta": {"updated": "yesterday"}}"#,
            br#"{"id": 6}"#,
        ];
        assert!(decoder.decode(&records).is_err());
        let (batch, misfits) = decoder.decode_lenient(&records).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let bad: Vec<usize> = misfits.iter().map(|m| m.index).collect();
        assert_eq!(bad, vec![1, 2, 3, 4]);
        assert!(
            misfits[1]
                .reason
                .contains("column `id` ($.id) is missing or null")
        );
        assert!(misfits[2].reason.contains("not a JSON object"));
    }

    #[test]
    fn overlapping_paths_are_refused() {
        let e = RecordDecoder::new(vec![
            column("meta", &["meta"], DataType::Utf8, true),
            column("updated", &["meta", "updated"], DataType::Utf8, true),
        ])
        .unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        let projected = RecordDecoder::new(vec![]).unwrap();
        assert_eq!(projected.decode(&[b"{}", b"{}"]).unwrap().num_rows(), 2);
    }
}

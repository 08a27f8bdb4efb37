//! File formats: recognising them from file names and building DataFusion's `FileFormat`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::ListingTableConfig;
use datafusion::execution::SessionState;
use tributary_core::config::OptionValue;

use crate::FileFormatKind;

impl FileFormatKind {
    /// The name DataFusion registers the format's factory under.
    pub fn name(self) -> &'static str {
        match self {
            FileFormatKind::Parquet => "parquet",
            FileFormatKind::Csv => "csv",
            FileFormatKind::Json => "json",
            FileFormatKind::Arrow => "arrow",
            FileFormatKind::Avro => "avro",
        }
    }

    fn accepts_options(self) -> bool {
        matches!(
            self,
            FileFormatKind::Parquet | FileFormatKind::Csv | FileFormatKind::Json
        )
    }
}

/// What a data file's name says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKind {
    /// The format its extension names.
    pub format: FileFormatKind,
    /// The suffix a listing filters on, e.g. `.csv.gz`.
    pub extension: String,
    /// Options implied by the name: `compression` for `.gz` and friends, the tab delimiter
    /// for `.tsv`.
    pub implied_options: Vec<(&'static str, String)>,
}

/// Recognises a data file by its extension; `None` for anything else (`_SUCCESS`,
/// `.crc` files, notes).
pub fn classify(file_name: &str) -> Option<FileKind> {
    if file_name.starts_with('.') || file_name.starts_with('_') || !file_name.contains('.') {
        return None;
    }
    let (ext, compression) =
        ListingTableConfig::infer_file_extension_and_compression_type(file_name).ok()?;
    let mut implied_options = Vec::new();
    let format = match ext.to_ascii_lowercase().as_str() {
        "parquet" | "parq" => FileFormatKind::Parquet,
        "csv" => FileFormatKind::Csv,
        "tsv" => {
            implied_options.push(("delimiter", "\t".to_string()));
            FileFormatKind::Csv
        }
        "json" | "ndjson" | "jsonl" => FileFormatKind::Json,
        "arrow" | "ipc" | "feather" => FileFormatKind::Arrow,
        "avro" => FileFormatKind::Avro,
        _ => return None,
    };
    let extension = match &compression {
        Some(c) => {
            implied_options.push(("compression", c.clone()));
            format!(".{ext}.{c}")
        }
        None => format!(".{ext}"),
    };
    Some(FileKind {
        format,
        extension,
        implied_options,
    })
}

/// Builds DataFusion's file format for `kind` with the user's `options` (keys as in
/// DataFusion's `OPTIONS`, with or without the `format.` prefix) on top of the session's
/// defaults and what the file name implied.
pub fn build_format(
    state: &SessionState,
    kind: FileFormatKind,
    options: &BTreeMap<String, OptionValue>,
    implied: &[(&'static str, String)],
) -> Result<Arc<dyn FileFormat>, String> {
    if !options.is_empty() && !kind.accepts_options() {
        return Err(format!("{} files take no format options", kind.name()));
    }
    let factory = state
        .get_file_format_factory(kind.name())
        .ok_or_else(|| format!("the {} format is not available in this build", kind.name()))?;
    let mut settings = HashMap::new();
    if kind.accepts_options() {
        for (key, value) in implied {
            settings.insert(format!("format.{key}"), value.clone());
        }
    }
    for (key, OptionValue(value)) in options {
        let key = if key.starts_with("format.") {
            key.clone()
        } else {
            format!("format.{key}")
        };
        settings.insert(key, value.clone());
    }
    factory
        .create(state, &settings)
        .map_err(|e| format!("invalid {} format options: {e}", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        let k = classify("part-0001.snappy.parquet").unwrap();
        assert_eq!(k.format, FileFormatKind::Parquet);
        assert_eq!(k.extension, ".parquet");

        let k = classify("events.csv.gz").unwrap();
        assert_eq!(k.format, FileFormatKind::Csv);
        assert_eq!(k.extension, ".csv.gz");
        assert_eq!(k.implied_options, vec![("compression", "gz".to_string())]);

        let k = classify("x.tsv").unwrap();
        assert_eq!(k.implied_options, vec![("delimiter", "\t".to_string())]);

        assert_eq!(classify("log.jsonl").unwrap().format, FileFormatKind::Json);
        assert_eq!(classify("t.feather").unwrap().format, FileFormatKind::Arrow);
        assert_eq!(classify("t.avro").unwrap().format, FileFormatKind::Avro);
        assert_eq!(classify("_SUCCESS"), None);
        assert_eq!(classify(".hidden.parquet"), None);
        assert_eq!(classify("README.md"), None);
    }
}

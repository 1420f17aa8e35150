//! Apache Parquet files as the Hugging Face Hub stores `nyu-mll/glue`
//! (e.g. `mnli/validation_mismatched-00000-of-00001.parquet`): one column per
//! feature, labels as integer class ids (-1 for unlabeled), snappy-compressed.
//!
//! Read with the `parquet` crate's row API (no Arrow), and each row decoded by
//! the same record code as the JSONL reader, so both exports agree.

use super::jsonl::example_from_record;
use crate::dataset::{Dataset, ReadOptions};
use crate::error::{GlueError, Result};
use crate::task::Task;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};
use std::path::Path;

/// Reads a Parquet file of `task`, row group by row group. The `parquet`
/// crate panics on some damaged files (58: a column chunk whose byte range
/// is negative; found by fuzzing), so the read runs under
/// [`crate::quiet::catch`] and such a file is an error naming it.
pub(super) fn read(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    crate::quiet::catch(|| read_rows(path, task, options)).unwrap_or_else(|why| {
        Err(GlueError::file(
            path,
            format!("not a readable Parquet file: it is damaged ({why})"),
        ))
    })
}

fn read_rows(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    let file = std::fs::File::open(path).map_err(|e| GlueError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| GlueError::file(path, format!("not a readable Parquet file ({e})")))?;
    let mut data = Dataset::new(task, path.display().to_string());
    let mut line = 0;
    for row_group in 0..reader.num_row_groups() {
        let row_error = |row: usize, message: String| GlueError::Row {
            path: path.to_path_buf(),
            row_group,
            row,
            message,
        };
        let group = reader
            .get_row_group(row_group)
            .map_err(|e| row_error(0, e.to_string()))?;
        let rows = group
            .get_row_iter(None)
            .map_err(|e| row_error(0, e.to_string()))?;
        for (row, decoded) in rows.enumerate() {
            let record = decoded
                .map_err(|e| e.to_string())
                .and_then(|r| record_of(&r))
                .map_err(|m| row_error(row, m))?;
            let example =
                example_from_record(&record, task, line).map_err(|m| row_error(row, m))?;
            data.push(example, options);
            line += 1;
        }
    }
    if line == 0 {
        return Err(GlueError::file(path, "the file has no rows"));
    }
    Ok(data)
}

/// The flat (string, integer, float) columns of a row as a JSON-like record.
fn record_of(row: &Row) -> std::result::Result<Map<String, Value>, String> {
    row.get_column_iter()
        .map(|(name, field)| Ok((name.clone(), value_of(name, field)?)))
        .collect()
}

fn value_of(name: &str, field: &Field) -> std::result::Result<Value, String> {
    let number = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match field {
        Field::Null => Value::Null,
        Field::Str(s) => Value::String(s.clone()),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => number(f64::from(*x)),
        Field::Double(x) => number(*x),
        other => return Err(format!("column '{name}' has an unsupported type ({other})")),
    })
}

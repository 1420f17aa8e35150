//! JSON Lines as exported by Hugging Face `datasets` (`to_json`): one object per
//! line with the task's columns (`premise`, `hypothesis`, `label`, `idx` for
//! MNLI), label ids with -1 for unlabeled rows; or `{"input","target"}` for the
//! custom task. Also the shared record decoding used by the Parquet reader.

use super::text_lines;
use crate::dataset::{Dataset, ReadOptions};
use crate::error::{GlueError, Result};
use crate::task::{Example, Label, Task};
use serde_json::{Map, Value};
use std::path::Path;

/// Reads a JSONL file of `task`; blank lines are ignored.
pub(super) fn read(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    let mut data = Dataset::new(task, path.display().to_string());
    for (number, line) in text_lines(path)? {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| GlueError::line(path, number, format!("invalid JSON ({e})")))?;
        let Value::Object(record) = value else {
            return Err(GlueError::line(path, number, "is not a JSON object"));
        };
        let example = example_from_record(&record, task, number)
            .map_err(|m| GlueError::line(path, number, m))?;
        data.push(example, options);
    }
    Ok(data)
}

/// Builds an example from one record of an HF export (a JSONL line or a Parquet row).
pub(super) fn example_from_record(
    record: &Map<String, Value>,
    task: Task,
    line: usize,
) -> std::result::Result<Example, String> {
    let texts = task
        .field_names()
        .into_iter()
        .map(|name| match record.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("field '{name}' is not a string: {other}")),
            None => Err(format!("missing field '{name}'")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let label = match record.get(task.hf_label_column()) {
        Some(value) => task.parse_label_json(value)?,
        None => Label::Missing,
    };
    let idx = record.get("idx").and_then(Value::as_i64);
    Ok(Example {
        line,
        idx,
        texts,
        label,
    })
}

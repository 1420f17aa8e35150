//! GLUE's own TSV files: tab-separated, one header line naming the columns, no
//! quoting (GLUE text contains stray `"` characters that are part of the text).
//!
//! CoLA's train and dev files have no header; they are read by position
//! (source, label, original label, sentence), as GLUE documents them.

use super::text_lines;
use crate::dataset::{Dataset, ReadOptions};
use crate::error::{GlueError, Result};
use crate::task::{Example, Label, Task};
use std::path::Path;

/// Column positions of the task's fields in one file.
struct Layout {
    /// Column of each text field, in task field order.
    fields: Vec<usize>,
    /// Column of the label, if the file has one (test files don't).
    label: Option<usize>,
    /// Column of the example index, if any.
    idx: Option<usize>,
    /// Number of columns every row must have.
    width: usize,
}

/// Reads a GLUE TSV file of `task`.
pub(super) fn read(path: &Path, task: Task, options: ReadOptions) -> Result<Dataset> {
    let lines = text_lines(path)?;
    let header: Vec<&str> = lines[0].1.split('\t').collect();
    let (layout, body) = match header_layout(&header, task) {
        Some(layout) => (layout, &lines[1..]),
        None if task.name() == "cola" => (cola_layout(), &lines[..]),
        None => return Err(missing_columns(path, task, &header)),
    };
    if body.is_empty() {
        return Err(GlueError::file(path, "the file has a header but no rows"));
    }
    let mut data = Dataset::new(task, path.display().to_string());
    for (number, line) in body {
        data.push(parse_row(path, *number, line, &layout, task)?, options);
    }
    Ok(data)
}

fn header_layout(header: &[&str], task: Task) -> Option<Layout> {
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| header.iter().position(|h| h == n))
    };
    let fields = (0..task.field_names().len())
        .map(|i| find(task.tsv_columns(i)))
        .collect::<Option<Vec<_>>>()?;
    Some(Layout {
        fields,
        label: find(task.tsv_label_columns()),
        idx: find(&["index", "idx", "id"]),
        width: header.len(),
    })
}

/// CoLA's headerless train/dev layout: source, label, original label, sentence.
fn cola_layout() -> Layout {
    Layout {
        fields: vec![3],
        label: Some(1),
        idx: None,
        width: 4,
    }
}

fn missing_columns(path: &Path, task: Task, header: &[&str]) -> GlueError {
    let wanted: Vec<String> = (0..task.field_names().len())
        .filter(|&i| !task.tsv_columns(i).iter().any(|c| header.contains(c)))
        .map(|i| format!("'{}'", task.tsv_columns(i).join("' or '")))
        .collect();
    GlueError::file(
        path,
        format!(
            "missing column {} for task {} (the header has: {})",
            wanted.join(", "),
            task,
            header.join(", ")
        ),
    )
}

fn parse_row(
    path: &Path,
    number: usize,
    line: &str,
    layout: &Layout,
    task: Task,
) -> Result<Example> {
    let cells: Vec<&str> = line.split('\t').collect();
    if cells.len() != layout.width {
        return Err(GlueError::line(
            path,
            number,
            format!(
                "has {} columns, the header has {}",
                cells.len(),
                layout.width
            ),
        ));
    }
    let label = match layout.label {
        Some(col) => task
            .parse_label_text(cells[col])
            .map_err(|m| GlueError::line(path, number, m))?,
        None => Label::Missing,
    };
    let idx = layout.idx.and_then(|col| cells[col].trim().parse().ok());
    Ok(Example {
        line: number,
        idx,
        texts: layout
            .fields
            .iter()
            .map(|&c| cells[c].to_string())
            .collect(),
        label,
    })
}

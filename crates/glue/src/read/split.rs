//! How to find a split's files in a folder: a GLUE download
//! (`MNLI/dev_mismatched.tsv`), a `datasets` JSONL export
//! (`validation_mismatched.jsonl`) or the Hub's Parquet files
//! (`mnli/validation_mismatched-00000-of-00001.parquet`).

use crate::dataset::Split;
use crate::error::{GlueError, Result};
use crate::task::Task;
use std::path::{Path, PathBuf};

/// The files that hold `split` of `task` under `dir`, in reading order.
///
/// Looks in `dir`, `dir/<task>` and `dir/<GLUE folder>` (e.g. `dir/MNLI`), for,
/// in this order: `<split>-*.parquet` shards, `<split>.jsonl`, GLUE's
/// `<stem>.tsv` (GLUE's diagnostic file is `diagnostic.tsv` for `ax`).
pub fn locate_split(dir: &Path, task: Task, split: Split) -> Result<Vec<PathBuf>> {
    let folders = [
        dir.to_path_buf(),
        dir.join(task.name()),
        dir.join(task.glue_dir()),
    ];
    let mut tsv = format!("{}.tsv", split.glue_stem());
    if task.name() == "ax" {
        tsv = "diagnostic.tsv".to_string();
    }
    for folder in folders.iter().filter(|f| f.is_dir()) {
        let shards = parquet_shards(folder, split)?;
        if !shards.is_empty() {
            return Ok(shards);
        }
        for name in [format!("{}.jsonl", split.name()), tsv.clone()] {
            let path = folder.join(name);
            if path.is_file() {
                return Ok(vec![path]);
            }
        }
    }
    Err(GlueError::file(
        dir,
        format!(
            "no {split} split of {task} found (looked for {split}-*.parquet, {split}.jsonl and {tsv} \
             in the folder, its '{}' and its '{}' subfolders)",
            task.name(),
            task.glue_dir()
        ),
    ))
}

fn parquet_shards(folder: &Path, split: Split) -> Result<Vec<PathBuf>> {
    let prefix = format!("{}-", split.name());
    let entries = std::fs::read_dir(folder).map_err(|e| GlueError::io(folder, e))?;
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".parquet")
        })
        .collect();
    shards.sort();
    Ok(shards)
}

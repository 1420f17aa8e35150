//! Split names and how to find a split's files in a folder: a GLUE download
//! (`MNLI/dev_mismatched.tsv`), a `datasets` JSONL export
//! (`validation_mismatched.jsonl`) or the Hub's Parquet files
//! (`mnli/validation_mismatched-00000-of-00001.parquet`).

use crate::error::{GlueError, Result};
use crate::task::Task;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A split of a GLUE task, named as in Hugging Face `datasets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// `train`.
    Train,
    /// `validation` (tasks other than MNLI).
    Validation,
    /// `validation_matched` (MNLI, in-genre).
    ValidationMatched,
    /// `validation_mismatched` (MNLI, cross-genre; the seed's eval split, 9,832 rows).
    ValidationMismatched,
    /// `test` (unlabeled; tasks other than MNLI).
    Test,
    /// `test_matched` (MNLI, unlabeled).
    TestMatched,
    /// `test_mismatched` (MNLI, unlabeled).
    TestMismatched,
}

const ALL: [(Split, &str, &str); 7] = [
    (Split::Train, "train", "train"),
    (Split::Validation, "validation", "dev"),
    (
        Split::ValidationMatched,
        "validation_matched",
        "dev_matched",
    ),
    (
        Split::ValidationMismatched,
        "validation_mismatched",
        "dev_mismatched",
    ),
    (Split::Test, "test", "test"),
    (Split::TestMatched, "test_matched", "test_matched"),
    (Split::TestMismatched, "test_mismatched", "test_mismatched"),
];

impl Split {
    /// The `datasets` name (`validation_mismatched`).
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(s, _, _)| *s == self).map_or("", |e| e.1)
    }

    /// The file stem in a GLUE download (`dev_mismatched`).
    pub fn glue_stem(self) -> &'static str {
        ALL.iter().find(|(s, _, _)| *s == self).map_or("", |e| e.2)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = GlueError;

    /// Accepts the `datasets` names and GLUE's file stems (`dev_matched`).
    fn from_str(s: &str) -> Result<Self> {
        ALL.iter()
            .find(|(_, name, stem)| s == *name || s == *stem)
            .map(|e| e.0)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|e| e.1).collect();
                GlueError::Invalid(format!(
                    "unknown split '{s}'; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        for (split, name, stem) in ALL {
            assert_eq!(name.parse::<Split>().unwrap(), split);
            assert_eq!(stem.parse::<Split>().unwrap(), split);
            assert_eq!(split.to_string(), name);
        }
        let err = "devel".parse::<Split>().unwrap_err().to_string();
        assert!(err.contains("unknown split 'devel'"), "{err}");
    }
}

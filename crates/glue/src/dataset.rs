//! What a reader produces: a [`Dataset`] (one split of one task, with the
//! count of rows skipped for having no label) and the [`Split`] names, shared
//! by the file readers ([`crate::read`]) and the built-in synthetic source.

use crate::error::{GlueError, Result};
use crate::task::{Example, Label, Task};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How readers treat rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Keep rows without a gold label (e.g. to predict on a test split) instead
    /// of skipping and counting them.
    pub keep_unlabeled: bool,
}

/// The examples of one split of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The task whose columns were read.
    pub task: Task,
    /// Where the examples came from (file paths, or `nli-synthetic:<split>`).
    pub source: String,
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped because they had no gold label.
    pub skipped_unlabeled: usize,
}

impl Dataset {
    /// An empty dataset of `task` read from `source`.
    pub(crate) fn new(task: Task, source: String) -> Self {
        Dataset {
            task,
            source,
            examples: Vec::new(),
            skipped_unlabeled: 0,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Adds an example, or counts it as skipped when it is unlabeled and unlabeled rows are not kept.
    pub(crate) fn push(&mut self, example: Example, options: ReadOptions) {
        if example.label == Label::Missing && !options.keep_unlabeled {
            self.skipped_unlabeled += 1;
        } else {
            self.examples.push(example);
        }
    }

    /// Appends another dataset of the same task (e.g. the next Parquet shard).
    pub(crate) fn extend(&mut self, other: Dataset) {
        self.examples.extend(other.examples);
        self.skipped_unlabeled += other.skipped_unlabeled;
        self.source = format!("{}, {}", self.source, other.source);
    }
}

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

//! Which rows a run trains and validates on.

use crate::config::RunConfig;
use crate::{Result, TrainError};
use serde::Serialize;
use tessera_glue::{
    Dataset, EncodedDataset, Lengths, ReadOptions, Source, Split, Task, TextTokenizer, Truncation,
};

/// The validation split of `task`: `validation_mismatched` for MNLI (the seed's choice), else `validation`.
pub fn validation_split(task: Task) -> Split {
    if task == Task::mnli() {
        Split::ValidationMismatched
    } else {
        Split::Validation
    }
}

/// The training set and, when there is one, the validation set of a run.
///
/// `eval_file` names the validation data explicitly; otherwise a folder or
/// `nli-synthetic` training source also provides the validation split, and
/// a single training file means no validation (said in the returned `None`).
pub fn load(config: &RunConfig) -> Result<(Dataset, Option<Dataset>)> {
    let task: Task = config.task.parse()?;
    let options = ReadOptions::default();
    let train_source = Source::parse(&config.train_file);
    let train = train_source.load(task, Split::Train, options)?;
    if train.is_empty() && train.skipped_unlabeled > 0 {
        return Err(TrainError::setting(
            "--train-file",
            format!(
                "{} has no labels ({} rows without a gold label, as in a GLUE test split): train on a train split",
                train.source, train.skipped_unlabeled
            ),
        ));
    }
    let eval_source = match &config.eval_file {
        Some(spec) => Some(Source::parse(spec)),
        None => match train_source {
            Source::File(_) => None,
            other => Some(other),
        },
    };
    let eval = eval_source
        .map(|s| s.load(task, validation_split(task), options))
        .transpose()?;
    Ok((train, eval))
}

/// Tokenizes `data` on the engine's worker threads (so `--threads` bounds
/// tokenization too, not only the kernels).
pub fn encode(
    tokenizer: &TextTokenizer,
    data: &Dataset,
    lengths: Lengths,
) -> Result<EncodedDataset> {
    Ok(tessera_tensor::install(|| {
        tessera_glue::encode_dataset(tokenizer, data, lengths)
    })?)
}

/// What became of the training rows on their way to batches: printed when
/// a run starts and recorded on the first line of `metrics.jsonl`, so a cut
/// or a skipped row is never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataReport {
    /// Where the rows came from.
    pub source: String,
    /// Rows read, labelled or not.
    pub rows_read: usize,
    /// Rows skipped because they had no gold label.
    pub skipped_unlabeled: usize,
    /// Sources longer than `max_source_length` (cut), and the longest.
    pub sources: Truncation,
    /// Targets longer than `max_target_length` (cut), and the longest.
    pub targets: Truncation,
    /// The source length rows are cut at.
    pub max_source_length: usize,
    /// The target length rows are cut at.
    pub max_target_length: usize,
}

impl DataReport {
    /// The report of `data` as `encoded`.
    pub fn new(data: &Dataset, encoded: &EncodedDataset) -> Self {
        DataReport {
            source: data.source.clone(),
            rows_read: data.len() + data.skipped_unlabeled,
            skipped_unlabeled: data.skipped_unlabeled,
            sources: encoded.sources,
            targets: encoded.targets,
            max_source_length: encoded.lengths.source,
            max_target_length: encoded.lengths.target,
        }
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let mut line = format!("{} rows read from {}", self.rows_read, self.source);
        if self.skipped_unlabeled > 0 {
            line += &format!(", {} skipped without a label", self.skipped_unlabeled);
        }
        for (side, t, max) in [
            ("sources", self.sources, self.max_source_length),
            ("targets", self.targets, self.max_target_length),
        ] {
            if t.truncated > 0 {
                line += &format!(
                    "; {} {side} cut at {max} tokens (longest {}: raise --max-{}-length to keep them whole)",
                    t.truncated,
                    t.longest,
                    &side[..side.len() - 1]
                );
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_split_as_training_data_says_it_has_no_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test_matched.jsonl");
        let row = r#"{"premise": "A cat sleeps.", "hypothesis": "A dog barks.", "label": -1}"#;
        std::fs::write(&path, format!("{row}\n{row}\n")).unwrap();
        let config = RunConfig {
            train_file: path.display().to_string(),
            ..RunConfig::recipe("quickstart").unwrap()
        };
        let e = load(&config).unwrap_err().to_string();
        assert!(
            e.contains("test_matched.jsonl") && e.contains("has no labels") && e.contains("2 rows"),
            "{e}"
        );
    }
}

//! Which rows a run trains and validates on.

use crate::config::RunConfig;
use crate::Result;
use tessera_glue::{Dataset, ReadOptions, Source, Split, Task};

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

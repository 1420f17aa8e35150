//! The errors of a training run, each one sentence naming the file, flag or value at fault.

use std::path::PathBuf;

/// Everything that can stop a training, evaluation or export.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The ranks of a distributed run could not exchange a record.
    #[error("the ranks of this run disagree: {0}")]
    Distributed(String),
    /// A setting is out of range or inconsistent with another.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// The setting as the user spells it (a flag or TOML key).
        name: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The model failed (shape mismatch, bad batch).
    #[error(transparent)]
    Model(#[from] tessera_t5::ModelError),
    /// Loading or saving a model checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] tessera_t5::CheckpointError),
    /// Writing a folder (checkpoint, export) failed.
    #[error(transparent)]
    Folder(#[from] tessera_t5::folder::FolderError),
    /// A checkpoint folder is incomplete or its files do not match its manifest.
    #[error("checkpoint {} cannot be used: {reason}", dir.display())]
    Damaged {
        /// The checkpoint folder.
        dir: PathBuf,
        /// What is wrong, naming the file.
        reason: String,
    },
    /// The loss or the gradient stopped being finite: training diverged.
    #[error("training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; the weights were not updated and nothing was saved; {}", resume_hint(.last_checkpoint.as_deref()))]
    Diverged {
        /// The step that failed (1-based).
        step: u64,
        /// Its loss.
        loss: f32,
        /// Its gradient norm before clipping.
        grad_norm: f32,
        /// The run's newest checkpoint, to resume from with other settings.
        last_checkpoint: Option<PathBuf>,
    },
    /// The data pipeline failed (file, tokenizer, batching).
    #[error(transparent)]
    Data(#[from] tessera_glue::GlueError),
    /// An optimizer state file is unreadable or not valid safetensors.
    #[error(transparent)]
    StateFile(tessera_t5::safetensors::SafetensorsError),
    /// An optimizer state file does not fit the model or the optimizer
    /// configuration (other kind, missing, extra or misshapen tensors).
    #[error("cannot use optimizer state {path}: {reason}")]
    OptimizerState {
        path: PathBuf,
        /// What does not fit, naming the tensor.
        reason: String,
    },
    /// A model could not be fetched from the Hugging Face Hub.
    #[error("cannot download {id} from the Hugging Face Hub ({reason}); without network, download the model elsewhere and pass --model /path/to/folder")]
    Hub {
        /// The Hub model id.
        id: String,
        /// What failed (no connection, missing file, …).
        reason: String,
    },
}

fn resume_hint(last: Option<&std::path::Path>) -> String {
    match last {
        Some(dir) => format!(
            "resume from {} with a lower --lr (and --allow-config-change)",
            dir.display()
        ),
        None => "no checkpoint was saved yet: start again with a lower --lr".into(),
    }
}

/// The result type of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// An I/O error with the file it happened on.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A rejected setting.
    pub fn setting(name: impl Into<String>, reason: impl Into<String>) -> Self {
        TrainError::Setting {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

//! Training checkpoints: a folder per saved step that is at the same time a
//! Hugging Face model folder and everything needed to resume.
//!
//! `OUTPUT/checkpoints/step-N/` holds
//! - `config.json`, `model.safetensors`: the weights ([`T5Model::save`]), so
//!   `eval`, `generate` and `export` take a checkpoint directly;
//! - `tokenizer.json` (and `spiece.model` when the source tokenizer had one);
//! - `optimizer.safetensors`: the optimizer's state in f32;
//! - `trainer_state.json`: step, data cursor, seeds and the run configuration.
//!
//! A checkpoint is written into a hidden temporary sibling and renamed into
//! place, so a crash never leaves a half-written
//! `step-N`; after a save the oldest checkpoints beyond `keep` are deleted.

use crate::config::RunConfig;
pub use crate::export::{SPIECE_FILE, TOKENIZER_FILE};
use crate::optim::{LossScaler, Optimizer};
use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tessera_glue::{Cursor, TextTokenizer};
use tessera_t5::T5Model;

/// The trainer's own file in a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer state in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run stands, as saved in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The next batch the loader yields.
    pub cursor: Cursor,
    /// Training rows consumed so far.
    pub examples_seen: u64,
    /// The configuration the run was started (or last resumed) with.
    pub config: RunConfig,
    /// The fp16 loss scaler (absent in other precisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
}

/// The tokenizer files a checkpoint carries.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// The `tokenizer.json` text.
    pub json: String,
    /// The bytes of `spiece.model`, when known.
    pub spiece: Option<Vec<u8>>,
}

impl TokenizerFiles {
    /// The files of `tokenizer`, with `spiece.model` taken from next to the
    /// `tokenizer.json` it was read from (`origin`; `None` for the built-in one).
    pub fn of(tokenizer: &TextTokenizer, origin: Option<&Path>) -> Result<Self> {
        let json = tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| TrainError::setting("--tokenizer", format!("cannot serialise: {e}")))?;
        let spiece = origin
            .and_then(Path::parent)
            .map(|dir| dir.join(SPIECE_FILE))
            .filter(|p| p.is_file())
            .map(|p| fs::read(&p).map_err(|e| TrainError::io("cannot read", p, e)))
            .transpose()?;
        Ok(TokenizerFiles { json, spiece })
    }

    fn write(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join(TOKENIZER_FILE), self.json.as_bytes())?;
        if let Some(bytes) = &self.spiece {
            write_file(&dir.join(SPIECE_FILE), bytes)?;
        }
        Ok(())
    }
}

/// The folder of step `step` under `root` (`OUTPUT/checkpoints`).
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step}"))
}

/// Writes the checkpoint of `state.step` under `root` atomically (re-saving
/// a step, resumed from and interrupted again, replaces the old copy), then
/// keeps only the newest `keep` checkpoints. Returns the checkpoint's folder.
pub fn save(
    root: &Path,
    model: &T5Model,
    tokenizer: &TokenizerFiles,
    optimizer: &Optimizer,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
    let target = step_dir(root, state.step);
    crate::folder::build(&target, |dir| {
        model.save(dir)?;
        tokenizer.write(dir)?;
        optimizer.save(&dir.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_vec_pretty(state).expect("the trainer state serialises");
        write_file(&dir.join(STATE_FILE), &json)
    })?;
    prune(root, keep)?;
    Ok(target)
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        let action = "cannot read the trainer state (is --resume a checkpoint folder?)";
        TrainError::io(action, &path, e)
    })?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::setting(
            "--resume",
            format!("{} is not a tessera trainer state: {e}", path.display()),
        )
    })
}

/// The step numbers of the checkpoints under `root`, ascending.
pub fn list(root: &Path) -> Result<Vec<u64>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io("cannot list", root, e)),
    };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let steps = list(root)?;
    let excess = steps.len().saturating_sub(keep);
    for &step in &steps[..excess] {
        remove_dir(&step_dir(root, step))?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(TrainError::io("cannot remove", dir, e))
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` inside a folder being built (the folder, not
/// the file, is what is renamed into place).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| TrainError::io("cannot write", path, e))
}

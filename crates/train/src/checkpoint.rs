//! Training checkpoints: a folder per saved step that is at the same time a
//! Hugging Face model folder and everything needed to resume.
//!
//! `OUTPUT/checkpoints/step-N/` holds
//! - `config.json`, `model.safetensors`: the weights ([`T5Model::write_into`]),
//!   so `eval`, `generate` and `export` take a checkpoint directly;
//! - `tokenizer.json` (and `spiece.model` when the source tokenizer had one);
//! - `optimizer.safetensors`: the optimizer's state in f32;
//! - `trainer_state.json`: run id, step, data cursor, the run configuration
//!   and the fingerprints of the training data and tokenizer;
//! - for a LoRA run, `adapter_config.json` and `adapter_model.safetensors`
//!   (PEFT's format) instead of the weights, the base named in the manifest;
//! - `manifest.json`, written last: what kind of checkpoint this is, whose
//!   run and step, and every other file's size and XXH3-128 hash, taken as
//!   the bytes were written ([`Manifest`]).
//!
//! A checkpoint is built under a hidden staging name, fsynced, and renamed
//! into place ([`tessera_t5::folder`]), so a crash never leaves a half
//! `step-N`; only then are this run's oldest checkpoints beyond `keep`
//! deleted. A folder without a manifest, or whose files do not match it,
//! is refused by [`verify`] with the name of the file at fault.

use crate::config::RunConfig;
pub use crate::export::{SPIECE_FILE, TOKENIZER_FILE};
use crate::optim::{LossScaler, Optimizer};
use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tessera_glue::{Cursor, TextTokenizer};
use tessera_t5::folder::{self, FileRecord, Staging};
use tessera_t5::{Precision, T5Model, DEFAULT_MAX_SHARD_BYTES};

/// The trainer's own file in a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer state in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The checkpoint's manifest, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format` of every tessera manifest.
pub const MANIFEST_FORMAT: &str = "tessera-checkpoint";
/// The manifest layout this version writes and reads. Later additions
/// (sharded optimizer state, adapters) add kinds and optional fields.
pub const MANIFEST_VERSION: u32 = 1;

/// What a checkpoint folder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A full training checkpoint: weights, optimizer state, trainer state.
    Training,
    /// A LoRA training checkpoint: the adapters in PEFT's format
    /// (`adapter_config.json`, `adapter_model.safetensors`), their optimizer
    /// state and the trainer state; the frozen base is not copied but named
    /// in the manifest ([`BaseModel`]).
    Adapter,
}

/// The frozen base model of a LoRA checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// The model as the run named it (a folder, a preset, a Hub id).
    pub model: String,
    /// The seed a preset is initialised from.
    pub seed: u64,
    /// The precision the base was loaded in and is kept in (the run's).
    pub precision: Precision,
    /// [`tessera_t5::ParamStore::fingerprint`] of the base as loaded in
    /// `precision`, so a resume on other weights is refused.
    pub fingerprint: String,
}

/// `manifest.json`: the checkpoint's identity and its files' sizes and hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The layout version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// What the checkpoint holds.
    pub kind: CheckpointKind,
    /// The run that wrote it ([`TrainerState::run`]).
    pub run: String,
    /// Optimizer steps taken when it was written.
    pub step: u64,
    /// The frozen base ([`CheckpointKind::Adapter`] only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseModel>,
    /// Every other file of the folder.
    pub files: Vec<FileRecord>,
}

/// Where a run stands, as saved in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The run's identity, given when it starts and kept across resumes;
    /// the output folder's checkpoints and metrics belong to one run.
    #[serde(default)]
    pub run: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// The next batch the loader yields.
    pub cursor: Cursor,
    /// Training rows consumed so far.
    pub examples_seen: u64,
    /// The configuration the run was started (or last resumed) with.
    pub config: RunConfig,
    /// What the run trains on, checked when it resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// The fp16 loss scaler (absent in other precisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
}

/// Hashes of what a run's batches are made of, so that a resume on other
/// data or another tokenizer is caught instead of silently breaking the
/// exact resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// XXH3-128 of the training rows' texts and labels, in order.
    pub train_data: String,
    /// Training rows.
    pub train_rows: usize,
    /// XXH3-128 of the `tokenizer.json` text.
    pub tokenizer: String,
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

    fn write(&self, staging: &mut Staging) -> Result<()> {
        staging.write_bytes(TOKENIZER_FILE, self.json.as_bytes())?;
        if let Some(bytes) = &self.spiece {
            staging.write_bytes(SPIECE_FILE, bytes)?;
        }
        Ok(())
    }
}

/// The folder of step `step` under `root` (`OUTPUT/checkpoints`).
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step}"))
}

/// Writes the checkpoint of `state.step` under `root` atomically and
/// durably (re-saving a step replaces the old copy), then deletes this
/// run's oldest checkpoints beyond `keep` (never the one just written, never
/// another run's). Returns the checkpoint's folder.
pub fn save(
    root: &Path,
    (model, base): (&T5Model, Option<&BaseModel>),
    tokenizer: &TokenizerFiles,
    optimizer: &Optimizer,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
    let target = step_dir(root, state.step);
    folder::build(&target, |staging| {
        let kind = match base {
            Some(base) => {
                model.write_adapter_into(staging, &base.model)?;
                CheckpointKind::Adapter
            }
            None => {
                let dtype = model.params().dtype().into();
                model.write_into(staging, DEFAULT_MAX_SHARD_BYTES, dtype)?;
                CheckpointKind::Training
            }
        };
        tokenizer.write(staging)?;
        staging.write(OPTIMIZER_FILE, |w| optimizer.write_to(w))?;
        let json = serde_json::to_vec_pretty(state).expect("the trainer state serialises");
        staging.write_bytes(STATE_FILE, &json)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            kind,
            run: state.run.clone(),
            step: state.step,
            base: base.cloned(),
            files: staging.files().to_vec(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
        Ok::<_, TrainError>(staging.write_bytes(MANIFEST_FILE, &json)?)
    })?;
    prune(root, keep, &state.run, state.step)?;
    Ok(target)
}

/// Reads `manifest.json` of a checkpoint folder.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let damaged = |reason: String| TrainError::Damaged {
        dir: dir.to_path_buf(),
        reason,
    };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(format!(
                "it has no {MANIFEST_FILE} (the save did not finish, or an older tessera wrote it)"
            )))
        }
        Err(e) => return Err(TrainError::io("cannot read", path, e)),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| damaged(format!("{MANIFEST_FILE} is not a tessera manifest ({e})")))?;
    if manifest.format != MANIFEST_FORMAT || manifest.version > MANIFEST_VERSION {
        return Err(damaged(format!(
            "{MANIFEST_FILE} is {} version {}; this tessera reads {MANIFEST_FORMAT} up to version {MANIFEST_VERSION}",
            manifest.format, manifest.version
        )));
    }
    Ok(manifest)
}

/// Checks every file of a checkpoint against its manifest (sizes and
/// hashes, reading the files once) and returns the manifest; the error
/// names the first file that does not match.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    folder::verify(dir, &manifest.files).map_err(|m| TrainError::Damaged {
        dir: dir.to_path_buf(),
        reason: m.to_string(),
    })?;
    Ok(manifest)
}

/// Verifies `dir` if it has a manifest (a tessera checkpoint); any other
/// model folder (a Hugging Face download, an export) has nothing to check.
pub fn verify_if_manifest(dir: &Path) -> Result<()> {
    if dir.join(MANIFEST_FILE).is_file() {
        verify(dir)?;
    }
    Ok(())
}

/// The newest checkpoint under `root` that verifies, with the newer ones
/// that did not (and why). An error when there is none.
pub fn latest(root: &Path) -> Result<(PathBuf, Vec<TrainError>)> {
    let mut rejected = Vec::new();
    for step in list(root)?.into_iter().rev() {
        let dir = step_dir(root, step);
        match verify(&dir) {
            Ok(_) => return Ok((dir, rejected)),
            Err(e) => rejected.push(e),
        }
    }
    let why = match rejected.first() {
        Some(e) => format!(" ({} checked, none complete: {e})", rejected.len()),
        None => String::new(),
    };
    Err(TrainError::setting(
        "--resume latest",
        format!("there is no complete checkpoint in {}{why}", root.display()),
    ))
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        let action = "cannot read the trainer state (is --resume a checkpoint folder?)";
        TrainError::io(action, &path, e)
    })?;
    let not_a_state = |e: serde_json::Error| {
        TrainError::setting(
            "--resume",
            format!("{} is not a tessera trainer state: {e}", path.display()),
        )
    };
    let mut state: serde_json::Value = serde_json::from_str(&text).map_err(not_a_state)?;
    if let Some(config) = state.get_mut("config").and_then(|c| c.as_object_mut()) {
        RunConfig::drop_retired(config);
    }
    serde_json::from_value(state).map_err(not_a_state)
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

/// Deletes run `run`'s checkpoints beyond the newest `keep`, never `just_saved`.
fn prune(root: &Path, keep: usize, run: &str, just_saved: u64) -> Result<()> {
    let ours: Vec<u64> = list(root)?
        .into_iter()
        .filter(|&step| read_manifest(&step_dir(root, step)).is_ok_and(|m| m.run == run))
        .collect();
    let excess = ours.len().saturating_sub(keep);
    for &step in ours[..excess].iter().filter(|&&s| s != just_saved) {
        remove_dir(&step_dir(root, step))?;
    }
    folder::sync_dir(root)?;
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

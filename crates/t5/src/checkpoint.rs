//! Hugging Face checkpoint folders in and out.
//!
//! Loading reads `config.json` and either `model.safetensors` or a sharded
//! `model.safetensors.index.json` with its shards, converting stored
//! f32/f16/bf16 into the model's storage tensor by tensor (each tensor is
//! mapped only while it is converted, so peak memory is the model plus one
//! tensor). Every tensor is checked: a missing, unexpected,
//! mis-shaped or non-finite tensor is an error naming it and its file.
//!
//! Saving writes a complete folder under a staging name beside the target
//! ([`crate::folder`]) and renames it into place, so an interrupted save never leaves a half
//! checkpoint: `config.json` (every original field kept),
//! `generation_config.json`, and `model.safetensors`, or shards plus an
//! index when the weights exceed the shard size. Files already in the target
//! that the save does not produce (a tokenizer, say) are carried over.

use crate::folder::{self, FolderError, Staging};
use crate::model::T5Model;
use crate::params::layout_as;
use crate::safetensors::{write_as, SafeTensors, SafetensorsError, StoredDType, TensorToWrite};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tessera_t5_config::{ConfigError, T5Config};
use tessera_tensor::DType;

/// The single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The sharded weights index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Hugging Face's default shard size for `save_pretrained` (5 GB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Copies of `shared.weight` that checkpoints may or may not carry.
const TIED_COPIES: [&str; 2] = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"];

/// Why a checkpoint could not be loaded or saved.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// `config.json` is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A safetensors file is missing, unreadable or corrupt.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// The folder has no weights file.
    #[error("{0} has neither model.safetensors nor model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// The shard index is malformed.
    #[error("{path} is not a valid safetensors index: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the config requires is absent.
    #[error("tensor {name} is missing from {path}")]
    Missing {
        /// The tensor.
        name: String,
        /// The checkpoint file or folder.
        path: PathBuf,
    },
    /// A tensor the model does not have.
    #[error("unexpected tensor {name} in {path} (not part of a T5 with this config.json)")]
    Unexpected {
        /// The tensor.
        name: String,
        path: PathBuf,
    },
    /// A tensor's shape disagrees with the config.
    #[error("tensor {name} in {path} has shape {found:?}, but config.json implies {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        path: PathBuf,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor holds NaN or infinity.
    #[error("tensor {name} in {path} has a non-finite value ({value}) at element {index}")]
    NonFinite {
        /// The tensor.
        name: String,
        path: PathBuf,
        /// Flat index of the first bad element.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A weight to be saved holds NaN or infinity.
    #[error("weight {name} has a non-finite value ({value}) at element {index}; it was not saved")]
    NonFiniteWeight {
        /// The tensor.
        name: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Writing the folder failed.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// A LoRA adapter folder (PEFT's format) that cannot be used as it is.
    #[error("LoRA adapter {path}: {reason}")]
    Adapter {
        /// The adapter's config or weights file, or its folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The weight files of a folder: `(file, tensor names it should hold)`.
/// Weight files of a folder, each with the tensor names its index promises.
type WeightFiles = Vec<(PathBuf, Option<BTreeSet<String>>)>;

fn weight_files(dir: &Path) -> Result<WeightFiles, CheckpointError> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let bad = |reason: String| CheckpointError::Index {
            path: index.clone(),
            reason,
        };
        let text = fs::read_to_string(&index).map_err(|e| bad(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = value["weight_map"]
            .as_object()
            .ok_or_else(|| bad("no weight_map object".into()))?;
        let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && *f != ".." && !f.is_empty())
                .ok_or_else(|| bad(format!("weight_map entry for {name} is not a file name")))?;
            files
                .entry(file.to_string())
                .or_default()
                .insert(name.clone());
        }
        return Ok(files
            .into_iter()
            .map(|(f, names)| (dir.join(f), Some(names)))
            .collect());
    }
    if single.exists() {
        return Ok(vec![(single, None)]);
    }
    Err(CheckpointError::NoWeights(dir.to_path_buf()))
}

impl T5Model {
    /// Loads a Hugging Face T5 folder (`config.json` plus single or sharded safetensors).
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        Self::load_as(dir, DType::F32)
    }

    /// [`T5Model::load`] with the weights kept as `dtype`: each tensor is
    /// read in f32 and rounded to nearest-even into the store, so a bf16
    /// model never has an f32 copy of its weights (peak memory: the bf16
    /// weights and one tensor in f32). A value beyond fp16's range is an
    /// error naming the tensor.
    pub fn load_as(dir: &Path, dtype: DType) -> Result<Self, CheckpointError> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let (mut params, ids) = layout_as(&config, dtype);
        let mut wide = Vec::new();
        let mut loaded = vec![false; params.entries().len()];
        for (path, expected_names) in weight_files(dir)? {
            let file = SafeTensors::open(&path)?;
            if let Some(names) = &expected_names {
                if let Some(name) = names.iter().find(|n| file.info(n).is_err()) {
                    return Err(CheckpointError::Missing {
                        name: name.clone(),
                        path,
                    });
                }
            }
            for name in file.names() {
                let Some(id) = params.find(name) else {
                    let tied_head = name == "lm_head.weight" && config.tie_word_embeddings;
                    if TIED_COPIES.contains(&name) || tied_head {
                        check_tensor(&file, name, &[config.vocab_size, config.d_model])?;
                        continue;
                    }
                    return Err(CheckpointError::Unexpected {
                        name: name.to_string(),
                        path: path.clone(),
                    });
                };
                check_tensor(&file, name, &params.entry(id).shape)?;
                wide.resize(params.entry(id).numel(), 0.0);
                file.read_f32_into(name, &mut wide)?;
                check_finite(&wide, name, &path)?;
                if let Some(index) = params.set_from_f32(id, &wide) {
                    return Err(CheckpointError::NonFinite {
                        name: name.to_string(),
                        path,
                        index,
                        value: wide[index],
                    });
                }
                loaded[id.index()] = true;
            }
        }
        if let Some(i) = loaded.iter().position(|&l| !l) {
            return Err(CheckpointError::Missing {
                name: params.entries()[i].name.clone(),
                path: dir.to_path_buf(),
            });
        }
        Ok(T5Model::from_parts(config, params, ids))
    }

    /// Saves as a Hugging Face folder with the default shard size, the
    /// weights stored in their own type (f32, or the bf16/fp16 of a model
    /// that keeps its weights in 16 bits: written as they are, exactly).
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        self.save_sharded(dir, DEFAULT_MAX_SHARD_BYTES)
    }

    /// Saves as a Hugging Face folder with the weights stored as `dtype`
    /// (F32, F16 or BF16, rounded to nearest-even as they are written when
    /// narrower than the weights; no f32 copy of the file is made). An F16
    /// save fails, naming the weight, if a value lies beyond fp16's range.
    pub fn save_as(&self, dir: &Path, dtype: StoredDType) -> Result<(), CheckpointError> {
        self.save_with(dir, DEFAULT_MAX_SHARD_BYTES, dtype)
    }

    /// Saves as a Hugging Face folder, splitting the weights into shards of
    /// at most `max_shard_bytes` (a tensor larger than that gets its own shard).
    pub fn save_sharded(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), CheckpointError> {
        self.save_with(dir, max_shard_bytes, self.params().dtype().into())
    }

    fn save_with(
        &self,
        dir: &Path,
        max_shard_bytes: u64,
        dtype: StoredDType,
    ) -> Result<(), CheckpointError> {
        folder::build(dir, |staging| {
            self.write_into(staging, max_shard_bytes, dtype)?;
            carry_over(dir, staging)
        })
        .map(drop)
    }

    /// Writes the Hugging Face files (`config.json`,
    /// `generation_config.json`, the weights in shards of at most
    /// `max_shard_bytes` stored as `dtype`) into a folder being built, for
    /// callers that add files of their own (training checkpoints, exports).
    /// Every weight is checked finite first: an error names the first
    /// non-finite tensor, and nothing is written.
    pub fn write_into(
        &self,
        staging: &mut Staging,
        max_shard_bytes: u64,
        dtype: StoredDType,
    ) -> Result<(), CheckpointError> {
        self.check_finite_weights()?;
        let shards = plan_shards(self, max_shard_bytes, dtype.size() as u64);
        let count = shards.len();
        let mut weight_map = Map::new();
        let mut total = 0u64;
        let all: Vec<_> = self.params().views().collect();
        for (i, shard) in shards.iter().enumerate() {
            let file = if count == 1 {
                WEIGHTS_FILE.to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            };
            let tensors: Vec<TensorToWrite<'_>> = shard
                .iter()
                .map(|&i| {
                    let (entry, data) = all[i];
                    total += (data.len() * dtype.size()) as u64;
                    weight_map.insert(entry.name.clone(), file.clone().into());
                    TensorToWrite {
                        name: &entry.name,
                        shape: &entry.shape,
                        data,
                    }
                })
                .collect();
            staging.write(&file, |w| write_as(w, &tensors, dtype, &[]))?;
        }
        if count > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_json(staging, INDEX_FILE, &index)?;
        }
        let config: Value =
            serde_json::from_str(&self.config().to_json()).expect("config JSON round-trips");
        write_json(staging, "config.json", &config)?;
        let c = self.config();
        let generation = json!({
            "_from_model_config": true,
            "decoder_start_token_id": c.decoder_start_token_id,
            "eos_token_id": c.eos_token_id,
            "pad_token_id": c.pad_token_id,
        });
        write_json(staging, "generation_config.json", &generation)
    }

    /// An error naming the first weight that holds NaN or infinity: such a
    /// model is never written.
    fn check_finite_weights(&self) -> Result<(), CheckpointError> {
        let bad = self.params().views().find_map(|(entry, data)| {
            let (index, value) = data.first_non_finite()?;
            Some((entry, index, value))
        });
        match bad {
            Some((entry, index, value)) => Err(CheckpointError::NonFiniteWeight {
                name: entry.name.clone(),
                index,
                value,
            }),
            None => Ok(()),
        }
    }
}

pub(crate) fn check_tensor(
    file: &SafeTensors,
    name: &str,
    expected: &[usize],
) -> Result<(), CheckpointError> {
    let info = file.info(name)?;
    if info.shape != expected {
        return Err(CheckpointError::Shape {
            name: name.to_string(),
            path: file.path().to_path_buf(),
            expected: expected.to_vec(),
            found: info.shape.clone(),
        });
    }
    Ok(())
}

pub(crate) fn check_finite(values: &[f32], name: &str, path: &Path) -> Result<(), CheckpointError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(CheckpointError::NonFinite {
            name: name.to_string(),
            path: path.to_path_buf(),
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Groups parameter indices into shards of at most `max_bytes`, in order.
fn plan_shards(model: &T5Model, max_bytes: u64, element_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, entry) in model.params().entries().iter().enumerate() {
        let bytes = entry.numel() as u64 * element_bytes;
        if size > 0 && size + bytes > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("never empty").push(i);
        size += bytes;
    }
    shards
}

fn write_json(staging: &mut Staging, name: &str, value: &Value) -> Result<(), CheckpointError> {
    Ok(staging.write(name, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })?)
}

/// Copies files of an existing target that the new save does not replace
/// (skipping old weight files, which the new weights supersede).
fn carry_over(old: &Path, staging: &mut Staging) -> Result<(), CheckpointError> {
    let Ok(entries) = fs::read_dir(old) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name.ends_with(".safetensors") || name == INDEX_FILE;
        let written = staging.files().iter().any(|f| f.name == name);
        if written || is_weights || !entry.path().is_file() {
            continue;
        }
        staging.copy(&entry.path(), &name)?;
    }
    Ok(())
}

//! Fine-tuning T5 on GLUE: the trainer behind `cargo xtask train | eval | generate | export`.
//!
//! The crate stands on [`tessera_t5`] (the model with its manual backward)
//! and [`tessera_glue`] (data, prompts, batches, metrics), and adds what a
//! training run needs around them: optimizers that match PyTorch's, learning
//! rate schedules, gradient accumulation over a global batch, checkpoints
//! that resume bit for bit, evaluation by greedy generation, and the export
//! of a Hugging Face model folder.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod data;
mod decimal;
mod error;
pub mod eval;
pub mod export;
pub mod generation;
#[cfg(feature = "hub")]
pub mod hub;
pub mod metrics;
pub mod model_source;
pub mod optim;
pub mod replicas;
pub mod run_folder;
pub mod schedule;
#[cfg(test)]
mod testing;
pub mod trainer;

pub use error::{Result, TrainError};

use checkpoint::TokenizerFiles;
use config::RunConfig;
use model_source::{load_model_as, load_tokenizer, ModelSpec};
use tessera_glue::Dataset;
use trainer::Trainer;

/// A new run of `config`: the model `config.model` names (a folder, a preset
/// initialised from `config.seed`, or a Hub id), its tokenizer
/// (`config.tokenizer`, else the folder's, else the built-in one), training
/// on `train` and validating on `eval`.
pub fn fresh_trainer(config: RunConfig, train: &Dataset, eval: Option<Dataset>) -> Result<Trainer> {
    let spec = ModelSpec::parse(&config.model)?;
    // A LoRA base is frozen: it is loaded straight into the run's precision.
    let dtype = match config.lora_rank {
        Some(_) => config.precision.dtype(),
        None => tessera_tensor::DType::F32,
    };
    let loaded = load_model_as(&spec, config.seed, dtype)?;
    let vocab = loaded.model.config().vocab_size;
    let tokenizer = load_tokenizer(config.tokenizer.as_deref(), loaded.folder.as_deref(), vocab)?;
    let origin = config
        .tokenizer
        .clone()
        .or_else(|| loaded.folder.map(|dir| dir.join(export::TOKENIZER_FILE)));
    let files = TokenizerFiles::of(&tokenizer, origin.as_deref())?;
    Trainer::new(config, loaded.model, tokenizer, files, train, eval)
}

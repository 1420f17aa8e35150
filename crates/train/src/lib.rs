//! Fine-tuning T5 on GLUE: the trainer behind `cargo xtask train | eval | generate | export`.
//!
//! The crate stands on [`tessera_t5`] (the model with its manual backward)
//! and [`tessera_glue`] (data, prompts, batches, metrics), and adds what a
//! training run needs around them: optimizers that match PyTorch's, learning
//! rate schedules, gradient accumulation over a global batch, checkpoints
//! that resume bit for bit, evaluation by greedy generation, and the export
//! of a Hugging Face model folder.

mod decimal;
mod error;
pub mod eval;
pub mod export;
pub mod generation;
#[cfg(feature = "hub")]
pub mod hub;
pub mod model_source;
#[cfg(test)]
mod testing;
pub mod optim;
pub mod schedule;

pub use error::{Result, TrainError};

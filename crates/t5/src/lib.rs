//! T5 and Flan-T5 on tessera's tensor engine.
//!
//! - [`T5Config`] reads and writes Hugging Face `config.json` files and knows
//!   the shapes of the published Flan-T5 sizes.
//! - [`T5Model`] loads and saves Hugging Face checkpoint folders
//!   ([`T5Model::load`], [`T5Model::save`]), runs the forward pass exactly as
//!   `transformers` does ([`T5Model::forward`]), differentiates it by hand
//!   ([`T5Model::forward_backward`], optionally recomputing each block), and
//!   decodes greedily with a KV cache ([`T5Model::generate`]), all on
//!   padding-free [`Batch`]es: the real tokens of every row back to back,
//!   never a pad token.
//! - Weights and gradients live in a [`ParamStore`]: one flat buffer (f32,
//!   or bf16/fp16 weights) with a table of Hugging Face names and offsets,
//!   which optimizers walk against the f32 gradients' flat slice.

mod adapter;
pub mod attention;
mod checkpoint;
pub mod folder;
mod generate;
pub mod layers;
pub mod lora;
mod model;
mod params;
pub mod precision;
pub mod safetensors;
mod stack;

pub use adapter::{read_adapter_config, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use checkpoint::{CheckpointError, DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, WEIGHTS_FILE};
pub use generate::Generator;
pub use lora::{Lora, LoraConfig, LoraError};
pub use model::{Batch, ForwardOutput, ModelError, T5Model, TrainOptions};
pub use params::{
    AttentionIds, FeedForwardIds, FlatMut, ModelIds, ParamEntry, ParamId, ParamStore, StackIds,
    SublayerIds, SublayerKind,
};
pub use precision::Precision;
pub use tessera_t5_config::{ConfigError, FeedForward, T5Config, TINY_PRESET};
pub use tessera_tensor::ops::crossentropy::CrossEntropy;

//! T5 and Flan-T5 on tessera's tensor engine.
//!
//! [`T5Config`] reads and writes Hugging Face `config.json` files and knows
//! the shapes of the published Flan-T5 sizes.

mod config;

pub use config::{ConfigError, FeedForward, T5Config};

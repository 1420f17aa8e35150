//! Small models and the built-in tokenizer for this crate's unit tests.

use tessera_glue::TextTokenizer;
use tessera_t5::{T5Config, T5Model};

/// A one-layer gated-GELU T5 (d_model 16) with `vocab_size` tokens, seed 7.
pub fn tiny_model(vocab_size: usize) -> T5Model {
    T5Model::init(tiny_config(vocab_size), 7)
}

/// The config of [`tiny_model`].
pub fn tiny_config(vocab_size: usize) -> T5Config {
    T5Config::tiny_with(|c| c.vocab_size = vocab_size).expect("a valid tiny config")
}

/// The project's own 740-token tokenizer.
pub fn own_tokenizer() -> TextTokenizer {
    crate::model_source::own_tokenizer().expect("the built-in tokenizer loads")
}

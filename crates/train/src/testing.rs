//! Small models and the built-in tokenizer for this crate's unit tests.

use tessera_glue::TextTokenizer;
use tessera_t5::{T5Config, T5Model};

/// A one-layer gated-GELU T5 (d_model 16) with `vocab_size` tokens, seed 7.
pub fn tiny_model(vocab_size: usize) -> T5Model {
    T5Model::init(tiny_config(vocab_size), 7)
}

/// The config of [`tiny_model`].
pub fn tiny_config(vocab_size: usize) -> T5Config {
    let mut config = T5Config::preset("flan-t5-small").expect("a known preset");
    config.vocab_size = vocab_size;
    config.d_model = 16;
    config.d_kv = 4;
    config.d_ff = 32;
    config.num_heads = 2;
    config.num_layers = 1;
    config.num_decoder_layers = Some(1);
    config
}

/// The project's own 740-token tokenizer.
pub fn own_tokenizer() -> TextTokenizer {
    crate::model_source::own_tokenizer().expect("the built-in tokenizer loads")
}

//! `T5Config` reads the configs of the fixture checkpoints (fixtures/data/models,
//! written by transformers 5.x `save_pretrained`) and counts their parameters
//! exactly as the checkpoints hold them.

// Test code: a failed unwrap is the test failure, and its message names the fixture.
#![allow(clippy::unwrap_used)]

use tessera_fixtures::{groups, load};
use tessera_t5::{FeedForward, T5Config};

#[test]
fn fixture_model_configs_load_and_match_their_checkpoints() {
    let models: Vec<String> = groups()
        .unwrap()
        .into_iter()
        .filter(|g| g.starts_with("models/"))
        .collect();
    assert_eq!(models.len(), 3);
    for name in models {
        let fx = load(&name).unwrap();
        let config = T5Config::from_file(&fx.dir().join("config.json")).unwrap();
        config.validate().unwrap();
        let tied = fx
            .meta_at("/tied_word_embeddings")
            .unwrap()
            .as_bool()
            .unwrap();
        assert_eq!(config.tie_word_embeddings, tied, "{name}");
        let expected_ff = if tied {
            FeedForward::Relu
        } else {
            FeedForward::GatedGelu
        };
        assert_eq!(config.feed_forward_proj, expected_ff, "{name}");
        assert_ne!(
            config.decoder_layers(),
            config.num_layers,
            "{name}: odd shape"
        );
        assert_ne!(config.inner_dim(), config.d_model, "{name}: odd shape");

        // Every parameter (`named_parameters`, tied weights once) is in the checkpoint.
        let params = fx.meta_at("/parameters").unwrap().as_array().unwrap();
        let stored: usize = params
            .iter()
            .map(|p| fx.tensor(p.as_str().unwrap()).unwrap().numel())
            .sum();
        assert_eq!(config.num_parameters(), stored, "{name}");
    }
}

//! `T5Config`: the Hugging Face `config.json` of a T5 model, validated, with
//! the published Flan-T5 shapes and the model's parameter and FLOP counts.
//!
//! Its own crate so that what only plans a model (the IPU simulator) needs
//! no kernels. Fields the model does not use are kept verbatim, so a
//! checkpoint saved by tessera carries the same `config.json` fields it was
//! loaded with. Every way to build one validates it: a `T5Config` a caller
//! holds has a usable feed-forward kind and non-zero shapes.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The name of the tiny preset (see [`T5Config::preset`]).
pub const TINY_PRESET: &str = "tessera-tiny";

/// Why a configuration could not be used; names the file or field.
// A `path` field is the file the message names; other fields say more.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        path: String,
        /// The OS error (in the message, not chained, so it prints once).
        cause: std::io::Error,
    },
    /// The JSON is malformed or a field has the wrong type.
    #[error("{path} is not a valid T5 config.json: {cause}")]
    Json {
        /// The file (or `<string>`).
        path: String,
        /// The parser's error, with line and column (in the message, not chained).
        cause: serde_json::Error,
    },
    /// A field has a value the model cannot run with.
    #[error("config field `{field}` is invalid: {reason}")]
    Field {
        /// The JSON field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A preset name that tessera does not know.
    #[error("unknown model preset {0:?}; known presets: flan-t5-small, flan-t5-base, flan-t5-large, flan-t5-xl, flan-t5-xxl")]
    UnknownPreset(String),
}

/// The feed-forward block of each layer (`feed_forward_proj`, stored as
/// Hugging Face's string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FeedForward {
    /// `wo(relu(wi(x)))` — original T5.
    Relu,
    /// `wo(gelu_new(wi_0(x)) * wi_1(x))` — T5 v1.1 and Flan-T5.
    GatedGelu,
    /// `wo(relu(wi_0(x)) * wi_1(x))`.
    GatedRelu,
}

impl FeedForward {
    /// Whether the block has two input projections (`wi_0`, `wi_1`).
    pub fn is_gated(self) -> bool {
        !matches!(self, FeedForward::Relu)
    }

    /// Hugging Face's name for it.
    pub fn name(self) -> &'static str {
        match self {
            FeedForward::Relu => "relu",
            FeedForward::GatedGelu => "gated-gelu",
            FeedForward::GatedRelu => "gated-relu",
        }
    }
}

impl TryFrom<String> for FeedForward {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        [
            FeedForward::Relu,
            FeedForward::GatedGelu,
            FeedForward::GatedRelu,
        ]
        .into_iter()
        .find(|f| f.name() == s)
        .ok_or_else(|| ConfigError::Field {
            field: "feed_forward_proj",
            reason: format!("{s:?} is not one of relu, gated-gelu, gated-relu"),
        })
    }
}

impl From<FeedForward> for String {
    fn from(f: FeedForward) -> String {
        f.name().into()
    }
}

fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> FeedForward {
    FeedForward::Relu
}
fn default_true() -> bool {
    true
}
fn default_eos() -> u32 {
    1
}
fn default_dropout() -> f64 {
    0.1
}

/// The configuration of a T5 model, as in Hugging Face's `T5Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (Hugging Face defaults this to `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Dropout probability in training.
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    /// Epsilon of the RMS layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// The feed-forward block (`relu`, `gated-gelu` or `gated-relu`).
    #[serde(default = "default_ff")]
    pub feed_forward_proj: FeedForward,
    /// Whether `lm_head` shares `shared.weight` (then decoder output is scaled by `d_model^-0.5`).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// First decoder input token (the pad token for T5).
    #[serde(default)]
    pub decoder_start_token_id: u32,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// End-of-sequence token id.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Every other field of the file, kept so that saving writes it back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl T5Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates config JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: T5Config = serde_json::from_str(text).map_err(|cause| ConfigError::Json {
            path: origin.to_string(),
            cause,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as pretty JSON, extra fields included.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a T5Config always serialises")
    }

    /// Checks every field the model depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::Field {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.num_decoder_layers == Some(0) {
            return Err(ConfigError::Field {
                field: "num_decoder_layers",
                reason: "must be at least 1".into(),
            });
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(ConfigError::Field {
                field: "dropout_rate",
                reason: format!("{} is not in [0, 1)", self.dropout_rate),
            });
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(ConfigError::Field {
                field: "layer_norm_epsilon",
                reason: format!("{} is not a positive number", self.layer_norm_epsilon),
            });
        }
        if self.relative_attention_num_buckets < 2 {
            return Err(ConfigError::Field {
                field: "relative_attention_num_buckets",
                reason: "needs at least 2 buckets (half are used per direction)".into(),
            });
        }
        for (field, id) in [
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(ConfigError::Field {
                    field,
                    reason: format!(
                        "token id {id} is outside the vocabulary of {}",
                        self.vocab_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// Decoder layers, defaulting to the encoder's count.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Width of all heads together (`num_heads * d_kv`; need not equal `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The useful FLOPs of one forward pass over sequences of these source
    /// and target lengths (a multiply-add counts 2): encoder layers and the
    /// cross-attention key/value projections per real source token, decoder
    /// layers and the LM head per real target token, attention per real
    /// (query, key) pair; the embedding gather, norms and element-wise work
    /// count nothing. A training step is 3× this (forward and backward);
    /// divided by time and a measured matmul peak, it is the model FLOP
    /// utilisation (MFU).
    pub fn forward_flops(&self, src_lens: &[usize], tgt_lens: &[usize]) -> f64 {
        self.encoder_flops(src_lens) + self.decoder_flops(src_lens, tgt_lens)
    }

    /// The encoder's share of [`T5Config::forward_flops`], with the
    /// decoder's cross-attention key/value projections (once per source).
    pub fn encoder_flops(&self, src_lens: &[usize]) -> f64 {
        let (d, inner) = (self.d_model as f64, self.inner_dim() as f64);
        let (enc, dec) = (self.num_layers as f64, self.decoder_layers() as f64);
        let src: f64 = src_lens.iter().map(|&l| l as f64).sum();
        let per_src = enc * (4.0 * d * inner + self.feed_forward_macs()) + dec * 2.0 * d * inner;
        // Q·Kᵀ and P·V: 2·inner multiply-adds per (query, key) pair.
        let pairs: f64 = src_lens.iter().map(|&l| (l * l) as f64).sum();
        2.0 * (src * per_src + enc * 2.0 * inner * pairs)
    }

    /// The decoder's share of [`T5Config::forward_flops`] for `tgt_lens`
    /// positions against sources of `src_lens` tokens (also what greedy
    /// generation of that many tokens does, with a KV cache).
    pub fn decoder_flops(&self, src_lens: &[usize], tgt_lens: &[usize]) -> f64 {
        let (d, inner) = (self.d_model as f64, self.inner_dim() as f64);
        let dec = self.decoder_layers() as f64;
        let tgt: f64 = tgt_lens.iter().map(|&l| l as f64).sum();
        let per_tgt =
            dec * (6.0 * d * inner + self.feed_forward_macs()) + d * self.vocab_size as f64;
        let pairs: f64 = src_lens
            .iter()
            .zip(tgt_lens)
            .map(|(&s, &t)| (t * (t + 1) / 2 + t * s) as f64)
            .sum();
        2.0 * (tgt * per_tgt + dec * 2.0 * inner * pairs)
    }

    /// Multiply-adds of one feed-forward block per token.
    fn feed_forward_macs(&self) -> f64 {
        let mats = if self.feed_forward_proj.is_gated() {
            3.0
        } else {
            2.0
        };
        mats * self.d_model as f64 * self.d_ff as f64
    }

    /// The published shapes of a Flan-T5 size: `flan-t5-small`, `-base`,
    /// `-large`, `-xl`, `-xxl` (a `google/` prefix is accepted); or
    /// [`TINY_PRESET`], a Flan-T5-shaped model small enough to train from
    /// scratch in minutes on a CPU (the quickstart's), whose vocabulary fits
    /// tessera's own 740-token tokenizer.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let short = name.strip_prefix("google/").unwrap_or(name);
        if name == TINY_PRESET {
            return Ok(Self::tiny());
        }
        let (d_model, d_ff, layers, heads) = match short {
            "flan-t5-small" => (512, 1024, 8, 6),
            "flan-t5-base" => (768, 2048, 12, 12),
            "flan-t5-large" => (1024, 2816, 24, 16),
            "flan-t5-xl" => (2048, 5120, 24, 32),
            "flan-t5-xxl" => (4096, 10240, 24, 64),
            _ => return Err(ConfigError::UnknownPreset(name.to_string())),
        };
        let mut extra = serde_json::Map::new();
        extra.insert("model_type".into(), "t5".into());
        extra.insert(
            "architectures".into(),
            serde_json::json!(["T5ForConditionalGeneration"]),
        );
        extra.insert("is_encoder_decoder".into(), true.into());
        extra.insert("dense_act_fn".into(), "gelu_new".into());
        extra.insert("is_gated_act".into(), true.into());
        extra.insert("initializer_factor".into(), 1.0.into());
        Ok(T5Config {
            vocab_size: 32128,
            d_model,
            d_kv: 64,
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: FeedForward::GatedGelu,
            tie_word_embeddings: false,
            decoder_start_token_id: 0,
            pad_token_id: 0,
            eos_token_id: 1,
            extra,
        })
    }

    /// A model small enough for a unit test, with every kind of tensor:
    /// flan-t5-small's settings (gated-GELU, untied head, dropout 0.1) at
    /// vocabulary 64, `d_model` 16, `d_kv` 4, `d_ff` 32, 2 heads and one
    /// layer on each side (the decoder follows `num_layers` unless `change`
    /// sets `num_decoder_layers`). `change` sets what the test needs; the
    /// result is validated, so a test cannot build a config the loader
    /// would refuse.
    pub fn tiny_with(change: impl FnOnce(&mut T5Config)) -> Result<Self, ConfigError> {
        let mut config = T5Config {
            vocab_size: 64,
            d_model: 16,
            d_kv: 4,
            d_ff: 32,
            num_layers: 1,
            num_decoder_layers: None,
            num_heads: 2,
            ..Self::preset("flan-t5-small")?
        };
        change(&mut config);
        config.validate()?;
        Ok(config)
    }

    fn tiny() -> Self {
        let flan = Self::preset("flan-t5-small").expect("flan-t5-small is a preset");
        T5Config {
            vocab_size: 740,
            d_model: 128,
            d_kv: 32,
            d_ff: 256,
            num_layers: 3,
            num_decoder_layers: Some(3),
            num_heads: 4,
            dropout_rate: 0.0,
            // Tied, as in T5 v1.0: the head reuses the (scaled) embedding, so a
            // model trained from scratch starts with unit-scale logits
            // (loss ≈ ln V) instead of Flan's untied std-1 head (loss ≈ 30).
            tie_word_embeddings: true,
            ..flan
        }
    }

    /// The shape in a few words, for reports: `d_model 512, 8+8 layers, 6
    /// heads, gated-gelu`.
    pub fn describe(&self) -> String {
        format!(
            "d_model {}, {}+{} layers, {} heads, {}",
            self.d_model,
            self.num_layers,
            self.decoder_layers(),
            self.num_heads,
            self.feed_forward_proj.name()
        )
    }

    /// Number of parameters, counting `shared` once and `lm_head` when untied.
    pub fn num_parameters(&self) -> usize {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let ff_params = if self.feed_forward_proj.is_gated() {
            3 * d * ff
        } else {
            2 * d * ff
        };
        let attn = 4 * d * inner;
        let bias = self.relative_attention_num_buckets * self.num_heads;
        let encoder = self.num_layers * (attn + ff_params + 2 * d) + bias + d;
        let decoder = self.decoder_layers() * (2 * attn + ff_params + 3 * d) + bias + d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + encoder + decoder + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_count_each_real_token_once() {
        let c = T5Config::preset("flan-t5-small").unwrap();
        let one = c.forward_flops(&[10], &[3]);
        // Two rows are the sum of the rows alone, whatever they are batched with.
        let both = c.forward_flops(&[10, 4], &[3, 2]);
        assert_eq!(both, one + c.forward_flops(&[4], &[2]));
        // One source token, no target: 8 encoder layers of Q, K, V, O
        // (512 × 384) and gated FF (3 × 512 × 1024), the decoder's cross K/V
        // projections, and one (query, key) pair per layer.
        let layer = 4.0 * 512.0 * 384.0 + 3.0 * 512.0 * 1024.0;
        let want = 2.0 * (8.0 * layer + 8.0 * 2.0 * 512.0 * 384.0 + 2.0 * 384.0 * 8.0);
        assert_eq!(c.forward_flops(&[1], &[0]), want);
    }

    #[test]
    fn presets_have_the_published_sizes() {
        // Parameter counts of the Hub checkpoints (safetensors metadata).
        let cases = [
            ("flan-t5-small", 76_961_152),
            ("flan-t5-base", 247_577_856),
            ("google/flan-t5-large", 783_150_080),
        ];
        for (name, params) in cases {
            let c = T5Config::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
        }
        assert!(T5Config::preset("t5-huge").is_err());
    }

    #[test]
    fn round_trip_keeps_unknown_fields_and_defaults_decoder_layers() {
        let text = r#"{"vocab_size": 100, "d_model": 16, "d_kv": 4, "d_ff": 32,
            "num_layers": 2, "num_heads": 3, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false, "model_type": "t5", "custom": [1, 2]}"#;
        let c = T5Config::from_json(text, "test").unwrap();
        assert_eq!(c.decoder_layers(), 2);
        assert_eq!(c.inner_dim(), 12);
        let back = T5Config::from_json(&c.to_json(), "again").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.extra["custom"], serde_json::json!([1, 2]));
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = r#"{"vocab_size": 100, "d_model": 16, "d_kv": 4, "d_ff": 32,
            "num_layers": 2, "num_heads": 3, "feed_forward_proj": "swish"}"#;
        let err = T5Config::from_json(bad, "x").unwrap_err().to_string();
        assert!(err.contains("feed_forward_proj"), "{err}");
        let bad = r#"{"vocab_size": 100, "d_model": 0, "d_kv": 4, "d_ff": 32,
            "num_layers": 2, "num_heads": 3}"#;
        let err = T5Config::from_json(bad, "x").unwrap_err().to_string();
        assert!(err.contains("d_model"), "{err}");
        let err = T5Config::from_json("{", "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg.json"), "{err}");
    }
}

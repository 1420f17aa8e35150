//! The work of a T5 step, derived from the model's own `T5Config`:
//! parameters per layer, FLOPs per pass, activation and state bytes.
//!
//! Symbols (as in `docs/ipu.md`): `b` micro-batch, `s` source length, `t`
//! target length, `d` = `d_model`, `i` = `num_heads · d_kv`, `f` = `d_ff`,
//! `g` = 3 for gated feed-forward (`wi_0`, `wi_1`, `wo`) else 2, `H` heads,
//! `V` vocabulary.

use serde::Serialize;
use tessera_t5_config::T5Config;

/// Training (forward, recomputation, backward, AdamW) or greedy generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One optimizer step over the global batch.
    Train,
    /// Greedy generation of a few tokens per example.
    Infer,
}

/// How greedy generation produces each new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generation {
    /// The seed's eval (PopXL `batch_inference`): every new token re-runs
    /// the encoder and the decoder over the whole padded sequence — the
    /// decoder input is padded to the source length — with no cache.
    Recompute,
    /// The encoder runs once; each new token runs the decoder on one
    /// position against a key/value cache.
    KvCache,
}

/// Bytes per element of each kind of tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ElementBytes {
    /// Weights (fp16 in the seed).
    pub weight_bytes: u64,
    /// Gradient accumulators (fp16, like the weights).
    pub grad_bytes: u64,
    /// AdamW state per parameter: two fp32 moments.
    pub optimizer_state_bytes: u64,
    /// Activations (fp16).
    pub activation_bytes: u64,
    /// Whether matmuls run at the fp16 peak (else the fp32 peak).
    pub fp16_matmuls: bool,
}

impl ElementBytes {
    /// The seed's settings: fp16 weights and matmul partials, AdamW with
    /// fp32 moments.
    pub const SEED: ElementBytes = ElementBytes {
        weight_bytes: 2,
        grad_bytes: 2,
        optimizer_state_bytes: 8,
        activation_bytes: 2,
        fp16_matmuls: true,
    };
}

/// The pass whose working set is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Forward over full sequences.
    Forward,
    /// Recomputation and backward over full sequences.
    Backward,
    /// One generated token against a key/value cache.
    Decode,
}

/// What a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// The shared token embedding (vocab-sharded under TP).
    Embedding,
    /// One encoder block (self-attention + feed-forward).
    Encoder,
    /// One decoder block (self-, cross-attention + feed-forward).
    Decoder,
    /// The LM head and the loss (vocab-sharded under TP).
    LmHead,
}

/// One unit of placement and phasing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Layer {
    /// Its kind.
    pub kind: LayerKind,
    /// Position within its stack (0 for embedding and head).
    pub index: usize,
    /// Parameters it owns (the LM head owns none when tied to the embedding).
    pub params: u64,
    /// Weight elements it reads (the tied LM head reads the embedding).
    pub weight_elems: u64,
}

impl Layer {
    /// A short name: `embedding`, `enc 3`, `dec 17`, `lm head`.
    pub fn name(&self) -> String {
        match self.kind {
            LayerKind::Embedding => "embedding".into(),
            LayerKind::Encoder => format!("enc {}", self.index),
            LayerKind::Decoder => format!("dec {}", self.index),
            LayerKind::LmHead => "lm head".into(),
        }
    }

    /// Whether it is an encoder or decoder block.
    pub fn is_block(&self) -> bool {
        matches!(self.kind, LayerKind::Encoder | LayerKind::Decoder)
    }
}

/// A model, a batch and a mode: everything the strategies cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The name shown in plans (preset name or config path).
    pub model: String,
    /// The model's shapes.
    pub config: T5Config,
    /// Training or generation.
    pub mode: Mode,
    /// Examples per micro-batch (`b`).
    pub micro_batch: u64,
    /// Examples per step over all replicas.
    pub global_batch: u64,
    /// Source tokens (`s`).
    pub source_len: u64,
    /// Target tokens (`t`): the label length in training, the number of
    /// generated tokens in inference.
    pub target_len: u64,
    /// Element sizes.
    pub precision: ElementBytes,
    /// How generation works (inference only).
    pub generation: Generation,
}

impl Workload {
    /// The seed's settings for `mode`. Training: micro-batch 1, global
    /// batch 128, source and target length 512. Inference (the seed's
    /// greedy eval): source cut to the longest validation example (268
    /// tokens), 5 new tokens, micro-batch 20 for XXL-sized models
    /// (`d_model ≥ 4096`) and 24 otherwise (XL), one micro-batch per step,
    /// each token recomputed over the padded sequence.
    pub fn seed(model: &str, config: T5Config, mode: Mode) -> Workload {
        let (micro_batch, global_batch, source_len, target_len) = match mode {
            Mode::Train => (1, 128, 512, 512),
            Mode::Infer => {
                let b = if config.d_model >= 4096 { 20 } else { 24 };
                (b, b, 268, 5)
            }
        };
        Workload {
            model: model.to_string(),
            config,
            mode,
            micro_batch,
            global_batch,
            source_len,
            target_len,
            precision: ElementBytes::SEED,
            generation: Generation::Recompute,
        }
    }

    /// Whether generation decodes one position at a time against a cache.
    pub fn uses_kv_cache(&self) -> bool {
        self.mode == Mode::Infer && self.generation == Generation::KvCache
    }

    /// The forward one new token costs under [`Generation::Recompute`]:
    /// the whole model over `s` source and `s` (padded) target positions.
    pub fn recompute_step(&self) -> Workload {
        Workload {
            target_len: self.source_len,
            ..self.clone()
        }
    }

    /// Width constants `(d, i, f, g, H, V)` of the config.
    fn dims(&self) -> (f64, f64, f64, f64, f64, f64) {
        let c = &self.config;
        let g = if c.feed_forward_proj.is_gated() { 3 } else { 2 };
        (
            c.d_model as f64,
            c.inner_dim() as f64,
            c.d_ff as f64,
            g as f64,
            c.num_heads as f64,
            c.vocab_size as f64,
        )
    }

    /// The layers in execution order: embedding, encoder blocks, decoder
    /// blocks, LM head. Their `params` sum to `T5Config::num_parameters`.
    pub fn layers(&self) -> Vec<Layer> {
        let c = &self.config;
        let (d, i, f) = (c.d_model as u64, c.inner_dim() as u64, c.d_ff as u64);
        let g = if c.feed_forward_proj.is_gated() { 3 } else { 2 };
        let bias = (c.relative_attention_num_buckets * c.num_heads) as u64;
        let vd = c.vocab_size as u64 * d;
        let block = |kind, index, stack_len, attn_mats, norms| {
            // First block holds the relative-position bias, last the final norm.
            let extra =
                if index == 0 { bias } else { 0 } + if index + 1 == stack_len { d } else { 0 };
            let params = attn_mats * d * i + g * d * f + norms * d + extra;
            Layer {
                kind,
                index,
                params,
                weight_elems: params,
            }
        };
        let mut layers = vec![Layer {
            kind: LayerKind::Embedding,
            index: 0,
            params: vd,
            weight_elems: vd,
        }];
        let (enc, dec) = (c.num_layers, c.decoder_layers());
        layers.extend((0..enc).map(|k| block(LayerKind::Encoder, k, enc, 4, 2)));
        layers.extend((0..dec).map(|k| block(LayerKind::Decoder, k, dec, 8, 3)));
        let head_params = if c.tie_word_embeddings { 0 } else { vd };
        layers.push(Layer {
            kind: LayerKind::LmHead,
            index: 0,
            params: head_params,
            weight_elems: vd,
        });
        layers
    }

    /// Forward FLOPs of `layer` for one micro-batch over full sequences
    /// (training, or the encoder pass of generation):
    ///
    /// - encoder: `2bs(4di + gdf) + 4bs²i`
    /// - decoder: `2bt(6di + gdf) + 4bt²i + 4bsdi + 4btsi`
    /// - LM head: `2btdV`; embedding: 0 (a gather).
    pub fn forward_flops(&self, layer: &Layer) -> f64 {
        let (d, i, f, g, _, v) = self.dims();
        let (b, s, t) = (
            self.micro_batch as f64,
            self.source_len as f64,
            self.target_len as f64,
        );
        match layer.kind {
            LayerKind::Embedding => 0.0,
            LayerKind::Encoder => 2.0 * b * s * (4.0 * d * i + g * d * f) + 4.0 * b * s * s * i,
            LayerKind::Decoder => {
                2.0 * b * t * (6.0 * d * i + g * d * f)
                    + 4.0 * b * t * t * i
                    + 4.0 * b * s * d * i
                    + 4.0 * b * t * s * i
            }
            LayerKind::LmHead => 2.0 * b * t * d * v,
        }
    }

    /// Training FLOPs of `layer` per micro-batch: forward, recomputation of
    /// the forward in the backward pass, and a backward of twice the
    /// forward — `4×` forward for blocks; the LM head is not recomputed
    /// (`3×`).
    pub fn train_flops(&self, layer: &Layer) -> f64 {
        let passes = if layer.is_block() { 4.0 } else { 3.0 };
        passes * self.forward_flops(layer)
    }

    /// FLOPs of `layer` for generating token `step` (0-based) of one
    /// micro-batch with a key/value cache:
    ///
    /// - decoder: `2b(6di + gdf) + 4b(step+1)i + 4bsi`, plus `4bsdi` at step
    ///   0 (the cross-attention keys and values of the encoder output)
    /// - LM head: `2bdV`; encoder and embedding: 0.
    pub fn decode_flops(&self, layer: &Layer, step: u64) -> f64 {
        let (d, i, f, g, _, v) = self.dims();
        let (b, s) = (self.micro_batch as f64, self.source_len as f64);
        match layer.kind {
            LayerKind::Decoder => {
                let cross_kv = if step == 0 { 4.0 * b * s * d * i } else { 0.0 };
                2.0 * b * (6.0 * d * i + g * d * f)
                    + 4.0 * b * (step as f64 + 1.0) * i
                    + 4.0 * b * s * i
                    + cross_kv
            }
            LayerKind::LmHead => 2.0 * b * d * v,
            LayerKind::Encoder | LayerKind::Embedding => 0.0,
        }
    }

    /// Token rows of `layer`'s matmuls for one micro-batch in `pass`: `b·s`
    /// for the encoder, `b·t` for the decoder and LM head, `b` when decoding
    /// one token; `b·(s + t)` for the embedding.
    pub fn matmul_rows(&self, layer: &Layer, pass: Pass) -> f64 {
        let (b, s, t) = (self.micro_batch, self.source_len, self.target_len);
        let rows = match (layer.kind, pass) {
            (LayerKind::Embedding, _) => b * (s + t),
            (LayerKind::Encoder, _) => b * s,
            (_, Pass::Decode) => b,
            _ => b * t,
        };
        rows as f64
    }

    /// Bytes of one micro-batch's hidden state over `len` tokens: `b·len·d`
    /// activation elements.
    pub fn hidden_bytes(&self, len: u64) -> f64 {
        (self.micro_batch * len * self.config.d_model as u64 * self.precision.activation_bytes)
            as f64
    }

    /// Peak activation bytes on one IPU while `layer` runs `pass` on one
    /// micro-batch, with heads, `d_ff` and vocabulary split `n` ways (the
    /// full-width hidden states are not split). A forward pass holds the
    /// block's hidden states plus its largest sub-layer (attention
    /// `2bqi/n + 2bki/n + 2b(H/n)qk` for `q` queries and `k` keys, or
    /// feed-forward `gbqf/n`), since each sub-layer's temporaries die before
    /// the next starts; the backward pass of a recomputed block holds all
    /// of them and their gradients (twice the sum).
    pub fn working_bytes(&self, layer: &Layer, n: u64, pass: Pass) -> f64 {
        let (d, i, f, g, h, v) = self.dims();
        let n = n as f64;
        let (b, s, t) = (
            self.micro_batch as f64,
            self.source_len as f64,
            self.target_len as f64,
        );
        let act = self.precision.activation_bytes as f64;
        let q = if pass == Pass::Decode { 1.0 } else { t };
        let attention =
            |q: f64, k: f64| 2.0 * b * q * i / n + 2.0 * b * k * i / n + 2.0 * b * (h / n) * q * k;
        let (hidden, sublayers) = match layer.kind {
            LayerKind::Embedding => (b * (s + q) * d, [0.0; 3]),
            LayerKind::Encoder if pass == Pass::Decode => (0.0, [0.0; 3]),
            LayerKind::Encoder => (2.0 * b * s * d, [attention(s, s), g * b * s * f / n, 0.0]),
            LayerKind::Decoder => (
                2.0 * b * q * d + b * s * d,
                [attention(q, t), attention(q, s), g * b * q * f / n],
            ),
            // fp32 logits (4 bytes each), counted in activation elements.
            LayerKind::LmHead => (b * q * d, [b * q * (v / n) * 4.0 / act, 0.0, 0.0]),
        };
        let elems = match pass {
            Pass::Backward => 2.0 * (hidden + sublayers.iter().sum::<f64>()),
            Pass::Forward | Pass::Decode => hidden + sublayers.iter().copied().fold(0.0, f64::max),
        };
        elems * act
    }

    /// Bytes of one decoder layer's key/value cache for one micro-batch,
    /// split `n` ways: self-attention `2·b·t·i` plus cross-attention `2·b·s·i`.
    pub fn kv_cache_bytes(&self, n: u64) -> f64 {
        let i = self.config.inner_dim() as f64;
        let (b, s, t) = (
            self.micro_batch as f64,
            self.source_len as f64,
            self.target_len as f64,
        );
        2.0 * b * (t + s) * i * self.precision.activation_bytes as f64 / n as f64
    }

    /// Micro-batches each replica runs per step (gradient accumulation),
    /// or `None` when the global batch does not split evenly.
    pub fn micro_batches_per_replica(&self, replicas: u64) -> Option<u64> {
        let per_step = self.micro_batch * replicas;
        (per_step > 0 && self.global_batch.is_multiple_of(per_step))
            .then(|| self.global_batch / per_step)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny model with round numbers for hand computation:
    /// d = 8, i = 2·4 = 8, f = 16 (gated, g = 3), V = 10, 2 + 2 layers.
    pub(crate) fn tiny() -> Workload {
        let json = r#"{"vocab_size": 10, "d_model": 8, "d_kv": 4, "d_ff": 16,
            "num_layers": 2, "num_heads": 2, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false, "relative_attention_num_buckets": 4}"#;
        Workload {
            model: "tiny".into(),
            config: T5Config::from_json(json, "tiny").expect("valid tiny config"),
            mode: Mode::Train,
            micro_batch: 2,
            global_batch: 8,
            source_len: 3,
            target_len: 5,
            precision: ElementBytes::SEED,
            generation: Generation::KvCache,
        }
    }

    /// The tiny workload on a POD4 with one replica, `global_batch`
    /// examples and `strategy`.
    pub(crate) fn tiny_request(strategy: crate::Strategy, global_batch: u64) -> crate::Request {
        crate::Request {
            workload: Workload {
                global_batch,
                ..tiny()
            },
            pod: crate::Pod::named("pod4").expect("known pod"),
            strategy,
            replicas: 1,
            assumptions: crate::Assumptions::DEFAULT,
        }
    }

    #[test]
    fn layer_params_sum_to_the_config_count() {
        for w in [tiny(), xxl()] {
            let sum: u64 = w.layers().iter().map(|l| l.params).sum();
            assert_eq!(sum, w.config.num_parameters() as u64, "{}", w.model);
        }
    }

    pub(crate) fn xxl() -> Workload {
        Workload {
            model: "flan-t5-xxl".into(),
            config: T5Config::preset("flan-t5-xxl").expect("preset"),
            ..tiny()
        }
    }

    #[test]
    fn tiny_layer_params_by_hand() {
        let layers = tiny().layers();
        // embedding 10·8; enc 0: 4·8·8 + 3·8·16 + 2·8 + bias 4·2 = 256+384+16+8.
        assert_eq!(layers[0].params, 80);
        assert_eq!(layers[1].params, 664);
        // enc 1 (last): 656 + final norm 8.
        assert_eq!(layers[2].params, 664);
        // dec 0: 8·64 + 384 + 24 + 8 = 928; head 80.
        assert_eq!(layers[3].params, 928);
        assert_eq!(layers[5].params, 80);
        assert_eq!(layers[5].name(), "lm head");
    }

    #[test]
    fn forward_flops_by_hand() {
        let w = tiny();
        let l = w.layers();
        // enc: 2·2·3·(4·64 + 3·128) + 4·2·9·8 = 12·640 + 576 = 8256.
        assert_eq!(w.forward_flops(&l[1]), 8256.0);
        // dec: 2·2·5·(6·64 + 384) + 4·2·25·8 + 4·2·3·64 + 4·2·5·3·8
        //    = 20·768 + 1600 + 1536 + 960 = 19456.
        assert_eq!(w.forward_flops(&l[3]), 19456.0);
        // head: 2·2·5·8·10 = 1600; embedding: 0.
        assert_eq!(w.forward_flops(&l[5]), 1600.0);
        assert_eq!(w.forward_flops(&l[0]), 0.0);
        assert_eq!(w.train_flops(&l[1]), 4.0 * 8256.0);
        assert_eq!(w.train_flops(&l[5]), 3.0 * 1600.0);
    }

    #[test]
    fn decode_flops_by_hand() {
        let w = tiny();
        let l = w.layers();
        // step 1: 2·2·768 + 4·2·2·8 + 4·2·3·8 = 3072 + 128 + 192 = 3392.
        assert_eq!(w.decode_flops(&l[3], 1), 3392.0);
        // step 0 adds 4·2·3·8·8 = 1536 and attends to one key: 3072+64+192+1536.
        assert_eq!(w.decode_flops(&l[3], 0), 4864.0);
        assert_eq!(w.decode_flops(&l[5], 3), 2.0 * 2.0 * 8.0 * 10.0);
        assert_eq!(w.decode_flops(&l[1], 0), 0.0);
    }

    #[test]
    fn activation_bytes_by_hand() {
        let w = tiny();
        let l = w.layers();
        assert_eq!(w.hidden_bytes(3), 2.0 * 3.0 * 8.0 * 2.0);
        // enc, n = 2: hidden 2bsd = 96; attention 2bsi/n + 2bsi/n + 2b(H/n)s²
        // = 48 + 48 + 36 = 132; feed-forward gbsf/n = 144 (elements of 2 bytes).
        assert_eq!(
            w.working_bytes(&l[1], 2, Pass::Forward),
            (96.0 + 144.0) * 2.0
        );
        assert_eq!(
            w.working_bytes(&l[1], 2, Pass::Backward),
            2.0 * (96.0 + 132.0 + 144.0) * 2.0
        );
        // head, n = 2: bt·d = 80 elements, plus bt·(V/n) = 50 fp32 logits.
        assert_eq!(w.working_bytes(&l[5], 2, Pass::Forward), 160.0 + 200.0);
        // decode, dec, n = 2: hidden 2bd + bsd = 32 + 48; self-attention over
        // t = 5 cached keys 2bi/n + 2bti/n + 2b(H/n)t = 16 + 80 + 20 = 116 is
        // the largest sub-layer (cross: 16 + 48 + 12 = 76; feed-forward 48).
        assert_eq!(
            w.working_bytes(&l[3], 2, Pass::Decode),
            (80.0 + 116.0) * 2.0
        );
        // kv cache, n = 2: 2·2·(5+3)·8·2 / 2.
        assert_eq!(w.kv_cache_bytes(2), 256.0);
    }

    #[test]
    fn matmul_rows_by_hand() {
        let w = tiny();
        let l = w.layers();
        assert_eq!(w.matmul_rows(&l[1], Pass::Backward), 6.0);
        assert_eq!(w.matmul_rows(&l[3], Pass::Forward), 10.0);
        assert_eq!(w.matmul_rows(&l[5], Pass::Decode), 2.0);
    }

    #[test]
    fn micro_batches_split_the_global_batch() {
        let w = tiny();
        assert_eq!(w.micro_batches_per_replica(2), Some(2));
        assert_eq!(w.micro_batches_per_replica(3), None);
    }
}

//! Parameter storage: every weight of the model in one flat f32 buffer,
//! with a table of (Hugging Face name, shape, offset).
//!
//! Gradients use the same layout ([`ParamStore::zeros_like`]), so an
//! optimizer can walk `(name, param, grad)` triples as flat slices
//! ([`ParamStore::zip_mut`]) or treat the whole model as one vector (global
//! gradient norm, weight decay masks by name). The model holds exactly one
//! copy of each weight: tied weights (`encoder.embed_tokens`,
//! `decoder.embed_tokens`, a tied `lm_head`) are not stored separately but
//! resolve to `shared.weight`.

use crate::config::{FeedForward, T5Config};

/// Index of one parameter in a [`ParamStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// Position of the parameter in storage order.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Name, shape and place of one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Hugging Face name, e.g. `encoder.block.0.layer.0.SelfAttention.q.weight`.
    pub name: String,
    /// Shape as Hugging Face stores it (Linear weights are `[out, in]`).
    pub shape: Vec<usize>,
    offset: usize,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether this is a layer-norm weight (excluded from weight decay).
    pub fn is_layer_norm(&self) -> bool {
        self.name.contains("layer_norm")
    }
}

/// Named f32 tensors laid out back to back in one buffer.
#[derive(Clone, PartialEq)]
pub struct ParamStore {
    entries: Vec<ParamEntry>,
    data: Vec<f32>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ParamStore({} tensors, {} values)",
            self.entries.len(),
            self.data.len()
        )
    }
}

impl ParamStore {
    fn new() -> Self {
        ParamStore {
            entries: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Registers a zero-filled parameter and returns its id.
    fn push(&mut self, name: String, shape: Vec<usize>) -> ParamId {
        let entry = ParamEntry {
            name,
            shape,
            offset: self.data.len(),
        };
        self.data.resize(self.data.len() + entry.numel(), 0.0);
        self.entries.push(entry);
        ParamId(self.entries.len() - 1)
    }

    /// A store with the same layout, all zeros (for gradients or optimizer state).
    pub fn zeros_like(&self) -> Self {
        ParamStore {
            entries: self.entries.clone(),
            data: vec![0.0; self.data.len()],
        }
    }

    /// Sets every value to zero (between optimizer steps).
    pub fn zero(&mut self) {
        self.data.fill(0.0);
    }

    /// The table of parameters, in storage order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// The id of the parameter with this Hugging Face name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(ParamId)
    }

    /// Every parameter's id, in storage order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.entries.len()).map(ParamId)
    }

    /// The entry of a parameter.
    pub fn entry(&self, id: ParamId) -> &ParamEntry {
        &self.entries[id.0]
    }

    /// A parameter's values.
    pub fn get(&self, id: ParamId) -> &[f32] {
        let e = &self.entries[id.0];
        &self.data[e.offset..e.offset + e.numel()]
    }

    /// A parameter's values, mutable.
    pub fn get_mut(&mut self, id: ParamId) -> &mut [f32] {
        let e = &self.entries[id.0];
        let (start, len) = (e.offset, e.numel());
        &mut self.data[start..start + len]
    }

    /// All values as one vector, in entry order.
    pub fn flat(&self) -> &[f32] {
        &self.data
    }

    /// All values as one mutable vector, in entry order.
    pub fn flat_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// `(entry, values)` for every parameter.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamEntry, &[f32])> {
        self.entries
            .iter()
            .map(|e| (e, &self.data[e.offset..e.offset + e.numel()]))
    }

    /// `(entry, param, grad)` for every parameter, for optimizers. `grads`
    /// must come from [`ParamStore::zeros_like`] of this store.
    pub fn zip_mut<'a>(
        &'a mut self,
        grads: &'a ParamStore,
    ) -> impl Iterator<Item = (&'a ParamEntry, &'a mut [f32], &'a [f32])> {
        assert_eq!(self.entries, grads.entries, "gradients have another layout");
        let mut rest = self.data.as_mut_slice();
        self.entries.iter().map(move |e| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(e.numel());
            rest = tail;
            (e, head, &grads.data[e.offset..e.offset + e.numel()])
        })
    }
}

/// Parameters of one attention sublayer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionIds {
    /// Query projection `[inner, d_model]`.
    pub q: ParamId,
    /// Key projection.
    pub k: ParamId,
    /// Value projection.
    pub v: ParamId,
    /// Output projection `[d_model, inner]`.
    pub o: ParamId,
}

/// Parameters of one feed-forward sublayer.
#[derive(Debug, Clone, Copy)]
pub struct FeedForwardIds {
    /// `wi` (relu) or `wi_0` (gated), `[d_ff, d_model]`.
    pub wi: ParamId,
    /// `wi_1` of a gated block.
    pub wi_gate: Option<ParamId>,
    /// `wo`, `[d_model, d_ff]`.
    pub wo: ParamId,
}

/// What a sublayer computes.
#[derive(Debug, Clone, Copy)]
pub enum SublayerKind {
    /// Self-attention over the stack's own tokens.
    SelfAttention(AttentionIds),
    /// Decoder attention over the encoder output.
    CrossAttention(AttentionIds),
    /// The feed-forward block.
    FeedForward(FeedForwardIds),
}

/// A pre-norm residual sublayer: `x + dropout(f(layer_norm(x)))`.
#[derive(Debug, Clone, Copy)]
pub struct SublayerIds {
    /// The RMS norm weight.
    pub norm: ParamId,
    /// The function.
    pub kind: SublayerKind,
}

/// An encoder or decoder stack.
#[derive(Debug, Clone)]
pub struct StackIds {
    /// Blocks, each a list of sublayers.
    pub blocks: Vec<Vec<SublayerIds>>,
    /// `relative_attention_bias` of block 0, `[num_buckets, num_heads]`.
    pub relative_bias: ParamId,
    /// `final_layer_norm`.
    pub final_norm: ParamId,
}

/// Ids of every parameter of a T5 model.
#[derive(Debug, Clone)]
pub struct ModelIds {
    /// `shared.weight`, `[vocab, d_model]`.
    pub shared: ParamId,
    /// The encoder.
    pub encoder: StackIds,
    /// The decoder.
    pub decoder: StackIds,
    /// `lm_head.weight` when untied; the tied head reads `shared`.
    pub lm_head: Option<ParamId>,
}

/// Builds the zeroed parameter store for a config, in Hugging Face's order.
pub fn layout(config: &T5Config) -> (ParamStore, ModelIds) {
    let mut store = ParamStore::new();
    let d = config.d_model;
    let shared = store.push("shared.weight".into(), vec![config.vocab_size, d]);
    let encoder = stack_layout(&mut store, config, "encoder", config.num_layers);
    let decoder = stack_layout(&mut store, config, "decoder", config.decoder_layers());
    let lm_head = (!config.tie_word_embeddings)
        .then(|| store.push("lm_head.weight".into(), vec![config.vocab_size, d]));
    let ids = ModelIds {
        shared,
        encoder,
        decoder,
        lm_head,
    };
    (store, ids)
}

fn stack_layout(store: &mut ParamStore, c: &T5Config, stack: &str, layers: usize) -> StackIds {
    let is_decoder = stack == "decoder";
    let (d, inner) = (c.d_model, c.inner_dim());
    let mut relative_bias = None;
    let mut blocks = Vec::with_capacity(layers);
    for i in 0..layers {
        let mut push = |suffix: &str, shape: Vec<usize>| {
            store.push(format!("{stack}.block.{i}.{suffix}"), shape)
        };
        let attention =
            |layer: usize, module: &str, push: &mut dyn FnMut(&str, Vec<usize>) -> ParamId| {
                let p = format!("layer.{layer}.{module}");
                AttentionIds {
                    q: push(&format!("{p}.q.weight"), vec![inner, d]),
                    k: push(&format!("{p}.k.weight"), vec![inner, d]),
                    v: push(&format!("{p}.v.weight"), vec![inner, d]),
                    o: push(&format!("{p}.o.weight"), vec![d, inner]),
                }
            };
        let mut sublayers = Vec::new();
        let self_attn = attention(0, "SelfAttention", &mut push);
        if i == 0 {
            relative_bias = Some(push(
                "layer.0.SelfAttention.relative_attention_bias.weight",
                vec![c.relative_attention_num_buckets, c.num_heads],
            ));
        }
        sublayers.push(SublayerIds {
            norm: push("layer.0.layer_norm.weight", vec![d]),
            kind: SublayerKind::SelfAttention(self_attn),
        });
        if is_decoder {
            let cross = attention(1, "EncDecAttention", &mut push);
            sublayers.push(SublayerIds {
                norm: push("layer.1.layer_norm.weight", vec![d]),
                kind: SublayerKind::CrossAttention(cross),
            });
        }
        let ff = sublayers.len();
        let p = format!("layer.{ff}.DenseReluDense");
        let ff_ids = if c.feed_forward() == FeedForward::Relu {
            FeedForwardIds {
                wi: push(&format!("{p}.wi.weight"), vec![c.d_ff, d]),
                wi_gate: None,
                wo: push(&format!("{p}.wo.weight"), vec![d, c.d_ff]),
            }
        } else {
            FeedForwardIds {
                wi: push(&format!("{p}.wi_0.weight"), vec![c.d_ff, d]),
                wi_gate: Some(push(&format!("{p}.wi_1.weight"), vec![c.d_ff, d])),
                wo: push(&format!("{p}.wo.weight"), vec![d, c.d_ff]),
            }
        };
        sublayers.push(SublayerIds {
            norm: push(&format!("layer.{ff}.layer_norm.weight"), vec![d]),
            kind: SublayerKind::FeedForward(ff_ids),
        });
        blocks.push(sublayers);
    }
    let final_norm = store.push(format!("{stack}.final_layer_norm.weight"), vec![d]);
    StackIds {
        blocks,
        relative_bias: relative_bias.expect("config validation guarantees at least one layer"),
        final_norm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_counts_match_the_config_and_zip_walks_everything() {
        for name in ["flan-t5-small", "flan-t5-base"] {
            let c = T5Config::preset(name).unwrap();
            let (store, ids) = layout(&c);
            assert_eq!(store.flat().len(), c.num_parameters(), "{name}");
            assert!(ids.lm_head.is_some());
            assert_eq!(
                store.entry(ids.decoder.blocks[1][2].norm).name,
                "decoder.block.1.layer.2.layer_norm.weight"
            );
        }
        let mut c = T5Config::preset("flan-t5-small").unwrap();
        c.num_layers = 1;
        c.num_decoder_layers = Some(1);
        let (mut store, _) = layout(&c);
        let mut grads = store.zeros_like();
        grads.flat_mut().fill(1.0);
        let mut total = 0;
        for (_, p, g) in store.zip_mut(&grads) {
            assert_eq!(p.len(), g.len());
            p.copy_from_slice(g);
            total += p.len();
        }
        assert_eq!(total, store.flat().len());
        assert!(store.flat().iter().all(|&v| v == 1.0));
    }
}

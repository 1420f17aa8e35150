//! Parameter storage: every weight of the model back to back in one flat
//! buffer (f32, or bf16/fp16 for a model that keeps its weights in 16
//! bits), with a table of (Hugging Face name, shape, offset).
//!
//! Gradients and optimizer state use the same layout in f32
//! ([`ParamStore::zeros_like`]), so an optimizer walks the table
//! ([`ParamStore::entries`]) against one flat slice of each
//! ([`ParamStore::flat_values_mut`], [`ParamStore::flat`]), and the whole
//! model is one vector for the global gradient norm. The model holds exactly one
//! copy of each weight: tied weights (`encoder.embed_tokens`,
//! `decoder.embed_tokens`, a tied `lm_head`) are not stored separately but
//! resolve to `shared.weight`.

use crate::precision::{Operand, OperandRef, Precision};
use std::borrow::Cow;
use tessera_t5_config::{FeedForward, T5Config};
use tessera_tensor::memory::zero_fill;
use tessera_tensor::{bf16, f16, DType, Element};

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

/// Named tensors laid out back to back in one buffer: f32, or bf16/fp16
/// for a model that keeps its weights in 16 bits
/// ([`crate::T5Model::store_weights_in_precision`]). Gradients and
/// optimizer state are always f32.
#[derive(Clone, PartialEq)]
pub struct ParamStore {
    entries: Vec<ParamEntry>,
    values: Operand,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ParamStore({} tensors, {} {} values)",
            self.entries.len(),
            self.len(),
            self.dtype()
        )
    }
}

/// Every value of a store, mutable, in its storage type (what an optimizer
/// step writes).
#[derive(Debug)]
pub enum FlatMut<'a> {
    /// An f32 store.
    F32(&'a mut [f32]),
    /// A bf16 store.
    Bf16(&'a mut [bf16]),
    /// An fp16 store.
    F16(&'a mut [f16]),
}

impl ParamStore {
    pub(crate) fn new() -> Self {
        Self::new_as(DType::F32)
    }

    /// An empty store whose values are kept as `dtype`.
    fn new_as(dtype: DType) -> Self {
        let values = match dtype {
            DType::F32 => Operand::F32(Vec::new()),
            DType::BF16 => Operand::Bf16(Vec::new()),
            DType::F16 => Operand::F16(Vec::new()),
        };
        ParamStore {
            entries: Vec::new(),
            values,
        }
    }

    /// Registers a zero-filled parameter and returns its id.
    pub(crate) fn push(&mut self, name: String, shape: Vec<usize>) -> ParamId {
        let entry = ParamEntry {
            name,
            shape,
            offset: self.len(),
        };
        let len = self.len() + entry.numel();
        match &mut self.values {
            Operand::F32(v) => v.resize(len, 0.0),
            Operand::Bf16(v) => v.resize(len, bf16::ZERO),
            Operand::F16(v) => v.resize(len, f16::ZERO),
        }
        self.entries.push(entry);
        ParamId(self.entries.len() - 1)
    }

    /// Sets parameter `id` to `values`, rounded to nearest-even when the
    /// store is 16-bit. Returns the index of the first value that is not
    /// finite once stored (an fp16 overflow), leaving the parameter set.
    pub(crate) fn set_from_f32(&mut self, id: ParamId, values: &[f32]) -> Option<usize> {
        let e = &self.entries[id.index()];
        let range = e.offset..e.offset + e.numel();
        assert_eq!(
            values.len(),
            range.len(),
            "{}: one value per element",
            e.name
        );
        match &mut self.values {
            Operand::F32(v) => v[range].copy_from_slice(values),
            Operand::Bf16(v) => bf16::slice_from_f32(values, &mut v[range]),
            Operand::F16(v) => f16::slice_from_f32(values, &mut v[range]),
        }
        self.view(id).first_non_finite().map(|(i, _)| i)
    }

    /// An f32 store with the same layout, all zeros (for gradients or
    /// optimizer state, whatever this store's type).
    pub fn zeros_like(&self) -> Self {
        ParamStore {
            entries: self.entries.clone(),
            values: Operand::F32(vec![0.0; self.len()]),
        }
    }

    /// This store with every value rounded to nearest-even in `dtype`
    /// (values beyond fp16's range become infinite: see
    /// [`ParamStore::first_non_finite`]).
    pub fn converted(&self, dtype: DType) -> Self {
        let wide = self.values.view().widened();
        let values = match dtype {
            DType::F32 => Operand::F32(wide.into_owned()),
            DType::BF16 => Precision::Bf16.round(&wide),
            DType::F16 => Precision::Fp16.round(&wide),
        };
        ParamStore {
            entries: self.entries.clone(),
            values,
        }
    }

    /// XXH3-128 (hex) of every parameter's name, shape and values as
    /// stored (little-endian, in the store's dtype): equal for the same
    /// weights loaded the same way, different for any other. A LoRA
    /// checkpoint records its base's, and a resume checks it.
    pub fn fingerprint(&self) -> String {
        use std::io::Write;
        let mut h = crate::folder::HashingWriter::new(std::io::sink());
        let mut put = |bytes: &[u8]| h.write_all(bytes).expect("a sink takes every byte");
        put(self.dtype().to_string().as_bytes());
        for e in &self.entries {
            put(e.name.as_bytes());
            for d in &e.shape {
                put(&(*d as u64).to_le_bytes());
            }
        }
        let mut buf = Vec::with_capacity(1 << 16);
        let mut flush = |buf: &mut Vec<u8>| {
            put(buf);
            buf.clear();
        };
        macro_rules! values {
            ($v:expr) => {
                for chunk in $v.chunks(1 << 14) {
                    buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                    flush(&mut buf);
                }
            };
        }
        match &self.values {
            Operand::F32(v) => values!(v),
            Operand::Bf16(v) => values!(v),
            Operand::F16(v) => values!(v),
        }
        h.digest().1
    }

    /// The parameter and index of the first infinite or NaN value.
    pub fn first_non_finite(&self) -> Option<(ParamId, usize)> {
        self.ids().find_map(|id| {
            let at = self.widened(id).iter().position(|v| !v.is_finite())?;
            Some((id, at))
        })
    }

    /// Sets every value to zero (between optimizer steps), on every worker
    /// thread ([`zero_fill`]): a whole model's gradients are hundreds of MB.
    pub fn zero(&mut self) {
        match &mut self.values {
            Operand::F32(v) => zero_fill(v),
            Operand::Bf16(v) => zero_fill(v),
            Operand::F16(v) => zero_fill(v),
        }
    }

    /// The storage type of the values.
    pub fn dtype(&self) -> DType {
        self.values.view().dtype()
    }

    /// Number of values (all parameters together).
    pub fn len(&self) -> usize {
        self.values.view().len()
    }

    /// Whether the store holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// A parameter's values in their storage type.
    pub fn view(&self, id: ParamId) -> OperandRef<'_> {
        let e = &self.entries[id.0];
        self.values.view().slice(e.offset..e.offset + e.numel())
    }

    /// A parameter's values as f32: borrowed from an f32 store, widened
    /// from a 16-bit one.
    pub fn widened(&self, id: ParamId) -> Cow<'_, [f32]> {
        self.view(id).widened()
    }

    /// `(entry, values)` for every parameter, in the storage type.
    pub fn views(&self) -> impl Iterator<Item = (&ParamEntry, OperandRef<'_>)> {
        self.ids().map(|id| (self.entry(id), self.view(id)))
    }

    /// Every value, mutable, in the storage type.
    pub fn flat_values_mut(&mut self) -> FlatMut<'_> {
        match &mut self.values {
            Operand::F32(v) => FlatMut::F32(v),
            Operand::Bf16(v) => FlatMut::Bf16(v),
            Operand::F16(v) => FlatMut::F16(v),
        }
    }

    fn f32s(&self) -> &[f32] {
        match &self.values {
            Operand::F32(v) => v,
            other => panic!("an f32 store was expected, not {}", other.view().dtype()),
        }
    }

    fn f32s_mut(&mut self) -> &mut Vec<f32> {
        match &mut self.values {
            Operand::F32(v) => v,
            other => panic!("an f32 store was expected, not {}", other.view().dtype()),
        }
    }

    /// A parameter's values, of an f32 store.
    ///
    /// # Panics
    /// For a 16-bit store (read it with [`ParamStore::view`] or
    /// [`ParamStore::widened`]); the same holds for every f32 accessor below.
    pub fn get(&self, id: ParamId) -> &[f32] {
        let e = &self.entries[id.0];
        &self.f32s()[e.offset..e.offset + e.numel()]
    }

    /// A parameter's values, mutable, of an f32 store.
    pub fn get_mut(&mut self, id: ParamId) -> &mut [f32] {
        let e = &self.entries[id.0];
        let (start, len) = (e.offset, e.numel());
        &mut self.f32s_mut()[start..start + len]
    }

    /// Two different parameters of an f32 store, both mutable.
    ///
    /// # Panics
    /// If `a == b`, or the store is not f32.
    pub fn get_pair_mut(&mut self, a: ParamId, b: ParamId) -> (&mut [f32], &mut [f32]) {
        assert_ne!(a, b, "two different parameters");
        let (ea, eb) = (&self.entries[a.index()], &self.entries[b.index()]);
        let (ra, rb) = (
            ea.offset..ea.offset + ea.numel(),
            eb.offset..eb.offset + eb.numel(),
        );
        let data = self.f32s_mut();
        if ra.start < rb.start {
            let (lo, hi) = data.split_at_mut(rb.start);
            (&mut lo[ra], &mut hi[..rb.len()])
        } else {
            let (lo, hi) = data.split_at_mut(ra.start);
            (&mut hi[..ra.len()], &mut lo[rb])
        }
    }

    /// All values of an f32 store as one vector, in entry order.
    pub fn flat(&self) -> &[f32] {
        self.f32s()
    }

    /// All values of an f32 store as one mutable vector, in entry order.
    pub fn flat_mut(&mut self) -> &mut [f32] {
        self.f32s_mut()
    }

    /// `(entry, values)` for every parameter of an f32 store.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamEntry, &[f32])> {
        let data = self.f32s();
        self.entries
            .iter()
            .map(move |e| (e, &data[e.offset..e.offset + e.numel()]))
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
    layout_as(config, DType::F32)
}

/// [`layout`] with the values kept as `dtype`.
pub fn layout_as(config: &T5Config, dtype: DType) -> (ParamStore, ModelIds) {
    let mut store = ParamStore::new_as(dtype);
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
        let ff_ids = if c.feed_forward_proj == FeedForward::Relu {
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
    fn layout_counts_match_the_config() {
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
    }

    fn tiny_store() -> ParamStore {
        let mut c = T5Config::preset("flan-t5-small").unwrap();
        (c.vocab_size, c.d_model, c.d_kv, c.num_heads, c.d_ff) = (40, 8, 4, 2, 12);
        (c.num_layers, c.num_decoder_layers) = (1, Some(1));
        let (mut store, _) = layout(&c);
        for (i, v) in store.flat_mut().iter_mut().enumerate() {
            *v = (i as f32 * 0.61).sin() * 3.0;
        }
        store
    }

    #[test]
    fn sixteen_bit_stores_round_once_and_read_back_widened() {
        let store = tiny_store();
        for dtype in [DType::BF16, DType::F16] {
            let narrow = store.converted(dtype);
            assert_eq!((narrow.dtype(), narrow.len()), (dtype, store.len()));
            assert_eq!(narrow.entries(), store.entries());
            assert_eq!(narrow.zeros_like().dtype(), DType::F32);
            for id in store.ids() {
                assert_eq!(narrow.view(id).dtype(), dtype);
                let want: Vec<f32> = store
                    .get(id)
                    .iter()
                    .map(|&v| match dtype {
                        DType::BF16 => bf16::from_f32(v).to_f32(),
                        _ => f16::from_f32(v).to_f32(),
                    })
                    .collect();
                assert_eq!(*narrow.widened(id), want[..], "{}", store.entry(id).name);
            }
            assert!(narrow.converted(DType::F32) == narrow.converted(dtype).converted(DType::F32));
            assert_eq!(narrow.first_non_finite(), None);
        }
        let mut big = store.clone();
        let last = big.ids().last().unwrap();
        big.get_mut(last)[2] = 1e6;
        assert_eq!(
            big.converted(DType::F16).first_non_finite(),
            Some((last, 2))
        );
        assert_eq!(big.converted(DType::BF16).first_non_finite(), None);
    }

    #[test]
    #[should_panic(expected = "an f32 store was expected, not bf16")]
    fn f32_accessors_refuse_a_sixteen_bit_store() {
        let _ = tiny_store().converted(DType::BF16).flat();
    }
}

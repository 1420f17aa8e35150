//! Batched greedy generation with a KV cache, on packed sources.
//!
//! The encoder runs once on the real tokens of every source; each decoder
//! layer's cross-attention keys and values are projected once from its
//! output and read, per row, at that row's place; the decoder's
//! self-attention keys and values go into a per-row cache one position per
//! step. A row that emits `</s>` leaves the step batch, so late steps cost
//! only the rows still running; generation stops when every row has
//! finished or after `max_new_tokens`. Output rows follow Hugging Face's
//! `generate`: `[decoder_start_token_id, t1, t2, …]`, padded after `</s>`
//! to the longest row.
//!
//! A [`Generator`] packs every linear weight once ([`Prepacked`]): a step
//! multiplies each decoder weight by a few rows, so packing it anew each
//! time would cost as much as the product, and the encoder's weights,
//! packed once, serve every batch of an evaluation.
//! [`Generator::score_and_generate`] serves evaluation: one encoder pass
//! feeds both the teacher-forced loss and the generation.

use crate::attention::{
    offset_buckets, position_bias_forward, Attention, Bias, ProbDropout, Qkv, SeqRows, Seqs,
};
use crate::layers::{
    norm_only, project_heads, sublayer_forward, Prepacked, Site, StackContext, Weights,
};
use crate::model::{Batch, Encoded, ModelError, T5Model};
use crate::params::{AttentionIds, ParamId, SublayerIds, SublayerKind};
use crate::precision::Operand;
use crate::stack::{embed, Keep};
use tessera_tensor::ops::crossentropy::CrossEntropy;
use tessera_tensor::ops::residual;
use tessera_tensor::Result;

/// Keys and values one decoder layer attends to while generating.
struct LayerKv {
    /// Self-attention cache `[rows, heads, capacity, d_kv]`.
    self_k: Vec<f32>,
    self_v: Vec<f32>,
    /// Cross-attention keys and values, each source's `[heads, len, d_kv]`
    /// back to back.
    cross_k: Vec<f32>,
    cross_v: Vec<f32>,
}

impl LayerKv {
    /// Cross-attention keys and values (widened for the attention kernel)
    /// and an empty self-attention cache of `cache_len` values each.
    fn new(cross_k: Operand, cross_v: Operand, cache_len: usize) -> Self {
        LayerKv {
            self_k: vec![0.0; cache_len],
            self_v: vec![0.0; cache_len],
            cross_k: cross_k.into_widened(),
            cross_v: cross_v.into_widened(),
        }
    }
}

/// The state of one decoding step shared by all layers: which rows run,
/// and where their queries and keys lie, laid out once per step.
struct Step<'a> {
    /// The rows still running, by index into the batch.
    active: &'a [usize],
    /// Position being generated (0-based).
    t: usize,
    /// Room in the self-attention cache.
    capacity: usize,
    /// Self-attention bias for this position, `[heads, t + 1]` (offsets `-t..=0`).
    bias: &'a [f32],
    /// One query row per running row.
    queries: Seqs,
    /// Each running row's self-attention cache: its first row and `t + 1` keys.
    self_starts: Vec<usize>,
    self_lens: Vec<usize>,
    /// Each running row's encoder keys: its source's rows.
    cross_starts: Vec<usize>,
    cross_lens: Vec<usize>,
}

impl<'a> Step<'a> {
    fn new(
        (active, t, capacity): (&'a [usize], usize, usize),
        bias: &'a [f32],
        sources: &Seqs,
    ) -> Self {
        Step {
            active,
            t,
            capacity,
            bias,
            queries: Seqs::new(vec![1; active.len()]),
            self_starts: active.iter().map(|&r| r * capacity).collect(),
            self_lens: vec![t + 1; active.len()],
            cross_starts: active.iter().map(|&r| sources.starts()[r]).collect(),
            cross_lens: active.iter().map(|&r| sources.lens()[r]).collect(),
        }
    }

    /// The self-attention caches of the running rows.
    fn self_keys(&self) -> SeqRows<'_> {
        SeqRows {
            starts: &self.self_starts,
            lens: &self.self_lens,
            capacity: Some(self.capacity),
        }
    }

    /// The encoder keys of the running rows (packed, read in place).
    fn cross_keys(&self) -> SeqRows<'_> {
        SeqRows {
            starts: &self.cross_starts,
            lens: &self.cross_lens,
            capacity: None,
        }
    }
}

impl T5Model {
    /// Greedy decoding of `sources` (token ids, each ending in `</s>` as
    /// the tokenizer makes them); returns one row per source. To decode
    /// many batches, make one [`Generator`] and reuse it.
    pub fn generate(
        &self,
        sources: &[&[u32]],
        max_new_tokens: usize,
    ) -> std::result::Result<Vec<Vec<u32>>, ModelError> {
        self.generator()?.generate(sources, max_new_tokens)
    }

    /// A generator for this model, with the weights of a decoding step
    /// packed (see [`Generator`]).
    pub fn generator(&self) -> std::result::Result<Generator<'_>, ModelError> {
        Ok(Generator::new(self)?)
    }
}

/// Greedy generation with a model's decoding weights packed once.
///
/// The packed copy holds every linear weight of both stacks and the LM head
/// again (in the precision the matmuls read), so the generator borrows the
/// model: its weights cannot change while the copy exists. When that copy
/// would take more than a quarter of the machine's memory (a model of
/// billions of parameters), the generator packs nothing and each step packs
/// its weights as a training forward does; the results are the same bits.
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m T5Model,
    packed: Option<Prepacked>,
}

/// The fraction of physical memory a [`Generator`]'s packed weights may take.
const PACKED_MEMORY_SHARE: u64 = 4;

impl<'m> Generator<'m> {
    fn new(model: &'m T5Model) -> Result<Self> {
        let ids = model.eval_weights();
        let bytes: u64 = ids
            .iter()
            .map(|&id| model.params().entry(id).numel() as u64 * 4)
            .sum();
        let fits = tessera_tensor::memory::total_memory()
            .is_some_and(|total| bytes <= total / PACKED_MEMORY_SHARE);
        let packed = fits
            .then(|| Prepacked::new(model.weights(), ids))
            .transpose()?;
        Ok(Generator { model, packed })
    }

    /// The model's weights, with the packed ones read from their copy.
    fn weights(&self) -> Weights<'_> {
        self.model.weights().with_packed(self.packed.as_ref())
    }

    /// Greedy decoding of `sources`, as [`T5Model::generate`].
    pub fn generate(
        &self,
        sources: &[&[u32]],
        max_new_tokens: usize,
    ) -> std::result::Result<Vec<Vec<u32>>, ModelError> {
        let batch = Batch::new(
            sources
                .iter()
                .enumerate()
                .map(|(r, s)| (r as u64, *s, &[][..])),
        );
        let model = self.model;
        batch.validate(model.config())?;
        let enc = model.encode(self.weights(), &batch, Keep::Nothing)?;
        let keys = model.cross_keys(self.weights(), &enc)?;
        Ok(self.generate_from(&enc, keys, max_new_tokens)?)
    }

    /// Evaluation of a batch from one encoder pass: the summed loss of its
    /// labels (teacher forcing) and the greedy generation of every row, as
    /// [`T5Model::forward`] and [`T5Model::generate`] give them. The
    /// generation attends to the cross-attention keys and values the loss
    /// projected.
    pub fn score_and_generate(
        &self,
        batch: &Batch,
        max_new_tokens: usize,
    ) -> std::result::Result<(CrossEntropy, Vec<Vec<u32>>), ModelError> {
        let model = self.model;
        batch.validate(model.config())?;
        let enc = model.encode(self.weights(), batch, Keep::Nothing)?;
        let (loss, keys) = model.target_loss(self.weights(), batch, &enc)?;
        Ok((loss, self.generate_from(&enc, keys, max_new_tokens)?))
    }

    /// Greedy decoding from an encoder output and the cross-attention keys
    /// and values every decoder block projected from it.
    fn generate_from(
        &self,
        enc: &Encoded,
        cross_keys: Vec<(Operand, Operand)>,
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let model = self.model;
        let c = model.config();
        let sources = &enc.side.seqs;
        let rows = sources.count();
        let cache_len = rows * c.num_heads * max_new_tokens * c.d_kv;
        let mut kv: Vec<LayerKv> = cross_keys
            .into_iter()
            .map(|(k, v)| LayerKv::new(k, v, cache_len))
            .collect();
        let mut out: Vec<Vec<u32>> = vec![vec![c.decoder_start_token_id]; rows];
        let mut active: Vec<usize> = (0..rows).collect();
        let table = model.params().widened(model.ids().decoder.relative_bias);
        for t in 0..max_new_tokens {
            if active.is_empty() {
                break;
            }
            let last: Vec<u32> = active.iter().map(|&r| out[r][t]).collect();
            let buckets = offset_buckets(
                1,
                t + 1,
                t,
                false,
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance,
            );
            let bias = position_bias_forward(&table, &buckets, c.num_heads);
            let step = Step::new((&active, t, max_new_tokens), &bias, sources);
            let logits = self.decode_step(&step, &last, &mut kv)?;
            for (&r, row) in active.iter().zip(logits.chunks(c.vocab_size)) {
                out[r].push(argmax(row));
            }
            active.retain(|&r| out[r][t + 1] != c.eos_token_id);
        }
        let longest = out.iter().map(Vec::len).max().unwrap_or(0);
        for row in &mut out {
            row.resize(longest, c.pad_token_id);
        }
        Ok(out)
    }
}

impl T5Model {
    /// The cross-attention keys and values of every decoder block, as the
    /// teacher-forced forward projects them from `enc`.
    fn cross_keys(&self, weights: Weights<'_>, enc: &Encoded) -> Result<Vec<(Operand, Operand)>> {
        let c = self.config();
        let side = &enc.side;
        let heads = |w| {
            project_heads(
                weights,
                enc.operand(),
                w,
                (&side.seqs, &side.tokens),
                [c.num_heads, c.d_kv],
            )
        };
        self.ids()
            .decoder
            .blocks
            .iter()
            .map(|block| {
                let cross = block
                    .iter()
                    .find_map(|s| match s.kind {
                        SublayerKind::CrossAttention(a) => Some(a),
                        _ => None,
                    })
                    .expect("every decoder block has cross-attention");
                Ok((heads(cross.k)?, heads(cross.v)?))
            })
            .collect()
    }

    /// The linear weights an evaluation reads: every projection of both
    /// stacks (the encoder's run once per batch of sources, the cross-
    /// attention keys and values once per source, the rest at every
    /// decoding step and in the teacher-forced loss) and the LM head.
    fn eval_weights(&self) -> Vec<ParamId> {
        let mut ids = vec![self.head_weight()];
        let stacks = [&self.ids().encoder, &self.ids().decoder];
        for sublayer in stacks.into_iter().flat_map(|s| s.blocks.iter().flatten()) {
            match sublayer.kind {
                SublayerKind::SelfAttention(a) | SublayerKind::CrossAttention(a) => {
                    ids.extend([a.q, a.k, a.v, a.o])
                }
                SublayerKind::FeedForward(f) => {
                    ids.extend([Some(f.wi), f.wi_gate, Some(f.wo)].into_iter().flatten())
                }
            }
        }
        ids
    }
}

impl Generator<'_> {
    /// Runs the decoder on one new token per running row; returns
    /// `[running rows, vocab]` logits.
    fn decode_step(&self, step: &Step<'_>, tokens: &[u32], kv: &mut [LayerKv]) -> Result<Vec<f32>> {
        let c = self.model.config();
        let n = step.active.len();
        let mut x = vec![0.0; n * c.d_model];
        embed(
            &mut x,
            self.model.params().view(self.model.ids().shared),
            tokens,
            c.d_model,
        )?;
        let ff_context = StackContext {
            config: c,
            weights: self.weights(),
            seqs: &step.queries,
            tokens: &[],
            causal: false,
            bias: &[],
            encoder: None,
        };
        for (block, layer) in self.model.ids().decoder.blocks.iter().zip(kv.iter_mut()) {
            for ids in block {
                match ids.kind {
                    SublayerKind::SelfAttention(a) => {
                        self.self_attention_step(step, ids, &a, layer, &mut x)?
                    }
                    SublayerKind::CrossAttention(a) => {
                        self.cross_attention_step(step, ids, &a, layer, &mut x)?
                    }
                    SublayerKind::FeedForward(_) => {
                        let site = Site {
                            stack: 1,
                            block: 0,
                            sublayer: 0,
                        };
                        sublayer_forward(&ff_context, site, ids, &mut x)?;
                    }
                }
            }
        }
        let eps = c.layer_norm_epsilon as f32;
        let hidden = norm_only(
            &x,
            &self
                .model
                .params()
                .widened(self.model.ids().decoder.final_norm),
            eps,
        )?;
        Ok(self.model.head_forward(self.weights(), &hidden, n)?.0)
    }

    fn self_attention_step(
        &self,
        step: &Step<'_>,
        ids: &SublayerIds,
        a: &AttentionIds,
        layer: &mut LayerKv,
        x: &mut [f32],
    ) -> Result<()> {
        let c = self.model.config();
        let (h, dk) = (c.num_heads, c.d_kv);
        let n = self.normed(x, ids)?;
        let rows = step.active.len();
        // With one position per row, [rows, heads·d_kv] is already each row's [heads, 1, d_kv].
        let q = self.weights().linear(n.view(), a.q, (rows, &[]))?;
        for (cache, w) in [(&mut layer.self_k, a.k), (&mut layer.self_v, a.v)] {
            let new = self.weights().linear(n.view(), w, (rows, &[]))?;
            for (i, head) in new.chunks(dk).enumerate() {
                let (row, hh) = (step.active[i / h], i % h);
                let at = ((row * h + hh) * step.capacity + step.t) * dk;
                cache[at..at + dk].copy_from_slice(head);
            }
        }
        let qkv = Qkv {
            q: &q,
            k: &layer.self_k,
            v: &layer.self_v,
        };
        self.attend_and_add(step, step.self_keys(), qkv, Some(step.bias), a, x)
    }

    fn cross_attention_step(
        &self,
        step: &Step<'_>,
        ids: &SublayerIds,
        a: &AttentionIds,
        layer: &LayerKv,
        x: &mut [f32],
    ) -> Result<()> {
        let n = self.normed(x, ids)?;
        let rows = step.active.len();
        let q = self.weights().linear(n.view(), a.q, (rows, &[]))?;
        let qkv = Qkv {
            q: &q,
            k: &layer.cross_k,
            v: &layer.cross_v,
        };
        self.attend_and_add(step, step.cross_keys(), qkv, None, a, x)
    }

    /// The sublayer's normed input as its projections' matmul operand.
    fn normed(&self, x: &[f32], ids: &SublayerIds) -> Result<Operand> {
        let eps = self.model.config().layer_norm_epsilon as f32;
        let n = norm_only(x, &self.model.params().widened(ids.norm), eps)?;
        Ok(self.model.precision().keep_activation(n))
    }

    /// `x += attention(q, k, v) · W_oᵀ` for one query position per running
    /// row, with the fused single-row decode kernel.
    fn attend_and_add(
        &self,
        step: &Step<'_>,
        keys: SeqRows<'_>,
        qkv: Qkv<'_>,
        bias: Option<&[f32]>,
        a: &AttentionIds,
        x: &mut [f32],
    ) -> Result<()> {
        let c = self.model.config();
        let core = Attention {
            heads: c.num_heads,
            d_head: c.d_kv,
            queries: step.queries.rows(),
            keys,
            qkv,
            bias: bias.map(Bias::Relative),
            causal: false,
            dropout: ProbDropout::OFF,
        };
        let mut ctx = vec![0.0; core.q_elems()];
        tessera_tensor::attention::decode(&core, &mut ctx)?;
        let ctx = self.model.precision().keep_activation(ctx);
        let y = self
            .weights()
            .linear(ctx.view(), a.o, (step.queries.count(), &[]))?;
        residual::add_inplace(x, &y)
    }
}

/// Index of the first largest value (as `torch.argmax`).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

//! Batched greedy generation with a KV cache.
//!
//! The encoder runs once; each decoder layer's cross-attention keys and
//! values are projected once from its output; the decoder's self-attention
//! keys and values are appended to a cache one position per step, so each
//! step costs one token's worth of work per row. A row that has emitted
//! `</s>` is padded from then on; generation stops when every row has
//! finished or after `max_new_tokens`. Output rows follow Hugging Face's
//! `generate`: `[decoder_start_token_id, t1, t2, …]`, padded after `</s>`.

use crate::attention::{
    bucket_table, position_bias_forward, Attention, AttentionShape, Bias, KeyMask, ProbDropout, Qkv,
};
use crate::layers::{linear, norm_forward, sublayer_forward, DropoutPlan, Site, StackContext};
use crate::model::{Batch, ModelError, T5Model};
use crate::params::{AttentionIds, SublayerIds, SublayerKind};
use crate::precision::{Operand, OperandRef};
use crate::stack::{embed, Keep};
use tessera_tensor::ops::residual;
use tessera_tensor::Result;

/// Keys and values one decoder layer attends to while generating.
struct LayerKv {
    /// Self-attention cache `[batch, heads, max_new_tokens, d_kv]`.
    self_k: Vec<f32>,
    self_v: Vec<f32>,
    /// Cross-attention keys and values `[batch, heads, src_len, d_kv]`.
    cross_k: Vec<f32>,
    cross_v: Vec<f32>,
}

/// The state of one decoding step shared by all layers.
struct Step<'a> {
    batch: usize,
    /// Position being generated (0-based).
    t: usize,
    /// Room in the self-attention cache.
    capacity: usize,
    /// Self-attention bias for this position, `[heads, 1, t + 1]`.
    bias: &'a [f32],
    src_len: usize,
    src_valid: &'a [u8],
}

impl T5Model {
    /// Greedy decoding of `batch` padded sources (`input_ids` and
    /// `attention_mask` are `[batch, src_len]`); returns one row per source.
    pub fn generate(
        &self,
        input_ids: &[u32],
        attention_mask: &[u8],
        batch: usize,
        max_new_tokens: usize,
    ) -> std::result::Result<Vec<Vec<u32>>, ModelError> {
        let c = self.config();
        let src_len = input_ids.len().checked_div(batch).unwrap_or(0);
        let source = Batch {
            batch_size: batch,
            src_len,
            tgt_len: 1,
            input_ids: input_ids.to_vec(),
            attention_mask: attention_mask.to_vec(),
            labels: vec![-100; batch],
        };
        source.validate(c)?;
        let enc = self.encode(&source, DropoutPlan::OFF, Keep::Nothing)?;
        let mut kv = self.cross_kv(enc.operand(), batch, src_len, max_new_tokens)?;
        drop(enc);
        let mut rows: Vec<Vec<u32>> = vec![vec![c.decoder_start_token_id]; batch];
        let mut finished = vec![false; batch];
        for t in 0..max_new_tokens {
            let last: Vec<u32> = rows.iter().map(|r| r[r.len() - 1]).collect();
            let buckets = bucket_table(
                1,
                t + 1,
                t,
                false,
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance,
            );
            let bias = position_bias_forward(
                &self.params().widened(self.ids().decoder.relative_bias),
                &buckets,
                c.num_heads,
            );
            let step = Step {
                batch,
                t,
                capacity: max_new_tokens,
                bias: &bias,
                src_len,
                src_valid: attention_mask,
            };
            let logits = self.decode_step(&step, &last, &mut kv)?;
            for (b, row) in logits.chunks(c.vocab_size).enumerate() {
                let next = if finished[b] {
                    c.pad_token_id
                } else {
                    argmax(row)
                };
                finished[b] |= next == c.eos_token_id;
                rows[b].push(next);
            }
            if finished.iter().all(|&f| f) {
                break;
            }
        }
        Ok(rows)
    }

    /// Cross-attention K/V of every decoder layer, and empty self-attention caches.
    fn cross_kv(
        &self,
        enc: OperandRef<'_>,
        batch: usize,
        src_len: usize,
        capacity: usize,
    ) -> Result<Vec<LayerKv>> {
        let c = self.config();
        let (h, dk, inner) = (c.num_heads, c.d_kv, c.inner_dim());
        let heads = |w| -> Result<Vec<f32>> {
            Ok(crate::attention::split_heads(
                &linear(enc, self.weights().get(w), batch * src_len, inner)?,
                batch,
                src_len,
                h,
                dk,
            ))
        };
        let cache_len = batch * h * capacity * dk;
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
                Ok(LayerKv {
                    self_k: vec![0.0; cache_len],
                    self_v: vec![0.0; cache_len],
                    cross_k: heads(cross.k)?,
                    cross_v: heads(cross.v)?,
                })
            })
            .collect()
    }

    /// Runs the decoder on one new token per row; returns `[batch, vocab]` logits.
    fn decode_step(&self, step: &Step<'_>, tokens: &[u32], kv: &mut [LayerKv]) -> Result<Vec<f32>> {
        let c = self.config();
        let mut x = vec![0.0; step.batch * c.d_model];
        embed(
            &mut x,
            self.params().view(self.ids().shared),
            tokens,
            c.d_model,
        )?;
        let ff_context = StackContext {
            config: c,
            params: self.params(),
            precision: self.precision(),
            batch: step.batch,
            len: 1,
            self_mask: KeyMask {
                valid: None,
                causal: false,
            },
            bias: &[],
            encoder: None,
            dropout: DropoutPlan::OFF,
        };
        for (block, layer) in self.ids().decoder.blocks.iter().zip(kv.iter_mut()) {
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
        let hidden = norm_forward(
            &x,
            &self.params().widened(self.ids().decoder.final_norm),
            eps,
        )?
        .n;
        Ok(self.head_forward(&hidden, step.batch)?.0)
    }

    fn self_attention_step(
        &self,
        step: &Step<'_>,
        ids: &SublayerIds,
        a: &AttentionIds,
        layer: &mut LayerKv,
        x: &mut [f32],
    ) -> Result<()> {
        let c = self.config();
        let (h, dk, inner) = (c.num_heads, c.d_kv, c.inner_dim());
        let n = self.normed(x, ids)?;
        // With one position per row, [batch, 1, heads·d_kv] is already [batch, heads, 1, d_kv].
        let q = linear(n.view(), self.weights().get(a.q), step.batch, inner)?;
        for (cache, w) in [(&mut layer.self_k, a.k), (&mut layer.self_v, a.v)] {
            let new = linear(n.view(), self.weights().get(w), step.batch, inner)?;
            for (bh, head) in new.chunks(dk).enumerate() {
                let at = (bh * step.capacity + step.t) * dk;
                cache[at..at + dk].copy_from_slice(head);
            }
        }
        let shape = AttentionShape {
            batch: step.batch,
            heads: h,
            q_len: 1,
            k_len: step.t + 1,
            d_head: dk,
            kv_stride: step.capacity * dk,
        };
        let mask = KeyMask {
            valid: None,
            causal: false,
        };
        let qkv = Qkv {
            q: &q,
            k: &layer.self_k,
            v: &layer.self_v,
        };
        self.attend_and_add(&shape, qkv, Some(step.bias), mask, a, x)
    }

    fn cross_attention_step(
        &self,
        step: &Step<'_>,
        ids: &SublayerIds,
        a: &AttentionIds,
        layer: &LayerKv,
        x: &mut [f32],
    ) -> Result<()> {
        let c = self.config();
        let n = self.normed(x, ids)?;
        let q = linear(n.view(), self.weights().get(a.q), step.batch, c.inner_dim())?;
        let shape = AttentionShape::dense(step.batch, c.num_heads, 1, step.src_len, c.d_kv);
        let mask = KeyMask {
            valid: Some(step.src_valid),
            causal: false,
        };
        let qkv = Qkv {
            q: &q,
            k: &layer.cross_k,
            v: &layer.cross_v,
        };
        self.attend_and_add(&shape, qkv, None, mask, a, x)
    }

    /// The sublayer's normed input as its projections' matmul operand.
    fn normed(&self, x: &[f32], ids: &SublayerIds) -> Result<Operand> {
        let eps = self.config().layer_norm_epsilon as f32;
        let n = norm_forward(x, &self.params().widened(ids.norm), eps)?.n;
        Ok(self.precision().keep_activation(n))
    }

    /// `x += attention(q, k, v) · W_oᵀ` for one query position per row,
    /// with the fused single-row decode kernel.
    fn attend_and_add(
        &self,
        shape: &AttentionShape,
        qkv: Qkv<'_>,
        bias: Option<&[f32]>,
        mask: KeyMask<'_>,
        a: &AttentionIds,
        x: &mut [f32],
    ) -> Result<()> {
        let mut ctx = vec![0.0; shape.q_len_elems()];
        let core = Attention {
            shape: *shape,
            qkv,
            bias: bias.map(Bias::Dense),
            mask,
            dropout: ProbDropout::OFF,
        };
        tessera_tensor::attention::decode(&core, &mut ctx)?;
        let ctx = self.precision().keep_activation(ctx);
        let y = linear(
            ctx.view(),
            self.weights().get(a.o),
            shape.batch,
            self.config().d_model,
        )?;
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

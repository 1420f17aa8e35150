//! An encoder or decoder stack: embedding lookup, the blocks, the final
//! norm — forward and backward, with optional per-block recomputation.
//!
//! The encoder and the decoder run the same code; they differ only in the
//! sublayers their blocks list (the decoder's have cross-attention) and in
//! the [`StackContext`] (causal mask and encoder output for the decoder).

use crate::attention::position_bias_backward;
use crate::layers::{
    norm_backward, norm_forward, sublayer_backward, sublayer_forward, GradSinks, NormCache,
    NormStats, ParamGrads, Site, StackContext, SublayerCache,
};
use crate::params::{ParamId, StackIds, SublayerIds, SublayerKind};
use crate::precision::{Operand, OperandRef};
use tessera_tensor::ops::embedding;
use tessera_tensor::Result;

/// How much of the forward to keep for a backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: evaluation and generation.
    Nothing,
    /// Every sublayer's cache: fastest backward, most memory.
    Everything,
    /// Only each block's input; the backward recomputes the block
    /// (activation checkpointing), trading one extra forward for memory.
    BlockInputs,
}

/// What one block keeps.
#[derive(Debug, Clone)]
enum BlockCache {
    Stored(Vec<SublayerCache>),
    Recompute(Vec<f32>),
}

/// What a stack's forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct StackCache {
    tokens: Vec<u32>,
    buckets: Vec<usize>,
    blocks: Vec<BlockCache>,
    final_norm: NormStats,
}

impl StackCache {
    /// The keys and values each block's cross-attention projected from the
    /// encoder output, in block order: evaluation's generation attends to
    /// the same ones as its teacher-forced loss. Empty unless the stack is
    /// the decoder and its forward kept `Everything`.
    pub(crate) fn into_cross_keys(self, ids: &StackIds) -> Vec<(Operand, Operand)> {
        self.blocks
            .into_iter()
            .zip(&ids.blocks)
            .flat_map(|(block, sublayers)| {
                let caches = match block {
                    BlockCache::Stored(caches) => caches,
                    BlockCache::Recompute(_) => Vec::new(),
                };
                caches.into_iter().zip(sublayers)
            })
            .filter_map(|(cache, ids)| match (cache, ids.kind) {
                (SublayerCache::Attention(c), SublayerKind::CrossAttention(_)) => {
                    Some(c.into_keys())
                }
                _ => None,
            })
            .collect()
    }
}

/// Gathers the embedding rows of `tokens` from `table` (in its storage
/// type) into `out` as f32.
pub(crate) fn embed(
    out: &mut [f32],
    table: OperandRef<'_>,
    tokens: &[u32],
    d: usize,
) -> Result<()> {
    match table {
        OperandRef::F32(t) => embedding::embedding_forward(out, t, tokens, d),
        OperandRef::Bf16(t) => embedding::embedding_forward(out, t, tokens, d),
        OperandRef::F16(t) => embedding::embedding_forward(out, t, tokens, d),
        OperandRef::Rounded(t, p) => {
            embedding::embedding_forward(out, t, tokens, d)?;
            out.copy_from_slice(&p.round(out).widened());
            Ok(())
        }
    }
}

/// Site of the stack-level dropouts (after the embedding, after the final norm).
fn stack_site(stack: u64, which: u64) -> Site {
    Site {
        stack,
        block: u64::MAX,
        sublayer: which,
    }
}

fn block_site(stack: u64, block: usize, sublayer: usize) -> Site {
    Site {
        stack,
        block: block as u64,
        sublayer: sublayer as u64,
    }
}

/// Identifies a stack and where its shared inputs live.
#[derive(Debug, Clone, Copy)]
pub struct StackRef<'a> {
    /// Parameter ids of the stack.
    pub ids: &'a StackIds,
    /// 0 for the encoder, 1 for the decoder (dropout sites).
    pub number: u64,
    /// The embedding table (`shared.weight`).
    pub embedding: ParamId,
}

/// Runs the stack on `tokens` (the packed sequences of `cx.seqs`); returns
/// the output hidden states `[tokens, d_model]` and, unless `keep` is
/// `Nothing`, the cache.
/// `buckets` are the position buckets `cx.bias` was gathered with.
pub fn stack_forward(
    cx: &StackContext<'_>,
    stack: StackRef<'_>,
    tokens: &[u32],
    buckets: &[usize],
    keep: Keep,
) -> Result<(Vec<f32>, Option<StackCache>)> {
    let d = cx.config.d_model;
    let mut x = vec![0.0; tokens.len() * d];
    embed(&mut x, cx.weights.params().view(stack.embedding), tokens, d)?;
    cx.dropout()
        .apply(&mut x, cx.tokens, stack_site(stack.number, 0), 0)?;
    let mut blocks = Vec::new();
    for (i, sublayers) in stack.ids.blocks.iter().enumerate() {
        let input = (keep == Keep::BlockInputs).then(|| x.clone());
        let caches = block_forward(cx, stack.number, i, sublayers, &mut x)?;
        match (keep, input) {
            (Keep::Everything, _) => blocks.push(BlockCache::Stored(caches)),
            (Keep::BlockInputs, Some(input)) => blocks.push(BlockCache::Recompute(input)),
            _ => {}
        }
    }
    let eps = cx.config.layer_norm_epsilon as f32;
    let final_w = cx.weights.params().widened(stack.ids.final_norm);
    let NormCache { stats, n: mut out } = norm_forward(x, &final_w, eps)?;
    cx.dropout()
        .apply(&mut out, cx.tokens, stack_site(stack.number, 1), 0)?;
    let cache = (keep != Keep::Nothing).then(|| StackCache {
        tokens: tokens.to_vec(),
        buckets: buckets.to_vec(),
        blocks,
        final_norm: stats,
    });
    Ok((out, cache))
}

fn block_forward(
    cx: &StackContext<'_>,
    stack: u64,
    block: usize,
    sublayers: &[SublayerIds],
    x: &mut Vec<f32>,
) -> Result<Vec<SublayerCache>> {
    sublayers
        .iter()
        .enumerate()
        .map(|(j, ids)| sublayer_forward(cx, block_site(stack, block, j), ids, x))
        .collect()
}

/// Backward of [`stack_forward`]: `dout` is the gradient of the stack's
/// output. Adds into `grads` (including the embedding rows and the
/// relative-bias table) and, for the decoder, into `dencoder`.
pub fn stack_backward(
    cx: &StackContext<'_>,
    stack: StackRef<'_>,
    cache: &StackCache,
    mut dout: Vec<f32>,
    mut grads: ParamGrads<'_>,
    dencoder: Option<&mut [f32]>,
) -> Result<()> {
    let d = cx.config.d_model;
    cx.dropout()
        .apply(&mut dout, cx.tokens, stack_site(stack.number, 1), 0)?;
    let mut dx = vec![0.0; dout.len()];
    let final_w = cx.weights.params().widened(stack.ids.final_norm);
    norm_backward(
        &cache.final_norm,
        &final_w,
        grads.base(stack.ids.final_norm),
        &dout,
        &mut dx,
    )?;
    let mut dbias = vec![0.0; cx.bias.len()];
    let mut sinks = GradSinks {
        grads: grads.reborrow(),
        dbias: &mut dbias,
        dencoder,
    };
    for (i, sublayers) in stack.ids.blocks.iter().enumerate().rev() {
        let recomputed;
        let caches = match &cache.blocks[i] {
            BlockCache::Stored(c) => c,
            BlockCache::Recompute(input) => {
                recomputed = block_forward(cx, stack.number, i, sublayers, &mut input.clone())?;
                &recomputed
            }
        };
        for (j, ids) in sublayers.iter().enumerate().rev() {
            sublayer_backward(
                cx,
                block_site(stack.number, i, j),
                ids,
                &caches[j],
                &mut dx,
                &mut sinks,
            )?;
        }
    }
    let heads = cx.config.num_heads;
    if let Some(dtable) = grads.base(stack.ids.relative_bias) {
        position_bias_backward(dtable, &dbias, &cache.buckets, heads);
    }
    let Some(dembedding) = grads.base(stack.embedding) else {
        return Ok(());
    };
    cx.dropout()
        .apply(&mut dx, cx.tokens, stack_site(stack.number, 0), 0)?;
    embedding::embedding_backward(dembedding, &dx, &cache.tokens, d)
}

//! T5 attention: relative position buckets and bias, the head layout, and
//! the attention core `ctx = softmax(Q·Kᵀ + bias + mask) · V`.
//!
//! T5's attention has no `1/sqrt(d_kv)` scale (it is folded into the
//! initialisation), adds a per-head relative-position bias that one block of
//! the stack owns and every layer reuses, masks padded keys and, in the
//! decoder, future keys. [`attention_forward`] and [`attention_backward`]
//! are the one place the core is computed: they run the fused kernels of
//! `tessera_tensor::attention` (online softmax, FlashAttention-2 backward,
//! the same keyed dropout mask as `dropout_inplace`). The unfused
//! matmul + softmax + matmul path ([`unfused_forward`], [`unfused_backward`])
//! stays as the reference the parity tests check too and as the benchmark
//! baseline.
//!
//! Layout: Q, K, V and the context are `[batch, heads, len, d_kv]`; the
//! probabilities `[batch, heads, q_len, k_len]`; the bias `[heads, q_len, k_len]`.

use tessera_tensor::attention as fused;
use tessera_tensor::ops::{dropout::dropout_inplace, softmax};
use tessera_tensor::{gemm_batched, BatchMut, BatchRef, Op, Result};

/// Hugging Face's `_relative_position_bucket` for `relative = key - query`.
///
/// Bidirectional (encoder): half the buckets for keys after the query.
/// Unidirectional (decoder): only keys at or before the query get distinct
/// buckets. Distances below `max_exact` get their own bucket, larger ones
/// share log-spaced buckets up to `max_distance`. The log is computed in f32
/// as PyTorch does, so boundary cases land in the same bucket.
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            bucket += buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    let ratio = (distance as f32 / max_exact as f32).ln();
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + (ratio / scale * (buckets - max_exact) as f32) as i64;
    (bucket + large.min(buckets - 1)) as usize
}

/// The bucket of every offset `j - i` between `q_len` queries (at absolute
/// positions `q_offset..q_offset + q_len`) and `k_len` keys, in the order
/// of [`BiasLayout::Relative`]: `q_len + k_len - 1` entries, the offset
/// `-(q_len - 1)` first. Gathered by [`position_bias_forward`], this is the
/// bias the model's fused attention reads.
pub fn offset_buckets(
    q_len: usize,
    k_len: usize,
    q_offset: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<usize> {
    if q_len == 0 || k_len == 0 {
        return Vec::new();
    }
    (0..q_len + k_len - 1)
        .map(|o| {
            let relative = o as i64 - (q_len - 1) as i64 - q_offset as i64;
            relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
        })
        .collect()
}

/// The bucket of every (query, key) pair: `[q_len, k_len]`, queries at
/// absolute positions `q_offset..q_offset + q_len` (the dense layout, as
/// Hugging Face's `compute_bias` builds it): each query's row is a window of
/// [`offset_buckets`].
pub fn bucket_table(
    q_len: usize,
    k_len: usize,
    q_offset: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<usize> {
    let offsets = offset_buckets(
        q_len,
        k_len,
        q_offset,
        bidirectional,
        num_buckets,
        max_distance,
    );
    (0..q_len)
        .flat_map(|i| &offsets[q_len - 1 - i..q_len - 1 - i + k_len])
        .copied()
        .collect()
}

/// Gathers the bias `[heads, q_len, k_len]` from the table `[num_buckets, heads]`.
pub fn position_bias_forward(table: &[f32], buckets: &[usize], heads: usize) -> Vec<f32> {
    let pairs = buckets.len();
    let mut bias = vec![0.0; heads * pairs];
    for (h, plane) in bias.chunks_mut(pairs).enumerate() {
        for (b, &bucket) in plane.iter_mut().zip(buckets) {
            *b = table[bucket * heads + h];
        }
    }
    bias
}

/// Scatter-adds the bias gradient `[heads, q_len, k_len]` into the table gradient.
pub fn position_bias_backward(dtable: &mut [f32], dbias: &[f32], buckets: &[usize], heads: usize) {
    let pairs = buckets.len();
    for (h, plane) in dbias.chunks(pairs).enumerate() {
        for (g, &bucket) in plane.iter().zip(buckets) {
            dtable[bucket * heads + h] += g;
        }
    }
}

pub use tessera_tensor::attention::{
    Attention, AttentionShape, Bias, BiasLayout, KeyMask, ProbDropout, Qkv,
};

/// What the forward keeps for the backward: the output
/// `[batch, heads, q_len, d_head]` and each row's log-sum-exp
/// `[batch, heads, q_len]`, `O(L·d)` rather than the `O(L²)` probabilities.
#[derive(Debug, Clone)]
pub struct AttentionCache {
    /// The attention output.
    pub out: Vec<f32>,
    /// Log-sum-exp of each row's masked scores.
    pub lse: Vec<f32>,
}

/// `ctx = dropout(softmax(Q·Kᵀ + bias + mask)) · V` with the fused kernel.
/// Writes the context (`[batch, heads, q_len, d_head]`) and returns what the
/// backward needs. (`cargo xtask bench attention` measured the fused path
/// faster than the unfused one at every suite shape, short ones included,
/// so there is no switch by size.)
pub fn attention_forward(a: &Attention<'_>, ctx: &mut [f32]) -> Result<AttentionCache> {
    let mut lse = vec![0.0; a.shape.count() * a.shape.q_len];
    fused::forward(a, ctx, &mut lse)?;
    Ok(AttentionCache {
        out: ctx.to_vec(),
        lse,
    })
}

/// The unfused forward: dense scores, a softmax in place, two batched
/// products. Returns the probabilities (before dropout).
pub fn unfused_forward(a: &Attention<'_>, ctx: &mut [f32]) -> Result<Vec<f32>> {
    let (shape, Qkv { q, k, v }, dropout) = (&a.shape, a.qkv, a.dropout);
    let mut probs = vec![0.0; shape.probs_len()];
    qk_scores(shape, q, k, &mut probs)?;
    let dense_bias = a.bias.map(|b| b.to_dense(shape));
    add_bias_and_mask(shape, &mut probs, dense_bias.as_deref(), a.mask);
    softmax::softmax_forward_inplace(&mut probs, shape.k_len)?;
    if dropout.p > 0.0 {
        let mut dropped = probs.clone();
        dropout_inplace(&mut dropped, dropout.p, dropout.key)?;
        probs_times_v(shape, &dropped, v, ctx)?;
    } else {
        probs_times_v(shape, &probs, v, ctx)?;
    }
    Ok(probs)
}

fn qk_scores(shape: &AttentionShape, q: &[f32], k: &[f32], scores: &mut [f32]) -> Result<()> {
    let s = shape;
    let qd = s.q_len * s.d_head;
    gemm_batched(
        1.0,
        BatchRef::new(q, s.count(), qd, s.q_len, s.d_head, s.d_head)?,
        Op::N,
        BatchRef::new(k, s.count(), s.kv_stride, s.k_len, s.d_head, s.d_head)?,
        Op::T,
        0.0,
        BatchMut::new(
            scores,
            s.count(),
            s.q_len * s.k_len,
            s.q_len,
            s.k_len,
            s.k_len,
        )?,
    )
}

/// Adds the bias and writes `-inf` into masked positions, per (batch, head).
fn add_bias_and_mask(
    shape: &AttentionShape,
    scores: &mut [f32],
    bias: Option<&[f32]>,
    mask: KeyMask<'_>,
) {
    let plane = shape.q_len * shape.k_len;
    for (bh, s) in scores.chunks_mut(plane).enumerate() {
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        if let Some(bias) = bias {
            for (x, y) in s.iter_mut().zip(&bias[h * plane..(h + 1) * plane]) {
                *x += y;
            }
        }
        let valid = mask
            .valid
            .map(|v| &v[b * shape.k_len..(b + 1) * shape.k_len]);
        for (i, row) in s.chunks_mut(shape.k_len).enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                let padded = valid.is_some_and(|v| v[j] == 0);
                if padded || (mask.causal && j > i) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
}

fn probs_times_v(shape: &AttentionShape, probs: &[f32], v: &[f32], ctx: &mut [f32]) -> Result<()> {
    let s = shape;
    gemm_batched(
        1.0,
        BatchRef::new(
            probs,
            s.count(),
            s.q_len * s.k_len,
            s.q_len,
            s.k_len,
            s.k_len,
        )?,
        Op::N,
        BatchRef::new(v, s.count(), s.kv_stride, s.k_len, s.d_head, s.d_head)?,
        Op::N,
        0.0,
        BatchMut::new(
            ctx,
            s.count(),
            s.q_len * s.d_head,
            s.q_len,
            s.d_head,
            s.d_head,
        )?,
    )
}

/// Gradients of one attention call (dense K/V layout).
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    /// `[batch, heads, q_len, d_head]`.
    pub dq: Vec<f32>,
    /// `[batch, heads, k_len, d_head]`.
    pub dk: Vec<f32>,
    /// `[batch, heads, k_len, d_head]`.
    pub dv: Vec<f32>,
}

/// Backward of [`attention_forward`] for dense K/V; adds the bias gradient
/// (summed over the batch) into `dbias` when given.
pub fn attention_backward(
    a: &Attention<'_>,
    cache: &AttentionCache,
    dctx: &[f32],
    dbias: Option<&mut [f32]>,
) -> Result<AttentionGrads> {
    let s = &a.shape;
    let mut g = AttentionGrads {
        dq: vec![0.0; s.q_len_elems()],
        dk: vec![0.0; s.kv_len_elems()],
        dv: vec![0.0; s.kv_len_elems()],
    };
    let sinks = fused::AttentionGradsMut {
        dq: &mut g.dq,
        dk: &mut g.dk,
        dv: &mut g.dv,
        dbias,
    };
    fused::backward(a, (&cache.out, &cache.lse), dctx, sinks)?;
    Ok(g)
}

/// The unfused backward from the probabilities of [`unfused_forward`].
pub fn unfused_backward(
    a: &Attention<'_>,
    probs: &[f32],
    dctx: &[f32],
    dbias: Option<&mut [f32]>,
) -> Result<AttentionGrads> {
    let (s, Qkv { q, k, v }, dropout) = (&a.shape, a.qkv, a.dropout);
    let (n, plane) = (s.count(), s.q_len * s.k_len);
    let (probs_shape, q_shape, kv_shape) =
        ((s.q_len, s.k_len), (s.q_len, s.d_head), (s.k_len, s.d_head));
    let mut dropped = probs.to_vec();
    dropout_inplace(&mut dropped, dropout.p, dropout.key)?;
    // dV = Pᵀ · dctx; dP = dctx · Vᵀ, then back through dropout and softmax.
    let dv = batched_product(n, (&dropped, probs_shape), Op::T, (dctx, q_shape), Op::N)?;
    let mut dscores = batched_product(n, (dctx, q_shape), Op::N, (v, kv_shape), Op::T)?;
    dropout_inplace(&mut dscores, dropout.p, dropout.key)?;
    softmax::softmax_backward_inplace(&mut dscores, probs, s.k_len)?;
    if let Some(dbias) = dbias {
        let layout = a.bias.map_or(BiasLayout::Dense, |b| b.layout());
        for (bh, g) in dscores.chunks(plane).enumerate() {
            let h = bh % s.heads;
            for (i, row) in g.chunks(s.k_len).enumerate() {
                for (j, x) in row.iter().enumerate() {
                    dbias[layout.index(s, h, i, j)] += x;
                }
            }
        }
    }
    // dQ = dS · K, dK = dSᵀ · Q
    let dq = batched_product(n, (&dscores, probs_shape), Op::N, (k, kv_shape), Op::N)?;
    let dk = batched_product(n, (&dscores, probs_shape), Op::T, (q, q_shape), Op::N)?;
    Ok(AttentionGrads { dq, dk, dv })
}

/// `count` densely stored matrices of `(rows, cols)`, back to back.
type DenseBatch<'a> = (&'a [f32], (usize, usize));

/// The `count` products `op_a(A_i) · op_b(B_i)`, as a new dense buffer.
fn batched_product(
    count: usize,
    (a, (ar, ac)): DenseBatch<'_>,
    op_a: Op,
    (b, (br, bc)): DenseBatch<'_>,
    op_b: Op,
) -> Result<Vec<f32>> {
    let m = if op_a == Op::N { ar } else { ac };
    let n = if op_b == Op::N { bc } else { br };
    let mut c = vec![0.0; count * m * n];
    gemm_batched(
        1.0,
        BatchRef::new(a, count, ar * ac, ar, ac, ac)?,
        op_a,
        BatchRef::new(b, count, br * bc, br, bc, bc)?,
        op_b,
        0.0,
        BatchMut::new(&mut c, count, m * n, m, n, n)?,
    )?;
    Ok(c)
}

/// `[batch, len, heads * d_head]` → `[batch, heads, len, d_head]`.
pub fn split_heads(x: &[f32], batch: usize, len: usize, heads: usize, d_head: usize) -> Vec<f32> {
    permute_heads(x, [batch, len, heads, d_head], true)
}

/// `[batch, heads, len, d_head]` → `[batch, len, heads * d_head]`.
pub fn merge_heads(x: &[f32], batch: usize, len: usize, heads: usize, d_head: usize) -> Vec<f32> {
    permute_heads(x, [batch, len, heads, d_head], false)
}

/// Moves each `d_head` run between the interleaved layout
/// `[batch, len, heads, d_head]` and the head layout `[batch, heads, len, d_head]`.
fn permute_heads(x: &[f32], [batch, len, heads, d_head]: [usize; 4], to_heads: bool) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for t in 0..len {
            for h in 0..heads {
                let interleaved = ((b * len + t) * heads + h) * d_head;
                let split = ((b * heads + h) * len + t) * d_head;
                let (src, dst) = if to_heads {
                    (interleaved, split)
                } else {
                    (split, interleaved)
                };
                out[dst..dst + d_head].copy_from_slice(&x[src..src + d_head]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hugging_face_examples() {
        // Values of transformers' _relative_position_bucket(32 buckets, 128).
        let bi = |r| relative_position_bucket(r, true, 32, 128);
        assert_eq!(
            [bi(0), bi(1), bi(-1), bi(7), bi(-8), bi(8)],
            [0, 17, 1, 23, 8, 24]
        );
        assert_eq!([bi(-200), bi(200)], [15, 31]);
        let uni = |r| relative_position_bucket(r, false, 32, 128);
        assert_eq!(
            [uni(3), uni(0), uni(-5), uni(-15), uni(-16), uni(-1000)],
            [0, 0, 5, 15, 16, 31]
        );
    }

    #[test]
    fn heads_round_trip() {
        let x: Vec<f32> = (0..2 * 3 * 4 * 5).map(|v| v as f32).collect();
        let s = split_heads(&x, 2, 3, 4, 5);
        assert_eq!(s[5..10], x[20..25]);
        assert_eq!(merge_heads(&s, 2, 3, 4, 5), x);
    }
}

//! T5 attention's model side: relative position buckets, the bias gathered
//! per offset, and the head layout of packed sequences.
//!
//! T5's attention has no `1/sqrt(d_kv)` scale (it is folded into the
//! initialisation), adds a per-head relative-position bias that one block of
//! the stack owns and every layer reuses, and masks future keys in the
//! decoder. The core `ctx = softmax(Q·Kᵀ + bias + mask) · V` is computed by
//! the fused variable-length kernels of `tessera_tensor::attention`, one
//! sequence at a time, so no padded position exists.
//!
//! Layout: activations are `[tokens, heads · d_kv]` over the real tokens of
//! the batch; Q, K, V and the context are each sequence's
//! `[heads, len, d_kv]`, back to back ([`split_heads`]); the bias is one row
//! of `2·max_len - 1` offsets per head.

use tessera_tensor::memory::build_regions;

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
    for (h, plane) in bias.chunks_mut(pairs.max(1)).enumerate() {
        for (b, &bucket) in plane.iter_mut().zip(buckets) {
            *b = table[bucket * heads + h];
        }
    }
    bias
}

/// Scatter-adds the bias gradient `[heads, q_len, k_len]` into the table gradient.
pub fn position_bias_backward(dtable: &mut [f32], dbias: &[f32], buckets: &[usize], heads: usize) {
    let pairs = buckets.len();
    for (h, plane) in dbias.chunks(pairs.max(1)).enumerate() {
        for (g, &bucket) in plane.iter().zip(buckets) {
            dtable[bucket * heads + h] += g;
        }
    }
}

pub use tessera_tensor::attention::{
    Attention, AttentionGradsMut, Bias, BiasLayout, ProbDropout, Qkv, SeqRows, Seqs,
};

/// `[tokens, heads * d_head]` → each sequence's `[heads, len, d_head]`,
/// sequences packed as `seqs` lays them out (the fused attention's head layout).
pub fn split_heads(x: &[f32], seqs: &Seqs, heads: usize, d_head: usize) -> Vec<f32> {
    permute_heads(x, seqs, [heads, d_head], true)
}

/// Each sequence's `[heads, len, d_head]` → `[tokens, heads * d_head]`.
pub fn merge_heads(x: &[f32], seqs: &Seqs, heads: usize, d_head: usize) -> Vec<f32> {
    permute_heads(x, seqs, [heads, d_head], false)
}

/// Moves each `d_head` run between the interleaved layout (token-major)
/// and the head layout, one sequence at a time: each sequence's rows are
/// one region of the output, written front to back on the worker pool
/// (head by head for the split layout, position by position for the
/// interleaved one), never zero-filled first.
fn permute_heads(x: &[f32], seqs: &Seqs, [heads, d_head]: [usize; 2], to_heads: bool) -> Vec<f32> {
    let width = heads * d_head;
    let ends: Vec<usize> = (0..seqs.count())
        .map(|b| seqs.range(b).end * width)
        .collect();
    build_regions(x.len(), &ends, |b, out| {
        let (start, len) = (seqs.starts()[b], seqs.lens()[b]);
        let interleaved = |t: usize, h: usize| ((start + t) * heads + h) * d_head;
        let split = |t: usize, h: usize| (start * heads + h * len + t) * d_head;
        let mut push = |src: usize| out.extend_from_slice(&x[src..src + d_head]);
        if to_heads {
            (0..heads).for_each(|h| (0..len).for_each(|t| push(interleaved(t, h))));
        } else {
            (0..len).for_each(|t| (0..heads).for_each(|h| push(split(t, h))));
        }
    })
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
        let seqs = Seqs::new(vec![3, 1, 2]);
        let x: Vec<f32> = (0..6 * 4 * 5).map(|v| v as f32).collect();
        let s = split_heads(&x, &seqs, 4, 5);
        // Sequence 0, head 0, token 1 is token 1's first head.
        assert_eq!(s[5..10], x[20..25]);
        // Sequence 2 (from token 4), head 1, token 0.
        assert_eq!(
            s[(4 * 4 + 2) * 5..(4 * 4 + 2) * 5 + 5],
            x[(4 * 4 + 1) * 5..(4 * 4 + 2) * 5]
        );
        assert_eq!(merge_heads(&s, &seqs, 4, 5), x);
    }
}

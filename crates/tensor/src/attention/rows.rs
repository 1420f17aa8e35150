//! The single-row kernel, for generation and for calls with a handful of
//! query rows (the decoder of a classification task): each query row's
//! scores against all its keys are one vector (`O(L_k)` scratch), so the
//! softmax is exact in one pass, the scores are dot products straight from
//! the stored keys (no transposed tile) and the output is a weighted sum of
//! value rows. Tasks are (sequence, head) pairs, grouped so that each task has
//! enough work to be worth a rayon split.

use super::tile::{dots, exp_shifted, row_max, weighted_rows, Isa};
use super::{Attention, BiasShape};
use rayon::prelude::*;

/// Multiply-adds below which (batch, head) pairs share a task.
const MIN_TASK_FLOPS: usize = 1 << 15;

/// Runs every query row of the (sequence, head) pairs `pairs`; writes the
/// log-sum-exps when `lse` is given.
pub(super) fn run(
    isa: Isa,
    a: &Attention<'_>,
    pairs: &[usize],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let d = a.d_head;
    let out_regions: Vec<_> = pairs.iter().map(|&bh| a.q_span(bh, d)).collect();
    let lse_chunks: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => {
            let regions: Vec<_> = pairs.iter().map(|&bh| a.q_span(bh, 1)).collect();
            super::carve(l, &regions).into_iter().map(Some).collect()
        }
        None => pairs.iter().map(|_| None).collect(),
    };
    let work: usize = pairs
        .iter()
        .map(|&bh| 2 * a.q_len(bh) * a.k_len(bh) * d)
        .sum();
    let min_len = (MIN_TASK_FLOPS * pairs.len()).div_ceil(work.max(1)).max(1);
    let tasks: Vec<_> = pairs
        .iter()
        .copied()
        .zip(super::carve(out, &out_regions).into_iter().zip(lse_chunks))
        .collect();
    let shape = a.bias_shape();
    crate::install(|| {
        tasks.into_par_iter().with_min_len(min_len).for_each_init(
            || vec![0.0f32; a.keys.max_len()],
            |scores, (bh, (o, l))| pair(isa, (a, shape), bh, (o, l), scores),
        );
    });
}

/// All query rows of pair `bh`.
fn pair(
    isa: Isa,
    (a, shape): (&Attention<'_>, BiasShape),
    bh: usize,
    (out, mut lse): (&mut [f32], Option<&mut [f32]>),
    scores: &mut [f32],
) {
    let d = a.d_head;
    if d == 0 {
        if let Some(l) = lse.as_deref_mut() {
            l.fill(f32::NEG_INFINITY);
        }
        return;
    }
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
        let n = a.key_end(bh, i);
        let s = &mut scores[..n];
        dots(
            isa,
            a.q_rows(bh, i..i + 1),
            (a.kv_rows(a.qkv.k, bh, 0..n), d),
            s,
        );
        a.bias_and_mask(shape, bh, i, 0, s);
        let m = row_max(isa, s);
        let row_lse = if m == f32::NEG_INFINITY {
            o.fill(0.0);
            f32::NEG_INFINITY
        } else {
            let sum = exp_shifted(isa, s, m);
            a.drop_probs(bh, i, 0, s);
            weighted_rows(isa, s, (a.kv_rows(a.qkv.v, bh, 0..n), d), o);
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
            m + sum.ln()
        };
        if let Some(l) = lse.as_deref_mut() {
            l[i] = row_lse;
        }
    }
}

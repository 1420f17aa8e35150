//! The unfused attention: per sequence, dense scores `[heads, L_q, L_k]`
//! from one batched matmul, a softmax in place, and a second batched matmul
//! with V. It materialises the probabilities the fused kernels avoid, and
//! stays as their reference (tests against the PyTorch fixtures) and as the
//! baseline of `cargo xtask bench attention`. Same inputs, layouts, mask
//! and dropout as [`super::forward`] and [`super::backward`].

use super::{Attention, AttentionGradsMut};
use crate::error::Result;
use crate::ops::softmax;
use crate::{gemm_batched, BatchMut, BatchRef, Op};

/// The heads of one sequence as a batch of `rows × d` matrices.
fn heads<'a>(
    a: &Attention<'_>,
    data: &'a [f32],
    base: usize,
    rows: (usize, usize),
) -> Result<BatchRef<'a, f32>> {
    let (used, reserved) = rows;
    let d = a.d_head;
    let end = base + (a.heads - 1) * reserved * d + used * d;
    BatchRef::new(&data[base..end], a.heads, reserved * d, used, d, d)
}

/// Forward; returns each sequence's probabilities `[heads, L_q, L_k]`
/// (before dropout), which [`backward`] reads.
pub fn forward(a: &Attention<'_>, out: &mut [f32]) -> Result<Vec<Vec<f32>>> {
    super::check_inputs("attention_unfused", a)?;
    super::check("attention_unfused", "out", out.len(), a.q_elems())?;
    let (d, shape) = (a.d_head, a.bias_shape());
    let mut all = Vec::with_capacity(a.queries.count());
    for b in 0..a.queries.count() {
        let bh = b * a.heads;
        let (lq, lk) = (a.q_len(bh), a.k_len(bh));
        let mut probs = vec![0.0; a.heads * lq * lk];
        if lq == 0 || lk == 0 || d == 0 {
            out[a.q_base(bh, d)..a.q_base(bh, d) + a.heads * lq * d].fill(0.0);
            all.push(probs);
            continue;
        }
        let kr = a.keys.reserved(b);
        gemm_batched(
            1.0,
            heads(a, a.qkv.q, a.q_base(bh, d), (lq, lq))?,
            Op::N,
            heads(a, a.qkv.k, a.k_base(bh), (lk, kr))?,
            Op::T,
            0.0,
            BatchMut::new(&mut probs, a.heads, lq * lk, lq, lk, lk)?,
        )?;
        for (h, plane) in probs.chunks_mut(lq * lk).enumerate() {
            for (i, row) in plane.chunks_mut(lk).enumerate() {
                a.bias_and_mask(shape, bh + h, i, 0, row);
            }
        }
        softmax::softmax_forward_inplace(&mut probs, lk)?;
        let mut dropped = probs.clone();
        drop_rows(a, bh, lq, lk, &mut dropped);
        let base = a.q_base(bh, d);
        let o = &mut out[base..base + a.heads * lq * d];
        gemm_batched(
            1.0,
            BatchRef::new(&dropped, a.heads, lq * lk, lq, lk, lk)?,
            Op::N,
            heads(a, a.qkv.v, a.k_base(bh), (lk, kr))?,
            Op::N,
            0.0,
            BatchMut::new(o, a.heads, lq * d, lq, d, d)?,
        )?;
        all.push(probs);
    }
    Ok(all)
}

/// Applies the dropout mask to one sequence's `[heads, lq, lk]` probabilities.
fn drop_rows(a: &Attention<'_>, bh: usize, lq: usize, lk: usize, probs: &mut [f32]) {
    for (h, plane) in probs.chunks_mut((lq * lk).max(1)).enumerate() {
        for (i, row) in plane.chunks_mut(lk.max(1)).enumerate() {
            a.drop_probs(bh + h, i, 0, row);
        }
    }
}

/// Backward from the probabilities of [`forward`]: overwrites dQ, dK, dV
/// and adds the bias gradient into `grads.dbias` when given.
pub fn backward(
    a: &Attention<'_>,
    probs: &[Vec<f32>],
    dout: &[f32],
    grads: AttentionGradsMut<'_>,
) -> Result<()> {
    super::check_inputs("attention_unfused", a)?;
    let d = a.d_head;
    grads.dq.fill(0.0);
    grads.dk.fill(0.0);
    grads.dv.fill(0.0);
    let mut dbias = grads.dbias;
    let layout = a.bias_layout();
    let shape = a.bias_shape();
    for (b, p) in probs.iter().enumerate() {
        let bh = b * a.heads;
        let (lq, lk) = (a.q_len(bh), a.k_len(bh));
        if lq == 0 || lk == 0 || d == 0 {
            continue;
        }
        let (qb, kb) = (a.q_base(bh, d), a.k_base(bh));
        let kr = a.keys.reserved(b);
        let mut dropped = p.clone();
        drop_rows(a, bh, lq, lk, &mut dropped);
        let go = heads(a, dout, qb, (lq, lq))?;
        // dV = Pᵀ · dO; dP = dO · Vᵀ, then back through dropout and softmax.
        let k_end = kb + (a.heads - 1) * kr * d + lk * d;
        gemm_batched(
            1.0,
            BatchRef::new(&dropped, a.heads, lq * lk, lq, lk, lk)?,
            Op::T,
            go,
            Op::N,
            0.0,
            BatchMut::new(&mut grads.dv[kb..k_end], a.heads, kr * d, lk, d, d)?,
        )?;
        let mut ds = vec![0.0; p.len()];
        gemm_batched(
            1.0,
            go,
            Op::N,
            heads(a, a.qkv.v, kb, (lk, kr))?,
            Op::T,
            0.0,
            BatchMut::new(&mut ds, a.heads, lq * lk, lq, lk, lk)?,
        )?;
        drop_rows(a, bh, lq, lk, &mut ds);
        softmax::softmax_backward_inplace(&mut ds, p, lk)?;
        if let Some(db) = dbias.as_deref_mut() {
            for (h, plane) in ds.chunks(lq * lk).enumerate() {
                for (i, row) in plane.chunks(lk).enumerate() {
                    let at = layout.index(shape, h, i, 0);
                    for (x, y) in db[at..at + lk].iter_mut().zip(row) {
                        *x += y;
                    }
                }
            }
        }
        // dQ = dS · K, dK = dSᵀ · Q
        let dsr = BatchRef::new(&ds, a.heads, lq * lk, lq, lk, lk)?;
        gemm_batched(
            1.0,
            dsr,
            Op::N,
            heads(a, a.qkv.k, kb, (lk, kr))?,
            Op::N,
            0.0,
            BatchMut::new(
                &mut grads.dq[qb..qb + a.heads * lq * d],
                a.heads,
                lq * d,
                lq,
                d,
                d,
            )?,
        )?;
        gemm_batched(
            1.0,
            dsr,
            Op::T,
            heads(a, a.qkv.q, qb, (lq, lq))?,
            Op::N,
            0.0,
            BatchMut::new(&mut grads.dk[kb..k_end], a.heads, kr * d, lk, d, d)?,
        )?;
    }
    Ok(())
}

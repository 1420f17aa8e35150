//! The FlashAttention-2 backward for one (batch, head): for each tile of
//! keys (its dK and dV accumulate in place), walk the query blocks,
//! recompute `P = exp(S - lse)`, and with `D = rowsum(dO ∘ O)`:
//!
//! ```text
//! dV_j += Pᵀ · dO_i      dP = dO_i · V_jᵀ      dS = P ∘ (dP - D_i)
//! dQ_i += dS · K_j      dK_j += dSᵀ · Q_i     dBias[h, i, j] += dS
//! ```
//!
//! With dropout (mask `M`, scale `s`), `dV` takes `P ∘ M·s`, `dP` becomes
//! `dP ∘ M·s`, and `D = rowsum(dO ∘ O)` still equals `rowsum(P ∘ dP)`.
//!
//! No `L_q × L_k` buffer: two transposed tiles and two score tiles per thread.

use super::forward::{product_nt, score_tile, Scratch, BLOCK_K};
use super::tile::{
    dot_in_order, dots, exp_shifted, matmul, transpose, vectorised, Dims, Isa, Strided,
};
use super::{Attention, AttentionGradsMut};
use crate::ops::dropout::KeyedMask;
use rayon::prelude::*;

/// Query rows per step of the backward's inner loop.
const BLOCK_Q: usize = 48;

/// Query rows below which the `Q·Kᵀ` and `dO·Vᵀ` tiles are dot products
/// against the stored rows: transposing K and V would cost more.
const TRANSPOSE_MIN_Q: usize = 16;

/// The gradients of one (batch, head): dQ, dK, dV.
type PairGrads<'g> = (&'g mut [f32], &'g mut [f32], &'g mut [f32]);

/// The forward's output and log-sum-exp, and the output gradient, of one (batch, head).
#[derive(Clone, Copy)]
struct Saved<'a> {
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// Splits the work into tasks and runs them: one per (batch, head), or,
/// when the bias gradient is wanted, one per head running its sequences in
/// batch order (so the sum over the batch has one fixed order).
pub(super) fn run(
    isa: Isa,
    a: &Attention<'_>,
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    g: AttentionGradsMut<'_>,
) {
    let s = &a.shape;
    let (q_elems, kv_elems) = (s.q_len * s.d_head, s.k_len * s.d_head);
    if s.count() == 0 {
        return;
    }
    if q_elems == 0 || kv_elems == 0 {
        g.dq.fill(0.0);
        g.dk.fill(0.0);
        g.dv.fill(0.0);
        return;
    }
    let pairs =
        g.dq.chunks_mut(q_elems)
            .zip(g.dk.chunks_mut(kv_elems))
            .zip(g.dv.chunks_mut(kv_elems))
            .map(|((dq, dk), dv)| (dq, dk, dv))
            .enumerate();
    let groups = if g.dbias.is_some() {
        s.heads
    } else {
        s.count()
    };
    let mut tasks: Vec<Vec<(usize, PairGrads<'_>)>> = (0..groups).map(|_| Vec::new()).collect();
    for (bh, grads) in pairs {
        tasks[bh % groups].push((bh, grads));
    }
    let saved = |bh: usize| Saved {
        out: &out[bh * q_elems..(bh + 1) * q_elems],
        lse: &lse[bh * s.q_len..(bh + 1) * s.q_len],
        dout: &dout[bh * q_elems..(bh + 1) * q_elems],
    };
    let rows = BLOCK_Q.min(s.q_len);
    let plane = a.bias_layout().len(s) / s.heads;
    let mut dbias_planes: Vec<Option<&mut [f32]>> = match g.dbias {
        Some(db) => db.chunks_mut(plane).map(Some).collect(),
        None => (0..groups).map(|_| None).collect(),
    };
    crate::install(|| {
        tasks
            .into_par_iter()
            .zip(dbias_planes.par_iter_mut())
            .for_each_init(
                || (Scratch::new(s.d_head, rows), vec![0.0f32; s.q_len]),
                |(scratch, dots), (task, dbias)| {
                    for (bh, grads) in task {
                        pair(
                            isa,
                            a,
                            (bh, saved(bh)),
                            grads,
                            dbias.as_deref_mut(),
                            (scratch, dots),
                        );
                    }
                },
            );
    });
}

/// The backward of (batch, head) `bh`; adds its bias gradient into `dbias`.
fn pair(
    isa: Isa,
    a: &Attention<'_>,
    (bh, sv): (usize, Saved<'_>),
    (dq, dk, dv): PairGrads<'_>,
    mut dbias: Option<&mut [f32]>,
    (sc, dd): (&mut Scratch, &mut Vec<f32>),
) {
    let (d, lq, lk) = (a.shape.d_head, a.shape.q_len, a.shape.k_len);
    let transposed_kv = lq >= TRANSPOSE_MIN_Q;
    for ((x, o), g) in dd
        .iter_mut()
        .zip(sv.out.chunks_exact(d))
        .zip(sv.dout.chunks_exact(d))
    {
        // D rounds exactly as dP does (same primitive, same order): when a
        // row's probability is all on one key, O = V_j and dS is exactly 0.
        if transposed_kv {
            *x = dot_in_order(isa, g, o);
        } else {
            dots(isa, g, (o, d), std::slice::from_mut(x));
        }
    }
    let drop = a.dropout_mask();
    let layout = a.bias_layout();
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    for j0 in (0..lk).step_by(BLOCK_K) {
        let nk = BLOCK_K.min(lk - j0);
        if !a.any_key_valid(bh, j0..j0 + nk) {
            continue;
        }
        let k_tile = a.kv_rows(a.qkv.k, bh, j0..j0 + nk);
        let v_tile = a.kv_rows(a.qkv.v, bh, j0..j0 + nk);
        if transposed_kv {
            transpose(isa, k_tile, d, (&mut sc.kt[..], BLOCK_K));
            transpose(isa, v_tile, d, (&mut sc.vt[..], BLOCK_K));
        }
        let kt = transposed_kv.then_some((&sc.kt[..], BLOCK_K));
        let vt = transposed_kv.then_some((&sc.vt[..], BLOCK_K));
        let (dk_j, dv_j) = (
            &mut dk[j0 * d..(j0 + nk) * d],
            &mut dv[j0 * d..(j0 + nk) * d],
        );
        // With causality, query blocks wholly before the tile see none of it.
        let first = if a.mask.causal {
            j0 / BLOCK_Q * BLOCK_Q
        } else {
            0
        };
        for i0 in (first..lq).step_by(BLOCK_Q) {
            let rows = BLOCK_Q.min(lq - i0);
            score_tile(isa, a, (bh, i0, rows), (j0, nk), kt, &mut sc.s);
            for r in 0..rows {
                let p = &mut sc.s[r * BLOCK_K..r * BLOCK_K + nk];
                match sv.lse[i0 + r] {
                    f32::NEG_INFINITY => p.fill(0.0),
                    l => {
                        exp_shifted(isa, p, l);
                    }
                }
            }
            let span = i0 * d..(i0 + rows) * d;
            let dout_i = &sv.dout[span.clone()];
            let (m_k, m_q) = (
                Dims {
                    m: nk,
                    n: d,
                    k: rows,
                },
                Dims {
                    m: rows,
                    n: d,
                    k: nk,
                },
            );
            let p_dropped = match drop {
                None => &sc.s,
                Some(_) => {
                    sc.ds.copy_from_slice(&sc.s);
                    drop_tile(a, drop, (bh, i0, rows), (j0, nk), &mut sc.ds);
                    &sc.ds
                }
            };
            matmul(
                isa,
                m_k,
                transposed(p_dropped),
                (dout_i, d),
                (dv_j, d),
                true,
            );
            product_nt(isa, d, (dout_i, v_tile), vt, &mut sc.ds);
            drop_tile(a, drop, (bh, i0, rows), (j0, nk), &mut sc.ds);
            // dS = P ∘ (dP - D), and its sum into dBias.
            vectorised(isa, || {
                for r in 0..rows {
                    let at = r * BLOCK_K;
                    let (p, ds) = (&sc.s[at..at + nk], &mut sc.ds[at..at + nk]);
                    let di = dd[i0 + r];
                    for (g, &p) in ds.iter_mut().zip(p) {
                        *g = p * (*g - di);
                    }
                    if let Some(db) = dbias.as_deref_mut() {
                        let row = layout.row_start(&a.shape, i0 + r) + j0;
                        for (x, y) in db[row..row + nk].iter_mut().zip(ds.iter()) {
                            *x += y;
                        }
                    }
                }
            });
            let ds = Strided {
                data: &sc.ds,
                rs: BLOCK_K,
                cs: 1,
            };
            matmul(isa, m_q, ds, (k_tile, d), (&mut dq[span], d), true);
            let q_i = a.q_rows(bh, i0..i0 + rows);
            matmul(isa, m_k, transposed(&sc.ds), (q_i, d), (dk_j, d), true);
        }
    }
}

/// Applies the dropout mask (if any) to a `rows × nk` tile of row stride `BLOCK_K`.
fn drop_tile(
    a: &Attention<'_>,
    drop: Option<KeyedMask>,
    (bh, i0, rows): (usize, usize, usize),
    (j0, nk): (usize, usize),
    tile: &mut [f32],
) {
    if drop.is_some() {
        for r in 0..rows {
            a.drop_probs(
                drop,
                bh,
                i0 + r,
                j0,
                &mut tile[r * BLOCK_K..r * BLOCK_K + nk],
            );
        }
    }
}

/// A `rows × BLOCK_K` tile (row stride `BLOCK_K`) viewed transposed.
fn transposed(tile: &[f32]) -> Strided<'_> {
    Strided {
        data: tile,
        rs: 1,
        cs: BLOCK_K,
    }
}

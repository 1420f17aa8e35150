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
use super::{Attention, AttentionGradsMut, BiasShape};
use rayon::prelude::*;

/// Query rows per step of the backward's inner loop.
const BLOCK_Q: usize = 48;

/// Query rows below which the `Q·Kᵀ` and `dO·Vᵀ` tiles are dot products
/// against the stored rows: transposing K and V would cost more.
const TRANSPOSE_MIN_Q: usize = 16;

/// The gradients of one (sequence, head): dQ, dK, dV.
type PairGrads<'g> = (&'g mut [f32], &'g mut [f32], &'g mut [f32]);

/// The forward's output and log-sum-exp, and the output gradient, of one (sequence, head).
#[derive(Clone, Copy)]
struct Saved<'a> {
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// Splits the work into tasks and runs them: one per (sequence, head), or,
/// when the bias gradient is wanted, one per head running its sequences in
/// order (so the sum over the sequences has one fixed order).
pub(super) fn run(
    isa: Isa,
    a: &Attention<'_>,
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    g: AttentionGradsMut<'_>,
) {
    let d = a.d_head;
    g.dq.fill(0.0);
    g.dk.fill(0.0);
    g.dv.fill(0.0);
    if a.pairs() == 0 || d == 0 {
        return;
    }
    let q_regions: Vec<_> = (0..a.pairs()).map(|bh| a.q_span(bh, d)).collect();
    let k_regions: Vec<_> = (0..a.pairs()).map(|bh| a.k_span(bh)).collect();
    let pairs = super::carve(g.dq, &q_regions)
        .into_iter()
        .zip(super::carve(g.dk, &k_regions))
        .zip(super::carve(g.dv, &k_regions))
        .map(|((dq, dk), dv)| (dq, dk, dv))
        .enumerate();
    let groups = if g.dbias.is_some() {
        a.heads
    } else {
        a.pairs()
    };
    let mut tasks: Vec<Vec<(usize, PairGrads<'_>)>> = (0..groups).map(|_| Vec::new()).collect();
    for (bh, grads) in pairs {
        tasks[bh % groups].push((bh, grads));
    }
    let saved = |bh: usize| {
        let ((q, n), (l, m)) = (a.q_span(bh, d), a.q_span(bh, 1));
        Saved {
            out: &out[q..q + n],
            lse: &lse[l..l + m],
            dout: &dout[q..q + n],
        }
    };
    let max_q = a.queries.max_len();
    let rows = BLOCK_Q.min(max_q);
    let shape = a.bias_shape();
    let plane = a.bias_layout().len(shape) / a.heads;
    let mut dbias_planes: Vec<Option<&mut [f32]>> = match g.dbias {
        Some(db) if plane > 0 => db.chunks_mut(plane).map(Some).collect(),
        _ => (0..groups).map(|_| None).collect(),
    };
    crate::install(|| {
        tasks
            .into_par_iter()
            .zip(dbias_planes.par_iter_mut())
            .for_each_init(
                || (Scratch::new(d, rows), vec![0.0f32; max_q]),
                |(scratch, dots), (task, dbias)| {
                    for (bh, grads) in task {
                        pair(
                            isa,
                            (a, shape),
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

/// The backward of pair `bh`; adds its bias gradient into `dbias`.
fn pair(
    isa: Isa,
    (a, bias_shape): (&Attention<'_>, BiasShape),
    (bh, sv): (usize, Saved<'_>),
    (dq, dk, dv): PairGrads<'_>,
    mut dbias: Option<&mut [f32]>,
    (sc, dd): (&mut Scratch, &mut Vec<f32>),
) {
    let (d, lq, lk) = (a.d_head, a.q_len(bh), a.k_len(bh));
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
    let dropping = a.dropout.p > 0.0;
    let layout = a.bias_layout();
    for j0 in (0..lk).step_by(BLOCK_K) {
        let nk = BLOCK_K.min(lk - j0);
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
        let first = if a.causal { j0 / BLOCK_Q * BLOCK_Q } else { 0 };
        for i0 in (first..lq).step_by(BLOCK_Q) {
            let rows = BLOCK_Q.min(lq - i0);
            score_tile(
                isa,
                (a, bias_shape),
                (bh, i0, rows),
                (j0, nk),
                kt,
                &mut sc.s,
            );
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
            let p_dropped = if dropping {
                sc.ds.copy_from_slice(&sc.s);
                drop_tile(a, (bh, i0, rows), (j0, nk), &mut sc.ds);
                &sc.ds
            } else {
                &sc.s
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
            if dropping {
                drop_tile(a, (bh, i0, rows), (j0, nk), &mut sc.ds);
            }
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
                        let row = layout.row_start(bias_shape, i0 + r) + j0;
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

/// Applies the dropout mask to a `rows × nk` tile of row stride `BLOCK_K`.
fn drop_tile(
    a: &Attention<'_>,
    (bh, i0, rows): (usize, usize, usize),
    (j0, nk): (usize, usize),
    tile: &mut [f32],
) {
    for r in 0..rows {
        a.drop_probs(bh, i0 + r, j0, &mut tile[r * BLOCK_K..r * BLOCK_K + nk]);
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

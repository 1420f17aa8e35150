//! The tiled forward: for a block of query rows, walk the keys in tiles,
//! keeping each row's running maximum `m` and running sum `l` of
//! `exp(s - m)`; rescale the output accumulator whenever `m` grows.

use super::tile::{dots, exp_shifted, matmul, row_max, transpose, vectorised, Dims, Isa, Strided};
use super::{Attention, BiasShape};
use rayon::prelude::*;

/// Query rows per forward task (a multiple of the 6-row register tile).
pub(super) const BLOCK_Q: usize = 48;
/// Keys per tile, forward and backward (a multiple of 6 rows and of 16 columns).
pub(super) const BLOCK_K: usize = 48;

/// One forward task: (batch, head) `bh`, query rows from `i0`, their output
/// rows and log-sum-exps.
type Task<'o> = (usize, usize, &'o mut [f32], &'o mut [f32]);

/// Per-thread scratch: transposed key and value tiles, two tiles of scores.
pub(super) struct Scratch {
    /// `d_head × BLOCK_K`: a key (or value) tile transposed.
    pub kt: Vec<f32>,
    /// A second transposed tile (the backward's values).
    pub vt: Vec<f32>,
    /// `rows × BLOCK_K` scores / probabilities.
    pub s: Vec<f32>,
    /// `rows × BLOCK_K` (the backward's dP and dS).
    pub ds: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(d: usize, rows: usize) -> Scratch {
        Scratch {
            kt: vec![0.0; d * BLOCK_K],
            vt: vec![0.0; d * BLOCK_K],
            s: vec![0.0; rows * BLOCK_K],
            ds: vec![0.0; rows * BLOCK_K],
        }
    }
}

/// `out = lhs · rhsᵀ` (`rows × nk`, row stride `BLOCK_K`) for row-major
/// `lhs` (`rows × d`) and `rhs` (`nk × d`): a tile product against `rhs_t`
/// (`rhs` transposed, with its row stride) when given, else dot products
/// straight from `rhs` (cheaper than transposing for a few rows).
pub(super) fn product_nt(
    isa: Isa,
    d: usize,
    (lhs, rhs): (&[f32], &[f32]),
    rhs_t: Option<(&[f32], usize)>,
    out: &mut [f32],
) {
    let (rows, nk) = (lhs.len() / d, rhs.len() / d);
    match rhs_t {
        Some(bt) => {
            let a = Strided {
                data: lhs,
                rs: d,
                cs: 1,
            };
            let dims = Dims {
                m: rows,
                n: nk,
                k: d,
            };
            matmul(isa, dims, a, bt, (out, BLOCK_K), false);
        }
        None => {
            for (r, x) in lhs.chunks_exact(d).enumerate() {
                dots(isa, x, (rhs, d), &mut out[r * BLOCK_K..r * BLOCK_K + nk]);
            }
        }
    }
}

/// Scores `S = Q_rows · K_tileᵀ + bias + mask` into `s` (row stride
/// `BLOCK_K`); `kt` is the key tile transposed, if at hand.
pub(super) fn score_tile(
    isa: Isa,
    (a, shape): (&Attention<'_>, BiasShape),
    (bh, i0, rows): (usize, usize, usize),
    (j0, nk): (usize, usize),
    kt: Option<(&[f32], usize)>,
    s: &mut [f32],
) {
    let q = a.q_rows(bh, i0..i0 + rows);
    let k = a.kv_rows(a.qkv.k, bh, j0..j0 + nk);
    product_nt(isa, a.d_head, (q, k), kt, s);
    vectorised(isa, || {
        for r in 0..rows {
            a.bias_and_mask(shape, bh, i0 + r, j0, &mut s[r * BLOCK_K..r * BLOCK_K + nk]);
        }
    });
}

/// Runs every (query block) task of the (sequence, head) pairs `pairs`.
pub(super) fn run(isa: Isa, a: &Attention<'_>, pairs: &[usize], out: &mut [f32], lse: &mut [f32]) {
    if pairs.is_empty() {
        return;
    }
    let d = a.d_head;
    let out_regions: Vec<_> = pairs.iter().map(|&bh| a.q_span(bh, d)).collect();
    let lse_regions: Vec<_> = pairs.iter().map(|&bh| a.q_span(bh, 1)).collect();
    let mut tasks: Vec<Task<'_>> = Vec::new();
    let regions = super::carve(out, &out_regions)
        .into_iter()
        .zip(super::carve(lse, &lse_regions));
    for (&bh, (o, l)) in pairs.iter().zip(regions) {
        if d == 0 {
            l.fill(f32::NEG_INFINITY);
            continue;
        }
        for (blk, (ob, lb)) in o
            .chunks_mut(BLOCK_Q * d)
            .zip(l.chunks_mut(BLOCK_Q))
            .enumerate()
        {
            tasks.push((bh, blk * BLOCK_Q, ob, lb));
        }
    }
    // Head-major order: a head's bias plane (shared by the batch) is then
    // read by consecutive tasks while it is still in cache, instead of once
    // per sequence after every other head's plane has passed through.
    tasks.sort_by_key(|&(bh, i0, ..)| (bh % a.heads, bh / a.heads, i0));
    let shape = a.bias_shape();
    crate::install(|| {
        let (kt, offsets) = transposed_keys(isa, a, pairs);
        tasks.into_par_iter().for_each_init(
            || Scratch::new(d, BLOCK_Q),
            |scratch, task| {
                let kt_bh = &kt[offsets[task.0]..offsets[task.0 + 1]];
                block(isa, (a, shape), task, kt_bh, scratch)
            },
        );
    });
}

/// `Kᵀ` of the (sequence, head) pairs `pairs` (`[d_head, k_len]` each, back
/// to back, pair `bh` from `offsets[bh]`; other pairs get none): every query
/// block of a pair reads all of it, so it is transposed once, in parallel,
/// straight into fresh memory (no zeroing pass before it).
fn transposed_keys(isa: Isa, a: &Attention<'_>, pairs: &[usize]) -> (Vec<f32>, Vec<usize>) {
    // In increasing order, so the chunks below lie where `offsets` says.
    debug_assert!(pairs.windows(2).all(|w| w[0] < w[1]));
    let d = a.d_head;
    let mut sizes = vec![0; a.pairs()];
    for &bh in pairs {
        sizes[bh] = d * a.k_len(bh);
    }
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(sizes.iter().scan(0, |at, &size| {
            *at += size;
            Some(*at)
        }))
        .collect();
    let n = offsets[a.pairs()];
    let mut kt = Vec::with_capacity(n);
    let mut chunks: Vec<(usize, &mut [std::mem::MaybeUninit<f32>])> = Vec::new();
    let mut rest = &mut kt.spare_capacity_mut()[..n];
    for &bh in pairs {
        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(sizes[bh]);
        chunks.push((bh, chunk));
        rest = tail;
    }
    chunks.into_par_iter().for_each(|(bh, t)| {
        let lk = a.k_len(bh);
        transpose(isa, a.kv_rows(a.qkv.k, bh, 0..lk), d, (t, lk));
    });
    // SAFETY: the chunks, of `sizes[bh]` elements for each of `pairs`,
    // tile all `n` elements, and `transpose` writes every `(p, j)` of its
    // chunk for `p < d`, `j < lk`: all `d·lk` of them (`kv_rows` returns
    // exactly `lk` keys of `d` values).
    unsafe { kt.set_len(n) };
    (kt, offsets)
}

/// One block of query rows against all the keys it can see. Dropout
/// applies after the running sum has taken each probability.
fn block(
    isa: Isa,
    (a, shape): (&Attention<'_>, BiasShape),
    (bh, i0, out, lse): Task<'_>,
    kt: &[f32],
    sc: &mut Scratch,
) {
    let d = a.d_head;
    let rows = lse.len();
    let mut m = [f32::NEG_INFINITY; BLOCK_Q];
    let mut l = [0.0f32; BLOCK_Q];
    out.fill(0.0);
    let key_end = a.key_end(bh, i0 + rows - 1);
    for j0 in (0..key_end).step_by(BLOCK_K) {
        let nk = BLOCK_K.min(key_end - j0);
        let kt_tile = (&kt[j0..], a.k_len(bh));
        score_tile(
            isa,
            (a, shape),
            (bh, i0, rows),
            (j0, nk),
            Some(kt_tile),
            &mut sc.s,
        );
        for r in 0..rows {
            let row = &mut sc.s[r * BLOCK_K..r * BLOCK_K + nk];
            let m_new = m[r].max(row_max(isa, row));
            if m_new == f32::NEG_INFINITY {
                // Nothing visible yet: no probability mass, output stays 0.
                row.fill(0.0);
                continue;
            }
            let alpha = (m[r] - m_new).exp();
            l[r] = l[r] * alpha + exp_shifted(isa, row, m_new);
            if alpha != 1.0 {
                out[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= alpha);
            }
            m[r] = m_new;
            a.drop_probs(bh, i0 + r, j0, row);
        }
        let p = Strided {
            data: &sc.s,
            rs: BLOCK_K,
            cs: 1,
        };
        let v = a.kv_rows(a.qkv.v, bh, j0..j0 + nk);
        let dims = Dims {
            m: rows,
            n: d,
            k: nk,
        };
        matmul(isa, dims, p, (v, d), (out, d), true);
    }
    for r in 0..rows {
        let o = &mut out[r * d..(r + 1) * d];
        if l[r] == 0.0 {
            o.fill(0.0);
            lse[r] = f32::NEG_INFINITY;
        } else {
            let inv = 1.0 / l[r];
            o.iter_mut().for_each(|x| *x *= inv);
            lse[r] = m[r] + l[r].ln();
        }
    }
}

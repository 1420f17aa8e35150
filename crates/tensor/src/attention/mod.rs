//! Fused T5 attention: `O = softmax(Q·Kᵀ + bias[h] + mask) · V` per (batch,
//! head), forward and backward, without materialising the `L_q × L_k`
//! probabilities.
//!
//! T5's attention is not the textbook one: there is no `1/sqrt(d)` scale, a
//! per-head relative-position bias is shared by every sequence of the batch,
//! padded keys are masked and the decoder's self-attention is causal. The
//! bias is either dense (`[heads, L_q, L_k]`, any bias) or, since T5's
//! depends only on the offset `j - i`, one row of `L_q + L_k - 1` offsets per
//! head ([`Bias::Relative`]): a few KiB the kernels read from cache instead
//! of a plane per head that streams from memory for every sequence. Masks are given as per-key validity and a causal
//! flag ([`KeyMask`]), never as dense tensors.
//!
//! * [`forward`] walks the keys in tiles with an online softmax (running
//!   maximum and sum), so it holds one tile of scores per thread, and keeps
//!   each row's log-sum-exp for the backward. Rayon tasks are (batch, head,
//!   block of query rows). A few query rows per (batch, head) go to the
//!   single-row kernel that [`decode`] uses instead.
//! * [`backward`] is FlashAttention-2's: the probabilities are recomputed
//!   tile by tile from Q, K and the log-sum-exp, with `D = rowsum(dO ∘ O)`
//!   standing in for the softmax's row dot product. It produces dQ, dK, dV
//!   and the bias gradient summed over the batch. Each (batch, head) is one
//!   sequential task; with a bias gradient, one task per head runs its
//!   sequences in batch order, so the sum over the batch has a fixed order.
//! * [`decode`] is generation's kernel: one query row per (batch, head)
//!   against a KV cache (K/V matrices `kv_stride` apart, room to grow) or
//!   against the encoder's cached keys and values.
//!
//! A row whose keys are all masked (a padded sequence of length 0, say) has
//! output 0, log-sum-exp `-inf` and zero gradients: never NaN.
//!
//! Scores, softmax and accumulation are f32. The tile products and the
//! softmax's row operations run on AVX2 + FMA where the CPU has them (see
//! `tile.rs`), else on portable code. Work is split so that every output
//! element is computed by one task in a fixed order: results are identical
//! whatever the number of threads.

mod backward;
mod forward;
mod rows;
mod tile;

#[cfg(test)]
mod tests;

use crate::error::{shape_err, Result};
use crate::ops::dropout::{check_probability, KeyedMask};
use tile::Isa;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Query positions.
    pub q_len: usize,
    /// Key positions attended to.
    pub k_len: usize,
    /// Width of one head.
    pub d_head: usize,
    /// Elements between consecutive (batch, head) K/V matrices: `k_len * d_head`
    /// for dense K/V, more for a KV cache with room to grow.
    pub kv_stride: usize,
}

impl AttentionShape {
    /// Dense K/V of `k_len` positions.
    pub fn dense(batch: usize, heads: usize, q_len: usize, k_len: usize, d_head: usize) -> Self {
        AttentionShape {
            batch,
            heads,
            q_len,
            k_len,
            d_head,
            kv_stride: k_len * d_head,
        }
    }

    /// Number of (batch, head) pairs.
    pub fn count(&self) -> usize {
        self.batch * self.heads
    }

    /// Elements of the probabilities `[batch, heads, q_len, k_len]`.
    pub fn probs_len(&self) -> usize {
        self.count() * self.q_len * self.k_len
    }

    /// Elements of Q or the output `[batch, heads, q_len, d_head]`.
    pub fn q_len_elems(&self) -> usize {
        self.count() * self.q_len * self.d_head
    }

    /// Elements of dense K or V `[batch, heads, k_len, d_head]`.
    pub fn kv_len_elems(&self) -> usize {
        self.count() * self.k_len * self.d_head
    }

    /// Elements of the bias `[heads, q_len, k_len]`.
    pub fn bias_len(&self) -> usize {
        self.heads * self.q_len * self.k_len
    }

    /// Elements of a relative bias `[heads, q_len + k_len - 1]`.
    pub fn relative_bias_len(&self) -> usize {
        self.heads * self.offsets()
    }

    /// Distinct offsets `j - i`: `q_len + k_len - 1` (0 with no queries or keys).
    fn offsets(&self) -> usize {
        if self.q_len == 0 || self.k_len == 0 {
            0
        } else {
            self.q_len + self.k_len - 1
        }
    }
}

/// An additive bias on the scores, shared by every sequence of the batch.
#[derive(Debug, Clone, Copy)]
pub enum Bias<'a> {
    /// `[heads, q_len, k_len]`: any bias.
    Dense(&'a [f32]),
    /// `[heads, q_len + k_len - 1]`: a bias that depends only on the offset
    /// `j - i` (T5's relative position bias), query `i` against key `j`
    /// reading element `j - i + q_len - 1` of its head's row.
    Relative(&'a [f32]),
}

/// How a bias (and its gradient) is laid out; see [`Bias`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasLayout {
    /// `[heads, q_len, k_len]`.
    Dense,
    /// `[heads, q_len + k_len - 1]`.
    Relative,
}

impl<'a> Bias<'a> {
    /// The layout.
    pub fn layout(&self) -> BiasLayout {
        match self {
            Bias::Dense(_) => BiasLayout::Dense,
            Bias::Relative(_) => BiasLayout::Relative,
        }
    }

    /// The stored elements.
    pub fn values(&self) -> &'a [f32] {
        match *self {
            Bias::Dense(v) | Bias::Relative(v) => v,
        }
    }

    /// The bias as a dense `[heads, q_len, k_len]` array (for reference
    /// paths that take only dense biases). Panics if the bias does not have
    /// its layout's length for `shape` (the kernels return an error instead).
    pub fn to_dense(&self, shape: &AttentionShape) -> Vec<f32> {
        let layout = self.layout();
        let values = self.values();
        assert_eq!(values.len(), layout.len(shape), "bias length");
        let plane = layout.len(shape) / shape.heads.max(1);
        let mut dense = Vec::with_capacity(shape.bias_len());
        for h in 0..shape.heads {
            for i in 0..shape.q_len {
                let at = h * plane + layout.row_start(shape, i);
                dense.extend_from_slice(&values[at..at + shape.k_len]);
            }
        }
        dense
    }
}

impl BiasLayout {
    /// Elements of a bias of this layout for `shape`.
    pub fn len(self, shape: &AttentionShape) -> usize {
        match self {
            BiasLayout::Dense => shape.bias_len(),
            BiasLayout::Relative => shape.relative_bias_len(),
        }
    }

    /// Where element (head `h`, query `i`, key `j`) is stored.
    pub fn index(self, shape: &AttentionShape, h: usize, i: usize, j: usize) -> usize {
        h * (self.len(shape) / shape.heads) + self.row_start(shape, i) + j
    }

    /// Where the element of query `i` and key 0 sits within one head's
    /// plane (elements of keys `j` follow at `+ j` in both layouts).
    fn row_start(self, shape: &AttentionShape, i: usize) -> usize {
        match self {
            BiasLayout::Dense => i * shape.k_len,
            BiasLayout::Relative => shape.q_len - 1 - i,
        }
    }
}

/// Which keys each query may see.
#[derive(Debug, Clone, Copy)]
pub struct KeyMask<'a> {
    /// Per `[batch, k_len]`: 1 for a real token, 0 for padding (`None`: all real).
    pub valid: Option<&'a [u8]>,
    /// Mask keys after the query (key `j` is hidden from query `i` when `j > i`).
    pub causal: bool,
}

/// Queries, keys and values of one attention call, in the head layout.
#[derive(Debug, Clone, Copy)]
pub struct Qkv<'a> {
    /// `[batch, heads, q_len, d_head]`.
    pub q: &'a [f32],
    /// `[batch, heads, k_len, d_head]`, matrices `kv_stride` apart.
    pub k: &'a [f32],
    /// Same layout as `k`.
    pub v: &'a [f32],
}

/// Dropout on the attention probabilities, with the stateless keyed mask
/// of [`crate::ops::dropout`]: element `(b, h, i, j)` of the probabilities
/// `[batch, heads, q_len, k_len]` is kept exactly when `dropout_inplace`
/// with the same `(p, key)` would keep it, so the fused and unfused paths
/// drop the same probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbDropout {
    /// Drop probability, in `[0, 1)` (0 = off).
    pub p: f32,
    /// Mask key (see [`crate::ops::dropout::dropout_key`]).
    pub key: u64,
}

impl ProbDropout {
    /// No dropout.
    pub const OFF: ProbDropout = ProbDropout { p: 0.0, key: 0 };
}

/// Everything that defines one attention call: sizes, inputs, bias, mask
/// and probability dropout.
#[derive(Debug, Clone, Copy)]
pub struct Attention<'a> {
    /// Sizes.
    pub shape: AttentionShape,
    /// Queries, keys and values.
    pub qkv: Qkv<'a>,
    /// The additive position bias, if any.
    pub bias: Option<Bias<'a>>,
    /// Padding and causality.
    pub mask: KeyMask<'a>,
    /// Dropout on the probabilities (after the softmax, before `· V`).
    pub dropout: ProbDropout,
}

/// The gradients [`backward`] writes (dense layouts, overwritten).
#[derive(Debug)]
pub struct AttentionGradsMut<'a> {
    /// `[batch, heads, q_len, d_head]`.
    pub dq: &'a mut [f32],
    /// `[batch, heads, k_len, d_head]`.
    pub dk: &'a mut [f32],
    /// `[batch, heads, k_len, d_head]`.
    pub dv: &'a mut [f32],
    /// The bias gradient summed over the batch is added here when given,
    /// in the layout of the call's bias (dense when it has none).
    pub dbias: Option<&'a mut [f32]>,
}

/// Query rows per (batch, head) up to which [`forward`] uses the
/// single-row kernel: below this, a tile of queries is mostly empty.
const ROW_KERNEL_MAX_Q: usize = 8;

/// `out = dropout(softmax(Q·Kᵀ + bias + mask)) · V` (`[batch, heads, q_len, d_head]`)
/// and each row's log-sum-exp of the masked scores (`[batch, heads, q_len]`,
/// `-inf` for a row with no visible key), which [`backward`] needs.
pub fn forward(a: &Attention<'_>, out: &mut [f32], lse: &mut [f32]) -> Result<()> {
    forward_with(Isa::best(), a, out, lse)
}

fn forward_with(isa: Isa, a: &Attention<'_>, out: &mut [f32], lse: &mut [f32]) -> Result<()> {
    let op = "attention_forward";
    check_inputs(op, a)?;
    let s = &a.shape;
    check(op, "out", out.len(), s.q_len_elems())?;
    check(op, "lse", lse.len(), s.count() * s.q_len)?;
    if a.shape.q_len <= ROW_KERNEL_MAX_Q {
        rows::run(isa, a, out, Some(lse));
    } else {
        forward::run(isa, a, out, lse);
    }
    Ok(())
}

/// `out = softmax(Q·Kᵀ + bias + mask) · V` for the few query rows of a
/// generation step (typically one per (batch, head)), against a KV cache or
/// the encoder's keys and values. Keeps no log-sum-exp; dropout must be off.
pub fn decode(a: &Attention<'_>, out: &mut [f32]) -> Result<()> {
    let op = "attention_decode";
    check_inputs(op, a)?;
    check(op, "out", out.len(), a.shape.q_len_elems())?;
    if a.dropout.p != 0.0 {
        return Err(crate::TensorError::Setting(
            "attention_decode runs without dropout, but p is not 0".into(),
        ));
    }
    rows::run(Isa::best(), a, out, None);
    Ok(())
}

/// Gradients of [`forward`] from the output `out`, its log-sum-exp `lse`
/// and the output gradient `dout`: overwrites dQ, dK and dV and adds the
/// bias gradient (summed over the batch) into `grads.dbias` when given.
pub fn backward(
    a: &Attention<'_>,
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    grads: AttentionGradsMut<'_>,
) -> Result<()> {
    backward_with(Isa::best(), a, (out, lse), dout, grads)
}

fn backward_with(
    isa: Isa,
    a: &Attention<'_>,
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    grads: AttentionGradsMut<'_>,
) -> Result<()> {
    let op = "attention_backward";
    check_inputs(op, a)?;
    let s = &a.shape;
    check(op, "out", out.len(), s.q_len_elems())?;
    check(op, "lse", lse.len(), s.count() * s.q_len)?;
    check(op, "dout", dout.len(), s.q_len_elems())?;
    check(op, "dq", grads.dq.len(), s.q_len_elems())?;
    check(op, "dk", grads.dk.len(), s.kv_len_elems())?;
    check(op, "dv", grads.dv.len(), s.kv_len_elems())?;
    if let Some(db) = &grads.dbias {
        check(op, "dbias", db.len(), a.bias_layout().len(s))?;
    }
    backward::run(isa, a, (out, lse), dout, grads);
    Ok(())
}

fn check(op: &'static str, what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} has {len} elements, expected {expected}"),
        ))
    }
}

/// Checks Q, K, V, the bias and the mask against the shape.
fn check_inputs(op: &'static str, a: &Attention<'_>) -> Result<()> {
    let s = &a.shape;
    check(op, "q", a.qkv.q.len(), s.q_len_elems())?;
    if s.kv_stride < s.k_len * s.d_head {
        return Err(shape_err(
            op,
            format!(
                "K/V stride {} is less than {} keys of {}",
                s.kv_stride, s.k_len, s.d_head
            ),
        ));
    }
    let kv_need = match s.count() {
        0 => 0,
        n => (n - 1) * s.kv_stride + s.k_len * s.d_head,
    };
    for (what, len) in [("k", a.qkv.k.len()), ("v", a.qkv.v.len())] {
        if len < kv_need {
            return Err(shape_err(
                op,
                format!("{what} has {len} elements, needs at least {kv_need}"),
            ));
        }
    }
    if let Some(bias) = a.bias {
        check(op, "bias", bias.values().len(), bias.layout().len(s))?;
    }
    if let Some(valid) = a.mask.valid {
        check(op, "key mask", valid.len(), s.batch * s.k_len)?;
    }
    check_probability(a.dropout.p)
}

impl<'a> Attention<'a> {
    /// The layout of the bias, and of its gradient (dense without a bias).
    fn bias_layout(&self) -> BiasLayout {
        self.bias.map_or(BiasLayout::Dense, |b| b.layout())
    }

    /// Rows `rows` of the query matrix of (batch, head) `bh`.
    fn q_rows(&self, bh: usize, rows: std::ops::Range<usize>) -> &'a [f32] {
        let (d, base) = (self.shape.d_head, bh * self.shape.q_len * self.shape.d_head);
        &self.qkv.q[base + rows.start * d..base + rows.end * d]
    }

    /// The key (or value, `of = qkv.v`) matrix of (batch, head) `bh`, rows `keys`.
    fn kv_rows(&self, of: &'a [f32], bh: usize, keys: std::ops::Range<usize>) -> &'a [f32] {
        let (d, base) = (self.shape.d_head, bh * self.shape.kv_stride);
        &of[base + keys.start * d..base + keys.end * d]
    }

    /// Adds the bias and masks the scores of query `i` of (batch, head)
    /// `bh` against keys `j0..j0 + row.len()`: a hidden key's score is `-inf`.
    #[inline(always)]
    fn bias_and_mask(&self, bh: usize, i: usize, j0: usize, row: &mut [f32]) {
        let s = &self.shape;
        let (b, h) = (bh / s.heads, bh % s.heads);
        let j1 = j0 + row.len();
        let bias = self.bias.map(|bias| {
            let at = bias.layout().index(s, h, i, j0);
            &bias.values()[at..at + row.len()]
        });
        let valid = self
            .mask
            .valid
            .map(|v| &v[b * s.k_len + j0..b * s.k_len + j1]);
        // One pass per case, each a branch-free loop the compiler vectorises
        // (a padded key adds -inf; scores are finite, so the sum is -inf).
        match (bias, valid) {
            (Some(bias), Some(valid)) => {
                for ((x, y), &v) in row.iter_mut().zip(bias).zip(valid) {
                    *x = (*x + y) + key_mask(v);
                }
            }
            (Some(bias), None) => row.iter_mut().zip(bias).for_each(|(x, y)| *x += y),
            (None, Some(valid)) => {
                for (x, &v) in row.iter_mut().zip(valid) {
                    *x += key_mask(v);
                }
            }
            (None, None) => {}
        }
        if self.mask.causal && i + 1 < j1 {
            row[(i + 1).saturating_sub(j0)..].fill(f32::NEG_INFINITY);
        }
    }

    /// Applies the dropout mask to the probabilities of query `i` of
    /// (batch, head) `bh` against keys `j0..j0 + row.len()`.
    fn drop_probs(&self, mask: Option<KeyedMask>, bh: usize, i: usize, j0: usize, row: &mut [f32]) {
        if let Some(m) = mask {
            m.apply(row, (bh * self.shape.q_len + i) * self.shape.k_len + j0);
        }
    }

    /// The dropout mask, `None` when dropout is off.
    fn dropout_mask(&self) -> Option<KeyedMask> {
        KeyedMask::new(self.dropout.p, self.dropout.key)
    }

    /// Whether any of keys `keys` of (batch, head) `bh` is a real token
    /// (a tile of padding contributes nothing and is skipped).
    fn any_key_valid(&self, bh: usize, keys: std::ops::Range<usize>) -> bool {
        let at = bh / self.shape.heads * self.shape.k_len;
        self.mask
            .valid
            .is_none_or(|v| v[at + keys.start..at + keys.end].iter().any(|&x| x != 0))
    }

    /// One past the last real key of (batch, head) `bh`'s sequence: keys
    /// from there on are padding, and skipping them changes no result (a
    /// masked key's probability is exactly 0).
    fn valid_end(&self, bh: usize) -> usize {
        let (k_len, b) = (self.shape.k_len, bh / self.shape.heads);
        self.mask.valid.map_or(k_len, |v| {
            let keys = &v[b * k_len..(b + 1) * k_len];
            keys.iter()
                .rposition(|&x| x != 0)
                .map_or(0, |last| last + 1)
        })
    }

    /// Keys query `i` can see at all, as an end bound (causality only).
    fn key_end(&self, i: usize) -> usize {
        if self.mask.causal {
            (i + 1).min(self.shape.k_len)
        } else {
            self.shape.k_len
        }
    }
}

/// What a key's validity flag adds to its score: 0 for a real key, -inf
/// for padding (a select, so the loops using it vectorise).
#[inline(always)]
fn key_mask(valid: u8) -> f32 {
    if valid == 0 {
        f32::NEG_INFINITY
    } else {
        0.0
    }
}

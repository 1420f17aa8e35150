//! Fused T5 attention over sequences of different lengths:
//! `O = softmax(Q·Kᵀ + bias[h] + mask) · V` per (sequence, head), forward
//! and backward, without materialising the `L_q × L_k` probabilities and
//! without a padded position anywhere.
//!
//! T5's attention is not the textbook one: there is no `1/sqrt(d)` scale, a
//! per-head relative-position bias is shared by every sequence, and the
//! decoder's self-attention is causal. Each sequence has its own number of
//! queries and keys ([`SeqRows`]): queries are packed back to back (the
//! real tokens of a batch, nothing else); keys are packed too, or sit in a
//! cache with room to grow (generation). The bias is either dense
//! (`[heads, max_q, max_k]`, any bias) or, since T5's depends only on the
//! offset `j - i`, one row of offsets per head ([`Bias::Relative`]) whose
//! origin is fixed by the longest query sequence, so every sequence reads
//! the same entry for the same offset: a few KiB the kernels read from
//! cache, and one gradient entry per offset.
//!
//! * [`forward`] walks the keys in tiles with an online softmax (running
//!   maximum and sum), so it holds one tile of scores per thread, and keeps
//!   each row's log-sum-exp for the backward. Rayon tasks are (sequence,
//!   head, block of query rows). Calls whose sequences have a few query
//!   rows go to the single-row kernel that [`decode`] uses instead.
//! * [`backward`] is FlashAttention-2's: the probabilities are recomputed
//!   tile by tile from Q, K and the log-sum-exp, with `D = rowsum(dO ∘ O)`
//!   standing in for the softmax's row dot product. It produces dQ, dK, dV
//!   and the bias gradient summed over the sequences. Each (sequence, head)
//!   is one sequential task; with a bias gradient, one task per head runs
//!   its sequences in order, so the sum over them has a fixed order.
//! * [`decode`] is generation's kernel: one query row per (sequence, head)
//!   against a KV cache or against the encoder's cached keys and values.
//!
//! A row with no key (a sequence of no keys) has output 0, log-sum-exp
//! `-inf` and zero gradients: never NaN.
//!
//! Dropout on the probabilities is keyed by the identity of each query
//! token ([`ProbDropout::rows`]), the head and the key position, never by
//! where the row sits in a buffer: the same token draws the same mask in
//! any batch, packed or alone.
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
pub mod unfused;

#[cfg(test)]
mod tests;

use crate::error::{shape_err, Result};
use crate::ops::dropout::{check_probability, KeyedMask};
use crate::rng;
use tile::Isa;

/// Where the rows of each sequence lie in a head-layout buffer: sequence
/// `b` holds a `[heads, rows_b, d_head]` block starting at row `starts[b]`
/// (in units of `heads · d_head` elements), of which each head uses its
/// first `lens[b]` rows. Packed sequences (`capacity: None`) have
/// `rows_b = lens[b]` and follow one another; a KV cache reserves
/// `capacity` rows per sequence and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRows<'a> {
    /// First row of each sequence.
    pub starts: &'a [usize],
    /// Rows in use of each sequence.
    pub lens: &'a [usize],
    /// Rows reserved per head (`None`: exactly `lens[b]`, packed).
    pub capacity: Option<usize>,
}

impl SeqRows<'_> {
    /// Number of sequences.
    pub fn count(&self) -> usize {
        self.lens.len()
    }

    /// The longest sequence (0 for none).
    pub fn max_len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Rows in use over all sequences.
    pub fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Rows each head of sequence `b` has in the buffer.
    fn reserved(&self, b: usize) -> usize {
        self.capacity.unwrap_or(self.lens[b])
    }

    /// Element offset of row 0 of (sequence `b`, head `h`).
    fn base(&self, b: usize, h: usize, heads: usize, width: usize) -> usize {
        (self.starts[b] * heads + h * self.reserved(b)) * width
    }

    /// Elements a buffer of this layout holds (`width` per row and head).
    fn elems(&self, heads: usize, width: usize) -> usize {
        (0..self.count())
            .map(|b| (self.starts[b] + self.reserved(b)) * heads * width)
            .max()
            .unwrap_or(0)
    }

    /// Fails unless lengths and starts agree, each sequence's rows fit its
    /// capacity and no two sequences overlap.
    fn check(&self, op: &'static str, what: &str) -> Result<()> {
        let bad = |m: String| Err(shape_err(op, format!("{what}: {m}")));
        if self.starts.len() != self.lens.len() {
            return bad(format!(
                "{} starts for {} sequences",
                self.starts.len(),
                self.lens.len()
            ));
        }
        if let Some(c) = self.capacity {
            if let Some(&l) = self.lens.iter().find(|&&l| l > c) {
                return bad(format!("a sequence of {l} rows exceeds the capacity {c}"));
            }
        }
        let mut spans: Vec<(usize, usize)> = (0..self.count())
            .map(|b| (self.starts[b], self.starts[b] + self.reserved(b)))
            .filter(|(s, e)| s < e)
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return bad("two sequences overlap".into());
        }
        Ok(())
    }
}

/// Sequence lengths with the packed starts they imply: the owner of a
/// packed [`SeqRows`] (the `cu_seqlens` of FlashAttention's varlen API).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seqs {
    starts: Vec<usize>,
    lens: Vec<usize>,
}

impl Seqs {
    /// Packed sequences of these lengths, in order.
    pub fn new(lens: Vec<usize>) -> Seqs {
        let starts = lens
            .iter()
            .scan(0, |at, &l| {
                let s = *at;
                *at += l;
                Some(s)
            })
            .collect();
        Seqs { starts, lens }
    }

    /// The packed layout.
    pub fn rows(&self) -> SeqRows<'_> {
        SeqRows {
            starts: &self.starts,
            lens: &self.lens,
            capacity: None,
        }
    }

    /// Each sequence's length.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Each sequence's first row.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Number of sequences.
    pub fn count(&self) -> usize {
        self.lens.len()
    }

    /// Rows over all sequences.
    pub fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// The longest sequence (0 for none).
    pub fn max_len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// The row range of sequence `b`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        self.starts[b]..self.starts[b] + self.lens[b]
    }
}

/// An additive bias on the scores, shared by every sequence.
#[derive(Debug, Clone, Copy)]
pub enum Bias<'a> {
    /// `[heads, max_q, max_k]`: any bias, query `i` against key `j` of any
    /// sequence reading element `(h, i, j)`.
    Dense(&'a [f32]),
    /// `[heads, max_q + max_k - 1]`: a bias that depends only on the offset
    /// `j - i` (T5's relative position bias), query `i` against key `j` of
    /// any sequence reading element `j - i + max_q - 1` of its head's row.
    Relative(&'a [f32]),
}

/// How a bias (and its gradient) is laid out; see [`Bias`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasLayout {
    /// `[heads, max_q, max_k]`.
    Dense,
    /// `[heads, max_q + max_k - 1]`.
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
}

/// The bias extents of a call: heads and the longest query and key sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiasShape {
    /// Heads.
    pub heads: usize,
    /// The longest query sequence.
    pub max_q: usize,
    /// The longest key sequence.
    pub max_k: usize,
}

impl BiasLayout {
    /// Elements of a bias of this layout.
    pub fn len(self, shape: BiasShape) -> usize {
        shape.heads * self.plane(shape)
    }

    /// Elements per head.
    fn plane(self, s: BiasShape) -> usize {
        match self {
            BiasLayout::Dense => s.max_q * s.max_k,
            BiasLayout::Relative if s.max_q == 0 || s.max_k == 0 => 0,
            BiasLayout::Relative => s.max_q + s.max_k - 1,
        }
    }

    /// Where element (head `h`, query `i`, key `j`) is stored.
    pub fn index(self, shape: BiasShape, h: usize, i: usize, j: usize) -> usize {
        h * self.plane(shape) + self.row_start(shape, i) + j
    }

    /// Where the element of query `i` and key 0 sits within one head's
    /// plane (elements of keys `j` follow at `+ j` in both layouts).
    fn row_start(self, shape: BiasShape, i: usize) -> usize {
        match self {
            BiasLayout::Dense => i * shape.max_k,
            BiasLayout::Relative => shape.max_q - 1 - i,
        }
    }
}

/// Queries, keys and values of one attention call, in the head layout of
/// their [`SeqRows`].
#[derive(Debug, Clone, Copy)]
pub struct Qkv<'a> {
    /// Laid out as the call's queries.
    pub q: &'a [f32],
    /// Laid out as the call's keys.
    pub k: &'a [f32],
    /// Same layout as `k`.
    pub v: &'a [f32],
}

/// Dropout on the attention probabilities: the probability of query `i`
/// against key `j` in head `h` is kept or dropped by a mask keyed by
/// `(key, rows[i], h)` at position `j`, where `rows[i]` identifies the
/// query's token (say, example and position). The mask is then the same
/// for the same token wherever it sits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbDropout<'a> {
    /// Drop probability, in `[0, 1)` (0 = off).
    pub p: f32,
    /// Mask key (see [`crate::rng::key`]).
    pub key: u64,
    /// The identity of each query row, in packed query order (needed
    /// when `p > 0`).
    pub rows: &'a [u64],
}

impl ProbDropout<'_> {
    /// No dropout.
    pub const OFF: ProbDropout<'static> = ProbDropout {
        p: 0.0,
        key: 0,
        rows: &[],
    };

    /// The mask of query row `row` (packed index) in head `h`, scaled as
    /// [`crate::ops::dropout::dropout_inplace`] scales; `None` when off.
    fn mask(&self, row: usize, h: usize) -> Option<KeyedMask> {
        if self.p == 0.0 {
            return None;
        }
        KeyedMask::new(self.p, rng::key(self.key, &[self.rows[row], h as u64]))
    }

    /// Multiplies `x`, the probabilities of query row `row` of head `h`
    /// against keys `j0..j0 + x.len()`, by the mask.
    pub fn apply_row(&self, row: usize, h: usize, j0: usize, x: &mut [f32]) {
        if let Some(m) = self.mask(row, h) {
            m.apply(x, j0);
        }
    }
}

/// Everything that defines one attention call: sizes, inputs, bias, mask
/// and probability dropout.
#[derive(Debug, Clone, Copy)]
pub struct Attention<'a> {
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub d_head: usize,
    /// The query rows of each sequence (packed).
    pub queries: SeqRows<'a>,
    /// The key (and value) rows of each sequence.
    pub keys: SeqRows<'a>,
    /// Queries, keys and values.
    pub qkv: Qkv<'a>,
    /// The additive position bias, if any.
    pub bias: Option<Bias<'a>>,
    /// Mask keys after the query (key `j` is hidden from query `i` when `j > i`).
    pub causal: bool,
    /// Dropout on the probabilities (after the softmax, before `· V`).
    pub dropout: ProbDropout<'a>,
}

/// The gradients [`backward`] writes (overwritten; in the layouts of Q and K).
#[derive(Debug)]
pub struct AttentionGradsMut<'a> {
    /// Laid out as the queries.
    pub dq: &'a mut [f32],
    /// Laid out as the keys (rows beyond a sequence's length are 0).
    pub dk: &'a mut [f32],
    /// Laid out as the keys.
    pub dv: &'a mut [f32],
    /// The bias gradient summed over the sequences is added here when
    /// given, in the layout of the call's bias (dense when it has none).
    pub dbias: Option<&'a mut [f32]>,
}

/// Query rows up to which [`forward`] runs a sequence on the single-row
/// kernel: below this, a tile of queries is mostly empty. The choice is
/// made per sequence, so a sequence's result does not depend on what it
/// is batched with.
const ROW_KERNEL_MAX_Q: usize = 8;

/// `out = dropout(softmax(Q·Kᵀ + bias + mask)) · V` (laid out as the
/// queries) and each row's log-sum-exp of the masked scores (laid out as
/// the queries with one element per row and head, `-inf` for a row with no
/// visible key), which [`backward`] needs.
pub fn forward(a: &Attention<'_>, out: &mut [f32], lse: &mut [f32]) -> Result<()> {
    forward_with(Isa::best(), a, out, lse)
}

fn forward_with(isa: Isa, a: &Attention<'_>, out: &mut [f32], lse: &mut [f32]) -> Result<()> {
    let op = "attention_forward";
    check_inputs(op, a)?;
    check(op, "out", out.len(), a.q_elems())?;
    check(op, "lse", lse.len(), a.lse_elems())?;
    let (few, many): (Vec<usize>, Vec<usize>) =
        (0..a.pairs()).partition(|&bh| a.q_len(bh) <= ROW_KERNEL_MAX_Q);
    rows::run(isa, a, &few, out, Some(lse));
    forward::run(isa, a, &many, out, lse);
    Ok(())
}

/// `out = softmax(Q·Kᵀ + bias + mask) · V` for the few query rows of a
/// generation step (typically one per (sequence, head)), against a KV
/// cache or the encoder's keys and values. Keeps no log-sum-exp; dropout
/// must be off.
pub fn decode(a: &Attention<'_>, out: &mut [f32]) -> Result<()> {
    let op = "attention_decode";
    check_inputs(op, a)?;
    check(op, "out", out.len(), a.q_elems())?;
    if a.dropout.p != 0.0 {
        return Err(crate::TensorError::Setting(
            "attention_decode runs without dropout, but p is not 0".into(),
        ));
    }
    let all: Vec<usize> = (0..a.pairs()).collect();
    rows::run(Isa::best(), a, &all, out, None);
    Ok(())
}

/// Gradients of [`forward`] from the output `out`, its log-sum-exp `lse`
/// and the output gradient `dout`: overwrites dQ, dK and dV and adds the
/// bias gradient (summed over the sequences) into `grads.dbias` when given.
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
    check(op, "out", out.len(), a.q_elems())?;
    check(op, "lse", lse.len(), a.lse_elems())?;
    check(op, "dout", dout.len(), a.q_elems())?;
    check(op, "dq", grads.dq.len(), a.q_elems())?;
    check(op, "dk", grads.dk.len(), a.kv_elems())?;
    check(op, "dv", grads.dv.len(), a.kv_elems())?;
    if let Some(db) = &grads.dbias {
        check(op, "dbias", db.len(), a.bias_layout().len(a.bias_shape()))?;
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

/// Checks the sequences, Q, K, V, the bias and the dropout against each other.
fn check_inputs(op: &'static str, a: &Attention<'_>) -> Result<()> {
    let (q, k) = (&a.queries, &a.keys);
    q.check(op, "queries")?;
    k.check(op, "keys")?;
    let mut next = 0;
    let packed = q.capacity.is_none()
        && q.starts.iter().zip(q.lens).all(|(&start, &len)| {
            let in_order = start == next;
            next += len;
            in_order
        });
    if !packed {
        return Err(shape_err(op, "queries must be packed in order"));
    }
    if q.count() != k.count() {
        return Err(shape_err(
            op,
            format!(
                "{} query sequences but {} key sequences",
                q.count(),
                k.count()
            ),
        ));
    }
    check(op, "q", a.qkv.q.len(), a.q_elems())?;
    for (what, len) in [("k", a.qkv.k.len()), ("v", a.qkv.v.len())] {
        if len < a.kv_elems() {
            return Err(shape_err(
                op,
                format!("{what} has {len} elements, needs at least {}", a.kv_elems()),
            ));
        }
    }
    if let Some(bias) = a.bias {
        check(
            op,
            "bias",
            bias.values().len(),
            bias.layout().len(a.bias_shape()),
        )?;
    }
    check_probability(a.dropout.p)?;
    if a.dropout.p > 0.0 {
        check(op, "dropout rows", a.dropout.rows.len(), q.total())?;
    }
    Ok(())
}

impl<'a> Attention<'a> {
    /// The layout of the bias, and of its gradient (dense without a bias).
    fn bias_layout(&self) -> BiasLayout {
        self.bias.map_or(BiasLayout::Dense, |b| b.layout())
    }

    /// The extents the bias is laid out for.
    pub fn bias_shape(&self) -> BiasShape {
        BiasShape {
            heads: self.heads,
            max_q: self.queries.max_len(),
            max_k: self.keys.max_len(),
        }
    }

    /// Elements of Q, the output and their gradients.
    pub fn q_elems(&self) -> usize {
        self.queries.total() * self.heads * self.d_head
    }

    /// Elements of the log-sum-exps.
    pub fn lse_elems(&self) -> usize {
        self.queries.total() * self.heads
    }

    /// Elements of K, V and their gradients.
    pub fn kv_elems(&self) -> usize {
        self.keys.elems(self.heads, self.d_head)
    }

    /// (Sequence, head) pairs.
    fn pairs(&self) -> usize {
        self.queries.count() * self.heads
    }

    /// The sequence and head of pair `bh`.
    fn split(&self, bh: usize) -> (usize, usize) {
        (bh / self.heads, bh % self.heads)
    }

    /// Query rows of pair `bh`.
    fn q_len(&self, bh: usize) -> usize {
        self.queries.lens[bh / self.heads]
    }

    /// Key rows of pair `bh`.
    fn k_len(&self, bh: usize) -> usize {
        self.keys.lens[bh / self.heads]
    }

    /// Where pair `bh`'s query rows lie in a query-layout buffer of `width`
    /// elements per row and head: `(start, len)`.
    fn q_span(&self, bh: usize, width: usize) -> (usize, usize) {
        (self.q_base(bh, width), self.q_len(bh) * width)
    }

    /// Where pair `bh`'s key rows lie in a key-layout buffer: `(start, len)`.
    fn k_span(&self, bh: usize) -> (usize, usize) {
        (self.k_base(bh), self.k_len(bh) * self.d_head)
    }

    /// Element offset of query row 0 of pair `bh` (`width` per row).
    fn q_base(&self, bh: usize, width: usize) -> usize {
        let (b, h) = self.split(bh);
        self.queries.base(b, h, self.heads, width)
    }

    /// Packed index of query row `i` of pair `bh`'s sequence.
    fn q_row(&self, bh: usize, i: usize) -> usize {
        self.queries.starts[bh / self.heads] + i
    }

    /// Rows `rows` of the query matrix of pair `bh`.
    fn q_rows(&self, bh: usize, rows: std::ops::Range<usize>) -> &'a [f32] {
        let (d, base) = (self.d_head, self.q_base(bh, self.d_head));
        &self.qkv.q[base + rows.start * d..base + rows.end * d]
    }

    /// Element offset of key row 0 of pair `bh`.
    fn k_base(&self, bh: usize) -> usize {
        let (b, h) = self.split(bh);
        self.keys.base(b, h, self.heads, self.d_head)
    }

    /// The key (or value, `of = qkv.v`) matrix of pair `bh`, rows `keys`.
    fn kv_rows(&self, of: &'a [f32], bh: usize, keys: std::ops::Range<usize>) -> &'a [f32] {
        let (d, base) = (self.d_head, self.k_base(bh));
        &of[base + keys.start * d..base + keys.end * d]
    }

    /// Adds the bias and masks the scores of query `i` of pair `bh` against
    /// keys `j0..j0 + row.len()`: a hidden key's score is `-inf`. `shape` is
    /// [`Attention::bias_shape`], which the kernels compute once per call
    /// (it scans every sequence's length).
    #[inline(always)]
    fn bias_and_mask(&self, shape: BiasShape, bh: usize, i: usize, j0: usize, row: &mut [f32]) {
        if let Some(bias) = self.bias {
            let at = bias.layout().index(shape, bh % self.heads, i, j0);
            let bias = &bias.values()[at..at + row.len()];
            // A branch-free loop the compiler vectorises.
            row.iter_mut().zip(bias).for_each(|(x, y)| *x += y);
        }
        let j1 = j0 + row.len();
        if self.causal && i + 1 < j1 {
            row[(i + 1).saturating_sub(j0)..].fill(f32::NEG_INFINITY);
        }
    }

    /// Applies the dropout mask to the probabilities of query `i` of pair
    /// `bh` against keys `j0..j0 + row.len()`.
    fn drop_probs(&self, bh: usize, i: usize, j0: usize, row: &mut [f32]) {
        self.dropout
            .apply_row(self.q_row(bh, i), bh % self.heads, j0, row);
    }

    /// Keys query `i` of pair `bh` can see at all, as an end bound.
    fn key_end(&self, bh: usize, i: usize) -> usize {
        let k_len = self.k_len(bh);
        if self.causal {
            (i + 1).min(k_len)
        } else {
            k_len
        }
    }
}

/// Splits `buf` into the disjoint regions `(start, len)` (in any order),
/// returned in the order given. Panics if two overlap or one runs past the
/// end (the callers' layouts were checked against both).
fn carve<'b>(mut buf: &'b mut [f32], regions: &[(usize, usize)]) -> Vec<&'b mut [f32]> {
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by_key(|&r| regions[r].0);
    let mut out: Vec<Option<&'b mut [f32]>> = (0..regions.len()).map(|_| None).collect();
    let mut at = 0;
    for r in order {
        let (start, len) = regions[r];
        let rest = std::mem::take(&mut buf);
        let (_, tail) = rest.split_at_mut(start - at);
        let (region, tail) = tail.split_at_mut(len);
        out[r] = Some(region);
        buf = tail;
        at = start + len;
    }
    out.into_iter().map(|r| r.expect("every region")).collect()
}

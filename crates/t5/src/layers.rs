//! The sublayers of a T5 block, each a forward that keeps what its backward
//! needs and a backward beside it that returns the input gradient and adds
//! into the parameter gradients.
//!
//! Every sublayer is pre-norm and residual: `x += dropout(f(rms_norm(x)))`,
//! with `f` self-attention, cross-attention onto the encoder output, or the
//! feed-forward block. Linear weights are Hugging Face's `[out, in]`, so a
//! forward is `Y = X·Wᵀ`, and its backward `dX = dY·W`, `dW += dYᵀ·X`.
//!
//! Every matmul reads its operands in the pass's [`Precision`]: weights
//! through [`Weights`] and gradients ([`Weights::linear_backward`]) rounded as the
//! gemm packs them, activations rounded as they are kept for the backward
//! ([`Precision::keep_activation`]). Outputs, norms, attention and the
//! residual stream stay f32.

use crate::attention::{self, Attention, AttentionGradsMut, Bias, ProbDropout, Qkv, Seqs};
use crate::lora::Lora;
use crate::params::{AttentionIds, FeedForwardIds, ParamId, ParamStore, SublayerIds, SublayerKind};
use crate::precision::{
    matmul, matmul_new, matmul_packed_new, Dense, Operand, OperandRef, PackedOperand, Precision,
};
use tessera_t5_config::{FeedForward, T5Config};
use tessera_tensor::ops::activation::Activation;
use tessera_tensor::ops::dropout::dropout_rows;
use tessera_tensor::ops::{norm, residual};
use tessera_tensor::rng;
use tessera_tensor::{MatMut, Op, Result};

/// The weights a pass's matmuls read: f32 master weights read in the pass's
/// precision (rounded by the gemm as it packs them, so no 16-bit copy of the
/// model is kept), or weights stored in 16 bits, read as they are; while
/// decoding, some of them packed in advance ([`Prepacked`]); and the LoRA
/// adapters beside them ([`crate::lora`]).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    params: &'a ParamStore,
    precision: Precision,
    packed: Option<&'a Prepacked>,
    lora: Option<&'a Lora>,
    dropout: DropoutPlan,
}

impl<'a> Weights<'a> {
    /// The weights `params` read in `precision` (an f32 store is rounded to
    /// it; a 16-bit store is read in its own type, which must be
    /// `precision`'s for the matmuls to accept it).
    pub fn new(params: &'a ParamStore, precision: Precision) -> Self {
        Weights {
            params,
            precision,
            packed: None,
            lora: None,
            dropout: DropoutPlan::OFF,
        }
    }

    /// The same weights in a pass with `dropout` (a training pass: its
    /// `adapter_p` drops the LoRA adapters' input).
    pub fn with_dropout(self, dropout: DropoutPlan) -> Self {
        Weights { dropout, ..self }
    }

    /// The same weights with `lora`'s adapters added to the ones it adapts.
    pub fn with_lora(self, lora: Option<&'a Lora>) -> Self {
        Weights { lora, ..self }
    }

    /// Every parameter as stored (norms, embeddings, bias tables).
    pub fn params(&self) -> &'a ParamStore {
        self.params
    }

    /// The number format the matmuls read (see [`crate::precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same weights, with those in `packed` read from their packed copy.
    pub fn with_packed(self, packed: Option<&'a Prepacked>) -> Self {
        Weights { packed, ..self }
    }

    /// The matmul operand of parameter `id`.
    pub fn get(&self, id: ParamId) -> OperandRef<'a> {
        match self.params.view(id) {
            OperandRef::F32(w) => self.precision.read(w),
            stored => stored,
        }
    }

    /// `Y = X·Wᵀ` for the linear weight `id` (`[out, in]`) and the `rows`
    /// rows of `X`, from the packed copy of `W` when there is one (the same
    /// bits); plus `s·(drop(X)·Aᵀ)·Bᵀ` when LoRA adapts `W`, its dropout
    /// keyed by each row's token identity in `tokens` (may be empty when the
    /// pass has no adapter dropout).
    pub fn linear(
        &self,
        x: OperandRef<'_>,
        id: ParamId,
        (rows, tokens): (usize, &[u64]),
    ) -> Result<Vec<f32>> {
        let out_dim = self.params.entry(id).shape[0];
        let mut y = match self.packed.and_then(|p| p.get(id)) {
            None => linear(x, self.get(id), rows, out_dim)?,
            Some(w) => {
                let in_dim = self.params.entry(id).numel() / out_dim;
                matmul_packed_new(1.0, (dense(x, rows, in_dim), Op::N), w)?
            }
        };
        if let Some(adapter) = self.adapter(id) {
            let dropped = self.adapter_input(x, id, tokens)?;
            let x = dropped.as_ref().map_or(x, Operand::view);
            let u = self.precision.keep_activation(adapter.down(x, rows)?);
            let b = dense(adapter.b, out_dim, adapter.rank);
            let c = MatMut::dense(&mut y, rows, out_dim)?;
            let u = dense(u.view(), rows, adapter.rank);
            matmul(adapter.scale, (u, Op::N), (b, Op::T), 1.0, c)?;
        }
        Ok(y)
    }

    /// Backward of [`Weights::linear`] for `dY` of `rows` rows: returns
    /// `dX = dY·W` (plus the adapter's share, through its dropout), adds
    /// `dYᵀ·X` into `dW` when `W` trains, and the adapter's `dA`, `dB` when
    /// LoRA adapts `W`; `tokens` as for the forward.
    pub fn linear_backward(
        &self,
        (dy, x): (&[f32], OperandRef<'_>),
        (id, rows_tokens): (ParamId, (usize, &[u64])),
        grads: &mut ParamGrads<'_>,
    ) -> Result<Vec<f32>> {
        self.backward_with((dy, x), (id, rows_tokens), grads, |dy, w| {
            matmul_new(1.0, (dy, Op::N), (w, Op::N))
        })
    }

    /// [`Weights::linear_backward`] adding `dX` into `dx` (a sum of
    /// branches: keys and values read the same input).
    pub fn linear_backward_add(
        &self,
        (dy, x): (&[f32], OperandRef<'_>),
        (id, rows_tokens): (ParamId, (usize, &[u64])),
        grads: &mut ParamGrads<'_>,
        dx: &mut [f32],
    ) -> Result<()> {
        self.backward_with((dy, x), (id, rows_tokens), grads, |dy, w| {
            let c = MatMut::dense(&mut *dx, dy.rows, w.cols)?;
            matmul(1.0, (dy, Op::N), (w, Op::N), 1.0, c)?;
            Ok(&mut *dx)
        })?;
        Ok(())
    }

    /// The weight's and the adapter's gradients of a linear backward, with
    /// `input(dY, W)` putting `dX = dY·W` where the caller wants it (the
    /// adapter's share is then added there).
    fn backward_with<D: AsMut<[f32]>>(
        &self,
        (dy, x): (&[f32], OperandRef<'_>),
        (id, rows_tokens): (ParamId, (usize, &[u64])),
        grads: &mut ParamGrads<'_>,
        input: impl FnOnce(Dense<'_>, Dense<'_>) -> Result<D>,
    ) -> Result<D> {
        let (w, out_dim) = (self.get(id), self.params.entry(id).shape[0]);
        let dyw = weight_backward(dy, x, w, (rows_tokens.0, out_dim), grads.base(id))?;
        let mut dx = input(dyw, dense(w, out_dim, w.len() / out_dim))?;
        self.adapter_backward((dy, x), (id, rows_tokens), grads, dx.as_mut())?;
        Ok(dx)
    }

    /// The LoRA adapter's share of a linear backward, when `W` has one:
    /// adds its `dX` into `dx` and its `dA`, `dB` into the gradients.
    fn adapter_backward(
        &self,
        (dy, x): (&[f32], OperandRef<'_>),
        (id, (rows, tokens)): (ParamId, (usize, &[u64])),
        grads: &mut ParamGrads<'_>,
        dx: &mut [f32],
    ) -> Result<()> {
        let Some(adapter) = self.adapter(id) else {
            return Ok(());
        };
        let w = self.get(id);
        let out_dim = self.params.entry(id).shape[0];
        let (r, in_dim, s) = (adapter.rank, w.len() / out_dim, adapter.scale);
        let dy = dense(w.precision().read(dy), rows, out_dim);
        let dropped = self.adapter_input(x, id, tokens)?;
        let x = dropped.as_ref().map_or(x, Operand::view);
        let u = self.precision.keep_activation(adapter.down(x, rows)?);
        let b = dense(adapter.b, out_dim, r);
        let g = matmul_new(1.0, (dy, Op::N), (b, Op::N))?;
        let g = self.precision.keep_activation(g);
        let g = dense(g.view(), rows, r);
        let a = dense(adapter.a, r, in_dim);
        if dropped.is_none() {
            matmul(
                s,
                (g, Op::N),
                (a, Op::N),
                1.0,
                MatMut::dense(dx, rows, in_dim)?,
            )?;
        } else {
            // Back through the dropout: the same mask, on the gradient.
            let mut dxa = matmul_new(s, (g, Op::N), (a, Op::N))?;
            let site = Site::adapter(id);
            self.adapter_dropout().apply(&mut dxa, tokens, site, 0)?;
            residual::add_inplace(dx, &dxa)?;
        }
        let (da, db) = grads.adapter_pair(adapter.ids);
        if let (Some(da), Some(db)) = (da, db) {
            let u = dense(u.view(), rows, r);
            matmul(
                s,
                (dy, Op::T),
                (u, Op::N),
                1.0,
                MatMut::dense(db, out_dim, r)?,
            )?;
            let x = dense(x, rows, in_dim);
            matmul(
                s,
                (g, Op::T),
                (x, Op::N),
                1.0,
                MatMut::dense(da, r, in_dim)?,
            )?;
        }
        Ok(())
    }

    /// The LoRA dropout of this pass, as a plan for [`DropoutPlan::apply`].
    fn adapter_dropout(&self) -> DropoutPlan {
        DropoutPlan {
            p: self.dropout.adapter_p,
            ..self.dropout
        }
    }

    /// The adapter's input `drop(X)` when this pass drops it (kept in the
    /// pass's precision), `None` when it reads `X` as it is.
    fn adapter_input(
        &self,
        x: OperandRef<'_>,
        id: ParamId,
        tokens: &[u64],
    ) -> Result<Option<Operand>> {
        let plan = self.adapter_dropout();
        if plan.p == 0.0 {
            return Ok(None);
        }
        let mut dropped = x.widened().into_owned();
        plan.apply(&mut dropped, tokens, Site::adapter(id), 0)?;
        Ok(Some(self.precision.keep_activation(dropped)))
    }

    /// The LoRA adapter of weight `id`, read in this pass's precision.
    fn adapter(&self, id: ParamId) -> Option<Adapter<'a>> {
        let lora = self.lora?;
        let (a, b) = lora.pair(id)?;
        let store = lora.adapters();
        Some(Adapter {
            ids: (a, b),
            a: self.precision.read(store.get(a)),
            b: self.precision.read(store.get(b)),
            rank: lora.config().rank,
            scale: lora.config().scale(),
        })
    }
}

/// One LoRA adapter as a pass reads it.
struct Adapter<'a> {
    ids: (ParamId, ParamId),
    /// `A: [rank, in]`.
    a: OperandRef<'a>,
    /// `B: [out, rank]`.
    b: OperandRef<'a>,
    rank: usize,
    scale: f32,
}

impl Adapter<'_> {
    /// `X·Aᵀ`, `[rows, rank]`.
    fn down(&self, x: OperandRef<'_>, rows: usize) -> Result<Vec<f32>> {
        linear(x, self.a, rows, self.rank)
    }
}

/// Where a backward adds parameter gradients: into every weight's (full
/// fine-tuning), or only into the LoRA adapters' with the base frozen, when
/// no base weight gradient is computed at all.
#[derive(Debug)]
pub enum ParamGrads<'a> {
    /// Gradients of every parameter, in the model's layout.
    Full(&'a mut ParamStore),
    /// Gradients of the adapters, in [`Lora::adapters`]'s layout.
    Adapters(&'a mut ParamStore),
}

impl ParamGrads<'_> {
    /// The gradient of base parameter `id`, when the base trains.
    pub fn base(&mut self, id: ParamId) -> Option<&mut [f32]> {
        match self {
            ParamGrads::Full(g) => Some(g.get_mut(id)),
            ParamGrads::Adapters(_) => None,
        }
    }

    /// The same sink, borrowed again (for a sublayer's share of a stack).
    pub fn reborrow(&mut self) -> ParamGrads<'_> {
        match self {
            ParamGrads::Full(g) => ParamGrads::Full(g),
            ParamGrads::Adapters(g) => ParamGrads::Adapters(g),
        }
    }

    /// The gradients of an adapter's `A` and `B`, when adapters train.
    fn adapter_pair(
        &mut self,
        (a, b): (ParamId, ParamId),
    ) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
        match self {
            ParamGrads::Full(_) => (None, None),
            ParamGrads::Adapters(g) => {
                let (da, db) = g.get_pair_mut(a, b);
                (Some(da), Some(db))
            }
        }
    }
}

/// Linear weights packed once for the many small products that read them
/// ([`PackedOperand`]): greedy decoding multiplies every decoder weight by a
/// handful of rows per step, and packing the weight would otherwise cost as
/// much as the product. Holds a packed copy of each weight (the memory of
/// those weights again, in the precision the matmuls read).
#[derive(Debug)]
pub struct Prepacked {
    by_param: Vec<Option<PackedOperand>>,
}

impl Prepacked {
    /// Packs the linear weights `ids` as `weights` reads them.
    pub fn new(weights: Weights<'_>, ids: impl IntoIterator<Item = ParamId>) -> Result<Self> {
        let mut by_param: Vec<Option<PackedOperand>> = Vec::new();
        for id in ids {
            let shape = &weights.params.entry(id).shape;
            let w = dense(weights.get(id), shape[0], shape[1]);
            if by_param.len() <= id.index() {
                by_param.resize_with(id.index() + 1, || None);
            }
            by_param[id.index()] = Some(PackedOperand::pack(w, Op::T)?);
        }
        Ok(Prepacked { by_param })
    }

    fn get(&self, id: ParamId) -> Option<&PackedOperand> {
        self.by_param.get(id.index())?.as_ref()
    }
}

/// `Y = X·Wᵀ` for `X: [rows, in]`, `W: [out, in]`, both in one precision.
pub fn linear(
    x: OperandRef<'_>,
    w: OperandRef<'_>,
    rows: usize,
    out_dim: usize,
) -> Result<Vec<f32>> {
    let in_dim = w.len() / out_dim;
    matmul_new(
        1.0,
        (dense(x, rows, in_dim), Op::N),
        (dense(w, out_dim, in_dim), Op::T),
    )
}

fn dense(data: OperandRef<'_>, rows: usize, cols: usize) -> Dense<'_> {
    Dense { data, rows, cols }
}

/// The weight's share of the backward of [`linear`] (`rows` rows, `W:
/// [out_dim, in]`): `dW += dYᵀ·X` when `dw` is given (a frozen weight has
/// none). Returns `dY` as the `dX = dY·W` product reads it (in the
/// precision of `W`).
fn weight_backward<'a>(
    dy: &'a [f32],
    x: OperandRef<'_>,
    w: OperandRef<'_>,
    (rows, out_dim): (usize, usize),
    dw: Option<&mut [f32]>,
) -> Result<Dense<'a>> {
    let in_dim = w.len() / out_dim;
    let dy = dense(w.precision().read(dy), rows, out_dim);
    if let Some(dw) = dw {
        matmul(
            1.0,
            (dy, Op::T),
            (dense(x, rows, in_dim), Op::N),
            1.0,
            MatMut::dense(dw, out_dim, in_dim)?,
        )?;
    }
    Ok(dy)
}

/// Dropout of one pass: probability (0 in eval) and the seed its masks derive from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutPlan {
    /// Drop probability.
    pub p: f32,
    /// Drop probability of the LoRA adapters' input (PEFT's `lora_dropout`).
    pub adapter_p: f32,
    /// Seed of this pass (the trainer varies it per step).
    pub seed: u64,
}

impl DropoutPlan {
    /// No dropout (evaluation).
    pub const OFF: DropoutPlan = DropoutPlan {
        p: 0.0,
        adapter_p: 0.0,
        seed: 0,
    };

    /// The mask key of one dropout site.
    pub fn key(&self, site: Site, what: u64) -> u64 {
        rng::key(self.seed, &[site.stack, site.block, site.sublayer, what])
    }

    /// Applies this plan's mask for `(site, what)` to `x`, one row per
    /// token of `tokens` (forward and backward alike): each row's mask is
    /// keyed by its token's identity ([`token_ids`]).
    pub fn apply(&self, x: &mut [f32], tokens: &[u64], site: Site, what: u64) -> Result<()> {
        dropout_rows(x, self.p, self.key(site, what), tokens)
    }
}

/// Where a dropout happens: stack (0 encoder, 1 decoder), block, sublayer;
/// the input of a LoRA adapter is stack 2, its weight's parameter index as
/// the block ([`Site::adapter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// 0 for the encoder, 1 for the decoder.
    pub stack: u64,
    /// Block index (`u64::MAX` for the stack's embedding and final dropouts).
    pub block: u64,
    /// Sublayer index within the block.
    pub sublayer: u64,
}

impl Site {
    /// The site of the dropout on the input of the adapter of weight `id`.
    pub fn adapter(id: ParamId) -> Site {
        Site {
            stack: 2,
            block: id.index() as u64,
            sublayer: 0,
        }
    }
}

/// The identity of every token of packed sequences, `(example << 32) |
/// position`, which keys its dropout masks: the same token of the same
/// example draws the same mask whatever batch it is in and wherever it sits.
pub fn token_ids(examples: &[u64], seqs: &Seqs) -> Vec<u64> {
    examples
        .iter()
        .zip(seqs.lens())
        .flat_map(|(&e, &len)| (0..len as u64).map(move |t| (e << 32) | t))
        .collect()
}

/// Dropout on a sublayer's output, before the residual add.
const DROP_OUTPUT: u64 = 0;
/// Dropout inside a sublayer: attention probabilities, or the FF hidden layer.
const DROP_INNER: u64 = 1;

/// The encoder output as the decoder's cross-attention sees it.
#[derive(Debug, Clone, Copy)]
pub struct EncoderView<'a> {
    /// `[source tokens, d_model]`, after the final norm (and dropout), as
    /// the key/value projections' matmul operand.
    pub hidden: OperandRef<'a>,
    /// The source sequences.
    pub seqs: &'a Seqs,
    /// The identity of each source token (keys the LoRA dropout of the
    /// key/value projections; [`token_ids`]).
    pub tokens: &'a [u64],
}

/// Everything a sublayer reads besides its own parameters and input.
#[derive(Debug, Clone, Copy)]
pub struct StackContext<'a> {
    /// Model configuration.
    pub config: &'a T5Config,
    /// The weights: master weights (norms, embeddings, bias tables) and
    /// the matmuls' operands, in the pass's precision.
    pub weights: Weights<'a>,
    /// This stack's sequences (packed real tokens).
    pub seqs: &'a Seqs,
    /// The identity of each token (keys its dropout masks; [`token_ids`]).
    pub tokens: &'a [u64],
    /// Whether self-attention is causal (the decoder).
    pub causal: bool,
    /// Relative position bias `[heads, 2·max_len - 1]` (one entry per offset
    /// `j - i`: [`tessera_tensor::attention::BiasLayout::Relative`]), shared
    /// by every block.
    pub bias: &'a [f32],
    /// The encoder output (decoder only).
    pub encoder: Option<EncoderView<'a>>,
}

impl StackContext<'_> {
    fn rows(&self) -> usize {
        self.seqs.total()
    }

    /// Dropout of this pass (the weights' plan: one plan per pass).
    pub fn dropout(&self) -> DropoutPlan {
        self.weights.dropout
    }
}

/// Where a backward pass adds its gradients.
#[derive(Debug)]
pub struct GradSinks<'a> {
    /// Parameter gradients.
    pub grads: ParamGrads<'a>,
    /// Gradient of the stack's position bias `[heads, 2·max_len - 1]`.
    pub dbias: &'a mut [f32],
    /// Gradient of the encoder output (decoder only).
    pub dencoder: Option<&'a mut [f32]>,
}

/// What an RMS norm's backward needs: its input and per-row statistics.
#[derive(Debug, Clone)]
pub struct NormStats {
    x: Vec<f32>,
    rstd: Vec<f32>,
}

/// RMS norm statistics and output.
#[derive(Debug, Clone)]
pub struct NormCache {
    /// What the backward needs.
    pub stats: NormStats,
    /// The normalised rows.
    pub n: Vec<f32>,
}

/// `rms_norm(x)` with what its backward needs; `x` is kept as it is, not
/// copied.
pub fn norm_forward(x: Vec<f32>, weight: &[f32], eps: f32) -> Result<NormCache> {
    let (n, rstd) = rms_norm(&x, weight, eps)?;
    Ok(NormCache {
        stats: NormStats { x, rstd },
        n,
    })
}

/// `rms_norm(x)` alone, for a pass with no backward.
pub fn norm_only(x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>> {
    Ok(rms_norm(x, weight, eps)?.0)
}

/// The normalised rows of `x` and each row's reciprocal RMS.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut n = vec![0.0; x.len()];
    let mut rstd = vec![0.0; x.len() / weight.len()];
    norm::rms_norm_forward(&mut n, &mut rstd, x, weight, eps)?;
    Ok((n, rstd))
}

/// Adds the norm's input gradient into `dx` and its weight gradient into `dweight`.
pub fn norm_backward(
    stats: &NormStats,
    weight: &[f32],
    dweight: Option<&mut [f32]>,
    dn: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    // A frozen norm's weight gradient goes to a scratch row and is dropped.
    let mut scratch = Vec::new();
    let dweight = dweight.unwrap_or_else(|| {
        scratch.resize(weight.len(), 0.0);
        &mut scratch
    });
    norm::rms_norm_backward(dx, dweight, dn, &stats.x, weight, &stats.rstd)
}

/// What an attention sublayer keeps for its backward.
#[derive(Debug, Clone)]
pub struct AttentionSublayerCache {
    norm: NormStats,
    normed: Operand,
    q: Operand,
    k: Operand,
    v: Operand,
    /// Each attention row's log-sum-exp. The attention output the backward
    /// also needs is `ctx` split into heads again, so it is not kept twice.
    lse: Vec<f32>,
    ctx: Operand,
}

impl AttentionSublayerCache {
    /// The keys and values the sublayer attended to.
    pub(crate) fn into_keys(self) -> (Operand, Operand) {
        (self.k, self.v)
    }
}

/// What a feed-forward sublayer keeps for its backward.
#[derive(Debug, Clone)]
pub struct FeedForwardCache {
    norm: NormStats,
    normed: Operand,
    h0: Operand,
    h1: Option<Operand>,
    g: Operand,
}

/// What any sublayer keeps for its backward.
#[derive(Debug, Clone)]
pub enum SublayerCache {
    /// Self- or cross-attention.
    Attention(AttentionSublayerCache),
    /// Feed-forward.
    FeedForward(FeedForwardCache),
}

impl SublayerCache {
    /// The sublayer's norm input and statistics.
    fn norm(&self) -> &NormStats {
        match self {
            SublayerCache::Attention(c) => &c.norm,
            SublayerCache::FeedForward(c) => &c.norm,
        }
    }
}

/// `x += dropout(f(rms_norm(x)))`; returns what the backward needs. The
/// cache keeps the input buffer itself, and `x` becomes the output buffer
/// of `f` with the input added (`y + x`, the same bits as `x + y`).
pub fn sublayer_forward(
    cx: &StackContext<'_>,
    site: Site,
    ids: &SublayerIds,
    x: &mut Vec<f32>,
) -> Result<SublayerCache> {
    let eps = cx.config.layer_norm_epsilon as f32;
    let input = std::mem::take(x);
    let NormCache { stats, n } = norm_forward(input, &cx.weights.params().widened(ids.norm), eps)?;
    let normed = (stats, cx.weights.precision().keep_activation(n));
    let (mut y, cache) = match ids.kind {
        SublayerKind::SelfAttention(a) => attention_sublayer_forward(cx, site, &a, normed, false)?,
        SublayerKind::CrossAttention(a) => attention_sublayer_forward(cx, site, &a, normed, true)?,
        SublayerKind::FeedForward(f) => feed_forward_forward(cx, site, &f, normed)?,
    };
    cx.dropout().apply(&mut y, cx.tokens, site, DROP_OUTPUT)?;
    residual::add_inplace(&mut y, &cache.norm().x)?;
    *x = y;
    Ok(cache)
}

/// Backward of [`sublayer_forward`]: `dx` holds the gradient of the
/// sublayer's output and is turned into that of its input.
pub fn sublayer_backward(
    cx: &StackContext<'_>,
    site: Site,
    ids: &SublayerIds,
    cache: &SublayerCache,
    dx: &mut [f32],
    sinks: &mut GradSinks<'_>,
) -> Result<()> {
    // The output's gradient through the dropout: a copy only when it drops.
    let mut dropped = None;
    if cx.dropout().p > 0.0 {
        let dy = dropped.insert(dx.to_vec());
        cx.dropout().apply(dy, cx.tokens, site, DROP_OUTPUT)?;
    }
    let dy = dropped.as_deref().unwrap_or(dx);
    let dn = match (ids.kind, cache) {
        (SublayerKind::SelfAttention(a), SublayerCache::Attention(c)) => {
            attention_sublayer_backward(cx, site, &a, c, dy, sinks, false)?
        }
        (SublayerKind::CrossAttention(a), SublayerCache::Attention(c)) => {
            attention_sublayer_backward(cx, site, &a, c, dy, sinks, true)?
        }
        (SublayerKind::FeedForward(f), SublayerCache::FeedForward(c)) => {
            feed_forward_backward(cx, site, &f, c, dy, sinks)?
        }
        _ => unreachable!("caches are built by the matching forward"),
    };
    let w = cx.weights.params().widened(ids.norm);
    norm_backward(cache.norm(), &w, sinks.grads.base(ids.norm), &dn, dx)
}

/// Keys, values and bias an attention sublayer attends with.
struct KeySide<'a> {
    source: OperandRef<'a>,
    seqs: &'a Seqs,
    tokens: &'a [u64],
    bias: Option<Bias<'a>>,
}

fn key_side<'a>(cx: &StackContext<'a>, normed: OperandRef<'a>, cross: bool) -> KeySide<'a> {
    match (cross, cx.encoder) {
        (true, Some(e)) => KeySide {
            source: e.hidden,
            seqs: e.seqs,
            tokens: e.tokens,
            bias: None,
        },
        (true, None) => unreachable!("cross-attention only runs in the decoder"),
        (false, _) => KeySide {
            source: normed,
            seqs: cx.seqs,
            tokens: cx.tokens,
            bias: Some(Bias::Relative(cx.bias)),
        },
    }
}

/// The attention call of a sublayer: this stack's queries against `keys`,
/// causal for the decoder's self-attention, its dropout keyed per token.
fn attention_call<'a>(
    cx: &StackContext<'a>,
    site: Site,
    keys: &KeySide<'a>,
    qkv: Qkv<'a>,
    cross: bool,
) -> Attention<'a> {
    let c = cx.config;
    Attention {
        heads: c.num_heads,
        d_head: c.d_kv,
        queries: cx.seqs.rows(),
        keys: keys.seqs.rows(),
        qkv,
        bias: keys.bias,
        causal: cx.causal && !cross,
        dropout: ProbDropout {
            p: cx.dropout().p,
            key: cx.dropout().key(site, DROP_INNER),
            rows: cx.tokens,
        },
    }
}

/// `x · Wᵀ` split into `[heads, len, d_head]` per sequence of `seqs`
/// (`tokens` identify its rows), kept in the pass's precision as autocast's
/// 16-bit projections leave it; the attention kernels read it widened.
pub(crate) fn project_heads(
    weights: Weights<'_>,
    x: OperandRef<'_>,
    w: ParamId,
    (seqs, tokens): (&Seqs, &[u64]),
    [heads, d_head]: [usize; 2],
) -> Result<Operand> {
    let y = weights.linear(x, w, (seqs.total(), tokens))?;
    let split = attention::split_heads(&y, seqs, heads, d_head);
    Ok(weights.precision().keep_activation(split))
}

fn attention_sublayer_forward(
    cx: &StackContext<'_>,
    site: Site,
    a: &AttentionIds,
    (norm, normed): (NormStats, Operand),
    cross: bool,
) -> Result<(Vec<f32>, SublayerCache)> {
    let c = cx.config;
    let (h, dk) = (c.num_heads, c.d_kv);
    let keys = key_side(cx, normed.view(), cross);
    let heads = |x, w, seqs, tokens| project_heads(cx.weights, x, w, (seqs, tokens), [h, dk]);
    let q = heads(normed.view(), a.q, cx.seqs, cx.tokens)?;
    let k = heads(keys.source, a.k, keys.seqs, keys.tokens)?;
    let v = heads(keys.source, a.v, keys.seqs, keys.tokens)?;
    let (qf, kf, vf) = (q.widened(), k.widened(), v.widened());
    let qkv = Qkv {
        q: &qf,
        k: &kf,
        v: &vf,
    };
    let call = attention_call(cx, site, &keys, qkv, cross);
    let mut ctx_h = vec![0.0; call.q_elems()];
    let mut lse = vec![0.0; call.lse_elems()];
    tessera_tensor::attention::forward(&call, &mut ctx_h, &mut lse)?;
    let ctx = cx
        .weights
        .precision()
        .keep_activation(attention::merge_heads(&ctx_h, cx.seqs, h, dk));
    let y = cx.weights.linear(ctx.view(), a.o, (cx.rows(), cx.tokens))?;
    let cache = AttentionSublayerCache {
        norm,
        normed,
        q,
        k,
        v,
        lse,
        ctx,
    };
    Ok((y, SublayerCache::Attention(cache)))
}

/// Returns the gradient of the normed input; adds K/V gradients into the
/// encoder-output gradient for cross-attention.
fn attention_sublayer_backward(
    cx: &StackContext<'_>,
    site: Site,
    a: &AttentionIds,
    cache: &AttentionSublayerCache,
    dy: &[f32],
    sinks: &mut GradSinks<'_>,
    cross: bool,
) -> Result<Vec<f32>> {
    let c = cx.config;
    let (h, dk, rows) = (c.num_heads, c.d_kv, cx.rows());
    let keys = key_side(cx, cache.normed.view(), cross);
    let dctx = cx.weights.linear_backward(
        (dy, cache.ctx.view()),
        (a.o, (rows, cx.tokens)),
        &mut sinks.grads,
    )?;
    let dctx_h = attention::split_heads(&dctx, cx.seqs, h, dk);
    let (qf, kf, vf) = (cache.q.widened(), cache.k.widened(), cache.v.widened());
    let qkv = Qkv {
        q: &qf,
        k: &kf,
        v: &vf,
    };
    let call = attention_call(cx, site, &keys, qkv, cross);
    let out = attention::split_heads(&cache.ctx.widened(), cx.seqs, h, dk);
    let (mut dq_h, mut dk_h, mut dv_h) = (
        vec![0.0; call.q_elems()],
        vec![0.0; call.kv_elems()],
        vec![0.0; call.kv_elems()],
    );
    let grads = AttentionGradsMut {
        dq: &mut dq_h,
        dk: &mut dk_h,
        dv: &mut dv_h,
        dbias: (!cross).then_some(&mut *sinks.dbias),
    };
    tessera_tensor::attention::backward(&call, (&out, &cache.lse), &dctx_h, grads)?;
    let dq = attention::merge_heads(&dq_h, cx.seqs, h, dk);
    let dkey = attention::merge_heads(&dk_h, keys.seqs, h, dk);
    let dval = attention::merge_heads(&dv_h, keys.seqs, h, dk);
    let mut dn = cx.weights.linear_backward(
        (&dq, cache.normed.view()),
        (a.q, (rows, cx.tokens)),
        &mut sinks.grads,
    )?;
    let krows = keys.seqs.total();
    let dsource: &mut [f32] = match (cross, sinks.dencoder.as_deref_mut()) {
        (true, Some(d)) => d,
        (true, None) => unreachable!("the decoder backward always provides an encoder gradient"),
        (false, _) => &mut dn,
    };
    cx.weights.linear_backward_add(
        (&dkey, keys.source),
        (a.k, (krows, keys.tokens)),
        &mut sinks.grads,
        dsource,
    )?;
    cx.weights.linear_backward_add(
        (&dval, keys.source),
        (a.v, (krows, keys.tokens)),
        &mut sinks.grads,
        dsource,
    )?;
    Ok(dn)
}

/// The activation of a feed-forward kind.
pub fn activation(ff: FeedForward) -> Activation {
    match ff {
        FeedForward::GatedGelu => Activation::GeluNew,
        FeedForward::Relu | FeedForward::GatedRelu => Activation::Relu,
    }
}

fn feed_forward_forward(
    cx: &StackContext<'_>,
    site: Site,
    f: &FeedForwardIds,
    (norm, normed): (NormStats, Operand),
) -> Result<(Vec<f32>, SublayerCache)> {
    let c = cx.config;
    let (rows, act) = (cx.rows(), activation(c.feed_forward_proj));
    // The projections are kept in the pass's precision, and the activation
    // reads them as kept, so its backward sees the same values.
    let project = |w| -> Result<Operand> {
        let y = cx.weights.linear(normed.view(), w, (rows, cx.tokens))?;
        Ok(cx.weights.precision().keep_activation(y))
    };
    let h0 = project(f.wi)?;
    let mut g = vec![0.0; rows * c.d_ff];
    let h1 = match f.wi_gate {
        Some(w1) => {
            let h1 = project(w1)?;
            act.gated_forward(&mut g, &h0.widened(), &h1.widened())?;
            Some(h1)
        }
        None => {
            act.forward(&mut g, &h0.widened())?;
            None
        }
    };
    cx.dropout().apply(&mut g, cx.tokens, site, DROP_INNER)?;
    let g = cx.weights.precision().keep_activation(g);
    let y = cx.weights.linear(g.view(), f.wo, (rows, cx.tokens))?;
    let cache = FeedForwardCache {
        norm,
        normed,
        h0,
        h1,
        g,
    };
    Ok((y, SublayerCache::FeedForward(cache)))
}

fn feed_forward_backward(
    cx: &StackContext<'_>,
    site: Site,
    f: &FeedForwardIds,
    cache: &FeedForwardCache,
    dy: &[f32],
    sinks: &mut GradSinks<'_>,
) -> Result<Vec<f32>> {
    let c = cx.config;
    let (rows, act) = (cx.rows(), activation(c.feed_forward_proj));
    let mut dg = cx.weights.linear_backward(
        (dy, cache.g.view()),
        (f.wo, (rows, cx.tokens)),
        &mut sinks.grads,
    )?;
    cx.dropout().apply(&mut dg, cx.tokens, site, DROP_INNER)?;
    let n = cache.normed.view();
    let (wi, grads) = ((f.wi, (rows, cx.tokens)), &mut sinks.grads);
    let mut dh0 = vec![0.0; dg.len()];
    let dn = match (f.wi_gate, &cache.h1) {
        (Some(w1), Some(h1)) => {
            let mut dh1 = vec![0.0; dg.len()];
            act.gated_backward(&mut dh0, &mut dh1, &cache.h0.widened(), &h1.widened(), &dg)?;
            let w1 = (w1, (rows, cx.tokens));
            let mut dn = cx.weights.linear_backward((&dh1, n), w1, grads)?;
            cx.weights
                .linear_backward_add((&dh0, n), wi, grads, &mut dn)?;
            dn
        }
        _ => {
            act.backward(&mut dh0, &cache.h0.widened(), &dg)?;
            cx.weights.linear_backward((&dh0, n), wi, grads)?
        }
    };
    Ok(dn)
}

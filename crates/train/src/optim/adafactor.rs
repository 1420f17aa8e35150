//! Adafactor as `transformers.optimization.Adafactor` computes it (the
//! fairseq port), with the trainer's learning rate.
//!
//! Per parameter, at step `t` with `β2t = 1 − t^decay_rate`:
//!
//! ```text
//! lr  = lr_ext (or min(1e-2 | 1e-6·t, 1/sqrt(t)) with relative_step)
//!       · max(eps_scale, RMS(p))          (with scale_parameter)
//! s   = g² + eps_sq
//! ≥2-D [.., R, C]: row = β2t·row + (1−β2t)·mean_C(s),  col = β2t·col + (1−β2t)·mean_R(s)
//!       u = (1/sqrt(row / mean_R(row)) · 1/sqrt(col)) · g
//! 1-D:  v = β2t·v + (1−β2t)·s,  u = (1/sqrt(v)) · g
//! u   = u / max(1, RMS(u) / clip_threshold) · lr
//! m   = β1·m + (1−β1)·u,  u = m           (only with beta1)
//! p   = p + (−wd·lr)·p                    (not for layer norms)
//! p   = p − u
//! ```
//!
//! Element-wise steps are f32 in this order; means and RMS values are
//! accumulated in f64 (PyTorch reduces in f32) and rounded to f32 where
//! PyTorch holds them as f32 tensors; the small moment vectors are updated
//! with a fused multiply-add as PyTorch's vectorised `add_(…, alpha=…)` is.
//! Large tensors are processed in pieces of whole rows on the thread pool,
//! with every sum split independently of the thread count.

use super::pieces::{update_runs, PIECE};
use super::sums::{norm, norm_from_partials, sum_by, sum_squares};
use super::{AdafactorConfig, OptimizerConfig, StateTensor};
use crate::decimal::widen;
use rayon::prelude::*;
use std::ops::Range;
use tessera_t5::{ParamEntry, ParamStore};

/// Columns per parallel task of the column means.
const COLUMN_BLOCK: usize = 256;

/// The state of every parameter in layout order, or of a shard's run of
/// whole parameters from entry `first` (flat position `start`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Adafactor {
    slots: Vec<Slot>,
    first: usize,
    start: usize,
}

/// One parameter's state.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    /// The first moment, when `beta1` is set.
    exp_avg: Option<Vec<f32>>,
    second: SecondMoment,
}

/// The running mean of squared gradients.
#[derive(Debug, Clone, PartialEq)]
enum SecondMoment {
    /// Row and column means of a `[batch.., rows, cols]` tensor.
    Factored {
        rows: usize,
        cols: usize,
        /// `batch·rows` values.
        row: Vec<f32>,
        /// `batch·cols` values.
        col: Vec<f32>,
    },
    /// One value per element (1-D and scalar parameters).
    Full(Vec<f32>),
}

/// The learning rate of one parameter. With `scale_parameter` and an RMS
/// above `eps_scale`, PyTorch holds it as an f32 tensor; otherwise as a
/// Python float. The two round the weight-decay factor differently.
#[derive(Debug, Clone, Copy)]
enum Rate {
    F32(f32),
    F64(f64),
}

impl Rate {
    fn as_f32(self) -> f32 {
        match self {
            Rate::F32(v) => v,
            Rate::F64(v) => v as f32,
        }
    }

    /// `−wd·lr` as PyTorch's `add_(p, alpha=…)` receives it.
    fn decay_alpha(self, weight_decay: f64) -> f32 {
        match self {
            Rate::F32(v) => (-weight_decay) as f32 * v,
            Rate::F64(v) => (-weight_decay * v) as f32,
        }
    }
}

/// The coefficients of one step, the same for every parameter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hyper {
    /// The external or relative step size, before parameter scaling.
    lr: f64,
    /// `eps_scale` when the rate is scaled by the parameter's RMS.
    scale_floor: Option<f64>,
    beta2t: f32,
    one_minus_beta2t: f32,
    eps_sq: f32,
    clip_threshold: f32,
    /// `(β1, 1 − β1)`.
    beta1: Option<(f32, f32)>,
    weight_decay: f64,
}

impl Hyper {
    /// The coefficients of step `t` (1-based) at external rate `lr`.
    pub(super) fn new(config: &OptimizerConfig, lr: f32, t: u64) -> Self {
        let a: &AdafactorConfig = &config.adafactor;
        let t = t as f64;
        let lr = if a.relative_step {
            let min_step = if a.warmup_init { 1e-6 * t } else { 1e-2 };
            min_step.min(1.0 / t.sqrt())
        } else {
            widen(lr)
        };
        let beta2t = 1.0 - t.powf(widen(a.decay_rate));
        Hyper {
            lr,
            scale_floor: a.scale_parameter.then(|| widen(a.eps_scale)),
            beta2t: beta2t as f32,
            one_minus_beta2t: (1.0 - beta2t) as f32,
            eps_sq: widen(a.eps_sq) as f32,
            clip_threshold: widen(a.clip_threshold) as f32,
            beta1: a.beta1.map(|b| {
                let b = widen(b);
                (b as f32, (1.0 - b) as f32)
            }),
            weight_decay: widen(config.weight_decay),
        }
    }

    /// The rate of a parameter with values `p`.
    fn rate(&self, p: &[f32]) -> Rate {
        match self.scale_floor {
            None => Rate::F64(self.lr),
            Some(floor) => {
                let rms = rms(p);
                if f64::from(rms) > floor {
                    Rate::F32(rms * self.lr as f32)
                } else {
                    Rate::F64(floor * self.lr)
                }
            }
        }
    }
}

impl Adafactor {
    /// Zero state for parameters laid out as `entries`.
    pub(super) fn new(config: &AdafactorConfig, entries: &[ParamEntry]) -> Self {
        let slots = entries
            .iter()
            .map(|e| Slot {
                exp_avg: config.beta1.map(|_| vec![0.0; e.numel()]),
                second: SecondMoment::zeros(&e.shape),
            })
            .collect();
        Adafactor {
            slots,
            first: 0,
            start: 0,
        }
    }

    /// Keeps the state of the parameters in `range` only (whole
    /// parameters of this state: see [`super::shard_ranges`]).
    pub(super) fn keep_shard(&mut self, entries: &[ParamEntry], range: Range<usize>) {
        let starts: Vec<usize> = super::pieces::entry_ranges(entries)
            .map(|r| r.start)
            .collect();
        let (first, last) = (
            starts.partition_point(|&s| s < range.start),
            starts.partition_point(|&s| s < range.end),
        );
        self.slots.truncate(last - self.first);
        self.slots.drain(..first - self.first);
        self.first = first;
        self.start = range.start;
    }

    /// The state as one stream of values (see [`super::Optimizer::gather`]).
    pub(super) fn streams(&self) -> Vec<Vec<&[f32]>> {
        vec![self.slots.iter().flat_map(Slot::buffers).collect()]
    }

    /// [`Adafactor::streams`], mutable.
    pub(super) fn streams_mut(&mut self) -> Vec<Vec<&mut [f32]>> {
        vec![self.slots.iter_mut().flat_map(Slot::buffers_mut).collect()]
    }

    /// One update of every parameter (parameters in parallel, and large
    /// ones split further); a 16-bit store is rounded back with the
    /// stochastic noise of `key`.
    pub(super) fn step(
        &mut self,
        h: &Hyper,
        params: &mut ParamStore,
        grads: &ParamStore,
        key: u64,
    ) {
        let mine = &grads.entries()[self.first..self.first + self.slots.len()];
        let numels = mine.iter().map(ParamEntry::numel);
        let items: Vec<_> = self
            .slots
            .iter_mut()
            .zip(grads.iter().skip(self.first))
            .collect();
        update_runs(
            params,
            self.start,
            numels,
            items,
            key,
            |p, (slot, (e, g))| slot.step(h, !e.is_layer_norm(), p, g),
        );
    }

    /// The state tensors, named after the parameters, for saving.
    pub(super) fn tensors<'a>(&'a self, entries: &[ParamEntry]) -> Vec<StateTensor<&'a [f32]>> {
        let buffers = self.slots.iter().flat_map(Slot::buffers);
        named(entries, &self.slots)
            .zip(buffers)
            .map(with_data)
            .collect()
    }

    /// The state tensors, mutable, for loading.
    pub(super) fn tensors_mut<'a>(
        &'a mut self,
        entries: &[ParamEntry],
    ) -> Vec<StateTensor<&'a mut [f32]>> {
        let names: Vec<_> = named(entries, &self.slots).collect();
        let buffers = self.slots.iter_mut().flat_map(Slot::buffers_mut);
        names.into_iter().zip(buffers).map(with_data).collect()
    }
}

/// Name and shape of every state tensor, in the order of [`Slot::buffers`].
fn named<'a>(
    entries: &'a [ParamEntry],
    slots: &'a [Slot],
) -> impl Iterator<Item = StateTensor<()>> + 'a {
    entries.iter().zip(slots).flat_map(|(e, slot)| {
        let mut out = Vec::with_capacity(3);
        if slot.exp_avg.is_some() {
            out.push(tensor(e, "exp_avg", e.shape.clone()));
        }
        if let SecondMoment::Factored { .. } = slot.second {
            let (row_shape, col_shape) = factored_shapes(&e.shape);
            out.push(tensor(e, "exp_avg_sq_row", row_shape));
            out.push(tensor(e, "exp_avg_sq_col", col_shape));
        } else {
            out.push(tensor(e, "exp_avg_sq", e.shape.clone()));
        }
        out
    })
}

fn tensor(e: &ParamEntry, what: &str, shape: Vec<usize>) -> StateTensor<()> {
    StateTensor {
        name: format!("{}.{what}", e.name),
        shape,
        data: (),
    }
}

fn with_data<T>((t, data): (StateTensor<()>, T)) -> StateTensor<T> {
    StateTensor {
        name: t.name,
        shape: t.shape,
        data,
    }
}

impl Slot {
    /// The state buffers: first moment (if any), then row and column or
    /// full second moment.
    fn buffers(&self) -> Vec<&[f32]> {
        let mut out: Vec<&[f32]> = self.exp_avg.iter().map(Vec::as_slice).collect();
        match &self.second {
            SecondMoment::Factored { row, col, .. } => out.extend([row.as_slice(), col]),
            SecondMoment::Full(v) => out.push(v),
        }
        out
    }

    /// [`Slot::buffers`], mutable.
    fn buffers_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = self.exp_avg.iter_mut().map(Vec::as_mut_slice).collect();
        match &mut self.second {
            SecondMoment::Factored { row, col, .. } => out.extend([row.as_mut_slice(), col]),
            SecondMoment::Full(v) => out.push(v),
        }
        out
    }
}

/// Shapes of the row and column statistics of a ≥2-D parameter:
/// `[.., R, C]` → `[.., R]` and `[.., C]`.
fn factored_shapes(shape: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let n = shape.len();
    let row = shape[..n - 1].to_vec();
    let mut col = shape[..n - 2].to_vec();
    col.push(shape[n - 1]);
    (row, col)
}

impl SecondMoment {
    fn zeros(shape: &[usize]) -> Self {
        if shape.len() >= 2 {
            let (row_shape, col_shape) = factored_shapes(shape);
            SecondMoment::Factored {
                rows: shape[shape.len() - 2],
                cols: shape[shape.len() - 1],
                row: vec![0.0; row_shape.iter().product()],
                col: vec![0.0; col_shape.iter().product()],
            }
        } else {
            SecondMoment::Full(vec![0.0; shape.iter().product()])
        }
    }

    /// Folds this step's squared gradients into the running means and
    /// returns the preconditioner `u = (row_factor · col_factor) · g`.
    fn accumulate(&mut self, h: &Hyper, g: &[f32]) -> Preconditioner {
        let ema = |state: &mut f32, mean: f32| {
            *state = mean.mul_add(h.one_minus_beta2t, *state * h.beta2t);
        };
        match self {
            SecondMoment::Factored {
                rows,
                cols,
                row,
                col,
            } => {
                let (r, c) = (*rows, *cols);
                let row_sums: Vec<f64> = g.par_chunks(c).map(|x| sum_sq(x, h.eps_sq)).collect();
                for (state, sum) in row.iter_mut().zip(&row_sums) {
                    ema(state, (sum / c as f64) as f32);
                }
                let col_sums = column_sums(g, r, c, h.eps_sq);
                for (state, sum) in col.iter_mut().zip(&col_sums) {
                    ema(state, (sum / r as f64) as f32);
                }
                let mut row_factor = Vec::with_capacity(row.len());
                for batch in row.chunks(r) {
                    let mean = (sum_by(batch, f64::from) / r as f64) as f32;
                    row_factor.extend(batch.iter().map(|&v| 1.0 / (v / mean).sqrt()));
                }
                Preconditioner {
                    rows: r,
                    cols: c,
                    row_factor,
                    col_factor: col.iter().map(|&v| 1.0 / v.sqrt()).collect(),
                }
            }
            SecondMoment::Full(v) => {
                for (state, &x) in v.iter_mut().zip(g) {
                    ema(state, x * x + h.eps_sq);
                }
                Preconditioner {
                    rows: v.len(),
                    cols: 1,
                    row_factor: v.iter().map(|&v| 1.0 / v.sqrt()).collect(),
                    col_factor: vec![1.0],
                }
            }
        }
    }
}

/// `Σ (x² + eps)` in f64 of f32 terms, as PyTorch forms them.
fn sum_sq(x: &[f32], eps: f32) -> f64 {
    sum_by(x, |v| f64::from(v * v + eps))
}

/// Column sums of `x² + eps` over each `[rows, cols]` matrix of `g`, in
/// row order, parallel over blocks of columns.
fn column_sums(g: &[f32], rows: usize, cols: usize, eps: f32) -> Vec<f64> {
    let mut sums = vec![0.0f64; g.len() / rows];
    sums.par_chunks_mut(cols)
        .zip(g.par_chunks(rows * cols))
        .for_each(|(sums, matrix)| {
            sums.par_chunks_mut(COLUMN_BLOCK)
                .enumerate()
                .for_each(|(k, out)| {
                    let first = k * COLUMN_BLOCK;
                    for row in matrix.chunks(cols) {
                        let x = &row[first..first + out.len()];
                        out.iter_mut()
                            .zip(x)
                            .for_each(|(s, &v)| *s += f64::from(v * v + eps));
                    }
                });
        });
    sums
}

/// `RMS(x) = ‖x‖ / sqrt(n)`: the norm rounded to f32, divided in f32 as
/// PyTorch's `norm(2) / numel ** 0.5` does.
fn rms(x: &[f32]) -> f32 {
    rms_from_norm(norm(x), x.len())
}

fn rms_from_norm(norm: f32, n: usize) -> f32 {
    norm / (n as f64).sqrt() as f32
}

/// The factors that turn a gradient into an unscaled update.
struct Preconditioner {
    /// Rows per matrix (the whole tensor for a 1-D parameter).
    rows: usize,
    /// Columns per matrix (1 for a 1-D parameter).
    cols: usize,
    /// One per row of every matrix.
    row_factor: Vec<f32>,
    /// One per column of every matrix.
    col_factor: Vec<f32>,
}

impl Preconditioner {
    /// Whole rows per parallel task.
    fn rows_per_piece(&self) -> usize {
        (PIECE / self.cols).max(1)
    }

    /// Writes `u` for the rows starting at `first_row` (whose gradients are `g`) into `out`.
    fn fill(&self, first_row: usize, g: &[f32], out: &mut [f32]) {
        for (i, (g, out)) in g
            .chunks(self.cols)
            .zip(out.chunks_mut(self.cols))
            .enumerate()
        {
            let row = first_row + i;
            let cols = &self.col_factor[(row / self.rows) * self.cols..][..self.cols];
            let rf = self.row_factor[row];
            for ((o, &g), &cf) in out.iter_mut().zip(g).zip(cols) {
                *o = (rf * cf) * g;
            }
        }
    }

    /// `RMS(u)` over the whole parameter.
    fn rms(&self, g: &[f32]) -> f32 {
        let piece = self.rows_per_piece() * self.cols;
        let partials: Vec<f64> = g
            .par_chunks(piece)
            .enumerate()
            .map(|(k, g)| {
                let mut u = vec![0.0; g.len()];
                self.fill(k * self.rows_per_piece(), g, &mut u);
                sum_squares(&u)
            })
            .collect();
        rms_from_norm(norm_from_partials(&partials), g.len())
    }
}

impl Slot {
    /// One update of parameter `p` from gradient `g`.
    fn step(&mut self, h: &Hyper, decays: bool, p: &mut [f32], g: &[f32]) {
        if g.is_empty() {
            return;
        }
        let rate = h.rate(p);
        let pre = self.second.accumulate(h, g);
        let ratio = pre.rms(g) / h.clip_threshold;
        // clamp(min = 1) that, like PyTorch's, keeps a NaN.
        let divisor = if ratio < 1.0 { 1.0 } else { ratio };
        let lr = rate.as_f32();
        let alpha = (decays && h.weight_decay != 0.0).then(|| rate.decay_alpha(h.weight_decay));
        let rows = pre.rows_per_piece();
        let piece = rows * pre.cols;
        let mut m_pieces: Vec<Option<&mut [f32]>> = match &mut self.exp_avg {
            Some(m) => m.chunks_mut(piece).map(Some).collect(),
            None => p.chunks(piece).map(|_| None).collect(),
        };
        p.par_chunks_mut(piece)
            .zip(g.par_chunks(piece))
            .zip(m_pieces.par_iter_mut())
            .enumerate()
            .for_each(|(k, ((p, g), m))| {
                let mut u = vec![0.0; g.len()];
                pre.fill(k * rows, g, &mut u);
                for x in &mut u {
                    *x = (*x / divisor) * lr;
                }
                if let (Some(m), Some((beta1, one_minus_beta1))) = (m.as_deref_mut(), h.beta1) {
                    for (m, x) in m.iter_mut().zip(&mut u) {
                        *m = *m * beta1 + one_minus_beta1 * *x;
                        *x = *m;
                    }
                }
                for (p, &x) in p.iter_mut().zip(&u) {
                    if let Some(alpha) = alpha {
                        *p += alpha * *p;
                    }
                    *p -= x;
                }
            });
    }
}

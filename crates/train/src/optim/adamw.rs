//! AdamW as `torch.optim.AdamW` computes it (`_single_tensor_adam` with
//! decoupled weight decay), element by element in f32:
//!
//! ```text
//! p   *= f32(1 − lr·wd)                       (skipped for layer norms / wd = 0)
//! m   += f32(1 − β1) · (g − m)                (lerp)
//! v    = v · f32(β2) + (f32(1 − β2) · g) · g  (mul_, addcmul_)
//! d    = sqrt(v) / f32(sqrt(1 − β2^t)) + f32(eps)
//! p   += (f32(−lr / (1 − β1^t)) · m) / d      (addcdiv_)
//! ```
//!
//! with the bracketed scalars computed in f64 as Python floats. Two
//! differences of PyTorch's CPU kernels are not reproduced, so results
//! agree to a unit or two in the last place per step rather than bit for
//! bit: its vectorised `lerp` fuses the multiply-add, and its f32 `sqrt`
//! is not always correctly rounded.

use super::pieces::{entry_ranges, lens, pieces, split_mut, update_runs, Piece};
use super::{OptimizerConfig, StateTensor};
use crate::decimal::widen;
use std::ops::Range;
use tessera_t5::{ParamEntry, ParamStore};
use tessera_tensor::ops::optim::{adamw, AdamWScalars};

/// First and second moments, laid out like the parameters: of every value,
/// or of a shard's run of whole pieces from flat position `start`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AdamW {
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    pieces: Vec<Piece>,
    start: usize,
}

/// The f32 coefficients of one step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hyper {
    /// The scalars of a weight that decays (`decay = 1 − lr·wd`).
    decaying: AdamWScalars,
}

impl Hyper {
    /// The coefficients of step `t` (1-based) at learning rate `lr`.
    pub(super) fn new(config: &OptimizerConfig, lr: f32, t: u64, grad_scale: f32) -> Self {
        let (lr, wd) = (widen(lr), widen(config.weight_decay));
        let (beta1, beta2) = (widen(config.beta1), widen(config.beta2));
        let t = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let decaying = AdamWScalars {
            decay: (1.0 - lr * wd) as f32,
            grad_scale,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            eps: widen(config.eps) as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
        };
        Hyper { decaying }
    }

    /// The scalars of a weight that decays, or of one that does not (a
    /// layer norm): `p · 1` is `p`, as skipping the decay leaves it.
    fn scalars(&self, decays: bool) -> AdamWScalars {
        let decay = if decays { self.decaying.decay } else { 1.0 };
        AdamWScalars {
            decay,
            ..self.decaying
        }
    }
}

impl AdamW {
    /// Zero moments for parameters laid out as `entries`.
    pub(super) fn new(entries: &[ParamEntry]) -> Self {
        let n = entries.iter().map(ParamEntry::numel).sum();
        AdamW {
            exp_avg: tessera_tensor::memory::zeros(n),
            exp_avg_sq: tessera_tensor::memory::zeros(n),
            pieces: pieces(entries),
            start: 0,
        }
    }

    /// Keeps the moments of the values in `range` only (a run of whole
    /// pieces of this state: see [`super::shard_ranges`]).
    pub(super) fn keep_shard(&mut self, range: Range<usize>) {
        let local = range.start - self.start..range.end - self.start;
        self.exp_avg = self.exp_avg[local.clone()].to_vec();
        self.exp_avg_sq = self.exp_avg_sq[local].to_vec();
        self.pieces.retain(|p| range.contains(&p.range.start));
        self.start = range.start;
    }

    /// The state as streams of values (see [`super::Optimizer::gather`]).
    pub(super) fn streams(&self) -> Vec<Vec<&[f32]>> {
        vec![vec![&self.exp_avg], vec![&self.exp_avg_sq]]
    }

    /// [`AdamW::streams`], mutable.
    pub(super) fn streams_mut(&mut self) -> Vec<Vec<&mut [f32]>> {
        vec![vec![&mut self.exp_avg], vec![&mut self.exp_avg_sq]]
    }

    /// One update of every value it holds state for; a 16-bit store is rounded back with
    /// the stochastic noise of `key`.
    pub(super) fn step(
        &mut self,
        h: &Hyper,
        params: &mut ParamStore,
        grads: &ParamStore,
        key: u64,
    ) {
        let no_decay: Vec<bool> = params
            .entries()
            .iter()
            .map(ParamEntry::is_layer_norm)
            .collect();
        let g = grads.flat();
        let m = split_mut(&mut self.exp_avg, lens(&self.pieces));
        let v = split_mut(&mut self.exp_avg_sq, lens(&self.pieces));
        let items: Vec<_> = m.into_iter().zip(v).zip(&self.pieces).collect();
        update_runs(
            params,
            self.start,
            lens(&self.pieces),
            items,
            key,
            |p, ((m, v), piece)| {
                let s = h.scalars(!no_decay[piece.entry]);
                // The four runs are cut from one layout, so they have one length.
                adamw(&s, p, &g[piece.range.clone()], m, v).expect("runs of one piece");
            },
        );
    }

    /// The state tensors, named after the parameters, for saving.
    pub(super) fn tensors<'a>(&'a self, entries: &[ParamEntry]) -> Vec<StateTensor<&'a [f32]>> {
        entries
            .iter()
            .zip(entry_ranges(entries))
            .flat_map(|(e, r)| {
                [
                    tensor(e, "exp_avg", &self.exp_avg[r.clone()]),
                    tensor(e, "exp_avg_sq", &self.exp_avg_sq[r]),
                ]
            })
            .collect()
    }

    /// The state tensors, mutable, for loading.
    pub(super) fn tensors_mut<'a>(
        &'a mut self,
        entries: &[ParamEntry],
    ) -> Vec<StateTensor<&'a mut [f32]>> {
        let numels = || entries.iter().map(ParamEntry::numel);
        let m = split_mut(&mut self.exp_avg, numels());
        let v = split_mut(&mut self.exp_avg_sq, numels());
        entries
            .iter()
            .zip(m)
            .zip(v)
            .flat_map(|((e, m), v)| [tensor(e, "exp_avg", m), tensor(e, "exp_avg_sq", v)])
            .collect()
    }
}

fn tensor<T>(e: &ParamEntry, what: &str, data: T) -> StateTensor<T> {
    StateTensor {
        name: format!("{}.{what}", e.name),
        shape: e.shape.clone(),
        data,
    }
}

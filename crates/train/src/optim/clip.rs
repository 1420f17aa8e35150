//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_`.

use super::pieces::pieces;
use super::sums::{norm_from_partials, sum_squares};
use rayon::prelude::*;
use std::ops::Range;
use tessera_t5::ParamStore;

/// Values per parallel task of the scaling.
const CHUNK: usize = 1 << 16;

/// The global gradient norm and what clipping multiplies the gradients by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// Global L2 norm before clipping.
    pub norm: f32,
    /// `max_norm / (norm + 1e-6)` when that is below 1, else 1.
    pub scale: f32,
}

/// The norm of `grads` and the clipping coefficient for `max_norm`, as
/// [`clip_grad_norm`] computes them, without touching the gradients (the
/// optimizer applies the coefficient as it reads them:
/// [`super::Optimizer::step_scaled`]).
pub fn clip(grads: &ParamStore, max_norm: f32) -> Clip {
    clip_from_partials(&clip_partials(grads, 0..grads.len()), max_norm)
}

/// The f64 sums of squares of the gradients' pieces (runs of at most 2^16
/// values within one parameter) that lie in `range`, in order. `range` is
/// a run of whole pieces, as every shard of [`super::shard_ranges`] is, so
/// the ranks' partials concatenated in rank order are one process's.
pub fn clip_partials(grads: &ParamStore, range: Range<usize>) -> Vec<f64> {
    let g = grads.flat();
    let mine: Vec<_> = pieces(grads.entries())
        .into_iter()
        .filter(|p| range.contains(&p.range.start))
        .collect();
    tessera_tensor::install(|| {
        mine.par_iter()
            .map(|p| sum_squares(&g[p.range.clone()]))
            .collect()
    })
}

/// The norm of gradients whose pieces' sums of squares are `partials`
/// (added in order) and the clipping coefficient for `max_norm`.
pub fn clip_from_partials(partials: &[f64], max_norm: f32) -> Clip {
    let norm = norm_from_partials(partials);
    let coef = max_norm / (norm + 1e-6);
    let clips = max_norm > 0.0 && max_norm.is_finite() && norm.is_finite() && coef < 1.0;
    Clip {
        norm,
        scale: if clips { coef } else { 1.0 },
    }
}

/// Multiplies every gradient by `scale` (nothing to do for 1).
pub fn scale_gradients(grads: &mut [f32], scale: f32) {
    if scale != 1.0 {
        tessera_tensor::install(|| {
            grads
                .par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|g| *g *= scale));
        });
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, and
/// returns the norm before clipping.
///
/// Follows `torch.nn.utils.clip_grad_norm_`: the coefficient is
/// `max_norm / (norm + 1e-6)` in f32 and is applied when it is below 1.
/// The sum of squares is accumulated in f64 (more exact than PyTorch's f32
/// reduction). `max_norm ≤ 0` or infinite means no clipping (the norm is
/// still returned); a NaN or infinite norm is returned as it is and the
/// gradients are left alone, so the caller can skip the step.
pub fn clip_grad_norm(grads: &mut ParamStore, max_norm: f32) -> f32 {
    let c = clip(grads, max_norm);
    scale_gradients(grads.flat_mut(), c.scale);
    c.norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_support::tiny_params;

    fn filled(value: f32) -> ParamStore {
        let mut g = tiny_params(0).zeros_like();
        g.flat_mut().fill(value);
        g
    }

    #[test]
    fn returns_the_norm_and_clips_like_torch() {
        let mut g = filled(0.5);
        let n = g.flat().len() as f64;
        let want = (n * 0.25).sqrt() as f32;
        assert!(want > 1.0);
        let total = clip_grad_norm(&mut g, 1.0);
        assert_eq!(total, want);
        let coef = 1.0 / (want + 1e-6);
        assert!(g.flat().iter().all(|&v| v == 0.5 * coef));
        let after = super::super::sums::norm(g.flat());
        assert!((after - 1.0).abs() < 1e-5, "{after}");
    }

    #[test]
    fn small_norms_disabled_clipping_and_non_finite_norms_leave_gradients_alone() {
        for (value, max_norm) in [(1e-4, 1.0), (0.5, 0.0), (0.5, -1.0), (0.5, f32::INFINITY)] {
            let mut g = filled(value);
            let before = g.clone();
            let norm = clip_grad_norm(&mut g, max_norm);
            assert!(norm > 0.0);
            assert_eq!(g, before, "{value} {max_norm}");
        }
        let mut g = filled(0.5);
        g.flat_mut()[3] = f32::NAN;
        let before = g.flat().to_vec();
        assert!(clip_grad_norm(&mut g, 1.0).is_nan());
        assert_eq!(g.flat()[..3], before[..3]);
        let mut g = filled(0.5);
        g.flat_mut()[0] = f32::INFINITY;
        assert_eq!(clip_grad_norm(&mut g, 1.0), f32::INFINITY);
        assert_eq!(g.flat()[1], 0.5);
    }

    #[test]
    fn the_norm_sums_in_f64() {
        // In f32, 1 + 1e-8·n would lose every small term.
        let mut g = filled(1e-4);
        g.flat_mut()[0] = 1.0;
        let n = g.flat().len() as f64;
        let want = (1.0 + (n - 1.0) * f64::from(1e-4f32).powi(2)).sqrt() as f32;
        assert!(want > 1.0);
        assert_eq!(clip_grad_norm(&mut g, 0.0), want);
    }
}

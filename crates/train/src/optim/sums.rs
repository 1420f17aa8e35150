//! f64 sums of f32 terms in a fixed order that still vectorises: the
//! engine's eight-lane sums ([`sum_by`]), and norms made of them in fixed
//! chunks, so they give the same result on every machine and for every
//! thread count.

use rayon::prelude::*;
pub(super) use tessera_tensor::ops::optim::{sum_by, sum_squares};

/// Values per parallel partial sum of [`norm`]: fixed, so the split does
/// not depend on the thread count.
const CHUNK: usize = 1 << 16;

/// `‖x‖₂` rounded to f32: f64 partial sums of squares over fixed chunks
/// (in parallel), added in order.
pub(super) fn norm(x: &[f32]) -> f32 {
    let partials: Vec<f64> = x.par_chunks(CHUNK).map(sum_squares).collect();
    norm_from_partials(&partials)
}

/// `sqrt(Σ partials)` rounded to f32, adding in order.
pub(super) fn norm_from_partials(partials: &[f64]) -> f32 {
    partials.iter().sum::<f64>().sqrt() as f32
}

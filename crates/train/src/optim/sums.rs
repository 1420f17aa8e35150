//! f64 sums of f32 terms in a fixed order that still vectorises.
//!
//! A single running f64 sum is a chain of dependent additions (one per
//! element, latency-bound); eight interleaved partial sums combined in a
//! fixed order at the end run at memory speed and give the same result on
//! every machine and for every thread count.

use rayon::prelude::*;

/// Interleaved partial sums.
const LANES: usize = 8;

/// Values per parallel partial sum of [`norm`]: fixed, so the split does
/// not depend on the thread count.
const CHUNK: usize = 1 << 16;

/// `Σ f(x_i)` in f64: element `i` goes to partial sum `i mod 8`, the
/// partial sums are added in order, then the tail.
#[inline]
pub(super) fn sum_by(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail.iter().map(|&v| f(v)).sum::<f64>()
}

/// `Σ x²` in f64.
pub(super) fn sum_squares(x: &[f32]) -> f64 {
    sum_by(x, |v| f64::from(v) * f64::from(v))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_a_plain_sum_and_keep_small_terms() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.1).sin()).collect();
        let plain: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((sum_squares(&x) - plain).abs() < 1e-12 * plain);
        let mut y = vec![1e-5f32; 17];
        y[0] = 1.0;
        let want = 1.0 + 16.0 * f64::from(1e-5f32).powi(2);
        assert!((sum_squares(&y) - want).abs() < 1e-15);
        assert_eq!(sum_by(&[], f64::from), 0.0);
        assert_eq!(sum_by(&[1.0, 2.0, 3.0], f64::from), 6.0);
    }
}

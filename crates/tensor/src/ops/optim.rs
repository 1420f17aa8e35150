//! The element-wise passes of an optimizer step: AdamW's update and the f64
//! sums that gradient clipping and Adafactor take.
//!
//! They stream the weights, gradients and moments once per step (seven
//! 4-byte streams per AdamW value), so they run at memory speed only when
//! the arithmetic keeps up: compiled for the baseline x86-64 target, the
//! square root and two divisions of each AdamW value run four lanes wide
//! and the update takes about a third longer than the memory traffic
//! alone. Each pass is therefore compiled twice and the AVX2 twin chosen
//! at run time (`simd_fn!`). Both twins do the same f32 (or f64)
//! operations in the same order, so the results are the same bits on every
//! CPU.

use super::check_len;
use super::vmath::simd_fn;
use crate::error::Result;

/// The f32 scalars of one AdamW update, computed by the caller (PyTorch
/// computes them in f64 as Python floats and rounds them to f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `1 − lr·wd`; 1 when the weight does not decay.
    pub decay: f32,
    /// What each gradient is multiplied by as it is read (clipping).
    pub grad_scale: f32,
    /// `1 − β1`.
    pub one_minus_beta1: f32,
    /// `β2`.
    pub beta2: f32,
    /// `1 − β2`.
    pub one_minus_beta2: f32,
    /// `sqrt(1 − β2^t)`.
    pub bias_correction2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
    /// `−lr / (1 − β1^t)`.
    pub neg_step_size: f32,
}

/// One AdamW update of weights `p` with gradients `g` and moments `m`, `v`,
/// in place, element by element:
///
/// ```text
/// g  = g · grad_scale
/// m += (1 − β1) · (g − m)
/// v  = v · β2 + ((1 − β2) · g) · g
/// p  = p · decay + (neg_step_size · m) / (sqrt(v) / bias_correction2_sqrt + eps)
/// ```
///
/// Errors when the four slices differ in length.
pub fn adamw(
    s: &AdamWScalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<()> {
    let n = p.len();
    check_len("adamw", "the gradient", g.len(), n)?;
    check_len("adamw", "the first moment", m.len(), n)?;
    check_len("adamw", "the second moment", v.len(), n)?;
    adamw_lanes(s, p, g, m, v);
    Ok(())
}

simd_fn! {
    /// [`adamw`] on slices of one length.
    fn adamw_lanes(s: &AdamWScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
            let g = g * s.grad_scale;
            *m += s.one_minus_beta1 * (g - *m);
            *v = *v * s.beta2 + (s.one_minus_beta2 * g) * g;
            let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
            *p = *p * s.decay + (s.neg_step_size * *m) / denom;
        }
    }
}

/// Interleaved partial sums of [`sum_by`].
const LANES: usize = 8;

/// `Σ f(x_i)` in f64: element `i` goes to partial sum `i mod 8`, the partial
/// sums are added in order, then the tail. A single running sum would be a
/// chain of dependent additions; eight interleaved ones vectorise and give
/// the same result on every machine.
///
/// `f` is inlined into the AVX2 twin when it is small (a conversion, a
/// square), which is what the callers pass.
pub fn sum_by<F: Fn(f32) -> f64>(x: &[f32], f: F) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<F: Fn(f32) -> f64>(x: &[f32], f: F) -> f64 {
            sum_lanes(x, f)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked on the line above.
            return unsafe { avx2(x, f) };
        }
    }
    sum_lanes(x, f)
}

#[inline(always)]
fn sum_lanes<F: Fn(f32) -> f64>(x: &[f32], f: F) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail.iter().map(|&v| f(v)).sum::<f64>()
}

/// `Σ x²` in f64 ([`sum_by`]'s order).
pub fn sum_squares(x: &[f32]) -> f64 {
    sum_by(x, |v| f64::from(v) * f64::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update as written in PyTorch's `_single_tensor_adamw`, one
    /// element at a time.
    fn reference(s: &AdamWScalars, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = g * s.grad_scale;
        *m += s.one_minus_beta1 * (g - *m);
        *v = *v * s.beta2 + (s.one_minus_beta2 * g) * g;
        let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
        *p = *p * s.decay + (s.neg_step_size * *m) / denom;
    }

    fn scalars() -> AdamWScalars {
        AdamWScalars {
            decay: 1.0 - 5e-6 * 0.01,
            grad_scale: 0.7,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 1.0 - 0.999,
            bias_correction2_sqrt: (1.0f64 - 0.999f64.powi(3)).sqrt() as f32,
            eps: 1e-6,
            neg_step_size: (-5e-6 / (1.0 - 0.9f64.powi(3))) as f32,
        }
    }

    #[test]
    fn adamw_gives_the_scalar_formula_bits_on_every_lane_and_the_tail() {
        let s = scalars();
        let n = 8 * 5 + 3;
        let wave = |i: usize, f: f32| ((i as f32 + 1.0) * f).sin();
        let mut p: Vec<f32> = (0..n).map(|i| wave(i, 0.37)).collect();
        let g: Vec<f32> = (0..n).map(|i| wave(i, 1.3) * 1e-3).collect();
        let mut m: Vec<f32> = (0..n).map(|i| wave(i, 0.11) * 1e-4).collect();
        let mut v: Vec<f32> = (0..n).map(|i| wave(i, 0.7).abs() * 1e-7).collect();
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        adamw(&s, &mut p, &g, &mut m, &mut v).unwrap();
        for i in 0..n {
            reference(&s, &mut p2[i], g[i], &mut m2[i], &mut v2[i]);
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p), bits(&p2));
        assert_eq!(bits(&m), bits(&m2));
        assert_eq!(bits(&v), bits(&v2));
    }

    #[test]
    fn adamw_names_a_slice_of_the_wrong_length() {
        let (mut p, g, mut m, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 3], vec![0.0; 4]);
        let err = adamw(&scalars(), &mut p, &g, &mut m, &mut v).unwrap_err();
        assert!(err.to_string().contains("the first moment"), "{err}");
    }

    #[test]
    fn sums_follow_the_eight_lane_order_and_keep_small_terms() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut lanes = [0.0f64; 8];
        for (i, &v) in x[..1000].iter().enumerate() {
            lanes[i % 8] += f64::from(v) * f64::from(v);
        }
        let tail: f64 = x[1000..].iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert_eq!(sum_squares(&x), lanes.iter().sum::<f64>() + tail);
        let mut y = vec![1e-5f32; 17];
        y[0] = 1.0;
        let want = 1.0 + 16.0 * f64::from(1e-5f32).powi(2);
        assert!((sum_squares(&y) - want).abs() < 1e-15);
        assert_eq!(sum_by(&[], f64::from), 0.0);
        assert_eq!(sum_by(&[1.0, 2.0, 3.0], f64::from), 6.0);
    }
}

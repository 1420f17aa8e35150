//! Branch-free `exp` and `tanh` that the compiler turns into SIMD code, and
//! a runner that compiles an element-wise loop for AVX2 when the CPU has it.
//!
//! libm's `tanhf` is a scalar call of some 20–40 cycles; in a Flan-T5 step
//! the gated-GELU of every feed-forward block made it about a fifth of the
//! time. Here `exp` is a Cody–Waite range reduction (`x = n ln2 + r`,
//! `|r| ≤ ln2/2`) with a degree-7 Taylor polynomial (truncation below
//! 2·10⁻⁹ relative) and `2ⁿ` put together from exponent bits; `tanh` is
//! `(1 − e)/(1 + e)` with `e = exp(−2|u|)`. Both use only +, −, ×, ÷ and bit
//! operations, in a fixed order and without fused multiply-adds, so the
//! scalar, SSE2 and AVX2 builds of a loop give the same bits on every
//! machine and every thread count.

/// `log2(e)`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in a part exact in few bits and the rest (Cody–Waite).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting `1.5 · 2²³` rounds an f32 of magnitude below 2²² to
/// the nearest integer (ties to even) without a rounding instruction.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Below this `exp` underflows to (denormal) zero; it is clamped here.
const EXP_MIN: f32 = -87.0;
/// Beyond this `tanh` is 1 in f32.
const TANH_SATURATION: f32 = 9.0;

/// `exp(x)` for `x ≤ 0` (inputs below −87 give `exp(−87)`, about 1.6e-38),
/// within 2 ulp of the exact value. NaN propagates.
#[inline(always)]
pub fn exp_nonpositive(input: f32) -> f32 {
    let x = input.max(EXP_MIN);
    let shifted = x * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // The low mantissa bits of `shifted` hold n (two's complement); n ≥ −126
    // here, so the biased exponent n + 127 is a normal number's.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND_MAGIC.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    // `max` dropped a NaN; put it back (a select, not a branch, in SIMD code).
    if input.is_nan() {
        input
    } else {
        p * scale
    }
}

/// `tanh(u)` within about 1.2e-7 absolute error (what `gelu_new` and its
/// derivative need; near zero the relative error is larger than libm's).
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    let a = u.abs().min(TANH_SATURATION);
    let e = exp_nonpositive(-2.0 * a);
    let t = ((1.0 - e) / (1.0 + e)).copysign(u);
    if u.is_nan() {
        u
    } else {
        t
    }
}

/// Defines a function whose body is compiled twice, once with AVX2 enabled
/// (chosen at run time when the CPU has it) and once for the baseline
/// target, so the element-wise loops inside are vectorised 8 lanes wide.
///
/// The body is an `#[inline(always)]` function inlined into a
/// `#[target_feature(enable = "avx2")]` twin; a closure would not do, as
/// the compiler may keep it out of line, compiled without AVX2. Everything
/// the body calls in its loops must be `#[inline(always)]` for the same reason.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked on the line above.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let want = f64::from(x).exp();
            let err = (f64::from(exp_nonpositive(x)) - want).abs() / want;
            worst = worst.max(err);
        }
        assert!(
            worst < 2.0 * f64::from(f32::EPSILON),
            "relative error {worst}"
        );
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e6) > 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_its_absolute_bound_and_odd() {
        for i in -200_000..=200_000 {
            let u = i as f32 * 1e-4;
            let err = (f64::from(tanh(u)) - f64::from(u).tanh()).abs();
            assert!(err < 1.2e-7, "tanh({u}) off by {err}");
            assert_eq!(tanh(-u), -tanh(u));
        }
        assert_eq!((tanh(50.0), tanh(-50.0)), (1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
    }

    simd_fn! {
        fn tanh_slice(out: &mut [f32], x: &[f32]) {
            out.iter_mut().zip(x).for_each(|(y, &u)| *y = tanh(u));
        }
    }

    #[test]
    fn the_simd_build_gives_the_same_bits() {
        let x: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.0) * 3.7e-3).collect();
        let scalar: Vec<f32> = x.iter().map(|&u| tanh(u)).collect();
        let mut simd = vec![0.0; x.len()];
        tanh_slice(&mut simd, &x);
        assert_eq!(scalar, simd);
    }
}

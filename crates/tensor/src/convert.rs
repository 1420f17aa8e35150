//! Slice conversions between f32 and the 16-bit types.
//!
//! These run on every f16/bf16 load, store and matmul pack, so they use the
//! hardware paths when the CPU has them. f16 is `half`'s slice conversion
//! (F16C, detected at run time); `half` converts bf16 slices one scalar at
//! a time, so the AVX2 bf16 path is ours. Stochastic rounding to either
//! type is ours too. Every path rounds to nearest-even and gives the same
//! bits as the scalar one.

use crate::{rng, DType, Element};
use half::{bf16, f16, slice::HalfFloatSliceExt};

fn check_len(src: usize, dst: usize) {
    assert_eq!(src, dst, "conversion between slices of different lengths");
}

/// Widens f16 to f32 (exact), on F16C when the CPU has it (`half`'s
/// slice conversion, which detects it at run time).
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    check_len(src.len(), dst.len());
    src.convert_to_f32_slice(dst);
}

/// Narrows f32 to f16, rounding to nearest-even, on F16C when the CPU has it.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    check_len(src.len(), dst.len());
    dst.convert_from_f32_slice(src);
}

/// Widens bf16 to f32 (exact: a 16-bit shift).
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    check_len(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        unsafe { x86::bf16_to_f32(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Narrows f32 to bf16, rounding to nearest-even; NaN stays NaN.
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    check_len(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        unsafe { x86::f32_to_bf16(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(*s);
    }
}

/// Rounds every value of `x` in place to the nearest value of `dtype` (ties
/// to even; F32 leaves `x` as it is): what a round trip through `dtype`
/// gives, through the same hardware paths. The gemm uses it to read f32
/// operands with 16-bit numerics.
pub fn round_to(x: &mut [f32], dtype: DType) {
    match dtype {
        DType::F32 => {}
        DType::BF16 => round_trip::<bf16>(x),
        DType::F16 => round_trip::<f16>(x),
    }
}

fn round_trip<E: Element>(x: &mut [f32]) {
    const CHUNK: usize = 256;
    let mut buf = [E::default(); CHUNK];
    for part in x.chunks_mut(CHUNK) {
        let narrow = &mut buf[..part.len()];
        E::slice_from_f32(part, narrow);
        E::slice_to_f32(narrow, part);
    }
}

/// Rounds `src` into `dst` stochastically: each value becomes one of its two
/// neighbours in `E`, the upper (in magnitude) with probability equal to its
/// distance from the lower over the gap between them, so the expected
/// result is the input itself. This is how 16-bit weights absorb updates
/// smaller than half their spacing, which round-to-nearest would drop
/// (Graphcore's Flan-T5 training keeps fp16 weights this way).
///
/// The noise of element `i` is a hash of `(key, offset + i)`: the same bits
/// however the work is split, and a fresh draw for every `key` (the
/// optimizer passes one per step). Values already representable, NaNs and
/// infinities are kept as they are; a finite value beyond the type's range
/// becomes infinite, as a nearest rounding would make it. For `f32` this
/// is a copy.
pub fn round_stochastic<E: Element>(src: &[f32], dst: &mut [E], key: u64, offset: u64) {
    check_len(src.len(), dst.len());
    const CHUNK: usize = 256;
    let stream = rng::hash(key);
    let mut buf = [0.0f32; CHUNK];
    for (n, (s, d)) in src.chunks(CHUNK).zip(dst.chunks_mut(CHUNK)).enumerate() {
        let start = offset.wrapping_add((n * CHUNK) as u64);
        for (i, (b, &x)) in buf.iter_mut().zip(s).enumerate() {
            let index = start.wrapping_add(i as u64);
            let noise = (rng::hash(stream ^ index.wrapping_mul(rng::GOLDEN)) >> 32) as u32;
            *b = E::stochastic_neighbour(x, noise);
        }
        // The chosen neighbours narrow exactly, on the hardware path.
        E::slice_from_f32(&buf[..s.len()], d);
    }
}

/// Adds `noise`'s low `dropped` bits to the magnitude bits of `x` and clears
/// them: the carry reaches the kept bits with probability (dropped part) /
/// 2^dropped, exactly the distance to the lower neighbour over the gap, for
/// either sign. NaNs and infinities are returned as they are.
fn carry_noise(x: f32, noise: u32, dropped: u32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let mask = (1u32 << dropped) - 1;
    let bits = x.to_bits();
    let magnitude = ((bits & 0x7fff_ffff) + (noise & mask)) & !mask;
    f32::from_bits((bits & 0x8000_0000) | magnitude)
}

/// bf16 keeps the top 16 bits of an f32 at every exponent.
pub(crate) fn bf16_stochastic(x: f32, noise: u32) -> f32 {
    carry_noise(x, noise, 16)
}

/// f16 keeps 10 of f32's 23 mantissa bits down to its smallest normal,
/// 2⁻¹⁴; below, its spacing stays 2⁻²⁴, so one more bit drops per binade.
/// Under 2⁻²⁴, the neighbours are 0 and 2⁻²⁴ and the choice is made in
/// floating point.
pub(crate) fn f16_stochastic(x: f32, noise: u32) -> f32 {
    const SMALLEST: f32 = 1.0 / (1u32 << 24) as f32;
    let exponent = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    if exponent < -24 {
        let uniform = (noise >> 8) as f32 * SMALLEST;
        return if uniform < x.abs() / SMALLEST {
            SMALLEST.copysign(x)
        } else {
            0.0f32.copysign(x)
        };
    }
    let dropped = 13 + (-14 - exponent).max(0) as u32;
    carry_noise(x, noise, dropped)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::bf16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= len of both slices; unaligned loads/stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
            }
        }
        for i in n..src.len() {
            dst[i] = src[i].to_f32();
        }
    }

    /// # Safety
    /// The CPU must support AVX2; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
        let n = src.len() / 8 * 8;
        let one = _mm256_set1_epi32(1);
        let bias = _mm256_set1_epi32(0x7fff);
        let quiet = _mm256_set1_epi32(0x0040);
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= len of both slices; unaligned loads/stores.
            unsafe {
                let x = _mm256_loadu_ps(src.as_ptr().add(i));
                let bits = _mm256_castps_si256(x);
                // Round to nearest-even: add 0x7fff plus the kept LSB, then truncate.
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), one);
                let rounded =
                    _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, _mm256_add_epi32(bias, lsb)));
                // NaN keeps its payload's top bits and is made quiet.
                let nan = _mm256_or_si256(_mm256_srli_epi32::<16>(bits), quiet);
                let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                let r = _mm256_blendv_epi8(rounded, nan, is_nan);
                // Pack the 8 u32 (each < 2^16) into 8 u16 in order.
                let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(r, r));
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(i).cast(),
                    _mm256_castsi256_si128(packed),
                );
            }
        }
        for i in n..src.len() {
            dst[i] = bf16::from_f32(src[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f32 bit pattern class that rounding can trip on: ties, subnormals,
    /// overflow to infinity, NaNs with payloads, signed zeros.
    fn tricky() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65520.0,
            1e-8,
            -1e-8,
            6.1e-5,
            3.0e38,
            -3.4e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::MAX,
        ];
        v.push(f32::from_bits(0x7fc0_1234));
        v.push(f32::from_bits(0xff80_0001)); // signalling NaN
        v.push(f32::from_bits(0x3f80_8000)); // exact bf16 tie, even
        v.push(f32::from_bits(0x3f81_8000)); // exact bf16 tie, odd
        v.push(f32::from_bits(0x7f7f_ffff)); // rounds to inf in bf16
        let mut s: u32 = 0x1234_5678;
        for _ in 0..1000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            v.push(f32::from_bits(s));
        }
        v
    }

    #[test]
    fn bf16_round_trip_matches_scalar() {
        let src = tricky();
        let mut h = vec![bf16::ZERO; src.len()];
        f32_to_bf16(&src, &mut h);
        for (x, y) in src.iter().zip(&h) {
            assert_eq!(bf16::from_f32(*x).to_bits(), y.to_bits(), "{x:e}");
        }
        let mut back = vec![0.0; src.len()];
        bf16_to_f32(&h, &mut back);
        for (y, b) in h.iter().zip(&back) {
            assert_eq!(y.to_f32().to_bits(), b.to_bits());
        }
    }

    #[test]
    fn rounding_in_place_equals_the_scalar_round_trip() {
        let src = tricky();
        for dtype in [DType::BF16, DType::F16] {
            let mut x = src.clone();
            round_to(&mut x, dtype);
            for (v, r) in src.iter().zip(&x) {
                let want = match dtype {
                    DType::BF16 => bf16::from_f32(*v).to_f32(),
                    _ => f16::from_f32(*v).to_f32(),
                };
                assert!(
                    want.to_bits() == r.to_bits() || (want.is_nan() && r.is_nan()),
                    "{v:e}"
                );
            }
        }
        let mut x = src.clone();
        round_to(&mut x, DType::F32);
        assert!(x.iter().zip(&src).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// The two values of `E` around `x` in magnitude (equal when exact).
    fn neighbours<E: Element>(x: f32) -> (f32, f32) {
        let all: Vec<f32> = (0..=u16::MAX)
            .map(|b| E::to_f32(bytemuck::cast(b)))
            .filter(|v| v.is_finite() && v.is_sign_negative() == x.is_sign_negative())
            .collect();
        let below = all.iter().copied().filter(|v| v.abs() <= x.abs());
        let above = all.iter().copied().filter(|v| v.abs() >= x.abs());
        let lo = below.fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let hi = above.fold(f32::INFINITY.copysign(x), |m, v| {
            if v.abs() < m.abs() {
                v
            } else {
                m
            }
        });
        (lo, hi)
    }

    fn stochastic_lands_on_neighbours<E: Element>(keep_inf: bool) {
        let src: Vec<f32> = tricky().into_iter().step_by(7).collect();
        let mut out = vec![E::default(); src.len()];
        for key in 0..4 {
            round_stochastic(&src, &mut out, key, 0);
            for (&x, y) in src.iter().zip(&out) {
                let y = y.to_f32();
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if x.is_infinite() || (keep_inf && E::from_f32(x).to_f32().is_infinite()) {
                    assert_eq!(y, E::from_f32(x).to_f32(), "{x:e}");
                } else {
                    let (lo, hi) = neighbours::<E>(x);
                    assert!(
                        y == lo || y == hi,
                        "{x:e} became {y:e}, not {lo:e} or {hi:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn stochastic_rounding_picks_a_neighbour() {
        stochastic_lands_on_neighbours::<bf16>(false);
        stochastic_lands_on_neighbours::<f16>(true);
        let x = [1.5f32, -3.25, 0.0];
        let mut same = [0.0f32; 3];
        round_stochastic(&x, &mut same, 9, 0);
        assert_eq!(same, x);
    }

    /// The mean of many roundings of `x` is `x`: within 5 standard errors
    /// of a Bernoulli draw over the gap.
    fn unbiased<E: Element>(x: f32) {
        const N: usize = 40_000;
        let src = vec![x; N];
        let mut out = vec![E::default(); N];
        round_stochastic(&src, &mut out, 3, 0);
        let mean = out.iter().map(|v| f64::from(v.to_f32())).sum::<f64>() / N as f64;
        let (lo, hi) = neighbours::<E>(x);
        let p = (f64::from(x) - f64::from(lo)) / (f64::from(hi) - f64::from(lo));
        let sigma = (p * (1.0 - p) / N as f64).sqrt() * (f64::from(hi) - f64::from(lo)).abs();
        assert!(
            (mean - f64::from(x)).abs() < 5.0 * sigma,
            "{x:e}: mean {mean:e}"
        );
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        for x in [1.0 + 0.3 / 128.0, -7.77e-3, 3.1e-39] {
            unbiased::<bf16>(x);
        }
        for x in [1.0 + 0.3 / 1024.0, -2.0e-3, 3.3e-7, 1000.1, 2.2e-8, -4e-5] {
            unbiased::<f16>(x);
        }
    }

    #[test]
    fn stochastic_noise_depends_on_key_and_index_not_on_the_split() {
        let src: Vec<f32> = (0..1000).map(|i| 1.0 + i as f32 * 1e-5).collect();
        let mut whole = vec![bf16::ZERO; src.len()];
        round_stochastic(&src, &mut whole, 17, 0);
        let mut parts = vec![bf16::ZERO; src.len()];
        let (a, b) = parts.split_at_mut(333);
        round_stochastic(&src[..333], a, 17, 0);
        round_stochastic(&src[333..], b, 17, 333);
        assert_eq!(whole, parts);
        let mut other = vec![bf16::ZERO; src.len()];
        round_stochastic(&src, &mut other, 18, 0);
        assert_ne!(whole, other);
    }

    #[test]
    fn f16_round_trip_matches_scalar() {
        let src = tricky();
        let mut h = vec![f16::ZERO; src.len()];
        f32_to_f16(&src, &mut h);
        for (x, y) in src.iter().zip(&h) {
            let want = f16::from_f32(*x);
            if want.is_nan() {
                assert!(y.is_nan(), "{x:e}");
            } else {
                assert_eq!(want.to_bits(), y.to_bits(), "{x:e}");
            }
        }
        let mut back = vec![0.0; src.len()];
        f16_to_f32(&h, &mut back);
        for (y, b) in h.iter().zip(&back) {
            assert!(y.to_f32().to_bits() == b.to_bits() || b.is_nan());
        }
    }
}

//! tessera's one source of randomness: SplitMix64 (Steele, Lea and Flood,
//! 2014; Vigna's reference constants).
//!
//! Everything random in a run — the data order, the synthetic dataset,
//! weight initialisation, dropout masks, stochastic-rounding noise — is
//! drawn from here, so that it is the same on every machine, thread count
//! and version of every dependency, and a resumed run draws exactly what
//! an uninterrupted one would. Two forms:
//!
//! - a sequential generator, [`SplitMix64`], for shuffles and sampling;
//! - counter-based draws, [`key`] and [`hash`], for values that must not
//!   depend on the order they are computed in (a dropout mask element is a
//!   hash of its coordinates, not the n-th draw of a stream).
//!
//! The golden values in the tests pin every stream: changing one changes
//! the bits of shuffles, masks, rounding and initialisation of every run.

/// 2^64 / φ, the Weyl increment of SplitMix64.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first output of a [`SplitMix64`] seeded with `x`: a 64-bit hash.
#[inline]
pub fn hash(x: u64) -> u64 {
    mix(x.wrapping_add(GOLDEN))
}

/// A key for one random site from a run seed and the site's coordinates
/// (step, layer, which dropout in the layer, example, position, …): equal
/// coordinates give equal keys, any difference an unrelated one.
pub fn key(seed: u64, coords: &[u64]) -> u64 {
    coords
        .iter()
        .fold(mix(seed), |k, &c| mix(k ^ c.wrapping_mul(GOLDEN)))
}

/// An independent seed for a sub-stream (an epoch, a split) of a base seed.
pub fn derive_seed(base: u64, stream: u64) -> u64 {
    hash(base ^ stream.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// The sequential SplitMix64 generator: 64-bit state, passes BigCrush, one
/// add and one [`mix`] per draw.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Fisher–Yates shuffle of `items` in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A uniform f32 in `[-1, 1)` on a 2⁻²³ grid: test and benchmark data.
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// One element of a non-empty slice, chosen uniformly.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    //! Golden values, recorded from the four separate copies of the mixer
    //! that this module replaced: the same bits as every earlier version.
    use super::*;
    use crate::ops::dropout::dropout_inplace;
    use crate::{bf16, f16, round_stochastic};

    #[test]
    fn generator_matches_the_reference_implementation() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(hash(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn shuffles_and_sampling_are_unchanged() {
        let mut v: Vec<u32> = (0..12).collect();
        SplitMix64::new(7).shuffle(&mut v);
        assert_eq!(v, [10, 11, 5, 1, 7, 4, 8, 2, 9, 6, 0, 3]);
        let mut rng = SplitMix64::new(99);
        let draws: Vec<usize> = (0..6).map(|_| rng.below(10)).collect();
        assert_eq!(draws, [3, 4, 7, 7, 6, 9]);
        assert_eq!(derive_seed(42, 3), 0xb864_440d_cb98_34a3);
    }

    #[test]
    fn dropout_masks_are_unchanged() {
        assert_eq!(key(5, &[1, 2, 3]), 0x39a3_13c8_ad45_7049);
        let mut x = vec![1.0f32; 24];
        dropout_inplace(&mut x, 0.5, key(9, &[1])).unwrap();
        let kept: Vec<u8> = x.iter().map(|&v| u8::from(v != 0.0)).collect();
        assert_eq!(
            kept,
            [0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1]
        );
    }

    #[test]
    fn stochastic_rounding_noise_is_unchanged() {
        let src = [1.000_01f32, -3.3, 0.1, 7.77e-3, 1e-6, -65000.0, 2.5, 0.333];
        let mut b = [bf16::ZERO; 8];
        round_stochastic(&src, &mut b, 11, 100);
        let bits: Vec<u16> = b.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            bits,
            [16256, 49235, 15821, 15359, 13702, 51070, 16416, 16043]
        );
        let mut h = [f16::ZERO; 8];
        round_stochastic(&src, &mut h, 12, 5);
        let bits: Vec<u16> = h.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [15360, 49817, 11879, 8180, 17, 64495, 16640, 13652]);
    }
}

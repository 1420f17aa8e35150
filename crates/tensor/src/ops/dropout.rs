//! Inverted dropout with a counter-based random mask.
//!
//! Whether element `i` is kept depends only on `(key, i)` through a
//! SplitMix64 hash, never on a generator's state. So the mask needs no
//! storage: the backward (and a recomputed forward under activation
//! checkpointing) regenerates exactly the same mask from the same key, and
//! the result does not depend on the thread count. Callers derive one key
//! per dropout site and step with [`dropout_key`].

use super::PARALLEL_MIN_ELEMS;
use crate::error::{Result, TensorError};
use rayon::prelude::*;

/// SplitMix64's finaliser: a bijective 64-bit mix with good avalanche.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key for one dropout site: mixes a run seed with site coordinates
/// (step, layer, which dropout in the layer, …).
pub fn dropout_key(seed: u64, coords: &[u64]) -> u64 {
    coords.iter().fold(mix(seed), |k, &c| {
        mix(k ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    })
}

/// Whether element `i` survives under `key`, for drop probability given as
/// a 32-bit threshold.
#[inline]
fn keep(key: u64, i: u64, threshold: u32) -> bool {
    ((mix(key ^ mix(i)) >> 32) as u32) >= threshold
}

/// Multiplies `x` by the dropout mask for `(p, key)`: kept elements are
/// scaled by `1 / (1 - p)`, dropped ones become 0. The same call is the
/// forward (on activations) and the backward (on their gradients).
/// `p = 0` leaves `x` unchanged.
pub fn dropout_inplace(x: &mut [f32], p: f32, key: u64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(TensorError::Setting(format!(
            "dropout probability {p} is not in [0, 1)"
        )));
    }
    if p == 0.0 {
        return Ok(());
    }
    let threshold = (f64::from(p) * 4_294_967_296.0) as u32;
    let scale = 1.0 / (1.0 - p);
    crate::install(|| {
        x.par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMS)
            .enumerate()
            .for_each(|(i, v)| {
                *v = if keep(key, i as u64, threshold) {
                    *v * scale
                } else {
                    0.0
                };
            });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_reproducible_and_drops_about_p() {
        let key = dropout_key(7, &[1, 2, 3]);
        let mut a = vec![1.0f32; 100_000];
        dropout_inplace(&mut a, 0.25, key).unwrap();
        let mut b = vec![2.0f32; 100_000];
        dropout_inplace(&mut b, 0.25, key).unwrap();
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        assert!((24_000..26_000).contains(&dropped), "{dropped}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(*x == 0.0, *y == 0.0);
            assert!(*x == 0.0 || (*x - 1.0 / 0.75).abs() < 1e-6);
        }
        let mut c = vec![1.0f32; 100_000];
        dropout_inplace(&mut c, 0.25, dropout_key(7, &[1, 2, 4])).unwrap();
        assert_ne!(a, c);
        assert!(dropout_inplace(&mut c, 1.0, key).is_err());
    }
}

//! Inverted dropout with a counter-based random mask.
//!
//! Whether element `i` is kept depends only on `(key, i)` through a
//! SplitMix64 hash, never on a generator's state. So the mask needs no
//! storage: the backward (and a recomputed forward under activation
//! checkpointing) regenerates exactly the same mask from the same key, and
//! the result does not depend on the thread count. Callers derive one key
//! per dropout site and step with [`rng::key`].

use super::PARALLEL_MIN_ELEMS;
use crate::error::{Result, TensorError};
use crate::rng::{self, mix};
use rayon::prelude::*;

/// Whether element `i` survives under `key`, for drop probability given as
/// a 32-bit threshold.
#[inline]
fn keep(key: u64, i: u64, threshold: u32) -> bool {
    ((mix(key ^ mix(i)) >> 32) as u32) >= threshold
}

/// Fails unless `p` is a usable drop probability, in `[0, 1)`.
pub(crate) fn check_probability(p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(TensorError::Setting(format!(
            "dropout probability {p} is not in [0, 1)"
        )))
    }
}

/// The mask of [`dropout_inplace`] for one `(p, key)`, applicable to any
/// window of the tensor: fused kernels apply it tile by tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedMask {
    key: u64,
    threshold: u32,
    scale: f32,
}

impl KeyedMask {
    /// The mask for a checked `p` (see [`check_probability`]); `None` for `p = 0`.
    pub(crate) fn new(p: f32, key: u64) -> Option<KeyedMask> {
        (p > 0.0).then(|| KeyedMask {
            key,
            threshold: (f64::from(p) * 4_294_967_296.0) as u32,
            scale: 1.0 / (1.0 - p),
        })
    }

    /// Multiplies `x`, elements `first..first + x.len()` of the masked
    /// tensor, by the mask: kept ones scaled by `1 / (1 - p)`, others 0.
    pub(crate) fn apply(&self, x: &mut [f32], first: usize) {
        for (i, v) in x.iter_mut().enumerate() {
            *v = if keep(self.key, (first + i) as u64, self.threshold) {
                *v * self.scale
            } else {
                0.0
            };
        }
    }
}

/// Multiplies `x` by the dropout mask for `(p, key)`: kept elements are
/// scaled by `1 / (1 - p)`, dropped ones become 0. The same call is the
/// forward (on activations) and the backward (on their gradients).
/// `p = 0` leaves `x` unchanged.
pub fn dropout_inplace(x: &mut [f32], p: f32, key: u64) -> Result<()> {
    check_probability(p)?;
    let Some(mask) = KeyedMask::new(p, key) else {
        return Ok(());
    };
    crate::install(|| {
        x.par_chunks_mut(PARALLEL_MIN_ELEMS)
            .enumerate()
            .for_each(|(c, chunk)| mask.apply(chunk, c * PARALLEL_MIN_ELEMS));
    });
    Ok(())
}

/// Dropout on the rows of `x` (`rows.len()` rows of equal width), each row
/// masked by `(key, rows[r])` at its feature positions: a row's mask
/// depends on its identity (a token's example and position, say), not on
/// where it sits in `x`, so the same token draws the same mask in any
/// batch. Forward and backward alike; `p = 0` leaves `x` unchanged.
pub fn dropout_rows(x: &mut [f32], p: f32, key: u64, rows: &[u64]) -> Result<()> {
    check_probability(p)?;
    if p == 0.0 || x.is_empty() {
        return Ok(());
    }
    if rows.is_empty() || !x.len().is_multiple_of(rows.len()) {
        return Err(TensorError::Setting(format!(
            "dropout over {} rows of a tensor of {} elements",
            rows.len(),
            x.len()
        )));
    }
    let width = x.len() / rows.len();
    let per_task = PARALLEL_MIN_ELEMS.div_ceil(width).max(1);
    crate::install(|| {
        x.par_chunks_mut(width * per_task)
            .zip(rows.par_chunks(per_task))
            .for_each(|(chunk, ids)| {
                for (row, &id) in chunk.chunks_mut(width).zip(ids) {
                    if let Some(mask) = KeyedMask::new(p, rng::key(key, &[id])) {
                        mask.apply(row, 0);
                    }
                }
            });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_reproducible_and_drops_about_p() {
        let key = rng::key(7, &[1, 2, 3]);
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
        dropout_inplace(&mut c, 0.25, rng::key(7, &[1, 2, 4])).unwrap();
        assert_ne!(a, c);
        assert!(dropout_inplace(&mut c, 1.0, key).is_err());
    }

    #[test]
    fn row_masks_follow_the_row_identity() {
        let mut a = vec![1.0f32; 6 * 100];
        dropout_rows(&mut a, 0.5, 3, &[10, 11, 12, 13, 14, 15]).unwrap();
        let mut b = vec![1.0f32; 2 * 100];
        dropout_rows(&mut b, 0.5, 3, &[13, 11]).unwrap();
        assert_eq!(&b[..100], &a[300..400]);
        assert_eq!(&b[100..], &a[100..200]);
        assert_ne!(&a[..100], &a[100..200]);
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        assert!((200..400).contains(&dropped), "{dropped}");
        assert!(dropout_rows(&mut a, 0.5, 3, &[1; 7]).is_err());
    }
}

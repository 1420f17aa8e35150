//! Residual connections and scaling: `x += y`, `x *= s`.
//!
//! The backward of a residual add is the identity on both branches, so the
//! model simply adds the branch gradient into the running one with
//! [`add_inplace`].

use super::{check_len, PARALLEL_MIN_ELEMS};
use crate::error::Result;
use rayon::prelude::*;

/// `x += y`, element-wise.
pub fn add_inplace(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_len("add_inplace", "y", y.len(), x.len())?;
    crate::install(|| {
        x.par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMS)
            .zip(y.par_iter())
            .for_each(|(a, b)| *a += b);
    });
    Ok(())
}

/// `x *= s`, element-wise (the tied head's `d_model^-0.5`, for instance).
pub fn scale_inplace(x: &mut [f32], s: f32) {
    crate::install(|| {
        x.par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMS)
            .for_each(|a| *a *= s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_scale() {
        let mut x = vec![1.0, 2.0, 3.0];
        add_inplace(&mut x, &[0.5, 0.5, -3.0]).unwrap();
        assert_eq!(x, [1.5, 2.5, 0.0]);
        scale_inplace(&mut x, 2.0);
        assert_eq!(x, [3.0, 5.0, 0.0]);
        assert!(add_inplace(&mut x, &[1.0]).is_err());
    }
}

//! f32 settings as the f64 values Python would hold for them.
//!
//! A learning rate or β written as `0.999` is the f64 `0.999` in PyTorch's
//! optimizer, while tessera keeps settings as f32, whose nearest value
//! widens to `0.99900001287…`. The scalar arithmetic of the optimizers
//! (bias corrections, `1 − β`) is done in f64 like Python does, so it has to
//! start from the same f64: the one nearest to the shortest decimal that
//! prints as the f32.

/// The f64 nearest to the shortest decimal representation of `x` (which
/// rounds back to `x`), e.g. `0.999f32` → `0.999f64`.
pub(crate) fn widen(x: f32) -> f64 {
    // Display prints the shortest decimal that round-trips, and every such
    // decimal parses as an f64; the fallback is unreachable but harmless.
    x.to_string().parse().unwrap_or(f64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_keeps_the_decimal() {
        assert_eq!(widen(0.999), 0.999);
        assert_eq!(widen(1e-6), 1e-6);
        assert_eq!(widen(5e-6), 5e-6);
        assert_eq!(widen(-0.8), -0.8);
        assert_eq!(widen(f32::MAX), 3.4028235e38);
        assert!(widen(f32::NAN).is_nan());
        assert_eq!(widen(f32::INFINITY), f64::INFINITY);
        for x in [0.1f32, 3.0e-7, 123.456, f32::MIN_POSITIVE, f32::MAX] {
            assert_eq!(widen(x) as f32, x);
        }
    }
}

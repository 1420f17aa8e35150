//! Activations of the feed-forward block: ReLU and `gelu_new` (the tanh
//! approximation of GELU that T5 v1.1 and Flan-T5 use), plain or gated
//! (`act(h0) * h1`).

use super::vmath::{self, simd_fn};
use super::{check_len, PARALLEL_MIN_ELEMS};
use crate::error::Result;
use rayon::prelude::*;

/// `sqrt(2 / pi)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// A point-wise nonlinearity with its derivative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))`, Hugging Face's `gelu_new`.
    GeluNew,
}

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        self.value_and_derivative(x).0
    }

    /// The derivative at one value (ReLU's is 0 at 0, as in PyTorch).
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        self.value_and_derivative(x).1
    }

    /// Value and derivative together (one `tanh` for gelu_new, the
    /// vectorisable one of [`vmath`]).
    #[inline(always)]
    pub fn value_and_derivative(self, x: f32) -> (f32, f32) {
        match self {
            // NaN passes through, as in PyTorch, so divergence stays visible.
            Activation::Relu => {
                if x > 0.0 || x.is_nan() {
                    (x, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
            Activation::GeluNew => {
                let t = vmath::tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x));
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
                let value = 0.5 * x * (1.0 + t);
                (value, 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
            }
        }
    }

    /// `out = act(x)`.
    pub fn forward(self, out: &mut [f32], x: &[f32]) -> Result<()> {
        check_len("activation forward", "out", out.len(), x.len())?;
        par_blocks(out, |at, out| forward_block(self, out, &x[at..]));
        Ok(())
    }

    /// `dx = dout * act'(x)`.
    pub fn backward(self, dx: &mut [f32], x: &[f32], dout: &[f32]) -> Result<()> {
        check_len("activation backward", "x", x.len(), dx.len())?;
        check_len("activation backward", "dout", dout.len(), dx.len())?;
        par_blocks(dx, |at, dx| backward_block(self, dx, &x[at..], &dout[at..]));
        Ok(())
    }

    /// Gated unit: `out = act(h0) * h1`.
    pub fn gated_forward(self, out: &mut [f32], h0: &[f32], h1: &[f32]) -> Result<()> {
        check_len("gated forward", "h0", h0.len(), out.len())?;
        check_len("gated forward", "h1", h1.len(), out.len())?;
        par_blocks(out, |at, out| {
            gated_forward_block(self, out, &h0[at..], &h1[at..])
        });
        Ok(())
    }

    /// Backward of [`Activation::gated_forward`]:
    /// `dh0 = dout * h1 * act'(h0)`, `dh1 = dout * act(h0)`.
    pub fn gated_backward(
        self,
        dh0: &mut [f32],
        dh1: &mut [f32],
        h0: &[f32],
        h1: &[f32],
        dout: &[f32],
    ) -> Result<()> {
        let n = dout.len();
        for (name, len) in [
            ("dh0", dh0.len()),
            ("dh1", dh1.len()),
            ("h0", h0.len()),
            ("h1", h1.len()),
        ] {
            check_len("gated backward", name, len, n)?;
        }
        crate::install(|| {
            dh0.par_chunks_mut(PARALLEL_MIN_ELEMS)
                .zip(dh1.par_chunks_mut(PARALLEL_MIN_ELEMS))
                .enumerate()
                .for_each(|(block, (d0, d1))| {
                    let at = block * PARALLEL_MIN_ELEMS;
                    gated_backward_block(self, d0, d1, &h0[at..], &h1[at..], &dout[at..]);
                });
        });
        Ok(())
    }
}

/// Runs `f(offset, block)` over blocks of `out` of [`PARALLEL_MIN_ELEMS`]
/// elements on the engine's pool.
fn par_blocks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    crate::install(|| {
        out.par_chunks_mut(PARALLEL_MIN_ELEMS)
            .enumerate()
            .for_each(|(block, out)| f(block * PARALLEL_MIN_ELEMS, out));
    });
}

// The per-block loops, vectorised (inputs are at least as long as the output block).

simd_fn! {
    fn forward_block(act: Activation, out: &mut [f32], x: &[f32]) {
        out.iter_mut().zip(x).for_each(|(y, &x)| *y = act.apply(x));
    }
}

simd_fn! {
    fn backward_block(act: Activation, dx: &mut [f32], x: &[f32], dout: &[f32]) {
        for (dx, (&x, &dy)) in dx.iter_mut().zip(x.iter().zip(dout)) {
            *dx = dy * act.derivative(x);
        }
    }
}

simd_fn! {
    fn gated_forward_block(act: Activation, out: &mut [f32], h0: &[f32], h1: &[f32]) {
        for (y, (&a, &b)) in out.iter_mut().zip(h0.iter().zip(h1)) {
            *y = act.apply(a) * b;
        }
    }
}

simd_fn! {
    fn gated_backward_block(
        act: Activation,
        dh0: &mut [f32],
        dh1: &mut [f32],
        h0: &[f32],
        h1: &[f32],
        dout: &[f32],
    ) {
        let inputs = h0.iter().zip(h1).zip(dout);
        for ((d0, d1), ((&a, &b), &dy)) in dh0.iter_mut().zip(dh1).zip(inputs) {
            let (value, slope) = act.value_and_derivative(a);
            *d0 = dy * b * slope;
            *d1 = dy * value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_new_values_and_derivative() {
        let g = Activation::GeluNew;
        // Reference values of torch's gelu(approximate="tanh").
        assert!((g.apply(1.0) - 0.841_192).abs() < 1e-6);
        assert!((g.apply(-2.0) - -0.045_402).abs() < 1e-5);
        for &x in &[-3.0f32, -0.7, 0.0, 0.4, 2.5] {
            let h = 1e-3;
            let fd = (g.apply(x + h) - g.apply(x - h)) / (2.0 * h);
            assert!((fd - g.derivative(x)).abs() < 1e-3, "{x}");
        }
        assert_eq!(Activation::Relu.derivative(0.0), 0.0);
    }

    #[test]
    fn gated_backward_is_the_product_rule() {
        let (h0, h1, dy) = ([0.5f32, -1.0], [2.0f32, 3.0], [1.0f32, -1.0]);
        let mut out = [0.0; 2];
        Activation::Relu.gated_forward(&mut out, &h0, &h1).unwrap();
        assert_eq!(out, [1.0, 0.0]);
        let (mut d0, mut d1) = ([0.0; 2], [0.0; 2]);
        Activation::Relu
            .gated_backward(&mut d0, &mut d1, &h0, &h1, &dy)
            .unwrap();
        assert_eq!(d0, [2.0, 0.0]);
        assert_eq!(d1, [0.5, 0.0]);
    }
}

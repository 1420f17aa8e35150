//! T5's RMS layer norm (`T5LayerNorm`): `y = w * (x / sqrt(mean(x²) + eps))`.
//!
//! No mean subtraction and no bias; the variance is accumulated in f32, as
//! Hugging Face does even for 16-bit models. The forward keeps each row's
//! reciprocal RMS (`rstd`) for the backward.

use super::{check_len, rows_of, rows_per_task};
use crate::error::Result;
use rayon::prelude::*;

/// Rows per block when summing the weight gradient; fixed so that the sum's
/// order (and so its bits) does not depend on the thread count.
const WEIGHT_GRAD_ROWS: usize = 64;

/// Normalises each row of `x` (`rows × d`, `d = weight.len()`) into `out` and
/// stores each row's `1 / sqrt(mean(x²) + eps)` in `rstd`.
pub fn rms_norm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    weight: &[f32],
    eps: f32,
) -> Result<()> {
    let d = weight.len();
    let rows = rows_of("rms_norm_forward", "x", x.len(), d)?;
    check_len("rms_norm_forward", "out", out.len(), x.len())?;
    check_len("rms_norm_forward", "rstd", rstd.len(), rows)?;
    crate::install(|| {
        out.par_chunks_mut(d)
            .zip(rstd.par_iter_mut())
            .zip(x.par_chunks(d))
            .with_min_len(rows_per_task(d))
            .for_each(|((y, r), x)| {
                let ss: f32 = x.iter().map(|v| v * v).sum();
                *r = 1.0 / (ss / d as f32 + eps).sqrt();
                for ((y, x), w) in y.iter_mut().zip(x).zip(weight) {
                    *y = w * (x * *r);
                }
            });
    });
    Ok(())
}

/// Backward of [`rms_norm_forward`]: adds into `dx` and `dweight`.
///
/// With `n = x * rstd`: `dweight += Σ_rows dout * n` and
/// `dx += rstd * (w * dout - n * mean(w * dout * n))`. T5's norms sit on
/// the residual stream, whose gradient `dx` already holds: adding here
/// saves a buffer and a pass over it.
pub fn rms_norm_backward(
    dx: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    x: &[f32],
    weight: &[f32],
    rstd: &[f32],
) -> Result<()> {
    let d = weight.len();
    let rows = rows_of("rms_norm_backward", "x", x.len(), d)?;
    check_len("rms_norm_backward", "dx", dx.len(), x.len())?;
    check_len("rms_norm_backward", "dout", dout.len(), x.len())?;
    check_len("rms_norm_backward", "dweight", dweight.len(), d)?;
    check_len("rms_norm_backward", "rstd", rstd.len(), rows)?;
    let block = WEIGHT_GRAD_ROWS * d;
    let partials: Vec<Vec<f32>> = crate::install(|| {
        dx.par_chunks_mut(block)
            .zip(dout.par_chunks(block))
            .zip(x.par_chunks(block))
            .zip(rstd.par_chunks(WEIGHT_GRAD_ROWS))
            .map(|(((dx, dout), x), rstd)| {
                let mut dw = vec![0.0f32; d];
                for (((dx, dy), x), &r) in dx
                    .chunks_mut(d)
                    .zip(dout.chunks(d))
                    .zip(x.chunks(d))
                    .zip(rstd)
                {
                    rms_norm_row_backward(dx, &mut dw, dy, x, weight, r);
                }
                dw
            })
            .collect()
    });
    for partial in partials {
        for (a, b) in dweight.iter_mut().zip(&partial) {
            *a += b;
        }
    }
    Ok(())
}

fn rms_norm_row_backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], r: f32) {
    let d = x.len() as f32;
    let mut dot = 0.0f32;
    for i in 0..x.len() {
        let n = x[i] * r;
        dw[i] += dy[i] * n;
        dot += w[i] * dy[i] * n;
    }
    let mean = dot / d;
    for i in 0..x.len() {
        dx[i] += r * (w[i] * dy[i] - x[i] * r * mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(x: &[f32], w: &[f32], g: &[f32]) -> f32 {
        let mut out = vec![0.0; x.len()];
        let mut r = vec![0.0; x.len() / w.len()];
        rms_norm_forward(&mut out, &mut r, x, w, 1e-6).unwrap();
        out.iter().zip(g).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn forward_matches_definition_and_backward_matches_differences() {
        let x = [0.3, -1.2, 2.0, 0.7, 0.1, -0.4];
        let w = [1.5, -0.5, 0.8];
        let g = [0.2, 0.9, -1.1, 0.4, -0.3, 0.6];
        let mut out = [0.0; 6];
        let mut r = [0.0; 2];
        rms_norm_forward(&mut out, &mut r, &x, &w, 1e-6).unwrap();
        let ms = (0.09f32 + 1.44 + 4.0) / 3.0;
        assert!((out[1] - (-0.5 * -1.2 / (ms + 1e-6).sqrt())).abs() < 1e-6);
        // Both gradients are added to what the buffers hold.
        let mut dx = [0.25; 6];
        let mut dw = [0.5; 3];
        rms_norm_backward(&mut dx, &mut dw, &g, &x, &w, &r).unwrap();
        dx.iter_mut().for_each(|v| *v -= 0.25);
        dw.iter_mut().for_each(|v| *v -= 0.5);
        let h = 1e-2f32;
        for i in 0..6 {
            let (mut a, mut b) = (x, x);
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&a, &w, &g) - loss(&b, &w, &g)) / (2.0 * h);
            assert!((fd - dx[i]).abs() < 2e-3, "dx[{i}] {fd} vs {}", dx[i]);
        }
        for i in 0..3 {
            let (mut a, mut b) = (w, w);
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&x, &a, &g) - loss(&x, &b, &g)) / (2.0 * h);
            assert!((fd - dw[i]).abs() < 2e-3, "dw[{i}] {fd} vs {}", dw[i]);
        }
    }

    #[test]
    fn shape_mistakes_are_errors() {
        let mut out = [0.0; 5];
        let mut r = [0.0; 2];
        assert!(rms_norm_forward(&mut out, &mut r, &[0.0; 5], &[1.0; 3], 1e-6).is_err());
    }
}

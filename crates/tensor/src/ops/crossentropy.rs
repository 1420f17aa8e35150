//! Cross-entropy of logits against target ids, ignoring positions whose
//! target is [`IGNORE_INDEX`] (PyTorch's `ignore_index=-100`).
//!
//! The forward returns the summed loss and the number of counted targets, so
//! the caller picks the reduction (Hugging Face's mean over target tokens, or
//! a gradient-accumulation normaliser); it keeps each row's log-sum-exp for
//! the backward.

use super::vmath::{exp_nonpositive, simd_fn};
use super::{check_len, rows_of, rows_per_task};
use crate::error::{shape_err, Result};
use rayon::prelude::*;

/// The target id that marks a position without a loss.
pub const IGNORE_INDEX: i64 = -100;

/// Summed cross-entropy over the counted rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropy {
    /// Σ over counted rows of `logsumexp(logits) - logits[target]`.
    pub sum: f64,
    /// Rows whose target is not [`IGNORE_INDEX`].
    pub count: usize,
}

impl CrossEntropy {
    /// The mean loss over counted rows (0 when none are counted, where
    /// PyTorch would give NaN).
    pub fn mean(&self) -> f32 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum / self.count as f64) as f32
        }
    }
}

fn check_targets(op: &'static str, targets: &[i64], vocab: usize) -> Result<()> {
    match targets
        .iter()
        .position(|&t| t != IGNORE_INDEX && !(0..vocab as i64).contains(&t))
    {
        Some(i) => Err(shape_err(
            op,
            format!(
                "target {} at row {i} is outside the vocabulary of {vocab}",
                targets[i]
            ),
        )),
        None => Ok(()),
    }
}

/// Loss of `logits` (`rows × vocab`) against `targets`; writes each row's
/// log-sum-exp into `lse`.
pub fn cross_entropy_forward(
    lse: &mut [f32],
    logits: &[f32],
    targets: &[i64],
    vocab: usize,
) -> Result<CrossEntropy> {
    let rows = rows_of("cross_entropy_forward", "logits", logits.len(), vocab)?;
    check_len("cross_entropy_forward", "targets", targets.len(), rows)?;
    check_len("cross_entropy_forward", "lse", lse.len(), rows)?;
    check_targets("cross_entropy_forward", targets, vocab)?;
    crate::install(|| {
        lse.par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .with_min_len(rows_per_task(vocab))
            .for_each(|(lse, row)| *lse = log_sum_exp(row));
    });
    let mut sum = 0.0f64;
    let mut count = 0;
    for ((&t, row), &l) in targets.iter().zip(logits.chunks(vocab)).zip(lse.iter()) {
        if t != IGNORE_INDEX {
            sum += f64::from(l - row[t as usize]);
            count += 1;
        }
    }
    Ok(CrossEntropy { sum, count })
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + sum_exp_below(row, max).ln()
}

/// Interleaved partial sums of [`sum_exp_below`].
const LANES: usize = 8;

simd_fn! {
    /// `Σ exp(v − max)` over `row`: element `i` goes to partial sum
    /// `i mod 8` and the partial sums are added in order, so the loop runs
    /// 8 lanes wide and gives the same bits everywhere.
    fn sum_exp_below(row: &[f32], max: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let (chunks, tail) = row.as_chunks::<LANES>();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += exp_nonpositive(v - max);
            }
        }
        let rest: f32 = tail.iter().map(|&v| exp_nonpositive(v - max)).sum();
        lanes.iter().sum::<f32>() + rest
    }
}

simd_fn! {
    /// `scale · softmax`: every logit `v` of a row becomes `scale · exp(v − lse)`
    /// (`v ≤ lse`, as the log-sum-exp is at least the row's maximum).
    fn scaled_softmax(row: &mut [f32], lse: f32, scale: f32) {
        for v in row.iter_mut() {
            *v = scale * exp_nonpositive(*v - lse);
        }
    }
}

/// Backward, in place: turns `logits` into `d(scale · Σ loss)/dlogits`,
/// that is `scale · (softmax - onehot)` on counted rows and 0 on ignored ones.
/// For the mean loss, `scale = 1 / count`.
pub fn cross_entropy_backward_inplace(
    logits: &mut [f32],
    lse: &[f32],
    targets: &[i64],
    vocab: usize,
    scale: f32,
) -> Result<()> {
    let rows = rows_of("cross_entropy_backward", "logits", logits.len(), vocab)?;
    check_len("cross_entropy_backward", "targets", targets.len(), rows)?;
    check_len("cross_entropy_backward", "lse", lse.len(), rows)?;
    check_targets("cross_entropy_backward", targets, vocab)?;
    crate::install(|| {
        logits
            .par_chunks_mut(vocab)
            .zip(lse.par_iter().zip(targets.par_iter()))
            .with_min_len(rows_per_task(vocab))
            .for_each(|(row, (&lse, &t))| {
                if t == IGNORE_INDEX {
                    row.fill(0.0);
                    return;
                }
                scaled_softmax(row, lse, scale);
                row[t as usize] -= scale;
            });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_minus_100_and_matches_differences() {
        let logits = [0.5f32, -1.0, 2.0, 0.1, 0.2, 0.3, 3.0, 1.0, -2.0];
        let targets = [2i64, IGNORE_INDEX, 0];
        let mut lse = [0.0; 3];
        let ce = cross_entropy_forward(&mut lse, &logits, &targets, 3).unwrap();
        assert_eq!(ce.count, 2);
        let l0 = (0.5f32.exp() + (-1.0f32).exp() + 2.0f32.exp()).ln() - 2.0;
        let l2 = (3.0f32.exp() + 1.0f32.exp() + (-2.0f32).exp()).ln() - 3.0;
        assert!((ce.mean() - (l0 + l2) / 2.0).abs() < 1e-6);
        let mut grad = logits;
        cross_entropy_backward_inplace(&mut grad, &lse, &targets, 3, 0.5).unwrap();
        assert_eq!(&grad[3..6], &[0.0; 3]);
        for i in 0..9 {
            let (mut a, mut b) = (logits, logits);
            a[i] += 1e-2;
            b[i] -= 1e-2;
            let fa = cross_entropy_forward(&mut lse, &a, &targets, 3)
                .unwrap()
                .mean();
            let fb = cross_entropy_forward(&mut lse, &b, &targets, 3)
                .unwrap()
                .mean();
            assert!(((fa - fb) / 2e-2 - grad[i]).abs() < 1e-3, "{i}");
        }
    }

    #[test]
    fn bad_targets_are_errors() {
        let mut lse = [0.0; 1];
        assert!(cross_entropy_forward(&mut lse, &[0.0; 3], &[3], 3).is_err());
        assert!(cross_entropy_forward(&mut lse, &[0.0; 3], &[-1], 3).is_err());
    }
}

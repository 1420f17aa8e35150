//! Dynamic loss scaling for fp16 training, as PyTorch's
//! `torch.amp.GradScaler` does it.
//!
//! fp16 has 5 exponent bits: gradients below about 6e-8 round to zero as
//! they enter a 16-bit matmul. Multiplying the loss by a large power of two
//! lifts them into range; the master-weight gradients (f32) are divided by
//! it again before clipping and the update. If any gradient overflowed to
//! infinity or NaN the step is skipped (the weights and the optimizer state
//! are not touched) and the scale halves; after `growth_interval`
//! consecutive clean steps it doubles. Powers of two make scaling and
//! unscaling exact.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// GradScaler's initial scale, 2¹⁶.
pub const INITIAL_SCALE: f32 = 65_536.0;
/// GradScaler's default number of clean steps before the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2_000;
/// Below this scale the run is treated as diverged: gradients overflow
/// even when the loss is divided by 2¹⁶.
pub const MIN_SCALE: f32 = 1.0 / 65_536.0;

/// Values per parallel task of the unscaling.
const CHUNK: usize = 1 << 16;

/// The scaler's state; saved with the trainer state so a resumed run goes on
/// with the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by.
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
    /// Clean steps after which the scale doubles.
    pub growth_interval: u32,
    /// Steps skipped so far because a gradient overflowed.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(INITIAL_SCALE, GROWTH_INTERVAL)
    }
}

impl LossScaler {
    /// A scaler starting at `scale` that doubles after `growth_interval` clean steps.
    pub fn new(scale: f32, growth_interval: u32) -> Self {
        LossScaler {
            scale,
            clean_steps: 0,
            growth_interval,
            skipped: 0,
        }
    }

    /// Divides `grads` by the scale in place; returns whether every
    /// gradient is finite. After an overflow (`false`) the gradients are
    /// partly unscaled and must not be used: the step is to be skipped.
    pub fn unscale(&self, grads: &mut [f32]) -> bool {
        let inv = 1.0 / self.scale;
        tessera_tensor::install(|| {
            grads.par_chunks_mut(CHUNK).all(|c| {
                let finite = c.iter().all(|g| g.is_finite());
                if finite {
                    c.iter_mut().for_each(|g| *g *= inv);
                }
                finite
            })
        })
    }

    /// Records a step: a skipped one (`finite == false`) halves the scale,
    /// `growth_interval` clean ones in a row double it.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped += 1;
        }
    }

    /// Whether the scale has backed off so far that the run cannot recover.
    pub fn exhausted(&self) -> bool {
        self.scale < MIN_SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_support::tiny_params;

    #[test]
    fn unscaling_is_exact_and_reports_overflow() {
        let scaler = LossScaler::default();
        let mut g = tiny_params(0).zeros_like();
        g.flat_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 7.0) * 0.25 * INITIAL_SCALE);
        let want: Vec<f32> = (0..g.flat().len())
            .map(|i| (i as f32 - 7.0) * 0.25)
            .collect();
        assert!(scaler.unscale(g.flat_mut()));
        assert_eq!(g.flat(), &want[..]);
        let last = g.flat().len() - 1;
        g.flat_mut()[last] = f32::INFINITY;
        assert!(!scaler.unscale(g.flat_mut()));
        g.flat_mut()[0] = f32::NAN;
        assert!(!scaler.unscale(g.flat_mut()));
    }

    #[test]
    fn backs_off_on_overflow_and_grows_after_clean_steps() {
        let mut s = LossScaler::new(1024.0, 3);
        s.update(false);
        assert_eq!((s.scale, s.skipped, s.clean_steps), (512.0, 1, 0));
        s.update(true);
        s.update(true);
        assert_eq!(s.scale, 512.0);
        s.update(false);
        assert_eq!(
            (s.scale, s.clean_steps),
            (256.0, 0),
            "an overflow restarts the count"
        );
        for _ in 0..3 {
            s.update(true);
        }
        assert_eq!((s.scale, s.clean_steps, s.skipped), (512.0, 0, 2));
        let mut low = LossScaler::new(MIN_SCALE, 3);
        assert!(!low.exhausted());
        low.update(false);
        assert!(low.exhausted());
    }
}

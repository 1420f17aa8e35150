//! Learning-rate schedules: the rate each optimizer step uses.
//!
//! Each schedule is a function of the 0-based optimizer step and the peak
//! rate `max_lr`, computed in f64 like the Python lambdas of Hugging Face's
//! `transformers.optimization` and rounded to f32 once at the end. The
//! variants mirror the schedules a fine-tuning recipe picks from:
//! constant, Graphcore's linear warm-up to a constant rate, Hugging Face's
//! linear decay with warm-up, and the inverse square root of T5's
//! pre-training.

use crate::decimal::widen;
use crate::error::{Result, TrainError};

/// How the learning rate moves over a run. Serialised with a `kind` tag,
/// e.g. `{"kind": "warmup_constant", "warmup_steps": 10, "start_lr": 1e-7}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// `max_lr` at every step.
    Constant,
    /// Linear warm-up from `start_lr` (at step 0) towards `max_lr` over
    /// `warmup_steps` steps, then `max_lr` (Graphcore's Flan-T5 recipe:
    /// 1e-7 over 10 steps). `warmup_steps = 0` is [`Schedule::Constant`].
    WarmupConstant {
        /// Steps of the ramp; step `warmup_steps` is the first at `max_lr`.
        warmup_steps: u64,
        /// The rate of step 0.
        start_lr: f32,
    },
    /// Hugging Face's `get_linear_schedule_with_warmup`: a ramp from 0 over
    /// `warmup_steps`, then a straight line down to 0 at `total_steps`.
    LinearDecay {
        /// Steps of the ramp from 0.
        warmup_steps: u64,
        /// The step at which the rate reaches 0 (the run's length).
        total_steps: u64,
    },
    /// Hugging Face's `get_inverse_sqrt_schedule` with its default
    /// timescale: a ramp from 0 over `warmup_steps`, then
    /// `max_lr / sqrt((step + shift) / timescale)` where the timescale is
    /// `warmup_steps` (10 000 when that is 0) and `shift = timescale − warmup_steps`,
    /// so the decay starts at `max_lr` where the ramp ends.
    InverseSqrt {
        /// Steps of the ramp from 0.
        warmup_steps: u64,
    },
}

/// Hugging Face's timescale of the inverse square root when there is no warm-up.
const DEFAULT_TIMESCALE: u64 = 10_000;

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based: the first
    /// update uses `lr(max_lr, 0)`).
    pub fn lr(&self, max_lr: f32, step: u64) -> f32 {
        let max = widen(max_lr);
        let s = step as f64;
        let ramp = |warmup: u64| s / warmup.max(1) as f64;
        let rate = match *self {
            Schedule::Constant => max,
            Schedule::WarmupConstant {
                warmup_steps,
                start_lr,
            } => {
                if step < warmup_steps {
                    let start = widen(start_lr);
                    start + (max - start) * ramp(warmup_steps)
                } else {
                    max
                }
            }
            Schedule::LinearDecay {
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    max * ramp(warmup_steps)
                } else {
                    let left = total_steps.saturating_sub(step) as f64;
                    max * left / total_steps.saturating_sub(warmup_steps).max(1) as f64
                }
            }
            Schedule::InverseSqrt { warmup_steps } => {
                if step < warmup_steps {
                    max * ramp(warmup_steps)
                } else {
                    let timescale = if warmup_steps == 0 {
                        DEFAULT_TIMESCALE
                    } else {
                        warmup_steps
                    };
                    let shift = (timescale - warmup_steps) as f64;
                    max / ((s + shift) / timescale as f64).sqrt()
                }
            }
        };
        rate as f32
    }

    /// Rejects settings no run can use: a warm-up start rate that is
    /// negative or not finite, a linear decay that ends at step 0 or before
    /// its warm-up is over.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::WarmupConstant { start_lr, .. }
                if !(start_lr >= 0.0 && start_lr.is_finite()) =>
            {
                Err(TrainError::setting(
                    "start_lr",
                    format!("the warm-up start rate must be a finite number ≥ 0, not {start_lr}"),
                ))
            }
            Schedule::LinearDecay { total_steps: 0, .. } => Err(TrainError::setting(
                "--steps",
                "a linear decay needs at least 1 step to decay over",
            )),
            Schedule::LinearDecay {
                warmup_steps,
                total_steps,
            } if warmup_steps > total_steps => Err(TrainError::setting(
                "--warmup-steps",
                format!("{warmup_steps} warm-up steps do not fit in a run of {total_steps} steps"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(schedule: Schedule, max_lr: f32, steps: u64) -> Vec<f32> {
        (0..steps).map(|s| schedule.lr(max_lr, s)).collect()
    }

    #[test]
    fn constant_is_flat() {
        assert_eq!(rates(Schedule::Constant, 5e-6, 3), [5e-6; 3]);
    }

    #[test]
    fn graphcore_warmup_ramps_from_the_start_rate_then_holds() {
        let s = Schedule::WarmupConstant {
            warmup_steps: 10,
            start_lr: 1e-7,
        };
        let r = rates(s, 5e-6, 12);
        assert_eq!(r[0], 1e-7);
        let want_5 = (1e-7 + (5e-6 - 1e-7) * 0.5) as f32;
        assert_eq!(r[5], want_5);
        assert!(r.windows(2).take(10).all(|w| w[0] < w[1]), "{r:?}");
        assert_eq!(&r[10..], [5e-6, 5e-6]);
        let no_warmup = Schedule::WarmupConstant {
            warmup_steps: 0,
            start_lr: 1e-7,
        };
        assert_eq!(no_warmup.lr(5e-6, 0), 5e-6);
    }

    #[test]
    fn linear_decay_matches_hugging_face() {
        // get_linear_schedule_with_warmup(opt, 2, 6) with lr 1.0:
        // [0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0].
        let s = Schedule::LinearDecay {
            warmup_steps: 2,
            total_steps: 6,
        };
        assert_eq!(rates(s, 1.0, 8), [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
    }

    #[test]
    fn inverse_sqrt_matches_hugging_face() {
        // get_inverse_sqrt_schedule(opt, num_warmup_steps=4) with lr 1.0.
        let s = Schedule::InverseSqrt { warmup_steps: 4 };
        let r = rates(s, 1.0, 17);
        assert_eq!(&r[..5], [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(r[16], 0.5);
        let no_warmup = Schedule::InverseSqrt { warmup_steps: 0 };
        assert_eq!(no_warmup.lr(1.0, 0), 1.0);
        assert_eq!(no_warmup.lr(1.0, 30_000), 0.5);
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = [
            (
                Schedule::WarmupConstant {
                    warmup_steps: 3,
                    start_lr: -1.0,
                },
                "start_lr",
            ),
            (
                Schedule::LinearDecay {
                    warmup_steps: 0,
                    total_steps: 0,
                },
                "--steps",
            ),
            (
                Schedule::LinearDecay {
                    warmup_steps: 7,
                    total_steps: 6,
                },
                "--warmup-steps",
            ),
        ];
        for (schedule, flag) in bad {
            let err = schedule.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert!(Schedule::Constant.validate().is_ok());
    }

    #[test]
    fn serde_uses_a_kind_tag() {
        let s = Schedule::WarmupConstant {
            warmup_steps: 10,
            start_lr: 1e-7,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"warmup_constant","warmup_steps":10,"start_lr":1e-7}"#
        );
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        let c: Schedule = serde_json::from_str(r#"{"kind":"constant"}"#).unwrap();
        assert_eq!(c, Schedule::Constant);
    }
}

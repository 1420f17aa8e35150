//! The training loop: micro-batches accumulated into a global batch, global
//! gradient clipping, the optimizer step, periodic evaluation and
//! checkpoints, and an exact resume.
//!
//! **Loss normalisation.** Every micro-batch's summed token loss is divided
//! by the number of target tokens in the *whole* global batch, so the
//! accumulated gradient is the gradient of the global batch's mean token
//! loss — Hugging Face's mean when there is one micro-batch, and independent
//! of how the global batch is split.
//!
//! **Determinism.** The batches come from the loader's cursor, the dropout
//! masks from `(seed, step, micro-batch)`, and every kernel gives the same
//! bits on any thread count, so a run resumed from a checkpoint ends with
//! the same weights, bit for bit, as one that never stopped.

use crate::checkpoint::{self, TokenizerFiles, TrainerState};
use crate::config::RunConfig;
use crate::eval::{model_batch, EvalOptions, EvalReport, Evaluator};
use crate::metrics::{MetricsLog, METRICS_FILE};
use crate::model_source::check_fits;
use crate::optim::{clip, Optimizer};
use crate::{Result, TrainError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tessera_glue::{Dataset, EncodedDataset, Loader, LoaderConfig, Order, TextTokenizer};
use tessera_t5::{ParamStore, T5Model, TrainOptions};
use tessera_tensor::ops::dropout::dropout_key;

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// The step just taken (1-based: the number of updates so far).
    pub step: u64,
    /// Mean cross-entropy per target token over the global batch.
    pub loss: f32,
    /// Learning rate of this update.
    pub lr: f32,
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f32,
    /// Rows in the global batch.
    pub examples: usize,
    /// Forward/backward passes the global batch ran in (`grad_accum`, or
    /// as many as `max_tokens` cut it into).
    pub passes: usize,
    /// Target tokens in the global batch.
    pub target_tokens: usize,
    /// Source tokens in the global batch (real tokens: batches carry no padding).
    pub source_tokens: usize,
    /// Useful FLOPs of the step: 3× the forward's
    /// ([`tessera_t5::T5Config::forward_flops`]), for model FLOP utilisation.
    pub flops: f64,
    /// Training rows per second of wall time of this step.
    pub examples_per_s: f64,
    /// Wall time of this step in seconds.
    pub seconds: f64,
    /// The fp16 loss scale this step ran with (fp16 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    /// Whether the step was skipped because a gradient overflowed (the
    /// weights did not change; `step` is retried with the next batch).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Steps skipped so far (fp16 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

/// What [`Trainer::run`] reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// An optimizer step finished.
    Step(&'a StepReport),
    /// An evaluation finished after `step` steps.
    Eval {
        /// Steps taken when evaluating.
        step: u64,
        /// The results.
        report: &'a EvalReport,
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done; the final checkpoint.
    Finished(PathBuf),
    /// Stopped by the caller's flag (Ctrl-C); the checkpoint saved before stopping.
    Interrupted(PathBuf),
}

/// A fine-tuning run in progress.
pub struct Trainer {
    config: RunConfig,
    model: T5Model,
    grads: ParamStore,
    optimizer: Optimizer,
    tokenizer_files: TokenizerFiles,
    loader: Loader,
    evaluator: Option<Evaluator>,
    state: TrainerState,
}

impl Trainer {
    /// A fresh run of `config` on `model` with `tokenizer`, training on
    /// `train` and validating on `eval_set`.
    pub fn new(
        config: RunConfig,
        model: T5Model,
        tokenizer: TextTokenizer,
        tokenizer_files: TokenizerFiles,
        train: &Dataset,
        eval_set: Option<Dataset>,
    ) -> Result<Self> {
        let optimizer = Optimizer::new(&config.optimizer_config(), model.params())?;
        let state = TrainerState {
            step: 0,
            cursor: Default::default(),
            examples_seen: 0,
            config: config.clone(),
            loss_scaler: None,
        };
        Self::assemble(
            model,
            optimizer,
            tokenizer,
            tokenizer_files,
            train,
            eval_set,
            state,
        )
    }

    /// Continues the run saved in checkpoint `dir` with `config` (normally
    /// the saved configuration with the caller's overrides laid over it).
    pub fn resume(
        dir: &Path,
        config: RunConfig,
        train: &Dataset,
        eval_set: Option<Dataset>,
    ) -> Result<Self> {
        let mut state = checkpoint::read_state(dir)?;
        let model = T5Model::load(dir)?;
        let tokenizer_path = dir.join(checkpoint::TOKENIZER_FILE);
        let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
        let tokenizer_files = TokenizerFiles::of(&tokenizer, Some(&tokenizer_path))?;
        let optimizer = Optimizer::load(
            &config.optimizer_config(),
            model.params(),
            &dir.join(checkpoint::OPTIMIZER_FILE),
        )?;
        if optimizer.steps() != state.step {
            return Err(TrainError::setting(
                "--resume",
                format!(
                    "{} holds an optimizer at step {} but a trainer at step {}",
                    dir.display(),
                    optimizer.steps(),
                    state.step
                ),
            ));
        }
        state.config = config;
        Self::assemble(
            model,
            optimizer,
            tokenizer,
            tokenizer_files,
            train,
            eval_set,
            state,
        )
    }

    fn assemble(
        mut model: T5Model,
        optimizer: Optimizer,
        tokenizer: TextTokenizer,
        tokenizer_files: TokenizerFiles,
        train: &Dataset,
        eval_set: Option<Dataset>,
        mut state: TrainerState,
    ) -> Result<Self> {
        let config = state.config.clone();
        model.set_precision(config.precision);
        if config.stochastic_rounding {
            model.store_weights_in_precision()?;
        }
        // A resumed fp16 run goes on with its saved scale; any other
        // precision has no scaler.
        state.loss_scaler = config
            .loss_scaler()
            .map(|fresh| state.loss_scaler.unwrap_or(fresh));
        check_fits(&tokenizer, model.config().vocab_size)?;
        let lengths = tessera_glue::Lengths {
            source: config.max_source_length,
            target: config.max_target_length,
        };
        let encoded = tessera_glue::encode_dataset(&tokenizer, train, lengths)?;
        if encoded.len() < config.batch_size {
            return Err(TrainError::setting(
                "--batch-size",
                format!(
                    "{} is larger than the {} training rows",
                    config.batch_size,
                    encoded.len()
                ),
            ));
        }
        let mut loader = Loader::new(
            encoded,
            LoaderConfig {
                batch_size: config.batch_size,
                order: if config.shuffle {
                    Order::Shuffled
                } else {
                    Order::Sequential
                },
                seed: config.seed,
                padding: config.padding,
                drop_last: true,
            },
        )?;
        loader.seek(state.cursor)?;
        let evaluator = eval_set
            .map(|mut data| {
                if config.eval_examples > 0 {
                    data.examples.truncate(config.eval_examples);
                }
                let opts = EvalOptions {
                    max_new_tokens: config.max_new_tokens,
                    batch_size: config.eval_batch_size,
                    max_source_length: config.max_source_length,
                };
                Evaluator::new(&tokenizer, &data, opts)
            })
            .transpose()?;
        Ok(Trainer {
            grads: model.new_gradients(),
            config,
            model,
            optimizer,
            tokenizer_files,
            loader,
            evaluator,
            state,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The model being trained.
    pub fn model(&self) -> &T5Model {
        &self.model
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, update.
    /// In fp16 the loss is scaled, the gradients unscaled before clipping,
    /// and a step whose gradients overflowed is skipped (reported with
    /// `skipped`; the step count does not advance).
    pub fn train_step(&mut self) -> Result<StepReport> {
        let start = Instant::now();
        let Accumulated {
            loss,
            passes,
            examples,
            target_tokens,
            source_tokens,
            flops,
        } = self.accumulate_gradients()?;
        let step = self.state.step + 1;
        let loss_scale = self.state.loss_scaler.map(|s| s.scale);
        let update = match self.unscale_gradients() {
            Some(false) if self.state.loss_scaler.is_some_and(|s| s.exhausted()) => {
                let grad_norm = f32::INFINITY;
                return Err(TrainError::Diverged {
                    step,
                    loss,
                    grad_norm,
                });
            }
            Some(false) => None,
            _ => Some(self.update_weights(step, loss)?),
        };
        self.state.cursor = self.loader.cursor();
        self.state.examples_seen += examples as u64;
        let (lr, grad_norm) = update.unwrap_or((0.0, f32::INFINITY));
        let seconds = start.elapsed().as_secs_f64();
        Ok(StepReport {
            step,
            loss,
            lr,
            grad_norm,
            examples,
            passes,
            target_tokens,
            source_tokens,
            flops,
            examples_per_s: examples as f64 / seconds,
            seconds,
            loss_scale,
            skipped: update.is_none(),
            skipped_steps: self.state.loss_scaler.map(|s| s.skipped),
        })
    }

    /// Forward and backward of the step's `grad_accum` micro-batches into
    /// the zeroed gradients.
    fn accumulate_gradients(&mut self) -> Result<Accumulated> {
        let mut passes = Vec::with_capacity(self.config.grad_accum);
        for _ in 0..self.config.grad_accum {
            passes.push(self.loader.next_batch()?.rows);
        }
        if let Some(budget) = self.config.max_tokens {
            passes = by_tokens(self.loader.data(), passes.concat(), budget);
        }
        let micro = passes
            .iter()
            .map(|rows| model_batch(self.loader.data(), rows))
            .collect::<Result<Vec<_>>>()?;
        let target_tokens: usize = micro
            .iter()
            .flat_map(|b| &b.labels)
            .filter(|&&l| l != i64::from(tessera_glue::IGNORE_INDEX))
            .count();
        let config = self.model.config();
        let flops = micro
            .iter()
            .map(|b| 3.0 * config.forward_flops(&b.src_lens, &b.tgt_lens))
            .sum();
        let examples = micro.iter().map(tessera_t5::Batch::rows).sum();
        let source_tokens = micro.iter().map(|b| b.input_ids.len()).sum();
        self.grads.zero();
        let mut loss_sum = 0.0f64;
        for batch in &micro {
            // Masks are keyed by (run seed, step) here and by each token's
            // example and position in the model, so they do not depend on
            // how the global batch is cut into micro-batches.
            let opts = TrainOptions {
                dropout: self
                    .config
                    .dropout
                    .unwrap_or(self.model.config().dropout_rate as f32),
                seed: dropout_key(self.config.seed, &[self.state.step]),
                recompute_blocks: false,
                loss_divisor: Some(target_tokens as f32),
                loss_scale: self.state.loss_scaler.map_or(1.0, |s| s.scale),
            };
            let loss = self.model.forward_backward(batch, &mut self.grads, &opts)?;
            loss_sum += loss.sum;
        }
        Ok(Accumulated {
            loss: (loss_sum / target_tokens.max(1) as f64) as f32,
            passes: micro.len(),
            examples,
            target_tokens,
            source_tokens,
            flops,
        })
    }

    /// fp16: divides the gradients by the loss scale and updates the scaler;
    /// `Some(false)` when they overflowed (the step is skipped). `None`
    /// without a scaler.
    fn unscale_gradients(&mut self) -> Option<bool> {
        let scaler = self.state.loss_scaler.as_mut()?;
        let finite = scaler.unscale(&mut self.grads);
        scaler.update(finite);
        Some(finite)
    }

    /// Clips the gradients and applies the optimizer: update `step`.
    /// Returns the learning rate and the gradient norm before clipping.
    fn update_weights(&mut self, step: u64, loss: f32) -> Result<(f32, f32)> {
        let clipped = clip(&self.grads, self.config.max_grad_norm);
        let grad_norm = clipped.norm;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            return Err(TrainError::Diverged {
                step,
                loss,
                grad_norm,
            });
        }
        let lr = self.config.schedule().lr(self.config.lr, self.state.step);
        self.optimizer
            .step_scaled(self.model.params_mut(), &mut self.grads, lr, clipped.scale);
        self.state.step = step;
        Ok((lr, grad_norm))
    }

    /// Evaluates by greedy generation on the validation set, if there is one.
    pub fn evaluate(&self) -> Result<Option<EvalReport>> {
        self.evaluator
            .as_ref()
            .map(|e| e.run(&self.model))
            .transpose()
    }

    /// Saves a checkpoint of the current step under `OUTPUT/checkpoints`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        checkpoint::save(
            &self.config.output.join("checkpoints"),
            &self.model,
            &self.tokenizer_files,
            &self.optimizer,
            &self.state,
            self.config.keep,
        )
    }

    /// Trains until `config.steps`, evaluating and checkpointing on the
    /// configured cadence, logging every step to `metrics.jsonl`. When `stop`
    /// becomes true (Ctrl-C) a checkpoint is saved and the run returns
    /// [`Outcome::Interrupted`].
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<Outcome> {
        let mut metrics = MetricsLog::open(&self.config.output.join(METRICS_FILE))?;
        while self.state.step < self.config.steps {
            let report = self.train_step()?;
            metrics.write(&report)?;
            on_event(Event::Step(&report));
            if !report.skipped {
                let step = report.step;
                let last = step == self.config.steps;
                if last || due(step, self.config.eval_every) {
                    if let Some(report) = self.evaluate()? {
                        metrics.write(&EvalLine::new(step, &report))?;
                        on_event(Event::Eval {
                            step,
                            report: &report,
                        });
                    }
                }
                if last || due(step, self.config.checkpoint_every) {
                    let dir = self.save_checkpoint()?;
                    on_event(Event::Checkpoint(&dir));
                    if last {
                        return Ok(Outcome::Finished(dir));
                    }
                }
            }
            if stop.load(Ordering::SeqCst) {
                let dir = self.save_checkpoint()?;
                on_event(Event::Checkpoint(&dir));
                return Ok(Outcome::Interrupted(dir));
            }
        }
        // Resumed at (or past) the last step: the newest checkpoint is the result.
        self.save_checkpoint().map(Outcome::Finished)
    }
}

/// Cuts `rows` (in order) into passes of at most `budget` source + target
/// tokens each; a row longer than the budget runs alone.
fn by_tokens(data: &EncodedDataset, rows: Vec<usize>, budget: usize) -> Vec<Vec<usize>> {
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for r in rows {
        let e = &data.examples[r];
        let tokens = e.input_ids.len() + e.labels.len();
        match passes.last_mut() {
            Some(pass) if filled + tokens <= budget => {
                pass.push(r);
                filled += tokens;
            }
            _ => {
                passes.push(vec![r]);
                filled = tokens;
            }
        }
    }
    passes
}

/// What the micro-batches of one step added up to.
struct Accumulated {
    /// Mean cross-entropy per target token over the global batch.
    loss: f32,
    /// Forward/backward passes run.
    passes: usize,
    examples: usize,
    target_tokens: usize,
    source_tokens: usize,
    flops: f64,
}

/// An evaluation line of `metrics.jsonl`: the scores and the loss, without
/// the per-row predictions and texts (those are in `--json` / `xtask eval`).
#[derive(serde::Serialize)]
struct EvalLine<'a> {
    step: u64,
    eval: EvalScores<'a>,
}

#[derive(serde::Serialize)]
struct EvalScores<'a> {
    #[serde(flatten)]
    summary: &'a tessera_glue::Summary,
    loss: Option<f64>,
    target_tokens: usize,
}

impl<'a> EvalLine<'a> {
    fn new(step: u64, report: &'a EvalReport) -> Self {
        let eval = EvalScores {
            summary: &report.summary,
            loss: report.loss,
            target_tokens: report.target_tokens,
        };
        EvalLine { step, eval }
    }
}

fn due(step: u64, every: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

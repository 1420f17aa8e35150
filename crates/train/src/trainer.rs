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
//! masks from `(seed, step)` and each token's example and position (not
//! from how the global batch is cut), and every kernel gives the same
//! bits on any thread count, so a run resumed from a checkpoint ends with
//! the same weights, bit for bit, as one that never stopped — provided it
//! resumes with the same data, tokenizer and every setting that shapes the
//! batches or the arithmetic. [`Trainer::resume`] checks those against the
//! checkpoint and refuses a difference unless told to allow it
//! ([`FREE_KEYS`] may always change).
//!
//! **Output.** A run writes only into an output folder it has claimed
//! ([`RunFolder`]): locked, and holding no other run's checkpoints.
//!
//! **Ranks.** [`Trainer::distribute`] shares the run among the processes
//! of an MPI job ([`crate::replicas`]): each runs its groups of every
//! step's micro-batches, the gradients are reduce-scattered, each rank
//! updates its shard of the weights with its shard of the optimizer state
//! (ZeRO-1), and the weights are all-gathered. Rank 0 alone claims the
//! output folder, writes `metrics.jsonl`, the report and the checkpoints
//! (the optimizer state gathered to it), and reports events.

use crate::checkpoint::{
    self, BaseModel, CheckpointKind, Fingerprint, TokenizerFiles, TrainerState,
};
use crate::config::RunConfig;
use crate::data::DataReport;
use crate::eval::{model_batch, EvalOptions, EvalReport, Evaluator};
use crate::metrics::{MetricsLog, METRICS_FILE};
use crate::model_source::{check_fits, load_adapted};
use crate::optim::{clip_from_partials, clip_partials, shard_ranges, Optimizer};
use crate::replicas::{self, add_into, gather_f64, group_ranges, parts_per_rank};
use crate::run_folder::{RunFolder, CHECKPOINTS};
use crate::{Result, TrainError};
use serde::Serialize;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tessera_dist::Comm;
use tessera_glue::{Dataset, EncodedDataset, Loader, LoaderConfig, Order, TextTokenizer};
use tessera_t5::folder::HashingWriter;
use tessera_t5::{ParamStore, Precision, T5Model, TrainOptions};
use tessera_tensor::ops::crossentropy::IGNORE_INDEX;
use tessera_tensor::rng;
use tessera_tensor::DType;

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
    /// ([`tessera_t5::T5Config::forward_flops`]) when every weight trains,
    /// 2× with LoRA (no weight gradients of the frozen base; the adapters'
    /// own FLOPs are not counted), for model FLOP utilisation.
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
    /// Processes (MPI ranks) the step ran on.
    pub world_size: usize,
    /// Seconds of this step spent in collectives between ranks, waiting for
    /// the slowest included (microseconds alone).
    pub comm_seconds: f64,
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
    /// `OUTPUT/report.html` was rewritten.
    Report(&'a Path),
    /// The report could not be rewritten (the run goes on): why.
    ReportFailed(String),
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done; the final checkpoint.
    Finished(PathBuf),
    /// Stopped by the caller's flag (Ctrl-C); the checkpoint saved before stopping.
    Interrupted(PathBuf),
}

/// Configuration keys a resumed run may change freely: they decide how
/// long the run goes on, what it records and where, and how fast — not
/// which batches it sees or what it computes. (`steps` also sets the end of
/// a `linear_decay` schedule.) `model`, `tokenizer` and `train_file` name
/// where things came from; what matters of them is checked by content
/// (the checkpoint's weights and tokenizer, the data's fingerprint).
/// `grad_groups` changes only the order in which the step's gradient is
/// summed (its last bits), and must change for a resume on a number of
/// ranks that does not divide it.
pub const FREE_KEYS: [&str; 15] = [
    "recipe",
    "model",
    "tokenizer",
    "train_file",
    "eval_file",
    "steps",
    "checkpoint_every",
    "keep",
    "eval_every",
    "eval_examples",
    "max_new_tokens",
    "eval_batch_size",
    "threads",
    "grad_groups",
    "output",
];

/// A difference between a checkpoint's run and the run resuming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// The configuration key, or `training data` / `tokenizer`.
    pub key: String,
    /// The checkpoint's value.
    pub saved: String,
    /// This run's value.
    pub now: String,
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.saved, self.now)
    }
}

/// How a resumed run began, for its `metrics.jsonl` line.
#[derive(Debug, Clone)]
struct Resumed {
    from: PathBuf,
    changes: Vec<ConfigChange>,
}

/// A fine-tuning run in progress.
pub struct Trainer {
    config: RunConfig,
    model: T5Model,
    /// The frozen base of a LoRA run (`None`: full fine-tuning).
    base: Option<BaseModel>,
    /// The gradients of this rank's first group of micro-batches; after
    /// the reduction, the step's whole gradient in this rank's shard.
    grads: ParamStore,
    /// More gradient buffers: rank 0's scratch to fold its later groups
    /// into `grads`, another rank's later groups (sent apart).
    parts: Vec<ParamStore>,
    /// `G`, the groups of the canonical gradient ([`crate::replicas`]).
    groups: usize,
    comm: Comm,
    /// Every rank's range of flat positions (ZeRO-1), in rank order.
    shards: Vec<Range<usize>>,
    /// The optimizer state of this rank's shard.
    optimizer: Optimizer,
    tokenizer_files: TokenizerFiles,
    loader: Loader,
    evaluator: Option<Evaluator>,
    state: TrainerState,
    data_report: DataReport,
    output: Option<RunFolder>,
    /// The newest complete checkpoint of this run and its step.
    last_checkpoint: Option<(u64, PathBuf)>,
    resumed: Option<Resumed>,
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
        let mut model = model;
        let base = add_lora(&mut model, &config)?;
        let optimizer = Optimizer::new(&config.optimizer_config(), model.trainable())?;
        let state = TrainerState {
            run: new_run_id(),
            step: 0,
            cursor: Default::default(),
            examples_seen: 0,
            config: config.clone(),
            fingerprint: Some(Fingerprint::of(train, &tokenizer_files)),
            loss_scaler: None,
        };
        Self::assemble(
            (model, base),
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
    ///
    /// The checkpoint is verified against its manifest first. A difference
    /// in the training data, or in a configuration key outside
    /// [`FREE_KEYS`], is an error naming it, unless `allow_config_change`
    /// (then the changes are recorded in `metrics.jsonl`, see
    /// [`Trainer::config_changes`]).
    pub fn resume(
        dir: &Path,
        config: RunConfig,
        train: &Dataset,
        eval_set: Option<Dataset>,
        allow_config_change: bool,
    ) -> Result<Self> {
        let manifest = checkpoint::verify(dir)?;
        let mut state = checkpoint::read_state(dir)?;
        if (manifest.run.as_str(), manifest.step) != (state.run.as_str(), state.step) {
            return Err(TrainError::Damaged {
                dir: dir.to_path_buf(),
                reason: format!(
                    "its manifest is of run {} step {}, its trainer state of run {} step {}",
                    manifest.run, manifest.step, state.run, state.step
                ),
            });
        }
        let (model, base) = match manifest.kind {
            CheckpointKind::Training => (T5Model::load(dir)?, None),
            CheckpointKind::Adapter => load_adapted(dir, manifest.base)?,
        };
        let tokenizer_path = dir.join(checkpoint::TOKENIZER_FILE);
        let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
        let tokenizer_files = TokenizerFiles::of(&tokenizer, Some(&tokenizer_path))?;
        let optimizer = Optimizer::load(
            &config.optimizer_config(),
            model.trainable(),
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
        let fingerprint = Fingerprint::of(train, &tokenizer_files);
        let changes = changes(&state, &config, &fingerprint)?;
        if let (Some(first), false) = (changes.first(), allow_config_change) {
            return Err(TrainError::setting(
                "--resume",
                format!(
                    "{} was trained with {} = {}, this run has {}; an exact resume needs the same (pass --allow-config-change to continue anyway)",
                    dir.display(),
                    first.key,
                    first.saved,
                    first.now
                ),
            ));
        }
        // An allowed change of batch size or data keeps the position in
        // the epoch by rows consumed, within the new epoch's batches.
        let rows_in = state.cursor.batch * state.config.batch_size;
        state.cursor.batch = (rows_in / config.batch_size).min(train.len() / config.batch_size);
        state.config = config;
        state.fingerprint = Some(fingerprint);
        let mut trainer = Self::assemble(
            (model, base),
            optimizer,
            tokenizer,
            tokenizer_files,
            train,
            eval_set,
            state,
        )?;
        trainer.last_checkpoint = Some((trainer.state.step, dir.to_path_buf()));
        trainer.resumed = Some(Resumed {
            from: dir.to_path_buf(),
            changes,
        });
        Ok(trainer)
    }

    fn assemble(
        (mut model, base): (T5Model, Option<BaseModel>),
        optimizer: Optimizer,
        tokenizer: TextTokenizer,
        tokenizer_files: TokenizerFiles,
        train: &Dataset,
        eval_set: Option<Dataset>,
        mut state: TrainerState,
    ) -> Result<Self> {
        let config = state.config.clone();
        model.set_precision(config.precision);
        // A frozen LoRA base needs no f32 master copy either.
        if config.stochastic_rounding || base.is_some() {
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
        let encoded = crate::data::encode(&tokenizer, train, lengths)?;
        let data_report = DataReport::new(train, &encoded);
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
        let total = optimizer.shard();
        let mut trainer = Trainer {
            grads: model.new_gradients(),
            parts: Vec::new(),
            groups: 1,
            comm: Comm::SINGLE,
            shards: vec![total],
            config,
            model,
            base,
            optimizer,
            tokenizer_files,
            loader,
            evaluator,
            state,
            data_report,
            output: None,
            last_checkpoint: None,
            resumed: None,
        };
        trainer.set_groups(trainer.config.grad_groups.unwrap_or(1));
        Ok(trainer)
    }

    /// Shares the run among the ranks of `comm` (call once, on every rank,
    /// before training; a world of one changes nothing but the record).
    /// The gradient is summed in `--grad-groups` groups (by default one
    /// per rank), which the rank count must divide; the value is recorded
    /// in the configuration, so a resume on another number of ranks sums
    /// the same way. Each rank keeps the optimizer state of its shard only.
    pub fn distribute(&mut self, comm: Comm) -> Result<()> {
        let n = comm.size();
        let groups = self.config.grad_groups.unwrap_or(n);
        if !groups.is_multiple_of(n) {
            return Err(TrainError::setting(
                "--grad-groups",
                format!(
                    "{n} ranks cannot share {groups} gradient groups (this run sums its gradient in {groups}); use a multiple of {n} (bit-identical only with the same value)"
                ),
            ));
        }
        self.config.check_groups(groups)?;
        self.config.grad_groups = Some(groups);
        self.state.config.grad_groups = Some(groups);
        self.shards = shard_ranges(self.config.optimizer, self.model.trainable().entries(), n);
        self.optimizer.keep_shard(self.shards[comm.rank()].clone());
        self.comm = comm;
        self.set_groups(groups);
        Ok(())
    }

    /// Sets `G` and makes the gradient buffers this rank needs for it.
    fn set_groups(&mut self, groups: usize) {
        self.groups = groups;
        let extra = match (self.comm.is_root(), self.groups_per_rank()) {
            (_, 0 | 1) => 0,
            (true, _) => 1,
            (false, k) => k - 1,
        };
        self.parts = (0..extra).map(|_| self.grads.zeros_like()).collect();
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

    /// The run's identity (kept across resumes).
    pub fn run_id(&self) -> &str {
        &self.state.run
    }

    /// What became of the training rows (read, skipped, cut).
    pub fn data_report(&self) -> &DataReport {
        &self.data_report
    }

    /// The differences from the checkpoint this run resumed, allowed by
    /// `allow_config_change` (empty for a fresh run).
    pub fn config_changes(&self) -> &[ConfigChange] {
        self.resumed.as_ref().map_or(&[], |r| &r.changes)
    }

    /// Claims the output folder (see [`RunFolder::claim`]) and returns
    /// what claiming did, for the user. Called by [`Trainer::run`] and
    /// [`Trainer::save_checkpoint`] without `overwrite` if not called
    /// before; call it first to overwrite another run's output.
    pub fn claim_output(&mut self, overwrite: bool) -> Result<&[String]> {
        if self.output.is_none() {
            let folder = RunFolder::claim(&self.config.output, &self.state.run, overwrite)?;
            self.output = Some(folder);
        }
        Ok(self.output.as_ref().map_or(&[], |f| f.notes()))
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, update.
    /// In fp16 the loss is scaled, the gradients unscaled before clipping,
    /// and a step whose gradients overflowed is skipped (reported with
    /// `skipped`; the step count does not advance).
    pub fn train_step(&mut self) -> Result<StepReport> {
        let start = Instant::now();
        let mut comm_seconds = 0.0;
        let Accumulated {
            loss,
            passes,
            examples,
            target_tokens,
            source_tokens,
            flops,
        } = self.accumulate_gradients(&mut comm_seconds)?;
        timed(&mut comm_seconds, || self.reduce_gradients());
        let step = self.state.step + 1;
        let loss_scale = self.state.loss_scaler.map(|s| s.scale);
        let update = match self.unscale_gradients(&mut comm_seconds) {
            Some(false) if self.state.loss_scaler.is_some_and(|s| s.exhausted()) => {
                return Err(self.diverged(step, loss, f32::INFINITY));
            }
            Some(false) => None,
            _ => Some(self.update_weights(step, loss, &mut comm_seconds)?),
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
            world_size: self.comm.size(),
            comm_seconds,
        })
    }

    /// Forward and backward of this rank's groups of the step's micro-batches
    /// into the zeroed gradient buffers (see [`crate::replicas`]); the
    /// loss is every rank's, summed in micro-batch order.
    fn accumulate_gradients(&mut self, comm_seconds: &mut f64) -> Result<Accumulated> {
        let mut passes = Vec::with_capacity(self.config.grad_accum);
        for _ in 0..self.config.grad_accum {
            passes.push(self.loader.next_batch());
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
            .filter(|&&l| l != IGNORE_INDEX)
            .count();
        let config = self.model.config();
        let passes = if self.base.is_some() { 2.0 } else { 3.0 };
        let flops = micro
            .iter()
            .map(|b| passes * config.forward_flops(&b.src_lens, &b.tgt_lens))
            .sum();
        let examples = micro.iter().map(tessera_t5::Batch::rows).sum();
        let source_tokens = micro.iter().map(|b| b.input_ids.len()).sum();
        let per_rank = self.groups_per_rank();
        let mine = self.comm.rank() * per_rank..(self.comm.rank() + 1) * per_rank;
        let opts = self.train_options(target_tokens);
        let mut losses = Vec::new();
        for (i, group) in group_ranges(micro.len(), self.groups)[mine]
            .iter()
            .enumerate()
        {
            let fold = self.comm.is_root() && i > 0;
            let buffer = match (fold, i) {
                (true, _) => &mut self.parts[0],
                (false, 0) => &mut self.grads,
                (false, i) => &mut self.parts[i - 1],
            };
            buffer.zero();
            for batch in &micro[group.clone()] {
                losses.push(self.model.forward_backward(batch, buffer, &opts)?.sum);
            }
            if fold {
                add_into(self.grads.flat_mut(), self.parts[0].flat());
            }
        }
        let losses = timed(comm_seconds, || gather_f64(self.comm, &losses))?;
        let loss_sum: f64 = losses.iter().sum();
        Ok(Accumulated {
            loss: (loss_sum / target_tokens.max(1) as f64) as f32,
            passes: micro.len(),
            examples,
            target_tokens,
            source_tokens,
            flops,
        })
    }

    /// The consecutive gradient groups each rank runs: `G / N`.
    fn groups_per_rank(&self) -> usize {
        self.groups / self.comm.size()
    }

    /// The options of this step's forward/backward passes. Masks are keyed
    /// by (run seed, step) here and by each token's example and position
    /// in the model, so they do not depend on how the global batch is cut
    /// into micro-batches, groups or ranks.
    fn train_options(&self, target_tokens: usize) -> TrainOptions {
        TrainOptions {
            dropout: self
                .config
                .dropout
                .unwrap_or(self.model.config().dropout_rate as f32),
            seed: rng::key(self.config.seed, &[self.state.step]),
            recompute_blocks: false,
            loss_divisor: Some(target_tokens as f32),
            loss_scale: self.state.loss_scaler.map_or(1.0, |s| s.scale),
        }
    }

    /// Sums every rank's gradient parts into their owners' shards.
    fn reduce_gradients(&mut self) {
        let parts = parts_per_rank(self.comm.size(), self.groups_per_rank());
        let rest: Vec<&[f32]> = if self.comm.is_root() {
            Vec::new()
        } else {
            self.parts.iter().map(ParamStore::flat).collect()
        };
        replicas::reduce_scatter(
            self.comm,
            self.grads.flat_mut(),
            &rest,
            &parts,
            &self.shards,
        );
    }

    /// fp16: divides this rank's shard of the gradients by the loss scale
    /// and updates the scaler; `Some(false)` when a gradient of any rank
    /// overflowed (the step is skipped). `None` without a scaler.
    fn unscale_gradients(&mut self, comm_seconds: &mut f64) -> Option<bool> {
        let scaler = self.state.loss_scaler.as_mut()?;
        let shard = self.optimizer.shard();
        let finite = scaler.unscale(&mut self.grads.flat_mut()[shard]);
        let finite = !timed(comm_seconds, || self.comm.any(!finite));
        scaler.update(finite);
        Some(finite)
    }

    /// Clips the gradients and applies the optimizer: update `step`.
    /// Returns the learning rate and the gradient norm before clipping.
    fn update_weights(
        &mut self,
        step: u64,
        loss: f32,
        comm_seconds: &mut f64,
    ) -> Result<(f32, f32)> {
        let partials = clip_partials(&self.grads, self.optimizer.shard());
        let partials = timed(comm_seconds, || gather_f64(self.comm, &partials))?;
        let clipped = clip_from_partials(&partials, self.config.max_grad_norm);
        let grad_norm = clipped.norm;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            return Err(self.diverged(step, loss, grad_norm));
        }
        let lr = self.config.schedule().lr(self.config.lr, self.state.step);
        self.optimizer.step_scaled(
            self.model.trainable_mut(),
            &mut self.grads,
            lr,
            clipped.scale,
        );
        timed(comm_seconds, || {
            replicas::share_shards(self.comm, self.model.trainable_mut(), &self.shards)
        });
        self.state.step = step;
        Ok((lr, grad_norm))
    }

    fn diverged(&self, step: u64, loss: f32, grad_norm: f32) -> TrainError {
        TrainError::Diverged {
            step,
            loss,
            grad_norm,
            last_checkpoint: self.last_checkpoint.as_ref().map(|(_, dir)| dir.clone()),
        }
    }

    /// Evaluates by greedy generation on the validation set, if there is
    /// one (the batches shared among the ranks; every rank gets the report).
    pub fn evaluate(&self) -> Result<Option<EvalReport>> {
        self.evaluator
            .as_ref()
            .map(|e| e.run_split(&self.model, self.comm))
            .transpose()
    }

    /// Saves a checkpoint of the current step under `OUTPUT/checkpoints`
    /// (claiming the output folder first if needed). A step already saved
    /// (or resumed from) is not saved again: its folder is returned.
    /// Across ranks (every rank calls it) the optimizer's shards are
    /// gathered to rank 0, which writes the one checkpoint, and every rank
    /// returns its folder.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        if let Some((step, dir)) = &self.last_checkpoint {
            if *step == self.state.step {
                return Ok(dir.clone());
            }
        }
        let whole = self.optimizer.gather(self.comm);
        let mut saved = None;
        if let Some(optimizer) = &whole {
            self.claim_output(false)?;
            saved = Some(checkpoint::save(
                &self.config.output.join(CHECKPOINTS),
                (&self.model, self.base.as_ref()),
                &self.tokenizer_files,
                optimizer,
                &self.state,
                self.config.keep,
            )?);
        }
        drop(whole);
        let dir = self.root_path(saved)?;
        self.last_checkpoint = Some((self.state.step, dir.clone()));
        Ok(dir)
    }

    /// Rank 0's `path` on every rank (rank 0 passes `Some`, the others `None`).
    fn root_path(&self, path: Option<PathBuf>) -> Result<PathBuf> {
        let sent = path.as_ref().map(|p| p.to_string_lossy().into_owned());
        let all = self
            .comm
            .all_gather_bytes(sent.unwrap_or_default().as_bytes());
        match path {
            Some(path) => Ok(path),
            None => String::from_utf8(all[0].clone())
                .map(PathBuf::from)
                .map_err(|_| {
                    TrainError::Distributed("rank 0 sent a path that is not UTF-8".into())
                }),
        }
    }

    /// Trains until `config.steps`, checkpointing and then evaluating on
    /// the configured cadence (a step's checkpoint is written before its
    /// evaluation, so a failing evaluation loses nothing), logging every
    /// step to `metrics.jsonl` after a first line saying which run started
    /// or resumed, on what data. When `stop` becomes true (Ctrl-C) the
    /// step in flight finishes, a checkpoint is saved (once, even if the
    /// step was also a checkpoint step) and the run returns
    /// [`Outcome::Interrupted`].
    ///
    /// Across ranks every rank calls it; rank 0 alone writes and reports
    /// events, and a stop asked on any rank stops all after the same step.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<Outcome> {
        let root = self.comm.is_root();
        let mut on_event = |event: Event<'_>| {
            if root {
                on_event(event);
            }
        };
        let mut metrics = None;
        if root {
            self.claim_output(false)?;
            let log = metrics.insert(MetricsLog::open(&self.config.output.join(METRICS_FILE))?);
            log.write(&self.run_line())?;
        }
        while self.state.step < self.config.steps {
            let report = self.train_step()?;
            if let Some(log) = &mut metrics {
                log.write(&report)?;
            }
            on_event(Event::Step(&report));
            if !report.skipped {
                let step = report.step;
                let last = step == self.config.steps;
                if last || due(step, self.config.checkpoint_every) {
                    self.checkpoint(&mut on_event)?;
                }
                if last || due(step, self.config.eval_every) {
                    if let Some(report) = self.evaluate()? {
                        if let Some(log) = &mut metrics {
                            log.write(&EvalLine::new(step, &report))?;
                        }
                        on_event(Event::Eval {
                            step,
                            report: &report,
                        });
                        self.report(&mut on_event);
                    }
                }
            }
            let stopping = self.comm.any(stop.load(Ordering::SeqCst));
            if stopping && self.state.step < self.config.steps {
                let saved = self.checkpoint(&mut on_event);
                self.report(&mut on_event);
                return saved.map(Outcome::Interrupted);
            }
        }
        // Finished, or resumed at (or past) the last step: the newest
        // checkpoint is the result.
        let saved = self.checkpoint(&mut on_event);
        self.report(&mut on_event);
        saved.map(Outcome::Finished)
    }

    /// Rewrites `OUTPUT/report.html` from `metrics.jsonl`, atomically
    /// ([`tessera_report`]), and says so; a failure is reported, not
    /// fatal: the run and its checkpoints matter more than the page.
    fn report(&self, on_event: &mut impl FnMut(Event<'_>)) {
        if !self.comm.is_root() {
            return;
        }
        let output = &self.config.output;
        let path = output.join(tessera_report::REPORT_FILE);
        let written = (|| -> std::result::Result<(), String> {
            let name = output.display().to_string();
            let run = tessera_report::RunLog::read(&output.join(METRICS_FILE), &name)
                .map_err(|e| e.to_string())?;
            let page = tessera_report::render(&[run]).map_err(|e| e.to_string())?;
            tessera_t5::folder::write_file(&path, page.as_bytes()).map_err(|e| e.to_string())
        })();
        match written {
            Ok(()) => on_event(Event::Report(&path)),
            Err(e) => on_event(Event::ReportFailed(e)),
        }
    }

    /// [`Trainer::save_checkpoint`], reporting the save if there was one.
    fn checkpoint(&mut self, on_event: &mut impl FnMut(Event<'_>)) -> Result<PathBuf> {
        let saved = |t: &Self| t.last_checkpoint.as_ref().map(|(step, _)| *step);
        let before = saved(self);
        let dir = self.save_checkpoint()?;
        if before != saved(self) {
            on_event(Event::Checkpoint(&dir));
        }
        Ok(dir)
    }

    /// The first `metrics.jsonl` line of this (start of a) run.
    fn run_line(&self) -> RunLine<'_> {
        RunLine {
            run: &self.state.run,
            event: if self.resumed.is_some() {
                "resume"
            } else {
                "start"
            },
            at_step: self.state.step,
            resumed_from: self.resumed.as_ref().map(|r| r.from.as_path()),
            config_changes: self.config_changes(),
            data: &self.data_report,
            config: &self.config,
            model: ModelLine {
                parameters: self.model.config().num_parameters(),
                trainable: self.model.trainable().len(),
                precision: self.model.precision(),
                shape: self.model.config().describe(),
            },
            machine: MachineLine {
                cpu: tessera_tensor::machine::cpu_model(),
                threads: tessera_tensor::num_threads(),
                kernels: [DType::F32, DType::BF16].map(tessera_tensor::gemm::kernel_name),
            },
            tessera: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Adds the LoRA adapters of `config` to `model`, if it asks for them, and
/// returns the frozen base's record for the checkpoints.
fn add_lora(model: &mut T5Model, config: &RunConfig) -> Result<Option<BaseModel>> {
    let Some(lora) = config.lora()? else {
        return Ok(None);
    };
    // Kept in the run's precision from here on (the loader may have done it).
    model.set_precision(config.precision);
    model.store_weights_in_precision()?;
    let fingerprint = model.params().fingerprint();
    model
        .add_lora(lora, config.seed)
        .map_err(|e| TrainError::setting("--lora-targets", e.to_string()))?;
    Ok(Some(BaseModel {
        model: config.model.clone(),
        seed: config.seed,
        precision: config.precision,
        fingerprint,
    }))
}

/// A fresh run's identity: start time, process and a counter, so two runs
/// never share one.
fn new_run_id() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    format!("{secs}-{}-{n}", std::process::id())
}

impl Fingerprint {
    /// The fingerprint of training on `train` with `tokenizer`.
    pub fn of(train: &Dataset, tokenizer: &TokenizerFiles) -> Self {
        let mut data = HashingWriter::new(std::io::sink());
        for example in &train.examples {
            serde_json::to_writer(&mut data, &(&example.texts, &example.label))
                .expect("examples serialise");
        }
        let mut text = HashingWriter::new(std::io::sink());
        text.write_all(tokenizer.json.as_bytes())
            .expect("hashing into a sink cannot fail");
        Fingerprint {
            train_data: data.digest().1,
            train_rows: train.len(),
            tokenizer: text.digest().1,
        }
    }
}

/// The keys outside [`FREE_KEYS`] whose values differ between the
/// checkpoint's `state` and `config`, and the data or tokenizer if their
/// fingerprints differ.
fn changes(
    state: &TrainerState,
    config: &RunConfig,
    fingerprint: &Fingerprint,
) -> Result<Vec<ConfigChange>> {
    let table = |c: &RunConfig| {
        toml::Table::try_from(c).map_err(|e| TrainError::setting("configuration", e.to_string()))
    };
    let (saved, now) = (table(&state.config)?, table(config)?);
    let shown = |v: Option<&toml::Value>| {
        v.and_then(|v| serde_json::to_string(v).ok())
            .unwrap_or_else(|| "(unset)".into())
    };
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut changes: Vec<ConfigChange> = keys
        .into_iter()
        .filter(|k| !FREE_KEYS.contains(&k.as_str()) && saved.get(*k) != now.get(*k))
        .map(|k| ConfigChange {
            key: k.clone(),
            saved: shown(saved.get(k)),
            now: shown(now.get(k)),
        })
        .collect();
    if let Some(old) = &state.fingerprint {
        let data = |f: &Fingerprint| format!("{} rows, xxh3 {}", f.train_rows, f.train_data);
        if old.train_data != fingerprint.train_data {
            changes.push(ConfigChange {
                key: "training data".into(),
                saved: data(old),
                now: data(fingerprint),
            });
        }
        if old.tokenizer != fingerprint.tokenizer {
            changes.push(ConfigChange {
                key: "tokenizer".into(),
                saved: old.tokenizer.clone(),
                now: fingerprint.tokenizer.clone(),
            });
        }
    }
    Ok(changes)
}

/// The first line a run writes to `metrics.jsonl` when it starts or resumes.
#[derive(Serialize)]
struct RunLine<'a> {
    run: &'a str,
    /// `start` or `resume`.
    event: &'static str,
    /// Steps taken when the run (re)started.
    at_step: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_from: Option<&'a Path>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    config_changes: &'a [ConfigChange],
    data: &'a DataReport,
    /// The configuration in force from here.
    config: &'a RunConfig,
    model: ModelLine,
    machine: MachineLine,
    /// The tessera version that ran it.
    tessera: &'static str,
}

/// The model a run trains, as its first `metrics.jsonl` line names it.
#[derive(Debug, Serialize)]
struct ModelLine {
    /// Parameters of the model.
    parameters: usize,
    /// Parameters the run trains (the LoRA adapters', or all).
    trainable: usize,
    /// The matmuls' number format.
    precision: Precision,
    /// `d_model`, layers, heads and the feed-forward kind.
    shape: String,
}

/// Where a run ran.
#[derive(Debug, Serialize)]
struct MachineLine {
    /// The CPU's model name (`/proc/cpuinfo`).
    cpu: Option<String>,
    /// Worker threads.
    threads: usize,
    /// The f32 and bf16 matmul kernels this CPU runs.
    kernels: [&'static str; 2],
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

/// Runs `f`, adding its wall time to `seconds`.
fn timed<T>(seconds: &mut f64, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *seconds += start.elapsed().as_secs_f64();
    out
}

fn due(step: u64, every: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

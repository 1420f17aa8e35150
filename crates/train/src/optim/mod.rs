//! Optimizers (AdamW, Adafactor) and global-norm gradient clipping.
//!
//! [`Optimizer`] updates a [`ParamStore`] from a gradient store of the same
//! layout. Its state is f32, like PyTorch's, and every per-element formula
//! follows the reference implementation's operation order in f32 with the
//! scalar factors (bias corrections, `1 − β`) computed in f64 as Python
//! does, so a tessera run tracks a PyTorch run to a few units in the last
//! place per step:
//! - AdamW: `torch.optim.AdamW` (the single-tensor path, `foreach=False`).
//! - Adafactor: `transformers.optimization.Adafactor` (the fairseq port),
//!   with an external learning rate.
//!
//! As in Hugging Face's `Trainer`, layer-norm weights
//! ([`tessera_t5::ParamEntry::is_layer_norm`]) get no weight decay (T5 has
//! no biases, the other exclusion there).
//!
//! A step runs on the thread pool of [`tessera_tensor::install`], split into
//! pieces that do not depend on the thread count, and every reduction adds
//! its parts in a fixed order: the result is bit-identical for any number
//! of threads.
//!
//! The state is saved as one safetensors file ([`Optimizer::write_to`]) with
//! tensors named `<parameter>.<state>` (`exp_avg`, `exp_avg_sq`,
//! `exp_avg_sq_row`, `exp_avg_sq_col`) and the step count and optimizer
//! kind in the header's metadata.

mod adafactor;
mod adamw;
mod clip;
pub mod loss_scale;
mod pieces;
mod state_file;
mod sums;

use crate::error::{Result, TrainError};
use std::ops::Range;
use std::path::Path;
use tessera_dist::Comm;
use tessera_t5::{ParamEntry, ParamStore};

pub use clip::{clip, clip_from_partials, clip_grad_norm, clip_partials, scale_gradients, Clip};
pub use loss_scale::LossScaler;

/// Which update rule an [`Optimizer`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (`torch.optim.AdamW`). Spelled
    /// `adamw` (snake case alone would make it `adam_w`).
    #[serde(rename = "adamw")]
    AdamW,
    /// Adafactor with factored second moments (T5's own optimizer).
    Adafactor,
}

impl OptimizerKind {
    /// The name used on the command line, in configs and in saved state.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Adafactor => "adafactor",
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = TrainError;

    /// Parses `adamw` or `adafactor` (as `--optimizer` takes them).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "adafactor" => Ok(OptimizerKind::Adafactor),
            other => Err(TrainError::setting(
                "--optimizer",
                format!("{other:?} is not an optimizer; use adamw or adafactor"),
            )),
        }
    }
}

/// Settings of an [`Optimizer`]. `beta1`, `beta2` and `eps` are AdamW's;
/// `weight_decay` applies to both; Adafactor's own settings are in
/// [`OptimizerConfig::adafactor`]. A field missing from a config file takes
/// its [`Default`] value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// AdamW's decay of the first moment.
    pub beta1: f32,
    /// AdamW's decay of the second moment.
    pub beta2: f32,
    /// AdamW's term added to the root of the second moment (`--adam-eps`).
    pub eps: f32,
    /// Decoupled weight decay (`--weight-decay`), not applied to layer norms.
    pub weight_decay: f32,
    /// Adafactor's settings (ignored by AdamW).
    pub adafactor: AdafactorConfig,
    /// Seed of the stochastic-rounding noise when the weights are stored in
    /// 16 bits (the run's `--seed`; unused for f32 weights).
    pub rounding_seed: u64,
}

impl Default for OptimizerConfig {
    /// AdamW with β 0.9/0.999, eps 1e-6 and no weight decay: Graphcore's
    /// Flan-T5 fine-tuning recipe.
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            adafactor: AdafactorConfig::default(),
            rounding_seed: 0,
        }
    }
}

/// Adafactor's settings, named and defaulted as in `transformers`'
/// `Adafactor` except that the learning rate comes from the trainer
/// (`relative_step` is off by default).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdafactorConfig {
    /// `eps[0]`: added to the squared gradients (1e-30).
    pub eps_sq: f32,
    /// `eps[1]`: the smallest parameter RMS `scale_parameter` uses (1e-3).
    pub eps_scale: f32,
    /// The largest RMS of an update before it is scaled down (1.0).
    pub clip_threshold: f32,
    /// The second-moment decay is `1 − step^decay_rate` (-0.8).
    pub decay_rate: f32,
    /// Decay of an optional first moment; `None` (the default) keeps none.
    pub beta1: Option<f32>,
    /// Multiply the learning rate by the parameter's RMS (at least
    /// `eps_scale`), as `transformers` does by default. Hugging Face
    /// recommends `false` with an external learning rate for T5 fine-tuning.
    pub scale_parameter: bool,
    /// Ignore the trainer's learning rate and use Adafactor's own
    /// `min(1e-2, 1/sqrt(step))` (off by default).
    pub relative_step: bool,
    /// With `relative_step`, start from `1e-6·step` instead of `1e-2`.
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            eps_sq: 1e-30,
            eps_scale: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            scale_parameter: true,
            relative_step: false,
            warmup_init: false,
        }
    }
}

impl OptimizerConfig {
    /// Rejects settings PyTorch or `transformers` would reject, naming the
    /// flag or config key.
    pub fn validate(&self) -> Result<()> {
        let a = &self.adafactor;
        check(self.weight_decay, "--weight-decay", |v| v >= 0.0, "≥ 0")?;
        match self.kind {
            OptimizerKind::AdamW => {
                check_beta(self.beta1, "--adam-beta1")?;
                check_beta(self.beta2, "--adam-beta2")?;
                // ε = 0 gives 0/0 for a weight whose gradient was always 0.
                check(self.eps, "--adam-eps", |v| v > 0.0, "> 0")
            }
            OptimizerKind::Adafactor => {
                check(a.eps_sq, "adafactor.eps_sq", |v| v >= 0.0, "≥ 0")?;
                check(a.eps_scale, "adafactor.eps_scale", |v| v >= 0.0, "≥ 0")?;
                check(
                    a.clip_threshold,
                    "adafactor.clip_threshold",
                    |v| v > 0.0,
                    "> 0",
                )?;
                check(a.decay_rate, "adafactor.decay_rate", |v| v < 0.0, "< 0")?;
                if let Some(beta1) = a.beta1 {
                    check_beta(beta1, "adafactor.beta1")?;
                }
                if a.warmup_init && !a.relative_step {
                    return Err(TrainError::setting(
                        "adafactor.warmup_init",
                        "it needs adafactor.relative_step",
                    ));
                }
                Ok(())
            }
        }
    }
}

fn check(value: f32, name: &str, ok: impl Fn(f32) -> bool, want: &str) -> Result<()> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(TrainError::setting(
            name,
            format!("{value} is not a finite number {want}"),
        ))
    }
}

fn check_beta(value: f32, name: &str) -> Result<()> {
    check(value, name, |v| (0.0..1.0).contains(&v), "in [0, 1)")
}

/// The state of one optimizer kind.
#[derive(Debug, Clone, PartialEq)]
enum State {
    AdamW(adamw::AdamW),
    Adafactor(adafactor::Adafactor),
}

/// An optimizer with its state for one parameter layout: for every value,
/// or for one rank's shard of them (ZeRO-1, [`Optimizer::keep_shard`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    entries: Vec<ParamEntry>,
    steps: u64,
    state: State,
    /// The flat positions of the values it updates.
    shard: Range<usize>,
}

/// How `n` ranks share the optimizer state of `entries` under ZeRO-1: one
/// contiguous range of flat positions per rank, in rank order, covering
/// the store. Each range is as near `1/n` of the values as cuts allow:
/// AdamW, elementwise, is cut between pieces of at most 2^16 values;
/// Adafactor, whose row and column statistics need whole tensors, between
/// parameters. Either way a range is a run of whole pieces, so the
/// gradient norm's partial sums ([`clip_partials`]) are the same however
/// the store is shared. A range may be empty (more ranks than cuts).
pub fn shard_ranges(kind: OptimizerKind, entries: &[ParamEntry], n: usize) -> Vec<Range<usize>> {
    let cuts: Vec<usize> = match kind {
        OptimizerKind::AdamW => pieces::pieces(entries)
            .iter()
            .map(|p| p.range.end)
            .collect(),
        OptimizerKind::Adafactor => pieces::entry_ranges(entries).map(|r| r.end).collect(),
    };
    let total = cuts.last().copied().unwrap_or(0);
    let n = n.max(1);
    let mut bounds = vec![0];
    for r in 1..n {
        let target = total * r / n;
        let at = cuts[cuts.partition_point(|&c| c < target).min(cuts.len() - 1)];
        bounds.push(at.max(bounds[r - 1]));
    }
    bounds.push(total);
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

impl Optimizer {
    /// A fresh optimizer (zero state, step 0) for parameters laid out like
    /// `params`; fails with the flag's name when the config is invalid.
    pub fn new(config: &OptimizerConfig, params: &ParamStore) -> Result<Self> {
        config.validate()?;
        Ok(Self::fresh(config, params.entries()))
    }

    /// Zero state at step 0 for every value of a store laid out as `entries`.
    fn fresh(config: &OptimizerConfig, entries: &[ParamEntry]) -> Self {
        let state = match config.kind {
            OptimizerKind::AdamW => State::AdamW(adamw::AdamW::new(entries)),
            OptimizerKind::Adafactor => {
                State::Adafactor(adafactor::Adafactor::new(&config.adafactor, entries))
            }
        };
        Optimizer {
            config: config.clone(),
            entries: entries.to_vec(),
            steps: 0,
            state,
            shard: 0..entries.iter().map(ParamEntry::numel).sum(),
        }
    }

    /// Keeps the state of `range` only (one of [`shard_ranges`] for this
    /// optimizer's kind): the rank that owns it then updates those values
    /// and no others.
    ///
    /// # Panics
    /// If `range` is not within the values this optimizer holds.
    pub fn keep_shard(&mut self, range: Range<usize>) {
        assert!(
            self.shard.start <= range.start && range.end <= self.shard.end,
            "a shard within the optimizer's values"
        );
        match &mut self.state {
            State::AdamW(s) => s.keep_shard(range.clone()),
            State::Adafactor(s) => s.keep_shard(&self.entries, range.clone()),
        }
        self.shard = range;
    }

    /// The flat positions of the values this optimizer updates.
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }

    /// Every rank's shard gathered into one whole optimizer on rank 0 (to
    /// save it); `None` on the other ranks. Each rank's state is sent as
    /// the kind's streams of values, whose rank-order concatenation is the
    /// whole state's.
    pub fn gather(&self, comm: Comm) -> Option<Optimizer> {
        let streams: Vec<Vec<f32>> = self.streams().iter().map(|s| s.concat()).collect();
        let mut whole = comm.is_root().then(|| Optimizer {
            steps: self.steps,
            ..Self::fresh(&self.config, &self.entries)
        });
        for (i, mine) in streams.iter().enumerate() {
            let gathered = comm.gather_to_root(mine);
            if let (Some(whole), Some(values)) = (whole.as_mut(), gathered) {
                let mut rest = values.as_slice();
                for segment in whole.streams_mut().swap_remove(i) {
                    let (head, tail) = rest.split_at(segment.len());
                    segment.copy_from_slice(head);
                    rest = tail;
                }
            }
        }
        whole
    }

    fn streams(&self) -> Vec<Vec<&[f32]>> {
        match &self.state {
            State::AdamW(s) => s.streams(),
            State::Adafactor(s) => s.streams(),
        }
    }

    fn streams_mut(&mut self) -> Vec<Vec<&mut [f32]>> {
        match &mut self.state {
            State::AdamW(s) => s.streams_mut(),
            State::Adafactor(s) => s.streams_mut(),
        }
    }

    /// One update of `params` from `grads` (same layout) at learning rate
    /// `lr`; counts the step. The update is computed in f32 whatever the
    /// weights' type; weights stored in bf16 or fp16 take it with
    /// stochastic rounding, fresh noise every step
    /// ([`tessera_tensor::round_stochastic`]), so updates far smaller than
    /// a weight's 16-bit spacing still move it on average.
    ///
    /// # Panics
    /// If `params` or `grads` are not laid out like the store the optimizer
    /// was made for (a programming error, not a user one).
    pub fn step(&mut self, params: &mut ParamStore, grads: &ParamStore, lr: f32) {
        self.update(params, grads, lr, 1.0);
    }

    /// [`Optimizer::step`] from the gradients times `grad_scale` (the
    /// coefficient of [`clip`]), bit for bit what scaling them in place
    /// first gives. AdamW multiplies each gradient as its update pass reads
    /// it, which saves a pass over the gradients; Adafactor, which reads
    /// them several times, has them scaled in place first.
    pub fn step_scaled(
        &mut self,
        params: &mut ParamStore,
        grads: &mut ParamStore,
        lr: f32,
        grad_scale: f32,
    ) {
        match self.state {
            State::AdamW(_) => self.update(params, grads, lr, grad_scale),
            State::Adafactor(_) => {
                scale_gradients(&mut grads.flat_mut()[self.shard.clone()], grad_scale);
                self.update(params, grads, lr, 1.0);
            }
        }
    }

    fn update(&mut self, params: &mut ParamStore, grads: &ParamStore, lr: f32, grad_scale: f32) {
        assert!(
            params.entries() == self.entries.as_slice()
                && grads.entries() == self.entries.as_slice(),
            "the optimizer was made for another parameter layout"
        );
        self.steps += 1;
        let (config, t) = (&self.config, self.steps);
        let key = config.rounding_seed.rotate_left(32) ^ t;
        tessera_tensor::install(|| match &mut self.state {
            State::AdamW(s) => s.step(
                &adamw::Hyper::new(config, lr, t, grad_scale),
                params,
                grads,
                key,
            ),
            State::Adafactor(s) => {
                s.step(&adafactor::Hyper::new(config, lr, t), params, grads, key)
            }
        });
    }

    /// Optimizer steps taken so far (including those before a save/load).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The settings this optimizer was made with.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Writes the state to `out` as one safetensors file of f32 tensors
    /// (a checkpoint writes it into its folder; see [`Optimizer::load`]).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let tensors = match &self.state {
            State::AdamW(s) => s.tensors(&self.entries),
            State::Adafactor(s) => s.tensors(&self.entries),
        };
        state_file::write(out, self.config.kind, self.steps, &tensors)
    }

    /// Reads a state saved by [`Optimizer::write_to`] for parameters laid out
    /// like `params` with this `config`. A file of another optimizer kind,
    /// with missing, extra or misshapen tensors, or not valid safetensors,
    /// is an error naming the file and the tensor.
    pub fn load(config: &OptimizerConfig, params: &ParamStore, path: &Path) -> Result<Self> {
        let mut opt = Optimizer::new(config, params)?;
        let entries = &opt.entries;
        let mut tensors = match &mut opt.state {
            State::AdamW(s) => s.tensors_mut(entries),
            State::Adafactor(s) => s.tensors_mut(entries),
        };
        opt.steps = state_file::load(path, config.kind, &mut tensors)?;
        Ok(opt)
    }
}

/// One tensor of optimizer state: its saved name, shape and values.
#[derive(Debug)]
struct StateTensor<T> {
    name: String,
    shape: Vec<usize>,
    data: T,
}

#[cfg(test)]
pub(crate) mod test_support {
    use tessera_t5::{ParamStore, T5Config, T5Model};

    /// A tiny gated, untied T5 (about 2 000 values, every kind of tensor).
    pub(crate) fn tiny_config() -> T5Config {
        T5Config::tiny_with(|c| {
            (c.vocab_size, c.d_model, c.d_ff) = (40, 8, 12);
            c.relative_attention_num_buckets = 4;
        })
        .expect("a valid tiny config")
    }

    /// The randomly initialised parameters of [`tiny_config`].
    pub(crate) fn tiny_params(seed: u64) -> ParamStore {
        T5Model::init(tiny_config(), seed).params().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{tiny_config, tiny_params};
    use super::*;
    use tessera_t5::T5Model;
    use tessera_tensor::DType;

    fn adamw(weight_decay: f32) -> OptimizerConfig {
        OptimizerConfig {
            weight_decay,
            ..OptimizerConfig::default()
        }
    }

    /// Gradients that differ per step and per element.
    fn grads_for(params: &ParamStore, step: u64) -> ParamStore {
        let mut g = params.zeros_like();
        for (i, v) in g.flat_mut().iter_mut().enumerate() {
            *v = ((i as f32 * 0.37 + step as f32).sin()) * 10f32.powi(-((i % 7) as i32));
        }
        g
    }

    /// `steps` steps of a fresh optimizer on the tiny model.
    fn run(config: &OptimizerConfig, steps: u64) -> (ParamStore, Optimizer) {
        let mut params = tiny_params(7);
        let mut opt = Optimizer::new(config, &params).unwrap();
        for s in 0..steps {
            let g = grads_for(&params, s);
            opt.step(&mut params, &g, 1e-3);
        }
        (params, opt)
    }

    #[test]
    fn kinds_parse_and_print() {
        for kind in [OptimizerKind::AdamW, OptimizerKind::Adafactor] {
            assert_eq!(kind.to_string().parse::<OptimizerKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        let err = "sgd".parse::<OptimizerKind>().unwrap_err().to_string();
        assert!(err.contains("--optimizer") && err.contains("sgd"), "{err}");
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = OptimizerConfig::default();
        assert_eq!(
            (c.kind, c.beta1, c.beta2, c.eps, c.weight_decay),
            (OptimizerKind::AdamW, 0.9, 0.999, 1e-6, 0.0)
        );
        let parsed: OptimizerConfig = serde_json::from_str(
            r#"{"kind": "adamw", "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.0}"#,
        )
        .unwrap();
        assert_eq!(parsed, c);
        let bad = [
            (
                OptimizerConfig {
                    eps: -1.0,
                    ..c.clone()
                },
                "--adam-eps",
            ),
            (
                OptimizerConfig {
                    weight_decay: f32::NAN,
                    ..c.clone()
                },
                "--weight-decay",
            ),
            (
                OptimizerConfig {
                    beta1: 1.0,
                    ..c.clone()
                },
                "--adam-beta1",
            ),
            (
                OptimizerConfig {
                    beta2: -0.1,
                    ..c.clone()
                },
                "--adam-beta2",
            ),
        ];
        for (config, flag) in bad {
            let err = Optimizer::new(&config, &tiny_params(0))
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn a_scaled_step_equals_clipping_in_place_then_stepping() {
        let start = tiny_params(4);
        for optimizer in [adamw(0.01), adafactor(Some(0.9))] {
            let (mut a, mut b) = (start.clone(), start.clone());
            let (mut fused, mut plain) = (
                Optimizer::new(&optimizer, &a).unwrap(),
                Optimizer::new(&optimizer, &b).unwrap(),
            );
            for s in 0..3 {
                let mut g = grads_for(&a, s);
                let c = clip(&g, 0.05);
                assert!(c.scale < 1.0, "the test clips");
                fused.step_scaled(&mut a, &mut g, 1e-3, c.scale);
                let mut h = grads_for(&b, s);
                assert_eq!(clip_grad_norm(&mut h, 0.05), c.norm);
                plain.step(&mut b, &h, 1e-3);
            }
            assert!(a == b, "{:?}: the scaled step differs", optimizer.kind);
            assert!(
                fused == plain,
                "{:?}: the optimizer states differ",
                optimizer.kind
            );
        }
    }

    #[test]
    fn adamw_decays_everything_but_layer_norms() {
        let params = tiny_params(3);
        let mut decayed = params.clone();
        let mut opt = Optimizer::new(&adamw(0.5), &params).unwrap();
        // Zero gradients: the moments stay 0, so only the decay moves weights.
        opt.step(&mut decayed, &params.zeros_like(), 0.1);
        let factor = (1.0 - 0.1f64 * 0.5) as f32;
        for ((e, before), (_, after)) in params.iter().zip(decayed.iter()) {
            let want: Vec<f32> = if e.is_layer_norm() {
                before.to_vec()
            } else {
                before.iter().map(|v| v * factor).collect()
            };
            assert_eq!(after, want.as_slice(), "{}", e.name);
        }
    }

    fn adafactor(beta1: Option<f32>) -> OptimizerConfig {
        let mut config = OptimizerConfig {
            kind: OptimizerKind::Adafactor,
            weight_decay: 0.01,
            ..OptimizerConfig::default()
        };
        config.adafactor.beta1 = beta1;
        config
    }

    #[test]
    fn steps_are_identical_for_any_thread_count() {
        // Wide enough that the embeddings span several pieces and column blocks.
        let mut config = tiny_config();
        (config.vocab_size, config.d_model) = (2_000, 300);
        let start = T5Model::init(config, 5).params().clone();
        let run_with = |threads, optimizer: &OptimizerConfig, dtype| {
            tessera_tensor::set_num_threads(threads).unwrap();
            let mut out = start.converted(dtype);
            let mut opt = Optimizer::new(optimizer, &out).unwrap();
            for s in 0..3 {
                let g = grads_for(&out, s);
                opt.step(&mut out, &g, 1e-3);
            }
            let mut g = grads_for(&out, 9);
            let norm = clip_grad_norm(&mut g, 0.5);
            (out, opt, g, norm)
        };
        for optimizer in [adamw(0.01), adafactor(Some(0.9))] {
            for dtype in [DType::F32, DType::BF16] {
                let one = run_with(1, &optimizer, dtype);
                let three = run_with(3, &optimizer, dtype);
                assert!(
                    one == three,
                    "{:?} on {dtype} weights depends on the thread count",
                    optimizer.kind
                );
            }
        }
    }

    /// `src`'s values in `range` copied into `dst` (same layout and type).
    fn copy_range(dst: &mut ParamStore, mut src: ParamStore, range: Range<usize>) {
        use tessera_t5::FlatMut;
        match (dst.flat_values_mut(), src.flat_values_mut()) {
            (FlatMut::F32(d), FlatMut::F32(s)) => d[range.clone()].copy_from_slice(&s[range]),
            (FlatMut::Bf16(d), FlatMut::Bf16(s)) => d[range.clone()].copy_from_slice(&s[range]),
            _ => panic!("the stores differ in type"),
        }
    }

    #[test]
    fn shards_update_their_values_as_the_whole_optimizer_does() {
        let mut config = tiny_config();
        (config.vocab_size, config.d_model) = (2_000, 300);
        let start = T5Model::init(config, 5).params().clone();
        for optimizer in [adamw(0.01), adafactor(Some(0.9))] {
            for dtype in [DType::F32, DType::BF16] {
                let mut whole = start.converted(dtype);
                let mut one = Optimizer::new(&optimizer, &whole).unwrap();
                for n in [2, 3] {
                    let ranges = shard_ranges(optimizer.kind, whole.entries(), n);
                    assert_eq!(ranges.first().unwrap().start, 0);
                    assert_eq!(ranges.last().unwrap().end, whole.len());
                    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                    if optimizer.kind == OptimizerKind::Adafactor {
                        let ends: Vec<usize> = pieces::entry_ranges(whole.entries())
                            .map(|r| r.end)
                            .collect();
                        assert!(ranges.iter().all(|r| r.end == 0 || ends.contains(&r.end)));
                    }
                    let mut split = start.converted(dtype);
                    let mut shards: Vec<Optimizer> = ranges
                        .iter()
                        .map(|r| {
                            let mut o = Optimizer::new(&optimizer, &split).unwrap();
                            o.keep_shard(r.clone());
                            o
                        })
                        .collect();
                    let mut whole_n = start.converted(dtype);
                    let mut one_n = Optimizer::new(&optimizer, &whole_n).unwrap();
                    for s in 0..3 {
                        let g = grads_for(&whole_n, s);
                        one_n.step(&mut whole_n, &g, 1e-3);
                        let before = split.clone();
                        for (shard, range) in shards.iter_mut().zip(&ranges) {
                            let mut mine = before.clone();
                            shard.step(&mut mine, &g, 1e-3);
                            copy_range(&mut split, mine, range.clone());
                        }
                    }
                    let what = format!("{:?} on {dtype} in {n} shards", optimizer.kind);
                    assert!(split == whole_n, "{what}: weights differ");
                    for (i, stream) in one_n.streams().iter().enumerate() {
                        let joined: Vec<f32> = shards
                            .iter()
                            .flat_map(|o| o.streams()[i].concat())
                            .collect();
                        assert!(stream.concat() == joined, "{what}: state differs");
                    }
                }
                // The whole optimizer is its own single shard.
                let g = grads_for(&whole, 0);
                one.step(&mut whole, &g, 1e-3);
                assert_eq!(one.gather(Comm::SINGLE), Some(one.clone()));
            }
        }
    }

    #[test]
    fn sixteen_bit_weights_take_updates_by_stochastic_rounding() {
        for config in [adamw(0.01), adafactor(None)] {
            let narrow = tiny_params(4).converted(DType::BF16);
            let wide = narrow.converted(DType::F32);
            let g = grads_for(&wide, 0);
            let step = |mut p: ParamStore| {
                let mut opt = Optimizer::new(&config, &p).unwrap();
                // Small enough that most updates are below half a bf16 spacing.
                opt.step(&mut p, &g, 2e-4);
                p
            };
            let (exact, rounded) = (step(wide.clone()), step(narrow.clone()));
            assert_eq!(rounded.dtype(), DType::BF16);
            let rounded = rounded.converted(DType::F32);
            // How much of the f32 update (x − before) each rounding keeps,
            // projected on it: about all of it stochastically, in expectation;
            // round-to-nearest drops every update below half a spacing.
            let (mut err, mut var) = (0.0, 0.0);
            let (mut kept, mut kept_nearest, mut total) = (0.0, 0.0, 0.0);
            for ((&x, &y), &before) in exact.flat().iter().zip(rounded.flat()).zip(wide.flat()) {
                let low = f32::from_bits(x.to_bits() & 0xffff_0000);
                let high = f32::from_bits((x.to_bits() & 0xffff_0000) + 0x1_0000);
                assert!(y == low || (x != low && y == high), "{x:e} became {y:e}");
                err += f64::from(y - x);
                var += f64::from(high - low).powi(2) / 4.0;
                let update = f64::from(x - before);
                let nearest = tessera_tensor::bf16::from_f32(x).to_f32();
                kept += f64::from(y - before) * update;
                kept_nearest += f64::from(nearest - before) * update;
                total += update * update;
            }
            let kind = config.kind;
            assert!(err.abs() < 5.0 * var.sqrt(), "{kind:?}: biased by {err:e}");
            let (kept, kept_nearest) = (kept / total, kept_nearest / total);
            eprintln!(
                "{kind:?}: stochastic keeps {kept:.3} of the update, nearest {kept_nearest:.3}"
            );
            assert!((0.8..1.2).contains(&kept), "{kind:?}: kept {kept}");
            assert!(
                kept_nearest < 0.5 * kept,
                "{kind:?}: nearest kept {kept_nearest}"
            );
        }
    }

    fn save(opt: &Optimizer, path: &Path) {
        opt.write_to(&mut std::fs::File::create(path).unwrap())
            .unwrap();
    }

    #[test]
    fn save_then_load_resumes_bit_for_bit() {
        for config in [adamw(0.01), adafactor(None), adafactor(Some(0.9))] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("optimizer.safetensors");
            let (mut params, mut opt) = run(&config, 2);
            save(&opt, &path);
            let mut loaded = Optimizer::load(&config, &params, &path).unwrap();
            assert_eq!(loaded, opt);
            assert_eq!(loaded.steps(), 2);
            let mut resumed = params.clone();
            let g = grads_for(&params, 2);
            opt.step(&mut params, &g, 1e-3);
            loaded.step(&mut resumed, &g, 1e-3);
            assert!(params == resumed, "{config:?}");
            let files = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, 1, "no temporary file left");
        }
    }

    #[test]
    fn adafactor_state_is_factored_for_matrices_only() {
        let (params, opt) = run(&adafactor(Some(0.9)), 1);
        let file = tempfile::NamedTempFile::new().unwrap();
        save(&opt, file.path());
        let st = tessera_t5::safetensors::SafeTensors::open(file.path()).unwrap();
        assert_eq!(st.metadata()["optimizer"], "adafactor");
        assert_eq!(st.metadata()["step"], "1");
        let shape = |n: &str| st.info(n).unwrap().shape.clone();
        assert_eq!(shape("shared.weight.exp_avg_sq_row"), [40]);
        assert_eq!(shape("shared.weight.exp_avg_sq_col"), [8]);
        assert_eq!(shape("shared.weight.exp_avg"), [40, 8]);
        assert_eq!(shape("encoder.final_layer_norm.weight.exp_avg_sq"), [8]);
        let per_param = |e: &ParamEntry| if e.shape.len() >= 2 { 3 } else { 2 };
        let want: usize = params.entries().iter().map(per_param).sum();
        assert_eq!(st.names().count(), want);
    }

    #[test]
    fn adafactor_settings_are_validated() {
        let base = adafactor(None);
        let with = |f: fn(&mut AdafactorConfig)| {
            let mut c = base.clone();
            f(&mut c.adafactor);
            c
        };
        let bad = [
            (with(|a| a.clip_threshold = 0.0), "adafactor.clip_threshold"),
            (with(|a| a.decay_rate = 0.5), "adafactor.decay_rate"),
            (with(|a| a.eps_sq = f32::INFINITY), "adafactor.eps_sq"),
            (with(|a| a.eps_scale = -1.0), "adafactor.eps_scale"),
            (with(|a| a.beta1 = Some(1.5)), "adafactor.beta1"),
            (with(|a| a.warmup_init = true), "adafactor.warmup_init"),
        ];
        for (config, key) in bad {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        // AdamW's own settings do not matter to Adafactor.
        let mut c = base.clone();
        c.eps = -1.0;
        assert!(c.validate().is_ok());
        let parsed: OptimizerConfig = serde_json::from_str(
            r#"{"kind": "adafactor", "beta1": 0.9, "beta2": 0.999, "eps": 1e-6,
                "weight_decay": 0.01, "adafactor": {"beta1": 0.9}}"#,
        )
        .unwrap();
        assert_eq!(parsed.adafactor.beta1, Some(0.9));
        let partial: OptimizerConfig = serde_json::from_str(r#"{"weight_decay": 0.01}"#).unwrap();
        assert_eq!(partial, adamw(0.01));
        assert_eq!(parsed.adafactor.decay_rate, -0.8);
        assert!(parsed.adafactor.scale_parameter && !parsed.adafactor.relative_step);
    }

    #[test]
    fn mismatched_or_corrupt_state_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let config = adamw(0.0);
        let (params, opt) = run(&config, 1);
        save(&opt, &path);
        let err = |params: &ParamStore, path: &Path| {
            Optimizer::load(&config, params, path)
                .unwrap_err()
                .to_string()
        };
        let mut wider = tiny_config();
        wider.d_ff = 16;
        let e = err(&T5Model::zeros(wider).params().clone(), &path);
        assert!(
            e.contains("optimizer.safetensors")
                && e.contains("wi_0.weight.exp_avg")
                && e.contains("[16, 8]"),
            "{e}"
        );
        let mut tied = tiny_config();
        tied.tie_word_embeddings = true;
        let e = err(&T5Model::zeros(tied).params().clone(), &path);
        assert!(
            e.contains("optimizer.safetensors") && e.contains("lm_head.weight.exp_avg"),
            "{e}"
        );
        let e = Optimizer::load(&adafactor(None), &params, &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer.safetensors") && e.contains("saved by adamw, not adafactor"),
            "{e}"
        );
        let bytes = std::fs::read(&path).unwrap();
        let truncated = dir.path().join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 4]).unwrap();
        let e = err(&params, &truncated);
        assert!(
            e.contains("truncated.safetensors") && e.contains("tensor"),
            "{e}"
        );
        let e = err(&params, &dir.path().join("absent.safetensors"));
        assert!(e.contains("absent.safetensors"), "{e}");
        let mut poisoned = bytes.clone();
        let at = poisoned.len() - 4;
        poisoned[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        let nan = dir.path().join("nan.safetensors");
        std::fs::write(&nan, &poisoned).unwrap();
        let e = err(&params, &nan);
        assert!(
            e.contains("nan.safetensors") && e.contains("NaN at element"),
            "{e}"
        );
    }
}

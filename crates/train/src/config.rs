//! The run configuration of `cargo xtask train`: built-in recipes, a TOML
//! file, and command-line flags, merged in that order.
//!
//! Every field of [`RunConfig`] is a TOML key and a flag of the same name
//! (`max_grad_norm` ↔ `--max-grad-norm`). Layers are merged as TOML tables
//! before one typed decode, so a flag given on the command line always wins
//! over the file, the file over the recipe, and an unknown key in any layer
//! is an error naming it.

use crate::optim::{loss_scale, LossScaler, OptimizerConfig, OptimizerKind};
use crate::schedule::Schedule;
use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tessera_t5::{LoraConfig, LoraError, Precision};

/// The learning-rate schedule families a run can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The peak learning rate from the first step.
    Constant,
    /// Linear warmup from `warmup_start_lr`, then constant (Graphcore's recipe).
    WarmupConstant,
    /// Linear warmup from 0, then linear decay to 0 at the last step.
    LinearDecay,
    /// Linear warmup, then `lr · sqrt(warmup / step)` (T5's original schedule).
    InverseSqrt,
}

/// Keys earlier versions of the configuration had, and why they went.
/// A checkpoint written with one resumes (the key is dropped on reading,
/// [`RunConfig::drop_retired`]); a configuration that sets one is refused.
pub const RETIRED_KEYS: [(&str, &str); 1] = [(
    "padding",
    "batches are packed and every pass computes on real tokens only, so there is nothing to pad",
)];

/// Everything that defines a training run. See the module docs for how it is assembled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The built-in recipe the other values started from (`quickstart`, `mnli`, `mnli-xl`).
    pub recipe: String,
    /// A model folder, a preset name (initialised from `seed`) or a Hugging Face Hub id.
    pub model: String,
    /// A `tokenizer.json`; by default the model folder's, or tessera's own for the tiny preset.
    pub tokenizer: Option<PathBuf>,
    /// The GLUE task (`mnli`, …).
    pub task: String,
    /// Training data: a file, a GLUE/Hugging Face folder, or `nli-synthetic`.
    pub train_file: String,
    /// Validation data; by default the train source's validation split
    /// (`validation_mismatched` for MNLI) when the train source is a folder or `nli-synthetic`.
    pub eval_file: Option<String>,
    /// Optimizer steps.
    pub steps: u64,
    /// Rows per micro-batch (one forward/backward).
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the global batch is `batch_size × grad_accum`.
    pub grad_accum: usize,
    /// Tokens (source + target) per forward/backward pass at most, as
    /// fairseq's `max_tokens`: the global batch's rows, in order, are cut
    /// into passes that fill this budget (a longer row runs alone) instead
    /// of `grad_accum` passes of `batch_size` rows. The step is the same
    /// (the loss is still divided by the global batch's target tokens, and
    /// dropout masks follow each token); only the memory of a pass changes.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// `G`, the groups of the canonical gradient: the step's passes in `G`
    /// contiguous groups, each summed into its own buffer, the groups then
    /// added in order ([`crate::replicas`]). A run on `N` ranks (`N`
    /// dividing `G`) is bit-identical to one process with the same `G`. By
    /// default the number of ranks the run starts on (1 for one process);
    /// a checkpoint records the value used.
    #[serde(default)]
    pub grad_groups: Option<usize>,
    /// Peak learning rate.
    pub lr: f32,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Warmup steps of the schedule.
    pub warmup_steps: u64,
    /// Learning rate at step 0 of a `warmup_constant` warmup.
    pub warmup_start_lr: f32,
    /// `adamw` or `adafactor`.
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay (never applied to layer norms).
    pub weight_decay: f32,
    /// Adam's β₁.
    pub adam_beta1: f32,
    /// Adam's β₂.
    pub adam_beta2: f32,
    /// Adam's ε.
    pub adam_eps: f32,
    /// Global gradient-norm clipping threshold (0 = off).
    pub max_grad_norm: f32,
    /// Dropout probability; by default the model config's `dropout_rate`.
    pub dropout: Option<f32>,
    /// Shuffle the training rows every epoch (`--no-shuffle` keeps file order).
    pub shuffle: bool,
    /// Seed of the initialisation (presets), the shuffles and the dropout masks.
    pub seed: u64,
    /// Source tokens kept per example (`</s>` included).
    pub max_source_length: usize,
    /// Target tokens kept per example (`</s>` included).
    pub max_target_length: usize,
    /// Save a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep (the oldest are deleted).
    pub keep: usize,
    /// Evaluate every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Evaluate on the first this many validation rows only (0 = all).
    pub eval_examples: usize,
    /// Tokens generated per validation row.
    pub max_new_tokens: usize,
    /// Rows per generation batch in evaluation.
    pub eval_batch_size: usize,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Folder of checkpoints, metrics and the export.
    pub output: PathBuf,
    /// Number format of the matmuls: `f32`, `bf16` or `fp16` (master
    /// weights, optimizer state and gradients stay f32; fp16 adds dynamic
    /// loss scaling). See `tessera_t5::precision`.
    #[serde(default)]
    pub precision: Precision,
    /// fp16: the loss scale of the first step (a power of two;
    /// `torch.amp.GradScaler`'s `init_scale`).
    #[serde(default = "default_loss_scale_init")]
    pub loss_scale_init: f32,
    /// fp16: clean steps after which the loss scale doubles
    /// (`GradScaler`'s `growth_interval`).
    #[serde(default = "default_loss_scale_growth_interval")]
    pub loss_scale_growth_interval: u32,
    /// bf16/fp16 only: keep the weights themselves in the precision, with
    /// no f32 master copy, and apply every optimizer update with
    /// stochastic rounding (Graphcore's fp16 recipe; half the memory of
    /// the weights). Off: f32 master weights read in 16 bits.
    #[serde(default)]
    pub stochastic_rounding: bool,
    /// LoRA: the rank of the adapters; set, it turns LoRA on (only the
    /// adapters train; the base weights are frozen and kept in the run's
    /// precision, bf16/fp16 with no f32 copy). Unset: full fine-tuning.
    #[serde(default)]
    pub lora_rank: Option<usize>,
    /// LoRA: PEFT's `lora_alpha`; the adapters' output is scaled by
    /// `lora_alpha / lora_rank`.
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f32,
    /// LoRA: PEFT's `lora_dropout`, the drop probability of the adapters'
    /// input while training.
    #[serde(default)]
    pub lora_dropout: f32,
    /// LoRA: the modules to adapt, PEFT's names separated by commas
    /// (any of q, k, v, o, wi, wi_0, wi_1, wo; PEFT's default for T5 is q,v).
    #[serde(default = "default_lora_targets")]
    pub lora_targets: String,
}

fn default_lora_alpha() -> f32 {
    8.0
}

fn default_lora_targets() -> String {
    tessera_t5::lora::DEFAULT_LORA_TARGETS.join(",")
}

fn default_loss_scale_init() -> f32 {
    loss_scale::INITIAL_SCALE
}

fn default_loss_scale_growth_interval() -> u32 {
    loss_scale::GROWTH_INTERVAL
}

/// Names of the built-in recipes.
pub const RECIPES: [&str; 3] = ["quickstart", "mnli", "mnli-xl"];

impl RunConfig {
    /// Removes [`RETIRED_KEYS`] from a configuration an earlier version
    /// saved (in `trainer_state.json`), so its checkpoints still resume:
    /// none of them changed a step's result.
    pub fn drop_retired(config: &mut serde_json::Map<String, serde_json::Value>) {
        for (key, _) in RETIRED_KEYS {
            config.remove(key);
        }
    }

    /// The built-in recipe `name`.
    ///
    /// - `quickstart`: the offline demo — the tiny preset from a seed,
    ///   tessera's own tokenizer, `nli-synthetic`, 2,000 steps (about two
    ///   minutes on 2 cores).
    /// - `mnli`: Graphcore's Flan-T5 XXL fine-tuning config — global batch
    ///   128, 500 steps, AdamW (β 0.9/0.999, ε 1e-6), LR 5e-6 after a linear
    ///   warmup from 1e-7 over 10 steps, no weight decay, clipping at 1.0,
    ///   dropout 0, sources up to 512 tokens, evaluation with 5 new tokens on
    ///   `validation_mismatched`.
    /// - `mnli-xl`: the same for Flan-T5 XL, with weight decay 0.01.
    pub fn recipe(name: &str) -> Result<Self> {
        match name {
            "quickstart" => Ok(Self::quickstart()),
            "mnli" => Ok(Self::mnli("google/flan-t5-xxl", 0.0)),
            "mnli-xl" => Ok(Self {
                recipe: name.into(),
                ..Self::mnli("google/flan-t5-xl", 0.01)
            }),
            _ => Err(TrainError::setting(
                "--recipe",
                format!(
                    "unknown recipe {name:?}; the recipes are {}",
                    RECIPES.join(", ")
                ),
            )),
        }
    }

    fn quickstart() -> Self {
        RunConfig {
            recipe: "quickstart".into(),
            model: tessera_t5::TINY_PRESET.into(),
            tokenizer: None,
            task: "mnli".into(),
            train_file: tessera_glue::synthetic::NAME.into(),
            eval_file: None,
            steps: 2000,
            batch_size: 32,
            grad_accum: 1,
            max_tokens: None,
            grad_groups: None,
            lr: 1e-3,
            schedule: ScheduleKind::LinearDecay,
            warmup_steps: 50,
            warmup_start_lr: 0.0,
            optimizer: OptimizerKind::AdamW,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-6,
            max_grad_norm: 1.0,
            dropout: Some(0.0),
            shuffle: true,
            seed: 42,
            max_source_length: 128,
            max_target_length: 8,
            checkpoint_every: 500,
            keep: 2,
            eval_every: 500,
            eval_examples: 0,
            max_new_tokens: 5,
            eval_batch_size: 100,
            threads: 0,
            output: PathBuf::from("runs/quickstart"),
            precision: Precision::F32,
            loss_scale_init: loss_scale::INITIAL_SCALE,
            loss_scale_growth_interval: loss_scale::GROWTH_INTERVAL,
            stochastic_rounding: false,
            lora_rank: None,
            lora_alpha: default_lora_alpha(),
            lora_dropout: 0.0,
            lora_targets: default_lora_targets(),
        }
    }

    /// The seed job; what it shares with the quickstart (Adam's β and ε,
    /// clipping, dropout 0, seed, checkpoint retention) comes from there.
    fn mnli(model: &str, weight_decay: f32) -> Self {
        RunConfig {
            recipe: "mnli".into(),
            model: model.into(),
            train_file: "glue/MNLI".into(),
            steps: 500,
            batch_size: 4,
            grad_accum: 32,
            lr: 5e-6,
            schedule: ScheduleKind::WarmupConstant,
            warmup_steps: 10,
            warmup_start_lr: 1e-7,
            weight_decay,
            max_source_length: 512,
            checkpoint_every: 100,
            eval_every: 0,
            eval_batch_size: 64,
            output: PathBuf::from("runs/mnli"),
            ..Self::quickstart()
        }
    }

    /// Merges `layers` (TOML tables, lowest priority first) over the recipe
    /// they name (the last `recipe` key wins) and checks the result.
    ///
    /// Without a recipe, a run of the tiny preset (or of no named model) is
    /// the `quickstart`; a run of any other model gets the seed's `mnli`
    /// recipe (sources up to 512 tokens, LR 5e-6, global batch 128), not
    /// the quickstart's toy settings.
    pub fn resolve(layers: &[toml::Table]) -> Result<Self> {
        let last = |key: &str| -> Result<Option<String>> {
            layers
                .iter()
                .rev()
                .find_map(|t| t.get(key))
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| TrainError::setting(key, "must be a string"))
                })
                .transpose()
        };
        let recipe = match (last("recipe")?, last("model")?) {
            (Some(recipe), _) => recipe,
            (None, Some(model)) if model != tessera_t5::TINY_PRESET => "mnli".to_owned(),
            (None, _) => "quickstart".to_owned(),
        };
        Self::recipe(&recipe)?.overlay(layers)
    }

    /// This configuration with `layers` (lowest priority first) laid over it, checked.
    pub fn overlay(&self, layers: &[toml::Table]) -> Result<Self> {
        let mut merged = toml::Table::try_from(self)
            .map_err(|e| TrainError::setting("configuration", e.to_string()))?;
        for layer in layers {
            if let Some((key, why)) = RETIRED_KEYS.iter().find(|(k, _)| layer.contains_key(*k)) {
                return Err(TrainError::setting(
                    *key,
                    format!("is no longer a setting: {why}; remove it"),
                ));
            }
            merged.extend(layer.clone());
        }
        let config: RunConfig = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::setting("configuration", one_line(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML run configuration (one layer, not yet merged).
    pub fn read_file(path: &Path) -> Result<toml::Table> {
        let text =
            std::fs::read_to_string(path).map_err(|e| TrainError::io("cannot read", path, e))?;
        text.parse::<toml::Table>().map_err(|e| {
            TrainError::setting(
                "--config",
                format!("{} is not valid TOML: {}", path.display(), one_line(&e)),
            )
        })
    }

    /// Checks that the step's micro-batches cut into `groups` gradient
    /// groups evenly (any count does with `max_tokens`, whose passes vary).
    pub fn check_groups(&self, groups: usize) -> Result<()> {
        if groups == 0 {
            return Err(TrainError::setting("--grad-groups", "must be at least 1"));
        }
        if self.max_tokens.is_none() && !self.grad_accum.is_multiple_of(groups) {
            return Err(TrainError::setting(
                "--grad-accum",
                format!(
                    "{} micro-batches cannot be cut into {groups} gradient groups (--grad-groups, by default one per rank); use a multiple of {groups}",
                    self.grad_accum
                ),
            ));
        }
        Ok(())
    }

    /// Checks ranges and combinations, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--steps", self.steps as usize),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--max-source-length", self.max_source_length),
            ("--max-target-length", self.max_target_length),
            ("--keep", self.keep),
            ("--max-new-tokens", self.max_new_tokens),
            ("--eval-batch-size", self.eval_batch_size),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(TrainError::setting(*flag, "must be at least 1"));
        }
        if self.max_tokens == Some(0) {
            return Err(TrainError::setting("--max-tokens", "must be at least 1"));
        }
        if let Some(groups) = self.grad_groups {
            self.check_groups(groups)?;
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::setting(
                "--lr",
                format!("must be a positive number, got {}", self.lr),
            ));
        }
        if let Some(p) = self.dropout.filter(|p| !(0.0..1.0).contains(p)) {
            return Err(TrainError::setting(
                "--dropout",
                format!("must be in [0, 1), got {p}"),
            ));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(TrainError::setting(
                "--max-grad-norm",
                "must be 0 (off) or positive",
            ));
        }
        let init = self.loss_scale_init;
        if !(init.is_finite() && init > 0.0 && init.log2().fract() == 0.0) {
            return Err(TrainError::setting(
                "--loss-scale-init",
                format!("must be a positive power of two (so unscaling is exact), got {init}"),
            ));
        }
        if self.loss_scale_growth_interval == 0 {
            return Err(TrainError::setting(
                "--loss-scale-growth-interval",
                "must be at least 1",
            ));
        }
        if self.stochastic_rounding && self.precision == Precision::F32 {
            return Err(TrainError::setting(
                "--stochastic-rounding",
                "keeps the weights in 16 bits, so it needs --precision bf16 or fp16",
            ));
        }
        self.lora()?;
        self.schedule().validate()?;
        self.optimizer_config().validate()
    }

    /// The LoRA settings of this run (`None`: full fine-tuning), checked.
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        let Some(rank) = self.lora_rank else {
            return Ok(None);
        };
        let config = LoraConfig {
            rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self
                .lora_targets
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        };
        config.validate().map_err(|e| {
            let LoraError::Setting { setting, reason } = &e;
            TrainError::setting(lora_flag(setting), reason.clone())
        })?;
        if self.stochastic_rounding {
            return Err(TrainError::setting(
                "--stochastic-rounding",
                "updates the weights in 16 bits, but with LoRA the base is frozen (already kept in 16 bits) and the adapters stay f32",
            ));
        }
        Ok(Some(config))
    }

    /// A fresh fp16 loss scaler for this run, or `None` when the precision
    /// needs no loss scaling.
    pub fn loss_scaler(&self) -> Option<LossScaler> {
        self.precision
            .needs_loss_scaling()
            .then(|| LossScaler::new(self.loss_scale_init, self.loss_scale_growth_interval))
    }

    /// The optimizer settings of this run.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        OptimizerConfig {
            kind: self.optimizer,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
            rounding_seed: self.seed,
            ..OptimizerConfig::default()
        }
    }

    /// The learning-rate schedule of this run.
    pub fn schedule(&self) -> Schedule {
        let warmup_steps = self.warmup_steps;
        match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::WarmupConstant => Schedule::WarmupConstant {
                warmup_steps,
                start_lr: self.warmup_start_lr,
            },
            ScheduleKind::LinearDecay => Schedule::LinearDecay {
                warmup_steps,
                total_steps: self.steps,
            },
            ScheduleKind::InverseSqrt => Schedule::InverseSqrt { warmup_steps },
        }
    }

    /// Rows per optimizer step.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// The flag of a LoRA setting [`LoraError`] names.
fn lora_flag(setting: &str) -> &'static str {
    match setting {
        "rank" => "--lora-rank",
        "alpha" => "--lora-alpha",
        "dropout" => "--lora-dropout",
        _ => "--lora-targets",
    }
}

/// A multi-line parser message folded into one line.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn a_retired_key_is_refused_in_a_configuration_and_dropped_from_a_saved_one() {
        let err = RunConfig::resolve(&[table("padding = \"fixed\"\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("padding") && err.contains("no longer a setting"),
            "{err}"
        );
        let config = RunConfig::resolve(&[]).unwrap();
        let mut saved = serde_json::to_value(&config).unwrap();
        let map = saved.as_object_mut().unwrap();
        map.insert("padding".into(), "dynamic".into());
        assert!(serde_json::from_value::<RunConfig>(saved.clone()).is_err());
        RunConfig::drop_retired(saved.as_object_mut().unwrap());
        assert_eq!(serde_json::from_value::<RunConfig>(saved).unwrap(), config);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_recipe() {
        let file = table("recipe = \"mnli\"\nsteps = 20\nlr = 1e-4\n");
        let flags = table("lr = 3e-4\n");
        let c = RunConfig::resolve(&[file, flags]).unwrap();
        assert_eq!(c.recipe, "mnli");
        assert_eq!(c.steps, 20);
        assert_eq!(c.lr, 3e-4);
        assert_eq!(c.global_batch(), 128);
        assert_eq!(c.warmup_start_lr, 1e-7);
    }

    #[test]
    fn a_real_model_without_a_recipe_gets_the_seed_recipe() {
        let real = RunConfig::resolve(&[table("model = \"/models/flan-t5-small\"")]).unwrap();
        assert_eq!(
            (real.recipe.as_str(), real.max_source_length, real.lr),
            ("mnli", 512, 5e-6)
        );
        let tiny = RunConfig::resolve(&[table("steps = 300")]).unwrap();
        assert_eq!(tiny.recipe, "quickstart");
        let named = table("model = \"flan-t5-base\"\nrecipe = \"quickstart\"");
        assert_eq!(RunConfig::resolve(&[named]).unwrap().max_source_length, 128);
    }

    #[test]
    fn recipes_mirror_the_seed() {
        let xxl = RunConfig::recipe("mnli").unwrap();
        let xl = RunConfig::recipe("mnli-xl").unwrap();
        assert_eq!((xxl.weight_decay, xl.weight_decay), (0.0, 0.01));
        assert_eq!((xxl.steps, xxl.global_batch(), xxl.lr), (500, 128, 5e-6));
        assert_eq!(xl.recipe, "mnli-xl");
        for name in RECIPES {
            RunConfig::recipe(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = |t: &str| RunConfig::resolve(&[table(t)]).unwrap_err().to_string();
        assert!(err("stepz = 3").contains("stepz"), "{}", err("stepz = 3"));
        assert!(err("steps = \"many\"").contains("steps"));
        assert!(err("batch_size = 0").contains("--batch-size"));
        assert!(err("max_tokens = 0").contains("--max-tokens"));
        assert!(err("recipe = \"imagenet\"").contains("imagenet"));
        assert!(err("dropout = 1.5").contains("--dropout"));
        // Optimizer settings are checked with the rest, before anything loads.
        assert!(err("adam_eps = 0.0").contains("--adam-eps"));
        assert!(err("adam_beta1 = 1.0").contains("--adam-beta1"));
        assert!(err("adam_beta2 = -0.5").contains("--adam-beta2"));
        assert!(err("weight_decay = -0.01").contains("--weight-decay"));
        let f32_weights = err("stochastic_rounding = true");
        assert!(
            f32_weights.contains("--stochastic-rounding") && f32_weights.contains("bf16 or fp16"),
            "{f32_weights}"
        );
        let half = "stochastic_rounding = true\nprecision = \"bf16\"";
        assert!(RunConfig::resolve(&[table(half)]).is_ok());
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "steps = [").unwrap();
        let e = RunConfig::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("run.toml") && !e.contains('\n'), "{e}");
        let missing = RunConfig::read_file(&dir.path().join("nope.toml")).unwrap_err();
        assert!(missing.to_string().contains("nope.toml"));
    }
}

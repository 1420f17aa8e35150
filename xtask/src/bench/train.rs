//! `cargo xtask bench train`: the speed of whole AdamW fine-tuning steps.
//!
//! The same work as `fixtures/bench_train.py` (its PyTorch twin): a preset
//! initialised from a seed (or a model folder), rows of an MNLI file in
//! file order `batch-size` at a time (the twin pads each to its longest row),
//! mean token cross-entropy, clipping at 1.0, AdamW (lr 5e-6, ε 1e-6,
//! weight decay 0.01 except layer norms), dropout 0; 2 warm-up steps, then
//! `--steps` timed steps. Batches carry only real tokens; model FLOP
//! utilisation is the steps' useful FLOPs (`StepReport::flops`) per second
//! over the matmul suite's geometric mean in the same precision, measured
//! first in the same run.

use anyhow::Result;
use clap::Args as ClapArgs;
use serde::Serialize;
use tessera_t5::Precision;
use tessera_train::config::RunConfig;

/// Warm-up steps before timing (the first steps also fault in memory).
const WARMUP_STEPS: u64 = 2;

/// Flags of `cargo xtask bench train`.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    common: super::ModelArgs,
    /// MNLI rows: a file (TSV, JSONL, Parquet), a folder, or nli-synthetic.
    #[arg(long)]
    data: String,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 6)]
    steps: u64,
    /// Source tokens kept per row.
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// Optimizer: adamw or adafactor (factored state, for large models).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Keep the weights in the 16-bit precision, updated with stochastic
    /// rounding (no f32 master copy).
    #[arg(long)]
    stochastic_rounding: bool,
    /// LoRA of this rank (alpha 16, on --lora-targets) instead of full
    /// fine-tuning; the twin runs PEFT with the same settings.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA targets (PEFT module names, comma-separated).
    #[arg(long, default_value = "q,v")]
    lora_targets: String,
}

/// What `bench train` prints and writes.
#[derive(Serialize)]
struct Report {
    model: String,
    precision: Precision,
    optimizer: String,
    stochastic_rounding: bool,
    /// LoRA rank and targets (`None`: full fine-tuning).
    lora: Option<(usize, String)>,
    /// Parameters the step trains.
    trainable_parameters: usize,
    /// Peak resident memory of the process so far (Linux `VmHWM`), bytes.
    peak_rss: Option<u64>,
    parameters: usize,
    batch_size: usize,
    threads: usize,
    steps: u64,
    examples_per_s: f64,
    ms_per_step: f64,
    step_ms: Vec<f64>,
    losses: Vec<f32>,
    /// Real source tokens of each timed step.
    source_tokens: Vec<usize>,
    /// Real target tokens of each timed step.
    target_tokens: Vec<usize>,
    /// Source tokens per second over the timed steps.
    source_tokens_per_s: f64,
    /// Useful FLOPs of the timed steps (3× the forward's).
    flops: f64,
    /// The matmul peak (suite geometric mean in this precision), this run.
    peak_gflops: f64,
    /// Model FLOP utilisation over the timed steps: `flops / time / peak`.
    mfu: f64,
}

/// Runs `cargo xtask bench train`.
pub fn run(args: Args) -> Result<()> {
    tessera_tensor::set_num_threads(args.common.threads)?;
    let mut layer = toml::Table::new();
    layer.insert("model".into(), args.common.model.clone().into());
    layer.insert("precision".into(), args.common.precision.name().into());
    layer.insert("optimizer".into(), args.optimizer.clone().into());
    layer.insert(
        "stochastic_rounding".into(),
        args.stochastic_rounding.into(),
    );
    if let Some(rank) = args.lora_rank {
        layer.insert("lora_rank".into(), (rank as i64).into());
        layer.insert("lora_alpha".into(), 16.0.into());
        layer.insert("lora_targets".into(), args.lora_targets.clone().into());
    }
    if let Some(t) = &args.common.tokenizer {
        layer.insert("tokenizer".into(), t.display().to_string().into());
    }
    let settings = format!(
        "train_file = {:?}\nsteps = {}\nbatch_size = {}\ngrad_accum = 1\nshuffle = false\n\
         lr = 5e-6\nschedule = \"constant\"\nweight_decay = 0.01\nadam_eps = 1e-6\n\
         max_grad_norm = 1.0\ndropout = 0.0\nseed = {}\nmax_source_length = {}\n",
        args.data,
        WARMUP_STEPS + args.steps,
        args.common.batch_size,
        args.common.seed,
        args.max_source_length
    );
    let config = RunConfig::resolve(&[settings.parse()?, layer])?;
    let (train, _) = tessera_train::data::load(&config)?;
    let mut trainer = tessera_train::fresh_trainer(config, &train, None)?;
    let peak = super::matmul::peak_gflops(args.common.precision.dtype());
    let (mut step_ms, mut losses, mut timed) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..WARMUP_STEPS + args.steps {
        let r = trainer.train_step()?;
        losses.push(r.loss);
        if step >= WARMUP_STEPS {
            step_ms.push(r.seconds * 1e3);
            timed.push(r);
        }
    }
    let ms_per_step = step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64;
    let seconds: f64 = timed.iter().map(|r| r.seconds).sum();
    let flops: f64 = timed.iter().map(|r| r.flops).sum();
    let source_tokens: Vec<usize> = timed.iter().map(|r| r.source_tokens).collect();
    let report = Report {
        lora: args.lora_rank.map(|r| (r, args.lora_targets.clone())),
        trainable_parameters: trainer.model().trainable().len(),
        peak_rss: tessera_tensor::memory::peak_rss(),
        parameters: trainer.model().config().num_parameters(),
        model: args.common.model.clone(),
        precision: args.common.precision,
        optimizer: args.optimizer,
        stochastic_rounding: args.stochastic_rounding,
        batch_size: args.common.batch_size,
        threads: tessera_tensor::num_threads(),
        steps: args.steps,
        examples_per_s: args.common.batch_size as f64 / (ms_per_step / 1e3),
        ms_per_step,
        step_ms,
        losses,
        source_tokens_per_s: source_tokens.iter().sum::<usize>() as f64 / seconds,
        source_tokens,
        target_tokens: timed.iter().map(|r| r.target_tokens).collect(),
        flops,
        peak_gflops: peak,
        mfu: super::mfu(flops, seconds, peak),
    };
    super::publish(&report, args.common.json.as_deref())
}

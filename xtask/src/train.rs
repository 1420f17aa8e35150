//! `cargo xtask train`: fine-tune a T5 on a GLUE task, validate by
//! generation, checkpoint, and export a Hugging Face folder.
//!
//! With no arguments this is the offline quickstart (the `quickstart`
//! recipe). Every run-configuration key is also a flag here; the layers are
//! merged recipe < `--config FILE` < flags (see `tessera_train::config`).

use crate::output;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tessera_dist::Comm;
use tessera_t5::Precision;
use tessera_train::data::DataReport;
use tessera_train::eval::EvalReport;
use tessera_train::run_folder::{self, CHECKPOINTS};
use tessera_train::trainer::{Event, Outcome, Trainer};
use tessera_train::{checkpoint, config::RunConfig};

/// Flags of `cargo xtask train`. Unset flags leave the file's or recipe's value.
#[derive(ClapArgs, Serialize)]
pub struct Args {
    /// A TOML run configuration (keys as these flags, with `_` for `-`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue the run saved in this checkpoint folder
    /// (OUTPUT/checkpoints/step-N), or `latest`: the newest complete one in
    /// OUTPUT/checkpoints.
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Delete the run already in the output folder (its checkpoints,
    /// metrics and export) and start a fresh one there.
    #[arg(long)]
    #[serde(skip)]
    overwrite_output: bool,
    /// With --resume: continue even though the data, tokenizer or a
    /// setting that shapes the batches or the arithmetic differs from the
    /// checkpoint's (the run is then no longer an exact continuation; the
    /// changes are recorded in metrics.jsonl).
    #[arg(long)]
    #[serde(skip)]
    allow_config_change: bool,
    /// Write the final evaluation summary to this JSON file.
    #[arg(long)]
    #[serde(skip)]
    json: Option<PathBuf>,
    /// Keep the training rows in file order.
    #[arg(long)]
    #[serde(skip)]
    no_shuffle: bool,
    /// Built-in recipe: quickstart (default), mnli (Graphcore's XXL run), mnli-xl.
    #[arg(long)]
    recipe: Option<String>,
    /// Model folder, preset (e.g. flan-t5-small, tessera-tiny; initialised from --seed) or Hub id.
    #[arg(long)]
    model: Option<String>,
    /// tokenizer.json (default: the model folder's, or tessera's own for tessera-tiny).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// GLUE task.
    #[arg(long)]
    task: Option<String>,
    /// Training data: file, GLUE/HF folder, or nli-synthetic.
    #[arg(long)]
    train_file: Option<String>,
    /// Validation data (default: the training folder's validation split).
    #[arg(long)]
    eval_file: Option<String>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Rows per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Tokens (source + target) per forward/backward pass at most: the
    /// global batch is cut by tokens instead of rows (fairseq's max_tokens).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Gradient groups of the canonical gradient (default: the number of
    /// ranks): N ranks, N dividing it, give one process's bits exactly.
    #[arg(long)]
    grad_groups: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Schedule: constant, warmup_constant, linear_decay, inverse_sqrt.
    #[arg(long)]
    schedule: Option<String>,
    /// Warmup steps.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// First learning rate of a warmup_constant warmup.
    #[arg(long)]
    warmup_start_lr: Option<f32>,
    /// adamw or adafactor.
    #[arg(long)]
    optimizer: Option<String>,
    /// Decoupled weight decay (not on layer norms).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Adam β₁.
    #[arg(long)]
    adam_beta1: Option<f32>,
    /// Adam β₂.
    #[arg(long)]
    adam_beta2: Option<f32>,
    /// Adam ε.
    #[arg(long)]
    adam_eps: Option<f32>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Dropout probability (default: the model config's).
    #[arg(long)]
    dropout: Option<f32>,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Source tokens kept per example.
    #[arg(long)]
    max_source_length: Option<usize>,
    /// Target tokens kept per example.
    #[arg(long)]
    max_target_length: Option<usize>,
    /// Checkpoint every N steps (0 = at the end only).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long)]
    keep: Option<usize>,
    /// Evaluate every N steps (0 = at the end only).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Evaluate on the first N validation rows (0 = all).
    #[arg(long)]
    eval_examples: Option<usize>,
    /// Tokens generated per validation row.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Rows per evaluation batch.
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output folder: checkpoints/, metrics.jsonl, hf/.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Number format of the matmuls: f32, bf16 or fp16 (f32 master weights
    /// unless --stochastic-rounding; fp16 scales the loss). See
    /// docs/precision.md.
    #[arg(long)]
    precision: Option<Precision>,
    /// fp16: the first loss scale (a power of two).
    #[arg(long)]
    loss_scale_init: Option<f32>,
    /// fp16: clean steps after which the loss scale doubles.
    #[arg(long)]
    loss_scale_growth_interval: Option<u32>,
    /// With --precision bf16|fp16: keep the weights themselves in 16 bits
    /// (no f32 master copy) and apply updates with stochastic rounding.
    #[arg(long)]
    #[serde(skip)]
    stochastic_rounding: bool,
    /// LoRA: adapter rank; turns LoRA on (only the adapters train, the base
    /// is frozen and kept in --precision).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA: lora_alpha (the adapters' output is scaled by alpha / rank) [default: 8].
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// LoRA: dropout of the adapters' input (PEFT's lora_dropout) [default: 0].
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// LoRA: modules to adapt, comma-separated: q,k,v,o,wi,wi_0,wi_1,wo [default: q,v].
    #[arg(long)]
    lora_targets: Option<String>,
}

impl Args {
    /// The flags that were given, as a configuration layer.
    fn layer(&self) -> Result<toml::Table> {
        let mut table = toml::Table::try_from(self).context("cannot read the flags")?;
        if self.no_shuffle {
            table.insert("shuffle".into(), false.into());
        }
        if self.stochastic_rounding {
            table.insert("stochastic_rounding".into(), true.into());
        }
        Ok(table)
    }

    /// The run configuration and the checkpoint to resume: recipe <
    /// --config < flags, or, with --resume, the checkpoint's configuration
    /// < --config < flags. `--resume latest` looks in the output folder the
    /// recipe, file and flags name.
    fn run_config(&self) -> Result<(RunConfig, Option<PathBuf>)> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(RunConfig::read_file(path)?);
        }
        layers.push(self.layer()?);
        let fresh = RunConfig::resolve(&layers)?;
        let resume = match &self.resume {
            None => return Ok((fresh, None)),
            Some(dir) if dir.as_os_str() == "latest" => {
                let (dir, rejected) = checkpoint::latest(&fresh.output.join(CHECKPOINTS))?;
                for e in rejected {
                    eprintln!("skipping {e}");
                }
                dir
            }
            Some(dir) => dir.clone(),
        };
        let config = checkpoint::read_state(&resume)?.config.overlay(&layers)?;
        Ok((config, Some(resume)))
    }
}

/// What the Ctrl-C handler needs to say where the run stands.
#[derive(Default)]
struct Progress {
    step: AtomicU64,
    saved: Mutex<Option<PathBuf>>,
    presses: AtomicU32,
}

impl Progress {
    /// The first Ctrl-C (or SIGTERM/SIGHUP) asks the run to stop after its
    /// step and save; the second exits at once, naming the last complete
    /// checkpoint (a save in flight is abandoned: its staging folder is
    /// removed when the output folder is next used).
    fn interrupt(&self, stop: &AtomicBool) {
        let step = self.step.load(Ordering::SeqCst);
        if self.presses.fetch_add(1, Ordering::SeqCst) == 0 {
            stop.store(true, Ordering::SeqCst);
            eprintln!(
                "\nstopping: finishing step {}, then saving a checkpoint (press Ctrl-C again to stop at once)",
                step + 1
            );
            return;
        }
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        match saved.as_deref() {
            Some(dir) => eprintln!(
                "stopped at once after step {step}; the last complete checkpoint is {0}: resume with cargo xtask train --resume {0}",
                dir.display()
            ),
            None => eprintln!("stopped at once after step {step}; no checkpoint was saved"),
        }
        std::process::exit(130);
    }
}

/// The final summary, printed and (with --json) written.
#[derive(Serialize)]
struct Summary<'a> {
    steps: u64,
    seconds: f64,
    checkpoint: &'a Path,
    export: Option<&'a Path>,
    /// The run's report page, when it was written.
    report: Option<PathBuf>,
    eval: Option<&'a EvalReport>,
    /// What became of the training rows (as on `metrics.jsonl`'s first line).
    data: &'a DataReport,
}

/// Runs `cargo xtask train` on this rank of `comm` (one process outside
/// MPI): every rank trains; rank 0 alone prints, writes and exports.
pub fn run(args: Args, comm: Comm) -> Result<()> {
    let root = comm.is_root();
    let (config, resume) = args.run_config()?;
    if resume.is_none() && root {
        run_folder::check_fresh(&config.output, args.overwrite_output)?;
    }
    if config.threads > 0 {
        tessera_tensor::set_num_threads(config.threads)?;
    }
    let (train, eval) = tessera_train::data::load(&config)?;
    let mut trainer = match &resume {
        Some(dir) => Trainer::resume(dir, config, &train, eval, args.allow_config_change)?,
        None => tessera_train::fresh_trainer(config, &train, eval)?,
    };
    trainer.distribute(comm)?;
    if !root {
        return follow(&mut trainer);
    }
    for note in trainer.claim_output(args.overwrite_output)? {
        eprintln!("{note}");
    }
    let config = trainer.config().clone();
    describe(&trainer, resume.as_deref(), comm);
    let progress = Arc::new(Progress::default());
    progress.step.store(trainer.step(), Ordering::SeqCst);
    *progress.saved.lock().unwrap_or_else(|e| e.into_inner()) = resume;
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, handler) = (Arc::clone(&stop), Arc::clone(&progress));
    ctrlc::set_handler(move || handler.interrupt(&flag))
        .context("cannot install the Ctrl-C handler")?;
    let bar = progress_bar(trainer.step(), config.steps);
    let start = Instant::now();
    let mut last_eval = None;
    let outcome = trainer.run(&stop, |event| match event {
        Event::Step(r) => {
            progress.step.store(r.step, Ordering::SeqCst);
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.1} ex/s",
                r.loss, r.lr, r.examples_per_s
            ));
        }
        Event::Eval { step, report } => {
            bar.println(format!("step {step}: {}", eval_line(report)));
            last_eval = Some(report.clone());
        }
        Event::Checkpoint(dir) => {
            *progress.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
            bar.println(format!("saved {}", dir.display()));
        }
        Event::Report(page) => bar.println(format!("report: {}", page.display())),
        Event::ReportFailed(why) => {
            bar.println(format!("warning: the report page was not rewritten: {why}"))
        }
    })?;
    bar.finish_and_clear();
    let checkpoint = match outcome {
        Outcome::Interrupted(dir) => {
            eprintln!(
                "interrupted at step {}; resume with: cargo xtask train --resume {}",
                trainer.step(),
                dir.display()
            );
            std::process::exit(130);
        }
        Outcome::Finished(dir) => dir,
    };
    let export = config.output.join(run_folder::EXPORT);
    tessera_train::export::export(&checkpoint, &export)?;
    let summary = Summary {
        steps: trainer.step(),
        seconds: start.elapsed().as_secs_f64(),
        checkpoint: &checkpoint,
        export: Some(&export),
        report: Some(config.output.join(tessera_report::REPORT_FILE)).filter(|p| p.is_file()),
        eval: last_eval.as_ref(),
        data: trainer.data_report(),
    };
    print_summary(&summary);
    if let Some(path) = &args.json {
        output::write_json(path, &summary)?;
    }
    Ok(())
}

/// A rank other than 0: trains in step with rank 0, silently, and stops
/// when the run stops (a Ctrl-C reaches every rank; the ranks agree on the
/// step to stop after).
fn follow(trainer: &mut Trainer) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    match trainer.run(&stop, |_| {})? {
        Outcome::Interrupted(_) => std::process::exit(130),
        Outcome::Finished(_) => Ok(()),
    }
}

fn describe(trainer: &Trainer, resumed: Option<&Path>, comm: Comm) {
    let c = trainer.config();
    let model = trainer.model().config();
    let what = match resumed {
        Some(dir) => format!("resuming {} at step {}:", dir.display(), trainer.step()),
        None => "training".into(),
    };
    eprintln!(
        "{what} {} ({} parameters, {}) on {} ({}), recipe {}, global batch {} = {} x {}, {} steps, {} threads{} -> {}",
        c.model,
        model.num_parameters(),
        model.describe(),
        c.task,
        c.train_file,
        c.recipe,
        c.global_batch(),
        c.batch_size,
        c.grad_accum,
        c.steps,
        tessera_tensor::num_threads(),
        ranks(comm, c.grad_groups),
        c.output.display()
    );
    eprintln!("data: {}", trainer.data_report().summary());
    for change in trainer.config_changes() {
        eprintln!("--allow-config-change: {change}");
    }
}

/// `, 2 ranks (ZeRO-1), 4 gradient groups` under MPI; nothing alone.
fn ranks(comm: Comm, groups: Option<usize>) -> String {
    if comm.size() == 1 {
        return String::new();
    }
    let groups = groups.unwrap_or(comm.size());
    format!(
        " per rank, {} ranks (ZeRO-1), {groups} gradient groups",
        comm.size()
    )
}

fn progress_bar(position: u64, steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps).with_position(position);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} ETA {eta}",
    )
    .expect("the progress template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn print_summary(s: &Summary<'_>) {
    println!("trained {} steps in {:.1} s", s.steps, s.seconds);
    if let Some(eval) = s.eval {
        println!("validation: {}", eval_line(eval));
    }
    println!("checkpoint: {}", s.checkpoint.display());
    if let Some(export) = s.export {
        println!("Hugging Face export: {}", export.display());
    }
    if let Some(report) = &s.report {
        println!("report: {}", report.display());
    }
}

/// `accuracy 0.9130, loss 0.2101, 2 malformed of 1000`.
fn eval_line(report: &EvalReport) -> String {
    let mut parts = Vec::new();
    if let Some((name, value)) = report.headline() {
        parts.push(format!("{name} {value:.4}"));
    }
    if let Some(loss) = report.loss {
        parts.push(format!("loss {loss:.4}"));
    }
    let s = &report.summary;
    parts.push(format!("{} malformed of {}", s.malformed, s.examples));
    parts.join(", ")
}

//! `cargo xtask bench …`: measurements, printed as a table and optionally
//! written as JSON.

mod attention;
mod checkpoint;
mod eval;
mod matmul;
mod train;

use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_t5::Precision;

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// The f32/f16/bf16 matmul on the T5 shape suite, with baselines.
    Matmul(matmul::Args),
    /// Whole AdamW fine-tuning steps of a T5 on MNLI rows (PyTorch twin: fixtures/bench_train.py).
    Train(train::Args),
    /// Fused T5 attention against the unfused path, forward and backward.
    Attention(attention::Args),
    /// Evaluation by generation (loss + greedy answers) of a T5 on MNLI rows (PyTorch twin: fixtures/bench_eval.py).
    Eval(eval::Args),
    /// Saving and loading a model folder: seconds and peak memory beyond the model.
    Checkpoint(checkpoint::Args),
}

/// Runs one bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Matmul(args) => matmul::run(args),
        BenchCommand::Train(args) => train::run(args),
        BenchCommand::Attention(args) => attention::run(args),
        BenchCommand::Eval(args) => eval::run(args),
        BenchCommand::Checkpoint(args) => checkpoint::run(args),
    }
}

/// The flags `bench train` and `bench eval` share: which model, how it
/// runs, where the result goes.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A preset (flan-t5-small, …, tessera-tiny) initialised from --seed, or a model folder.
    #[arg(long)]
    model: String,
    /// tokenizer.json (default: the model folder's, or tessera's own for tessera-tiny).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Rows per step or batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of a preset's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number format of the matmuls: f32, bf16 or fp16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Also write the result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Prints `report` as JSON and, with `--json PATH`, writes it there too.
fn publish(report: &impl serde::Serialize, json: Option<&std::path::Path>) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    match json {
        Some(path) => crate::output::write_json(path, report),
        None => Ok(()),
    }
}

/// The JSON of a kernel suite (`bench matmul`, `bench attention`): the
/// thread count and one row per measurement, as the PyTorch twins write it.
#[derive(serde::Serialize)]
struct SuiteReport<R> {
    threads: usize,
    results: Vec<R>,
}

/// With `--json PATH`, writes a kernel suite's rows there.
fn write_suite<R: serde::Serialize>(
    json: Option<&std::path::Path>,
    threads: usize,
    results: Vec<R>,
) -> Result<()> {
    match json {
        Some(path) => crate::output::write_json(path, &SuiteReport { threads, results }),
        None => Ok(()),
    }
}

/// Model FLOP utilisation: `flops` useful FLOPs done in `seconds`, as a
/// fraction of a matmul peak of `peak_gflops`.
fn mfu(flops: f64, seconds: f64, peak_gflops: f64) -> f64 {
    flops / seconds / 1e9 / peak_gflops
}

/// A named implementation to time.
pub type Contender = (&'static str, Box<dyn FnMut()>);

/// Times each function: one warm-up call each, then rounds in which every
/// function runs back to back for a block of about a quarter of `min_time`
/// (at least one call), until `min_time` has passed for each and at least
/// three rounds ran. Returns each function's fastest call: the one least
/// disturbed by the rest of the machine, which is what a kernel comparison
/// wants.
///
/// Interleaving the blocks makes a passing load slow all contenders alike
/// instead of whichever happened to run then; running each contender back to
/// back inside a block lets it find its own data in the caches, as the
/// PyTorch scripts' timing loops do, instead of the data of the contender
/// before it.
pub fn best_times(min_time: Duration, fs: &mut [Contender]) -> Vec<Duration> {
    fs.iter_mut().for_each(|(_, f)| f());
    let block = min_time / 4;
    let mut best = vec![Duration::MAX; fs.len()];
    let mut spent = vec![Duration::ZERO; fs.len()];
    let mut rounds = 0;
    while rounds < 3 || spent.iter().any(|&s| s < min_time) {
        for (i, (_, f)) in fs.iter_mut().enumerate() {
            let mut in_block = Duration::ZERO;
            while in_block == Duration::ZERO || in_block < block {
                let t = Instant::now();
                f();
                let e = t.elapsed();
                best[i] = best[i].min(e);
                in_block += e;
            }
            spent[i] += in_block;
        }
        rounds += 1;
    }
    best
}

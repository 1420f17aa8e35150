//! `cargo xtask bench eval`: the speed of evaluation by generation.
//!
//! The same work as `fixtures/bench_eval.py` (its PyTorch twin, which runs
//! `model(..., labels=...)` for the loss and `generate()` as
//! `Seq2SeqTrainer` with `predict_with_generate` does): a preset initialised
//! from a seed (or a model folder), the first `--rows` rows of an MNLI file
//! in file order, `--batch-size` at a time, the teacher-forced loss of each
//! row's label word and the greedy generation of `--max-new-tokens` tokens.
//! tessera runs the encoder once per batch for both, on the real tokens
//! only. One untimed warm-up batch, then the whole set timed. Model FLOP
//! utilisation is the useful FLOPs ([`tessera_t5::T5Config::forward_flops`]
//! for the loss, `decoder_flops` for the generated tokens) per second over
//! the matmul suite's geometric mean in the same precision, measured first
//! in the same run.

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tessera_glue::{read_file, ReadOptions, Task};
use tessera_t5::Precision;
use tessera_train::eval::{EvalOptions, Evaluator};
use tessera_train::model_source::{load_model_and_tokenizer, ModelSpec};

/// Flags of `cargo xtask bench eval`.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    common: super::ModelArgs,
    /// An MNLI file (TSV, JSONL, Parquet).
    #[arg(long)]
    data: PathBuf,
    /// Rows evaluated (the first ones of the file).
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Tokens generated per row.
    #[arg(long, default_value_t = 5)]
    max_new_tokens: usize,
}

/// What `bench eval` prints and writes.
#[derive(Serialize)]
struct Report {
    model: String,
    precision: Precision,
    rows: usize,
    batch_size: usize,
    max_new_tokens: usize,
    threads: usize,
    source_tokens: usize,
    generated_tokens: usize,
    seconds: f64,
    examples_per_s: f64,
    source_tokens_per_s: f64,
    loss: Option<f64>,
    /// Useful FLOPs: the loss's forward, and the decoder over every generated token.
    flops: f64,
    /// The matmul peak (suite geometric mean in this precision), this run.
    peak_gflops: f64,
    /// Model FLOP utilisation: `flops / seconds / peak`.
    mfu: f64,
}

/// Runs `cargo xtask bench eval`.
pub fn run(args: Args) -> Result<()> {
    if args.rows == 0 || args.common.batch_size == 0 {
        bail!("--rows and --batch-size must be at least 1");
    }
    tessera_tensor::set_num_threads(args.common.threads)?;
    let mut data = read_file(&args.data, Task::mnli(), ReadOptions::default())?;
    data.examples.truncate(args.rows);
    let spec = ModelSpec::parse(&args.common.model)?;
    let (loaded, tokenizer) =
        load_model_and_tokenizer(&spec, args.common.tokenizer.as_deref(), args.common.seed)?;
    let mut model = loaded.model;
    model.set_precision(args.common.precision);
    let options = EvalOptions {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.common.batch_size,
        max_source_length: tessera_glue::tokenize::DEFAULT_MAX_SOURCE_LENGTH,
    };
    let mut warmup = data.clone();
    warmup.examples.truncate(args.common.batch_size);
    Evaluator::new(&tokenizer, &warmup, options)?.run(&model)?;
    let evaluator = Evaluator::new(&tokenizer, &data, options)?;
    let examples = &evaluator.data().examples;
    let src_lens: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let tgt_lens: Vec<usize> = examples.iter().map(|e| e.labels.len()).collect();
    let peak = super::matmul::peak_gflops(args.common.precision.dtype());
    let start = Instant::now();
    let report = evaluator.run(&model)?;
    let seconds = start.elapsed().as_secs_f64();
    let rows = data.examples.len();
    let c = model.config();
    let flops = c.forward_flops(&src_lens, &tgt_lens)
        + c.decoder_flops(&src_lens, &report.generated_tokens);
    let result = Report {
        model: args.common.model.clone(),
        precision: args.common.precision,
        rows,
        batch_size: args.common.batch_size,
        max_new_tokens: args.max_new_tokens,
        threads: tessera_tensor::num_threads(),
        source_tokens: src_lens.iter().sum(),
        generated_tokens: report.generated_tokens.iter().sum(),
        seconds,
        examples_per_s: rows as f64 / seconds,
        source_tokens_per_s: src_lens.iter().sum::<usize>() as f64 / seconds,
        loss: report.loss,
        flops,
        peak_gflops: peak,
        mfu: super::mfu(flops, seconds, peak),
    };
    super::publish(&result, args.common.json.as_deref())
}

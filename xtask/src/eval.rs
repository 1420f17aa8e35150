//! `cargo xtask eval`: score a model on a GLUE validation set by greedy
//! generation, as the seed validates, plus the mean target cross-entropy.

use crate::model_args::ModelArgs;
use crate::output;
use anyhow::Result;
use std::path::PathBuf;
use tessera_glue::{ReadOptions, Source, Split, Task};
use tessera_train::eval::{evaluate, EvalOptions, EvalReport};

/// Evaluate a model on a labelled data set: accuracy (and the task's other metrics) and loss.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The GLUE task (mnli, sst2, …).
    #[arg(long, default_value = "mnli")]
    task: String,
    /// A data file (.tsv, .jsonl, .parquet), a folder of splits, or nli-synthetic.
    #[arg(long, value_name = "FILE|DIR|nli-synthetic")]
    data: String,
    /// The split read from a folder or nli-synthetic [default: validation_mismatched for mnli, else validation].
    #[arg(long)]
    split: Option<String>,
    /// Tokens generated per example.
    #[arg(long, default_value_t = 5)]
    max_new_tokens: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Source tokens per example at most (longer prompts are cut).
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// Also write the report (metrics, loss, per-row predictions) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Loads the model and data, evaluates, prints the scores and writes the JSON report.
pub fn run(args: Args) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let task: Task = args.task.parse()?;
    let split = match &args.split {
        Some(name) => name.parse()?,
        None if task.name() == "mnli" => Split::ValidationMismatched,
        None => Split::Validation,
    };
    let data = Source::parse(&args.data).load(task, split, ReadOptions::default())?;
    let options = EvalOptions {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
        max_source_length: args.max_source_length,
    };
    let report = evaluate(&model, &tokenizer, &data, options)?;
    println!("{}", describe(&report, &data.source));
    if let Some(path) = &args.json {
        output::write_json(path, &report)?;
    }
    Ok(())
}

/// The scores as one line: task, data, metrics, loss, malformed answers.
fn describe(report: &EvalReport, source: &str) -> String {
    let s = &report.summary;
    let mut parts = vec![format!("{} on {source}: {} examples", s.task, s.examples)];
    for (name, value) in [
        ("accuracy", s.accuracy),
        ("f1", s.f1),
        ("matthews", s.matthews),
        ("pearson", s.pearson),
        ("spearman", s.spearman),
        ("loss", report.loss),
    ] {
        if let Some(v) = value {
            parts.push(format!("{name} {v:.4}"));
        }
    }
    parts.push(format!("malformed {}", s.malformed));
    if s.unlabeled > 0 {
        parts.push(format!("unlabelled (not scored) {}", s.unlabeled));
    }
    parts.join(", ")
}

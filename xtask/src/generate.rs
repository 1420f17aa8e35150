//! `cargo xtask generate`: greedy generation for prompts given on the command
//! line or one per line in a file; prints one line of text per prompt.

use crate::model_args::ModelArgs;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tessera_train::generation::{generate_texts, GenerateOptions};

/// Generate text for each prompt, one output line per input, in input order.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens generated per prompt at most.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Source tokens per prompt at most (longer prompts are cut).
    #[arg(long, default_value_t = 512)]
    max_source_length: usize,
    /// A text file with one prompt per line.
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// The prompts (when there is no --input).
    #[arg(value_name = "TEXT", required_unless_present = "input")]
    texts: Vec<String>,
}

/// Loads the model, generates and prints one line per prompt.
pub fn run(args: Args) -> Result<()> {
    let prompts = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => args.texts.clone(),
    };
    let (model, tokenizer) = args.model.load()?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
    };
    let texts = generate_texts(
        &model,
        &tokenizer,
        &prompts,
        args.max_source_length,
        options,
    )?;
    for text in texts {
        println!("{text}");
    }
    Ok(())
}

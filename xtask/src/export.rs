//! `cargo xtask export`: a training checkpoint as a Hugging Face model folder.

use anyhow::Result;
use std::path::PathBuf;

/// Write a checkpoint as a Hugging Face folder (weights, configs, tokenizer files) that
/// `transformers` loads; the optimizer state and trainer files stay behind.
#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint folder (OUTPUT/checkpoints/step-N).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The export folder (created; replaced only if empty or a previous export).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
}

/// Exports and says where the files went.
pub fn run(args: Args) -> Result<()> {
    tessera_train::export::export(&args.checkpoint, &args.output)?;
    println!(
        "exported {} to {}",
        args.checkpoint.display(),
        args.output.display()
    );
    Ok(())
}

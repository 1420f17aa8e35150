//! `cargo xtask export`: a training checkpoint as a Hugging Face model folder.

use anyhow::Result;
use std::path::PathBuf;
use tessera_t5::safetensors::StoredDType;

/// Write a checkpoint as a Hugging Face folder (weights, configs, tokenizer files) that
/// `transformers` loads; the optimizer state and trainer files stay behind. A LoRA
/// checkpoint becomes a PEFT adapter folder (or, with --merge, a whole model).
#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint folder (OUTPUT/checkpoints/step-N).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The export folder (created; replaced only if empty or a previous export).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// How the weights are stored: f32, bf16 or f16 (rounded to nearest-even;
    /// half the size, as the Hub's bf16/fp16 checkpoints).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: StoredDType,
    /// For a LoRA checkpoint: write the whole model with the adapters
    /// merged into its weights, instead of a PEFT adapter folder.
    #[arg(long)]
    merge: bool,
}

fn parse_dtype(s: &str) -> Result<StoredDType, String> {
    match s {
        "f32" => Ok(StoredDType::F32),
        "bf16" => Ok(StoredDType::BF16),
        "f16" | "fp16" => Ok(StoredDType::F16),
        other => Err(format!("{other:?} is not one of f32, bf16, f16")),
    }
}

/// Exports and says where the files went.
pub fn run(args: Args) -> Result<()> {
    tessera_train::export::export_as(&args.checkpoint, &args.output, args.dtype, args.merge)?;
    println!(
        "exported {} to {}",
        args.checkpoint.display(),
        args.output.display()
    );
    Ok(())
}

//! The model, adapter, tokenizer and thread flags that `eval` and `generate` share.

use anyhow::Result;
use std::path::PathBuf;
use tessera_glue::TextTokenizer;
use tessera_t5::{Precision, T5Model};
use tessera_train::model_source::{load_model_and_tokenizer, put_adapter, ModelSpec};

/// `--model`, `--adapter`, `--tokenizer`, `--seed`, `--threads`, `--precision`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A model folder (config.json + model.safetensors); a bare preset name
    /// (flan-t5-small … flan-t5-xxl, tessera-tiny: random weights from --seed); or a Hugging
    /// Face Hub id such as google/flan-t5-small (downloaded into the HF cache;
    /// a local folder of that name wins).
    #[arg(long, value_name = "DIR|PRESET|HUB_ID")]
    model: String,
    /// tokenizer.json to use [default: the model folder's; for a preset, the built-in one].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Seed of a preset's random initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads [default: TESSERA_THREADS, else the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Number format of the matmuls: f32, bf16 or fp16 (16-bit operands,
    /// f32 accumulation; see docs/precision.md).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// A LoRA adapter folder to put on the model: tessera's LoRA checkpoint
    /// or export, or one PEFT saved (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// Sets the thread count, then loads the model and its tokenizer.
    pub fn load(&self) -> Result<(T5Model, TextTokenizer)> {
        if let Some(n) = self.threads {
            tessera_tensor::set_num_threads(n)
                .map_err(|e| anyhow::anyhow!("invalid setting --threads: {e}"))?;
        }
        let spec = ModelSpec::parse(&self.model)?;
        let (loaded, tokenizer) =
            load_model_and_tokenizer(&spec, self.tokenizer.as_deref(), self.seed)?;
        let mut model = loaded.model;
        if let Some(dir) = &self.adapter {
            put_adapter(&mut model, dir)?;
        }
        model.set_precision(self.precision);
        Ok((model, tokenizer))
    }
}

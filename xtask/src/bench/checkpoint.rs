//! `cargo xtask bench checkpoint`: how fast a model folder is saved and
//! loaded, and how much memory each takes beyond the model itself.
//!
//! A preset initialised from `--seed` (or a model folder, loaded first) is
//! saved into a scratch folder as `T5Model::save` writes checkpoints
//! (staged, fsynced, renamed; XXH3 of every file as it is written), then
//! loaded back, `--repeat` times; the best time of each is reported. The
//! peak-memory growth of each is the rise of the process's peak resident
//! size (Linux `VmHWM`, reset before each measurement through
//! `/proc/self/clear_refs`) over its size just before: a writer that
//! buffered a whole file, or a reader that kept the file mapped beside its
//! copy, shows here as a growth of about the model's size.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tessera_t5::safetensors::StoredDType;
use tessera_t5::T5Model;
use tessera_train::model_source::{load_model, ModelSpec};

/// Flags of `cargo xtask bench checkpoint`.
#[derive(ClapArgs)]
pub struct Args {
    /// A preset initialised from --seed, or a model folder.
    #[arg(long, default_value = "flan-t5-base")]
    model: String,
    /// Seed of a preset's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stored element type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Saves and loads measured (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Scratch folder for the saved model (default: the system temp folder).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Also write the result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What `bench checkpoint` prints and writes.
#[derive(Serialize)]
struct Report {
    model: String,
    dtype: String,
    parameters: usize,
    file_bytes: u64,
    save_s: f64,
    load_s: f64,
    /// Peak resident growth while saving, over the resident size before.
    save_peak_growth_bytes: u64,
    /// Peak resident growth while loading (the model's own f32 buffer included).
    load_peak_growth_bytes: u64,
    /// The loaded model's f32 weights, for scale.
    model_bytes: u64,
}

/// Runs `cargo xtask bench checkpoint`.
pub fn run(args: Args) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "f32" => StoredDType::F32,
        "bf16" => StoredDType::BF16,
        "f16" => StoredDType::F16,
        other => anyhow::bail!("--dtype {other} is not one of f32, bf16, f16"),
    };
    let spec = ModelSpec::parse(&args.model)?;
    let model = load_model(&spec, args.seed)?.model;
    let model_bytes = model.params().flat().len() as u64 * 4;
    let scratch = tempfile::Builder::new()
        .prefix("tessera-bench-checkpoint")
        .tempdir_in(args.scratch.clone().unwrap_or_else(std::env::temp_dir))
        .context("cannot create the scratch folder")?;
    let dir = scratch.path().join("model");
    let (mut save_s, mut load_s) = (f64::INFINITY, f64::INFINITY);
    let (mut save_growth, mut load_growth) = (0, 0);
    for _ in 0..args.repeat.max(1) {
        let (s, g) = measure(|| Ok(model.save_as(&dir, dtype)?))?;
        (save_s, save_growth) = (save_s.min(s), save_growth.max(g));
        let (s, g) = measure(|| T5Model::load(&dir).map(drop).map_err(Into::into))?;
        (load_s, load_growth) = (load_s.min(s), load_growth.max(g));
    }
    let report = Report {
        model: args.model,
        dtype: args.dtype,
        parameters: model.config().num_parameters(),
        file_bytes: std::fs::metadata(dir.join("model.safetensors"))?.len(),
        save_s,
        load_s,
        save_peak_growth_bytes: save_growth,
        load_peak_growth_bytes: load_growth,
        model_bytes,
    };
    super::publish(&report, args.json.as_deref())
}

/// Seconds `f` takes and the rise of the peak resident size it causes
/// ([`tessera_tensor::memory::peak_growth`]).
fn measure(f: impl FnOnce() -> Result<()>) -> Result<(f64, u64)> {
    let timed = || {
        let start = Instant::now();
        f().map(|()| start.elapsed().as_secs_f64())
    };
    let (seconds, growth) = tessera_tensor::memory::peak_growth(timed)
        .context("cannot measure the peak resident size (/proc/self; Linux only)")?;
    Ok((seconds?, growth))
}

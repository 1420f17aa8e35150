//! tessera's LoRA adapters in Hugging Face PEFT, on the real MNLI sample of
//! `../shared/data` (an ignored test: it needs that folder and python3 with
//! torch, transformers and peft, and fails, not passes, without them).
//!
//! A flan-t5-small-shaped model (seed 0, the real T5 tokenizer) gets LoRA
//! adapters on every linear kind, with `B` drawn non-zero so they change
//! the answers. PEFT loads tessera's adapter folder onto the base with
//! `PeftModel.from_pretrained` and must generate, greedily, exactly what
//! tessera generates for the first 160 `validation_mismatched` prompts; the
//! merged export, loaded by `transformers` alone, must too
//! (`fixtures/check_peft.py`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::path::Path;
use std::process::Command;
use tessera_fixtures::{require_python, shared_data};
use tessera_glue::{read_file, ReadOptions, Task, TextTokenizer};
use tessera_t5::{LoraConfig, T5Config, T5Model};
use tessera_tensor::rng::SplitMix64;
use tessera_train::eval::{EvalOptions, Evaluator};
use tessera_train::generation::{generate_ids, GenerateOptions};

const ROWS: usize = 160;
const MAX_NEW_TOKENS: usize = 5;

/// The first `ROWS` prompts of the mismatched sample, as token ids.
fn prompts(tokenizer: &TextTokenizer) -> Vec<Vec<u32>> {
    let mut data = read_file(
        &shared_data("mnli-sample/validation_mismatched.jsonl"),
        Task::mnli(),
        ReadOptions::default(),
    )
    .unwrap();
    data.examples.truncate(ROWS);
    let evaluator = Evaluator::new(tokenizer, &data, EvalOptions::default()).unwrap();
    let encoded = evaluator.data();
    encoded
        .examples
        .iter()
        .map(|e| e.input_ids.clone())
        .collect()
}

fn save_with_tokenizer(model: &T5Model, dir: &Path) {
    model.save(dir).unwrap();
    let tokenizer = shared_data("t5-tokenizer/tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
}

#[test]
#[ignore = "needs ../shared/data and python3 with torch, transformers and peft"]
fn peft_loads_the_exported_adapter_and_generates_what_tessera_does() {
    require_python(&["torch", "transformers", "peft"]);
    let tokenizer = TextTokenizer::from_file(&shared_data("t5-tokenizer/tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = T5Model::init(T5Config::preset("flan-t5-small").unwrap(), 0);
    let base_dir = dir.path().join("base");
    save_with_tokenizer(&base, &base_dir);

    let mut model = base.clone();
    let targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];
    let config = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    model.add_lora(config, 1).unwrap();
    let adapters = model.lora_mut().unwrap().adapters_mut();
    let mut draw = SplitMix64::new(2);
    for id in adapters.ids().collect::<Vec<_>>() {
        if adapters.entry(id).name.contains("lora_B") {
            // Uniform with standard deviation 0.02.
            for v in adapters.get_mut(id) {
                *v = draw.symmetric() * 0.02 * 3f32.sqrt();
            }
        }
    }
    let adapter_dir = dir.path().join("adapter");
    model
        .save_adapter(&adapter_dir, &base_dir.display().to_string())
        .unwrap();
    let mut merged = model.clone();
    merged.merge_lora().unwrap();
    let merged_dir = dir.path().join("merged");
    save_with_tokenizer(&merged, &merged_dir);

    let rows = prompts(&tokenizer);
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let options = GenerateOptions {
        max_new_tokens: MAX_NEW_TOKENS,
        batch_size: 16,
    };
    let generated = generate_ids(&model, &refs, options).unwrap();
    let plain = generate_ids(&base, &refs, options).unwrap();
    let changed = generated.iter().zip(&plain).filter(|(a, b)| a != b).count();
    assert!(
        changed > ROWS / 10,
        "the adapters change only {changed} of {ROWS} answers"
    );

    let reference = dir.path().join("reference.json");
    let json = serde_json::json!({
        "input_ids": rows, "generated": generated, "base_generated": plain,
        "max_new_tokens": MAX_NEW_TOKENS,
    });
    std::fs::write(&reference, json.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/check_peft.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&base_dir, &adapter_dir, &merged_dir, &reference])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "PEFT or transformers generated otherwise:\n{stdout}"
    );
}

//! The export, checked by the installed Python `transformers` (an ignored
//! test: run with `--ignored` where python3 has torch and transformers; it
//! fails, not passes, where it cannot run): a tiny random
//! model exported with the built-in tokenizer, with its weights stored as
//! F32, BF16 and F16, must load with
//! `AutoModelForSeq2SeqLM`/`AutoTokenizer`, tokenize as tessera does, give
//! tessera's logits and generate tessera's tokens (`fixtures/check_export.py`).

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use tessera_fixtures::require_python;
use tessera_glue::OWN_TOKENIZER_JSON;
use tessera_t5::safetensors::StoredDType;
use tessera_t5::{Batch, T5Config, T5Model};
use tessera_train::export::export_as;
use tessera_train::model_source::own_tokenizer;

const PROMPT: &str =
    "mnli hypothesis: The farmer repaired the bridge. premise: The farmer repaired it.";

/// A two-layer encoder, one-layer decoder T5 over the built-in tokenizer.
fn small_model() -> T5Model {
    let config = T5Config::tiny_with(|c| {
        (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_heads) = (740, 32, 8, 64, 4);
        (c.num_layers, c.num_decoder_layers) = (2, Some(1));
    });
    T5Model::init(config.unwrap(), 11)
}

/// tessera's view of `PROMPT`: ids, labels, logits and greedy tokens, and
/// the torch dtype the weights are stored in, as JSON.
fn reference(model: &T5Model, stored_dtype: &str) -> serde_json::Value {
    let tokenizer = own_tokenizer().unwrap();
    let ids = tokenizer.encode(PROMPT, 512).unwrap();
    let labels = tokenizer.encode("entailment", 128).unwrap();
    let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let batch = Batch::new([(0, &ids[..], &targets[..])]);
    let logits = model.forward(&batch).unwrap().logits;
    let mut generated = model.generate(&[&ids], 5).unwrap()[0].clone();
    if let Some(end) = generated.iter().skip(1).position(|&t| t == 1) {
        generated.truncate(end + 2);
    }
    serde_json::json!({
        "prompt": PROMPT, "input_ids": ids, "labels": labels,
        "logits": logits, "generated": generated, "stored_dtype": stored_dtype,
    })
}

#[test]
#[ignore = "needs python3 with torch and transformers"]
fn transformers_loads_the_export_and_agrees_with_tessera() {
    require_python(&["torch", "transformers"]);
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoint");
    small_model().save(&ckpt).unwrap();
    std::fs::write(ckpt.join("tokenizer.json"), OWN_TOKENIZER_JSON).unwrap();
    std::fs::write(ckpt.join("trainer_state.json"), "{}").unwrap();
    for (dtype, torch_name) in [
        (StoredDType::F32, "torch.float32"),
        (StoredDType::BF16, "torch.bfloat16"),
        (StoredDType::F16, "torch.float16"),
    ] {
        let out = tmp.path().join(format!("hf-{dtype}"));
        export_as(&ckpt, &out, dtype, false).unwrap();
        // The reference is tessera's f32 forward on the values as stored.
        let exported = T5Model::load(&out).unwrap();
        let reference_file = tmp.path().join("reference.json");
        let reference = reference(&exported, torch_name);
        std::fs::write(&reference_file, reference.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/check_export.py");
        let run = Command::new("python3")
            .arg(script)
            .arg(&out)
            .arg(&reference_file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
        assert!(
            run.status.success(),
            "{dtype:?}: check_export.py failed:\n{stdout}"
        );
        assert!(stdout.contains("export check passed"), "{dtype:?}");
    }
}

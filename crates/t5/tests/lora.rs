//! LoRA against Hugging Face PEFT on the committed `lora/*` fixtures: a
//! PEFT adapter folder loads onto its base model, and the logits, loss and
//! every adapter gradient match PEFT's (relative error ≤ 1e-5, the norm of
//! `tessera_fixtures`); the base weights get no gradient.

mod common;

use common::{batch, tolerance};
use tessera_fixtures::{check_close, data_dir, load, real_positions, Fixture};
use tessera_t5::{CheckpointError, T5Model, TrainOptions};

const CASES: [&str; 3] = ["lora/qv", "lora/gated-all", "lora/relu-all"];

/// The base model with the fixture's PEFT adapter loaded, and the fixture.
fn adapted(case: &str) -> (T5Model, Fixture) {
    let fx = load(case).expect("fixture group");
    let base = fx.meta_at("/base").expect("base").as_str().expect("a path");
    let mut model = T5Model::load(&data_dir().join(base)).expect("base loads");
    model.load_adapter(fx.dir()).expect("PEFT adapter loads");
    (model, fx)
}

#[test]
fn adapted_logits_loss_and_adapter_gradients_match_peft() {
    for case in CASES {
        let (model, fx) = adapted(case);
        let batch = batch(&fx);
        let out = model.forward(&batch).expect("forward");
        let vocab = model.config().vocab_size;
        let want = real_positions(&fx.f32s("logits").expect("logits"), &batch.tgt_lens, vocab);
        let c = check_close(
            &format!("{case}/logits"),
            &out.logits,
            &want,
            tolerance(&fx, "logits"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{case} logits: rel err {:.2e}", c.rel_error);
        let mut opts = TrainOptions::from_config(model.config());
        opts.dropout = 0.0;
        let mut grads = model.new_gradients();
        assert_eq!(
            grads.entries(),
            model.lora().expect("lora").adapters().entries()
        );
        let loss = model
            .forward_backward(&batch, &mut grads, &opts)
            .expect("backward");
        let want_loss = fx.f32s("loss").expect("loss");
        check_close(
            &format!("{case}/loss"),
            &[loss.mean()],
            &want_loss,
            tolerance(&fx, "loss"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut worst = 0.0f64;
        for (entry, g) in grads.iter() {
            let want = fx
                .f32s(&format!("grad.{}", entry.name))
                .expect("reference gradient");
            let name = format!("{case}/grad.{}", entry.name);
            let c = check_close(&name, g, &want, tolerance(&fx, "grads"))
                .unwrap_or_else(|e| panic!("{e}"));
            worst = worst.max(c.rel_error);
        }
        eprintln!(
            "{case}: worst adapter gradient rel err {worst:.2e} over {} tensors",
            grads.entries().len()
        );
    }
}

#[test]
fn a_model_without_its_adapter_is_the_base_and_bad_adapters_are_named() {
    let (model, fx) = adapted("lora/qv");
    let base =
        T5Model::load(load("models/t5-gated-untied-hf-init").expect("base").dir()).expect("base");
    let batch = batch(&fx);
    let adapted = model.forward(&batch).expect("forward").logits;
    let plain = base.forward(&batch).expect("forward").logits;
    assert!(
        adapted
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "the adapter changes nothing"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let copy =
        |from: &str| std::fs::copy(fx.dir().join(from), dir.path().join(from)).expect("copy");
    copy("adapter_model.safetensors");
    let config = std::fs::read_to_string(fx.dir().join("adapter_config.json")).expect("config");
    let try_config = |text: &str| {
        std::fs::write(dir.path().join("adapter_config.json"), text).expect("write");
        let mut m = base.clone();
        m.load_adapter(dir.path()).expect_err("refused").to_string()
    };
    let err = try_config(&config.replace("\"use_dora\": false", "\"use_dora\": true"));
    assert!(
        err.contains("use_dora") && err.contains("adapter_config.json"),
        "{err}"
    );
    let err = try_config(&config.replace("\"r\": 4", "\"r\": 5"));
    assert!(
        err.contains("lora_A.weight") && err.contains("shape"),
        "{err}"
    );
    let err = try_config(&config.replace("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\""));
    assert!(err.contains("peft_type"), "{err}");
    // Targets that imply adapters the file lacks: the first missing one is named.
    let err = try_config(&config.replace("\"q\",", "\"q\", \"k\","));
    assert!(
        err.contains(".k.lora_A.weight") && err.contains("missing"),
        "{err}"
    );
    let missing = dir.path().join("nothing");
    let mut m = base.clone();
    let err = m.load_adapter(&missing).expect_err("no folder");
    assert!(matches!(err, CheckpointError::Adapter { .. }), "{err}");
}

#[test]
fn saved_adapters_load_back_exactly() {
    let (model, _) = adapted("lora/gated-all");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("adapter");
    model
        .save_adapter(&out, "models/t5-gated-untied-hf-init")
        .expect("save");
    let mut again =
        T5Model::load(load("models/t5-gated-untied-hf-init").expect("base").dir()).expect("base");
    again.load_adapter(&out).expect("load");
    assert_eq!(again.lora(), model.lora());
}

#[test]
fn merged_adapters_compute_what_the_adapted_model_did() {
    for case in CASES {
        let (model, fx) = adapted(case);
        let batch = batch(&fx);
        let adapted = model.forward(&batch).expect("forward").logits;
        let mut merged = model.clone();
        merged.merge_lora().expect("merge");
        assert!(merged.lora().is_none());
        let logits = merged.forward(&batch).expect("forward").logits;
        check_close(case, &logits, &adapted, 1e-5).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_fingerprint_of_the_base_sees_any_change() {
    let (model, _) = adapted("lora/qv");
    let base = model.params();
    let again = T5Model::load(&data_dir().join("models/t5-gated-untied-hf-init")).expect("base");
    assert_eq!(again.params().fingerprint(), base.fingerprint());
    let mut changed = again.clone();
    let id = changed.params().ids().nth(3).expect("a weight");
    changed.params_mut().get_mut(id)[0] += 1e-3;
    assert_ne!(changed.params().fingerprint(), base.fingerprint());
    let narrow = base.converted(tessera_tensor::DType::BF16);
    assert_ne!(narrow.fingerprint(), base.fingerprint());
}

#[test]
fn adapted_generation_is_the_merged_models() {
    for case in CASES {
        let (model, fx) = adapted(case);
        let batch = batch(&fx);
        let mut merged = model.clone();
        merged.merge_lora().expect("merge");
        let sources = batch.source_rows();
        let got = model.generate(&sources, 6).expect("generate");
        assert_eq!(
            got,
            merged.generate(&sources, 6).expect("generate"),
            "{case}"
        );
    }
}

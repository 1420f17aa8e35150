//! The optimizers against PyTorch on the committed fixtures
//! (`fixtures/data`): AdamW with clipping through three training steps of
//! the Hugging Face-initialised model (`adamw-trajectory`), and both
//! optimizers alone on random tensors (`optimizers`).

use tessera_fixtures::{check_close, data_dir, load, Fixture};
use tessera_t5::{Batch, T5Model, TrainOptions};
use tessera_train::optim::{clip_grad_norm, Optimizer, OptimizerConfig, OptimizerKind};

fn batch(fx: &Fixture, step: usize) -> Batch {
    let b = fx
        .padded_batch(&format!("step{step}."))
        .expect("the step's batch");
    Batch::from_padded(&b.input_ids, &b.attention_mask, &b.labels, b.rows).expect("right padding")
}

fn setting(fx: &Fixture, key: &str) -> f32 {
    fx.number(&format!("/optimizer/{key}"))
        .expect("optimizer setting") as f32
}

/// Three steps of the `adamw-trajectory` recipe on the trainable
/// parameters of `model` (every weight, or the LoRA adapters), with the
/// batches of `batches`; returns the losses and pre-clip gradient norms.
fn run_adamw(model: &mut T5Model, batches: &Fixture) -> (Vec<f32>, Vec<f32>) {
    let recipe = load("adamw-trajectory").expect("fixture group");
    let config = OptimizerConfig {
        kind: OptimizerKind::AdamW,
        beta1: setting(&recipe, "betas/0"),
        beta2: setting(&recipe, "betas/1"),
        eps: setting(&recipe, "eps"),
        weight_decay: setting(&recipe, "weight_decay"),
        ..OptimizerConfig::default()
    };
    let (lr, max_norm) = (setting(&recipe, "lr"), setting(&recipe, "max_grad_norm"));
    let mut opt = Optimizer::new(&config, model.trainable()).expect("valid config");
    let opts = TrainOptions::from_config(model.config());
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..3 {
        let mut grads = model.new_gradients();
        let loss = model
            .forward_backward(&batch(batches, step), &mut grads, &opts)
            .expect("forward/backward");
        losses.push(loss.mean());
        norms.push(clip_grad_norm(&mut grads, max_norm));
        opt.step(model.trainable_mut(), &grads, lr);
    }
    assert_eq!(opt.steps(), 3);
    (losses, norms)
}

/// Checks a trajectory's losses, norms and final trainable parameters
/// against `fx` (`final.<name>`, tolerance `final_key`).
fn check_trajectory(
    fx: &Fixture,
    model: &T5Model,
    (losses, norms): (Vec<f32>, Vec<f32>),
    final_key: &str,
) {
    let tol = |what: &str| {
        fx.number(&format!("/tolerances/{what}"))
            .expect("tolerance")
    };
    for (what, got) in [("losses", &losses), ("grad_norms", &norms)] {
        let want = fx.f32s(what).expect("reference");
        check_close(what, got, &want, tol(what)).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut worst = 0.0f64;
    for (entry, got) in model.trainable().iter() {
        let want = fx
            .f32s(&format!("final.{}", entry.name))
            .expect("final weight");
        let c =
            check_close(&entry.name, got, &want, tol(final_key)).unwrap_or_else(|e| panic!("{e}"));
        worst = worst.max(c.rel_error);
    }
    eprintln!("{}: worst final rel. error {worst:.2e}", fx.name());
}

#[test]
fn adamw_trajectory_matches_torch() {
    let fx = load("adamw-trajectory").expect("fixture group");
    let init = load("models/t5-gated-untied-hf-init").expect("initial weights");
    let mut model = T5Model::load(init.dir()).expect("fixture checkpoint loads");
    let run = run_adamw(&mut model, &fx);
    check_trajectory(&fx, &model, run, "final_weights");
}

#[test]
fn lora_adamw_trajectories_match_peft() {
    for case in ["lora/qv", "lora/gated-all", "lora/relu-all"] {
        let fx = load(case).expect("fixture group");
        let base = fx.meta_at("/base").expect("base").as_str().expect("a path");
        let mut model = T5Model::load(&data_dir().join(base)).expect("base loads");
        model.load_adapter(fx.dir()).expect("PEFT adapter loads");
        let frozen = model.params().clone();
        let run = run_adamw(&mut model, &fx);
        check_trajectory(&fx, &model, run, "final_adapters");
        assert!(
            model.params() == &frozen,
            "{case}: a frozen base weight moved"
        );
    }
}

/// The settings of one case of the `optimizers` group.
fn case_config(fx: &Fixture, case: &str) -> OptimizerConfig {
    let at = |key: &str| {
        fx.meta_at(&format!("/cases/{case}/{key}"))
            .expect("case setting")
    };
    let number = |key: &str| at(key).as_f64().expect("number") as f32;
    let flag = |key: &str| at(key).as_bool().expect("bool");
    let mut config = OptimizerConfig {
        weight_decay: number("weight_decay"),
        ..OptimizerConfig::default()
    };
    if case == "adamw" {
        (config.beta1, config.beta2) = (number("betas/0"), number("betas/1"));
        config.eps = number("eps");
    } else {
        config.kind = OptimizerKind::Adafactor;
        let a = &mut config.adafactor;
        a.beta1 = at("beta1").as_f64().map(|b| b as f32);
        a.scale_parameter = flag("scale_parameter");
        a.relative_step = flag("relative_step");
        a.warmup_init = flag("warmup_init");
    }
    config
}

#[test]
fn optimizers_match_torch_and_transformers_on_random_gradients() {
    let fx = load("optimizers").expect("fixture group");
    let model_config = fx
        .meta_at("/model/config")
        .expect("model config")
        .to_string();
    let mut config = tessera_t5::T5Config::from_json(&model_config, "optimizers/meta.json")
        .expect("tiny config");
    config.tie_word_embeddings = false;
    let mut initial = T5Model::zeros(config).params().clone();
    let names: Vec<String> = initial.entries().iter().map(|e| e.name.clone()).collect();
    let fill = |store: &mut tessera_t5::ParamStore, prefix: &str| {
        for (i, name) in names.iter().enumerate() {
            let id = store.find(name).expect("layout name");
            let values = fx.f32s(&format!("{prefix}{name}")).expect("tensor");
            store.get_mut(id).copy_from_slice(&values);
            assert_eq!(id.index(), i);
        }
    };
    fill(&mut initial, "initial.");
    let lrs: Vec<f32> = fx
        .meta_at("/lrs")
        .expect("lrs")
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    let grads: Vec<_> = (0..lrs.len())
        .map(|step| {
            let mut g = initial.zeros_like();
            fill(&mut g, &format!("step{step}.grad."));
            g
        })
        .collect();
    let tol = fx.number("/tolerances/final_weights").expect("tolerance");
    let cases = fx
        .meta_at("/cases")
        .expect("cases")
        .as_object()
        .expect("map");
    for case in cases.keys() {
        let config = case_config(&fx, case);
        let mut params = initial.clone();
        let mut opt = Optimizer::new(&config, &params).expect("valid config");
        for (g, &lr) in grads.iter().zip(&lrs) {
            opt.step(&mut params, g, lr);
        }
        let mut worst = 0.0f64;
        for (entry, got) in params.iter() {
            let name = format!("{case}.final.{}", entry.name);
            let want = fx.f32s(&name).expect("final weight");
            let c = check_close(&name, got, &want, tol).unwrap_or_else(|e| panic!("{e}"));
            worst = worst.max(c.rel_error);
        }
        eprintln!("optimizers/{case}: worst final-weight rel. error {worst:.2e}");
    }
}

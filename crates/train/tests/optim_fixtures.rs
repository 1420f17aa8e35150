//! The optimizers against PyTorch on the committed fixtures
//! (`fixtures/data`): AdamW with clipping through three training steps of
//! the Hugging Face-initialised model (`adamw-trajectory`), and both
//! optimizers alone on random tensors (`optimizers`).

use tessera_fixtures::{check_close, load, Fixture};
use tessera_t5::{Batch, T5Model, TrainOptions};
use tessera_train::optim::{clip_grad_norm, Optimizer, OptimizerConfig, OptimizerKind};

fn batch(fx: &Fixture, step: usize) -> Batch {
    let tensor = |what: &str| {
        let name = format!("step{step}.{what}");
        let t = fx.tensor(&name).expect("batch tensor");
        (t.shape().to_vec(), fx.i64s(&name).expect("i64 tensor"))
    };
    let (src_shape, input_ids) = tensor("input_ids");
    let (tgt_shape, labels) = tensor("labels");
    Batch {
        batch_size: src_shape[0],
        src_len: src_shape[1],
        tgt_len: tgt_shape[1],
        input_ids: input_ids
            .iter()
            .map(|&v| u32::try_from(v).expect("small ids"))
            .collect(),
        attention_mask: tensor("attention_mask")
            .1
            .iter()
            .map(|&m| m as u8)
            .collect(),
        labels,
    }
}

fn setting(fx: &Fixture, key: &str) -> f32 {
    fx.number(&format!("/optimizer/{key}"))
        .expect("optimizer setting") as f32
}

#[test]
fn adamw_trajectory_matches_torch() {
    let fx = load("adamw-trajectory").expect("fixture group");
    let init = load("models/t5-gated-untied-hf-init").expect("initial weights");
    let mut model = T5Model::load(init.dir()).expect("fixture checkpoint loads");
    let config = OptimizerConfig {
        kind: OptimizerKind::AdamW,
        beta1: setting(&fx, "betas/0"),
        beta2: setting(&fx, "betas/1"),
        eps: setting(&fx, "eps"),
        weight_decay: setting(&fx, "weight_decay"),
        ..OptimizerConfig::default()
    };
    let (lr, max_norm) = (setting(&fx, "lr"), setting(&fx, "max_grad_norm"));
    let mut opt = Optimizer::new(&config, model.params()).expect("valid config");
    let opts = TrainOptions::from_config(model.config());
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..3 {
        let mut grads = model.new_gradients();
        let loss = model
            .forward_backward(&batch(&fx, step), &mut grads, &opts)
            .expect("forward/backward");
        losses.push(loss.mean());
        norms.push(clip_grad_norm(&mut grads, max_norm));
        opt.step(model.params_mut(), &grads, lr);
    }
    assert_eq!(opt.steps(), 3);
    let tol = |what: &str| {
        fx.number(&format!("/tolerances/{what}"))
            .expect("tolerance")
    };
    for (what, got) in [("losses", &losses), ("grad_norms", &norms)] {
        let want = fx.f32s(what).expect("reference");
        check_close(what, got, &want, tol(what)).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut worst = 0.0f64;
    for (entry, got) in model.params().iter() {
        let want = fx
            .f32s(&format!("final.{}", entry.name))
            .expect("final weight");
        let c = check_close(&entry.name, got, &want, tol("final_weights"))
            .unwrap_or_else(|e| panic!("{e}"));
        worst = worst.max(c.rel_error);
    }
    eprintln!("adamw-trajectory: worst final-weight rel. error {worst:.2e}");
}

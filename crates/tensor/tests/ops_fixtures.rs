//! The transformer ops of `tessera_tensor::ops` against the PyTorch fixtures
//! (`fixtures/data/ops`, autograd in float64 rounded to f32): RMS norm,
//! gelu_new, ReLU, softmax, cross-entropy and embedding, forward and
//! backward, with the fixture's tolerances (1e-5, norm `max|a−b| / max|b|`).

use tessera_fixtures::{check_close, load, Fixture};
use tessera_tensor::ops::activation::Activation;
use tessera_tensor::ops::crossentropy::{cross_entropy_backward_inplace, cross_entropy_forward};
use tessera_tensor::ops::{embedding, norm, softmax};

fn ops() -> Fixture {
    load("ops").expect("ops fixture")
}

fn get(fx: &Fixture, name: &str) -> Vec<f32> {
    fx.f32s(name).expect("fixture tensor")
}

fn check(fx: &Fixture, name: &str, actual: &[f32], tol_key: &str) {
    let tol = fx
        .number(&format!("/tolerances/{tol_key}"))
        .expect("tolerance");
    if let Err(m) = check_close(&format!("ops/{name}"), actual, &get(fx, name), tol) {
        panic!("{m}");
    }
}

#[test]
fn rms_norm_forward_and_backward() {
    let fx = ops();
    for case in ["small", "typical"] {
        let p = |t: &str| get(&fx, &format!("rms_norm.{case}.{t}"));
        let (x, w, dy) = (p("x"), p("weight"), p("grad_out"));
        let eps = fx
            .number(&format!("/cases/rms_norm/{case}/eps"))
            .expect("eps") as f32;
        let mut out = vec![0.0; x.len()];
        let mut rstd = vec![0.0; x.len() / w.len()];
        norm::rms_norm_forward(&mut out, &mut rstd, &x, &w, eps).expect("forward");
        check(&fx, &format!("rms_norm.{case}.out"), &out, "forward");
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        norm::rms_norm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd).expect("backward");
        check(&fx, &format!("rms_norm.{case}.grad_x"), &dx, "backward");
        check(
            &fx,
            &format!("rms_norm.{case}.grad_weight"),
            &dw,
            "backward",
        );
    }
}

#[test]
fn activations_forward_and_backward() {
    let fx = ops();
    for (name, act) in [
        ("gelu_new", Activation::GeluNew),
        ("relu", Activation::Relu),
    ] {
        let x = get(&fx, &format!("{name}.x"));
        let mut out = vec![0.0; x.len()];
        act.forward(&mut out, &x).expect("forward");
        check(&fx, &format!("{name}.out"), &out, "forward");
        let mut dx = vec![0.0; x.len()];
        act.backward(&mut dx, &x, &get(&fx, &format!("{name}.grad_out")))
            .expect("backward");
        check(&fx, &format!("{name}.grad_x"), &dx, "backward");
    }
}

#[test]
fn softmax_forward_and_backward() {
    let fx = ops();
    let cols = fx.number("/cases/softmax/cols").expect("cols") as usize;
    let mut p = get(&fx, "softmax.x");
    softmax::softmax_forward_inplace(&mut p, cols).expect("forward");
    check(&fx, "softmax.out", &p, "forward");
    let mut g = get(&fx, "softmax.grad_out");
    softmax::softmax_backward_inplace(&mut g, &p, cols).expect("backward");
    check(&fx, "softmax.grad_x", &g, "backward");
}

#[test]
fn cross_entropy_forward_and_backward() {
    let fx = ops();
    let mut logits = get(&fx, "cross_entropy.logits");
    let labels = fx.i64s("cross_entropy.labels").expect("labels");
    let vocab = logits.len() / labels.len();
    let mut lse = vec![0.0; labels.len()];
    let ce = cross_entropy_forward(&mut lse, &logits, &labels, vocab).expect("forward");
    check(&fx, "cross_entropy.loss", &[ce.mean()], "forward");
    let scale = 1.0 / ce.count as f32;
    cross_entropy_backward_inplace(&mut logits, &lse, &labels, vocab, scale).expect("backward");
    check(&fx, "cross_entropy.grad_logits", &logits, "backward");
}

#[test]
fn embedding_gather_and_scatter_add() {
    let fx = ops();
    let table = get(&fx, "embedding.weight");
    let ids: Vec<u32> = fx
        .i64s("embedding.ids")
        .expect("ids")
        .iter()
        .map(|&i| u32::try_from(i).expect("small id"))
        .collect();
    let d = fx.number("/cases/embedding/dim").expect("dim") as usize;
    let mut out = vec![0.0; ids.len() * d];
    embedding::embedding_forward(&mut out, &table, &ids, d).expect("forward");
    check(&fx, "embedding.out", &out, "forward");
    let mut grad = vec![0.0; table.len()];
    embedding::embedding_backward(&mut grad, &get(&fx, "embedding.grad_out"), &ids, d)
        .expect("backward");
    check(&fx, "embedding.grad_weight", &grad, "backward");
}

//! The tensor engine against the PyTorch fixtures (fixtures/data/ops):
//! matmul in every transpose combination, forward and backward, 16-bit
//! operands, and the f32 <-> f16/bf16 conversions.
//!
//! Tolerances come from the fixture's meta.json (see fixtures/README.md).

// Test code: a failed unwrap is the test failure, and its message names the fixture.
#![allow(clippy::unwrap_used)]

use tessera_fixtures::{check_close, load, Fixture, RefTensor};
use tessera_tensor::{
    bf16, bf16_to_f32, f16, f16_to_f32, f32_to_bf16, f32_to_f16, gemm, Element, MatMut, MatRef, Op,
};

/// A stored 2-D tensor: values and (rows, cols) as stored.
struct Stored<E> {
    data: Vec<E>,
    rows: usize,
    cols: usize,
}

/// Reads a 2-D tensor, converting each stored value with `convert`.
fn stored_as<E>(fx: &Fixture, name: &str, convert: impl Fn(&RefTensor) -> Vec<E>) -> Stored<E> {
    let t = fx.tensor(name).unwrap();
    let [rows, cols] = t.shape() else {
        panic!("{name} is not 2-D: {:?}", t.shape())
    };
    Stored {
        data: convert(t),
        rows: *rows,
        cols: *cols,
    }
}

fn stored(fx: &Fixture, name: &str) -> Stored<f32> {
    stored_as(fx, name, |t| t.f32s().unwrap())
}

/// `op_a(a) · op_b(b)` through `tessera_tensor::gemm`.
fn product<A: Element, B: Element>(a: &Stored<A>, op_a: Op, b: &Stored<B>, op_b: Op) -> Vec<f32> {
    let m = if op_a == Op::N { a.rows } else { a.cols };
    let n = if op_b == Op::N { b.cols } else { b.rows };
    let mut c = vec![f32::NAN; m * n]; // beta = 0 must overwrite, NaN included
    let a_ref = MatRef::dense(&a.data, a.rows, a.cols).unwrap();
    let b_ref = MatRef::dense(&b.data, b.rows, b.cols).unwrap();
    let c_mut = MatMut::dense(&mut c, m, n).unwrap();
    gemm(1.0, a_ref, op_a, b_ref, op_b, 0.0, c_mut).unwrap();
    c
}

fn check(fx: &Fixture, name: &str, actual: &[f32], tol_key: &str) {
    let expected = fx.f32s(name).unwrap();
    let tol = fx.number(&format!("/tolerances/{tol_key}")).unwrap();
    match check_close(&format!("ops/{name}"), actual, &expected, tol) {
        Ok(c) => eprintln!(
            "ops/{name}: relative error {:.2e} (tolerance {tol:.0e})",
            c.rel_error
        ),
        Err(m) => panic!("{m}"),
    }
}

/// For `C = op_a(A)·op_b(B)` with upstream `G = dL/dC`, how dA and dB are
/// products of the stored operands: (left, op, right, op) for each.
fn matmul_case(fx: &Fixture, case: &str, op_a: Op, op_b: Op) {
    let get = |t: &str| stored(fx, &format!("matmul.{case}.{t}"));
    let (a, b, g) = (get("a"), get("b"), get("grad_out"));
    check(
        fx,
        &format!("matmul.{case}.out"),
        &product(&a, op_a, &b, op_b),
        "forward",
    );
    let grad_a = match (op_a, op_b) {
        (Op::N, _) => product(&g, Op::N, &b, flip(op_b)), // dA = G · op_b(B)ᵀ
        (Op::T, _) => product(&b, op_b, &g, Op::T),       // dA = (G · op_b(B)ᵀ)ᵀ = op_b(B) · Gᵀ
    };
    let grad_b = match (op_a, op_b) {
        (_, Op::N) => product(&a, flip(op_a), &g, Op::N), // dB = op_a(A)ᵀ · G
        (_, Op::T) => product(&g, Op::T, &a, op_a),       // dB = Gᵀ · op_a(A)
    };
    check(fx, &format!("matmul.{case}.grad_a"), &grad_a, "backward");
    check(fx, &format!("matmul.{case}.grad_b"), &grad_b, "backward");
}

fn flip(op: Op) -> Op {
    match op {
        Op::N => Op::T,
        Op::T => Op::N,
    }
}

#[test]
fn matmul_all_transpose_combinations_forward_and_backward() {
    let fx = load("ops").unwrap();
    for (case, op_a, op_b) in [
        ("nn", Op::N, Op::N),
        ("nt", Op::N, Op::T),
        ("tn", Op::T, Op::N),
        ("tt", Op::T, Op::T),
    ] {
        matmul_case(&fx, case, op_a, op_b);
    }
}

/// `matmul_<dtype>.<case>`: 16-bit operands stored as bits, f32 product.
fn matmul_16bit_case<E: Element>(
    fx: &Fixture,
    prefix: &str,
    ops: (Op, Op),
    from_bits: fn(u16) -> E,
) {
    let get = |t: &str| {
        stored_as(fx, &format!("{prefix}.{t}"), |t| {
            t.bits16().unwrap().into_iter().map(from_bits).collect()
        })
    };
    let c = product(&get("a"), ops.0, &get("b"), ops.1);
    check(fx, &format!("{prefix}.out"), &c, "matmul_16bit");
}

#[test]
fn matmul_with_16bit_operands() {
    let fx = load("ops").unwrap();
    matmul_16bit_case(&fx, "matmul_f16.nt", (Op::N, Op::T), f16::from_bits);
    matmul_16bit_case(&fx, "matmul_bf16.nn", (Op::N, Op::N), bf16::from_bits);
}

/// Bit-exact, except that any NaN matches any NaN (payloads are not specified).
fn assert_same_bits(what: &str, actual: &[u16], expected: &[u16], is_nan: impl Fn(u16) -> bool) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            a == e || (is_nan(a) && is_nan(e)),
            "{what}: element {i}: {a:#06x}, torch gives {e:#06x}"
        );
    }
}

#[test]
fn f32_to_16bit_rounding_matches_torch_bit_for_bit() {
    let fx = load("ops").unwrap();
    let x = fx.f32s("convert.f32").unwrap();

    let mut h = vec![f16::ZERO; x.len()];
    f32_to_f16(&x, &mut h);
    let h: Vec<u16> = h.iter().map(|v| v.to_bits()).collect();
    let want = fx.tensor("convert.to_f16").unwrap().bits16().unwrap();
    assert_same_bits("f32->f16", &h, &want, |b| f16::from_bits(b).is_nan());

    let mut b = vec![bf16::ZERO; x.len()];
    f32_to_bf16(&x, &mut b);
    let b: Vec<u16> = b.iter().map(|v| v.to_bits()).collect();
    let want = fx.tensor("convert.to_bf16").unwrap().bits16().unwrap();
    assert_same_bits("f32->bf16", &b, &want, |b| bf16::from_bits(b).is_nan());
}

#[test]
fn widening_16bit_to_f32_is_exact() {
    let fx = load("ops").unwrap();
    let same = |what: &str, got: &[f32], want: &[f32]| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{what}: element {i}: {g} vs torch {w}"
            );
        }
    };
    let bits = fx.tensor("convert.to_f16").unwrap().bits16().unwrap();
    let src: Vec<f16> = bits.into_iter().map(f16::from_bits).collect();
    let mut out = vec![0.0; src.len()];
    f16_to_f32(&src, &mut out);
    same("f16->f32", &out, &fx.f32s("convert.f16_widened").unwrap());

    let bits = fx.tensor("convert.to_bf16").unwrap().bits16().unwrap();
    let src: Vec<bf16> = bits.into_iter().map(bf16::from_bits).collect();
    let mut out = vec![0.0; src.len()];
    bf16_to_f32(&src, &mut out);
    same("bf16->f32", &out, &fx.f32s("convert.bf16_widened").unwrap());
}

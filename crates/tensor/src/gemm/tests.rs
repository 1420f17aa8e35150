//! Tests of the matmul against an f64 reference, over every kernel this CPU
//! runs, thread counts, operand orders, dtypes and awkward shapes.

use super::driver::{run_batch_with, Operand, Output, Problem};
use super::kernel::{available, Kernel};
use super::*;
use crate::rng::SplitMix64;
use crate::{bf16, f16};
use proptest::prelude::*;

/// Unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// Stored operands of one random problem, with row strides padded by `pad`.
struct Setup<E> {
    m: usize,
    n: usize,
    k: usize,
    ops: (Op, Op),
    a: Vec<E>,
    lda: usize,
    b: Vec<E>,
    ldb: usize,
    c: Vec<f32>,
    ldc: usize,
}

impl<E: Element> Setup<E> {
    fn new(m: usize, n: usize, k: usize, ops: (Op, Op), pad: usize, seed: u64) -> Self {
        let mut st = SplitMix64::new(seed);
        let (ar, ac) = if ops.0 == Op::N { (m, k) } else { (k, m) };
        let (br, bc) = if ops.1 == Op::N { (k, n) } else { (n, k) };
        let mut fill = |len: usize| {
            (0..len)
                .map(|_| E::from_f32(st.symmetric()))
                .collect::<Vec<E>>()
        };
        let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
        let a = fill(ar * lda);
        let b = fill(br * ldb);
        let c = (0..m * ldc).map(|_| st.symmetric()).collect();
        Setup {
            m,
            n,
            k,
            ops,
            a,
            lda,
            b,
            ldb,
            c,
            ldc,
        }
    }

    fn a_at(&self, i: usize, p: usize) -> f64 {
        let idx = if self.ops.0 == Op::N {
            i * self.lda + p
        } else {
            p * self.lda + i
        };
        self.a[idx].to_f32() as f64
    }

    fn b_at(&self, p: usize, j: usize) -> f64 {
        let idx = if self.ops.1 == Op::N {
            p * self.ldb + j
        } else {
            j * self.ldb + p
        };
        self.b[idx].to_f32() as f64
    }

    /// Runs the product through `kern` with `threads`.
    fn run(&self, kern: &Kernel, threads: usize, alpha: f32, beta: f32) -> Vec<f32> {
        let mut c = self.c.clone();
        let (rsa, csa) = op_strides(self.ops.0, self.lda);
        let (rsb, csb) = op_strides(self.ops.1, self.ldb);
        let p = Problem {
            m: self.m,
            n: self.n,
            k: self.k,
            alpha,
            beta,
        };
        let out = Output {
            data: &mut c,
            ld: self.ldc,
            count: 1,
            stride: 0,
        };
        run_batch_with(
            kern,
            threads,
            &p,
            Operand::new(&self.a, (rsa, csa), 0, DType::F32),
            Operand::new(&self.b, (rsb, csb), 0, DType::F32),
            out,
        );
        c
    }

    /// Checks `got` against the f64 product. The bound is the classic one for
    /// a length-k dot product in floating point, |err| <= k·u·Σ|a·b| (plus the
    /// alpha, beta and final roundings: k + 3), times 2 for slack.
    fn check(&self, got: &[f32], alpha: f32, beta: f32) {
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut dot, mut mag) = (0.0f64, 0.0f64);
                for p in 0..self.k {
                    let t = self.a_at(i, p) * self.b_at(p, j);
                    dot += t;
                    mag += t.abs();
                }
                let c0 = if beta == 0.0 {
                    0.0
                } else {
                    self.c[i * self.ldc + j] as f64
                };
                let want = alpha as f64 * dot + beta as f64 * c0;
                let bound = 2.0
                    * (self.k as f64 + 3.0)
                    * U
                    * (alpha.abs() as f64 * mag + (beta as f64 * c0).abs())
                    + 1e-30;
                let g = got[i * self.ldc + j] as f64;
                assert!(
                    (g - want).abs() <= bound,
                    "C[{i},{j}] = {g}, want {want} ± {bound} (m={} n={} k={} ops={:?})",
                    self.m,
                    self.n,
                    self.k,
                    self.ops
                );
            }
        }
        // Padding between rows of C is never touched.
        for i in 0..self.m {
            for j in self.n..self.ldc {
                assert_eq!(
                    got[i * self.ldc + j].to_bits(),
                    self.c[i * self.ldc + j].to_bits()
                );
            }
        }
    }
}

fn dims() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(3),
        Just(7),
        Just(16),
        Just(17),
        Just(33),
        Just(65),
        1usize..150
    ]
}

fn ops() -> impl Strategy<Value = (Op, Op)> {
    (
        prop_oneof![Just(Op::N), Just(Op::T)],
        prop_oneof![Just(Op::N), Just(Op::T)],
    )
}

fn scalars() -> impl Strategy<Value = (f32, f32)> {
    (
        prop_oneof![Just(1.0f32), Just(-0.5), Just(2.0)],
        prop_oneof![Just(0.0f32), Just(1.0), Just(-1.5)],
    )
}

fn check_all<E: Element>(
    m: usize,
    n: usize,
    k: usize,
    ops: (Op, Op),
    pad: usize,
    (alpha, beta): (f32, f32),
    seed: u64,
) {
    let s = Setup::<E>::new(m, n, k, ops, pad, seed);
    for kern in available(E::DTYPE == DType::BF16) {
        for threads in [1, 2] {
            s.check(&s.run(kern, threads, alpha, beta), alpha, beta);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn f32_matches_reference(m in dims(), n in dims(), k in dims(), ops in ops(), pad in 0usize..3, ab in scalars(), seed: u64) {
        check_all::<f32>(m, n, k, ops, pad, ab, seed);
    }

    #[test]
    fn f16_matches_reference(m in dims(), n in dims(), k in dims(), ops in ops(), ab in scalars(), seed: u64) {
        check_all::<f16>(m, n, k, ops, 1, ab, seed);
    }

    #[test]
    fn bf16_matches_reference(m in dims(), n in dims(), k in dims(), ops in ops(), ab in scalars(), seed: u64) {
        check_all::<bf16>(m, n, k, ops, 0, ab, seed);
    }
}

#[test]
fn blocking_edges_match_reference() {
    // Sizes straddling MC, KC and NC boundaries of the tuned blocking.
    for (m, n, k) in [
        (145, 17, 257),
        (7, 513, 513),
        (289, 65, 600),
        (6, 4081, 3),
        (150, 4100, 5),
    ] {
        for ops in [
            (Op::N, Op::N),
            (Op::N, Op::T),
            (Op::T, Op::N),
            (Op::T, Op::T),
        ] {
            check_all::<f32>(m, n, k, ops, 1, (1.0, 1.0), (m * n * k) as u64);
            check_all::<bf16>(m, n, k, ops, 1, (1.0, 1.0), (m * n * k) as u64);
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    same_bits_on_any_thread_count::<f32>();
    same_bits_on_any_thread_count::<bf16>();
}

fn same_bits_on_any_thread_count<E: Element>() {
    for (m, n, k) in [(300, 200, 150), (80, 700, 300), (513, 65, 257)] {
        for ops in [(Op::N, Op::N), (Op::N, Op::T), (Op::T, Op::N)] {
            let s = Setup::<E>::new(m, n, k, ops, 0, 7);
            for kern in available(E::DTYPE == DType::BF16) {
                let one = s.run(kern, 1, 1.0, 0.5);
                for threads in [2, 3, 4] {
                    let many = s.run(kern, threads, 1.0, 0.5);
                    assert!(one
                        .iter()
                        .zip(&many)
                        .all(|(x, y)| x.to_bits() == y.to_bits()));
                }
            }
        }
    }
}

#[test]
fn fma_kernels_give_the_same_bits() {
    // The AVX2 and AVX-512 f32 kernels sum each element of C by one FMA per
    // step from zero within a KC block, with the same blocking along K, so
    // switching between them (by CPU) never changes a result.
    let fma: Vec<_> = available(false)
        .into_iter()
        .filter(|k| k.name != "portable-4x8")
        .collect();
    for (m, n, k) in [(300, 200, 600), (80, 700, 300), (7, 33, 513)] {
        for ops in [(Op::N, Op::N), (Op::N, Op::T), (Op::T, Op::N)] {
            let s = Setup::<f32>::new(m, n, k, ops, 1, 11);
            let runs: Vec<Vec<f32>> = fma.iter().map(|kern| s.run(kern, 2, 1.0, 0.5)).collect();
            for (kern, got) in fma.iter().zip(&runs).skip(1) {
                assert!(
                    got.iter()
                        .zip(&runs[0])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} differs from {} ({m}x{n}x{k} {ops:?})",
                    kern.name,
                    fma[0].name
                );
            }
        }
    }
}

#[test]
fn beta_zero_overwrites_nan_and_k_zero_scales() {
    let a = [1.0f32, 2.0];
    let b = [3.0f32, 4.0];
    let mut c = [f32::NAN; 4];
    let am = MatRef::new(&a, 2, 1, 1).unwrap();
    let bm = MatRef::new(&b, 1, 2, 2).unwrap();
    gemm(
        1.0,
        am,
        Op::N,
        bm,
        Op::N,
        0.0,
        MatMut::dense(&mut c, 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(c, [3.0, 4.0, 6.0, 8.0]);
    let empty: [f32; 0] = [];
    let a0 = MatRef::new(&empty, 2, 0, 0).unwrap();
    let b0 = MatRef::new(&empty, 0, 2, 2).unwrap();
    gemm(
        1.0,
        a0,
        Op::N,
        b0,
        Op::N,
        0.5,
        MatMut::dense(&mut c, 2, 2).unwrap(),
    )
    .unwrap();
    assert_eq!(c, [1.5, 2.0, 3.0, 4.0]);
}

#[test]
fn batched_matches_single_products_and_broadcasts() {
    let (count, m, n, k) = (5, 9, 20, 13);
    let s = Setup::<f32>::new(m * count, n, k, (Op::N, Op::N), 0, 3);
    // A: `count` separate m × k matrices; B: one k × n matrix shared by all.
    let mut c = vec![0.0f32; count * m * n];
    let a = BatchRef::new(&s.a, count, m * k, m, k, k).unwrap();
    let b = BatchRef::new(&s.b, 1, 0, k, n, n).unwrap();
    let cm = BatchMut::new(&mut c, count, m * n, m, n, n).unwrap();
    gemm_batched(1.0, a, Op::N, b, Op::N, 0.0, cm).unwrap();
    // Stacking the A matrices makes the same product one (count·m) × n gemm.
    let mut whole = vec![0.0f32; count * m * n];
    let am = MatRef::dense(&s.a, count * m, k).unwrap();
    let bm = MatRef::dense(&s.b, k, n).unwrap();
    gemm(
        1.0,
        am,
        Op::N,
        bm,
        Op::N,
        0.0,
        MatMut::dense(&mut whole, count * m, n).unwrap(),
    )
    .unwrap();
    assert_eq!(c, whole);
}

#[test]
fn shape_errors_name_the_shapes() {
    let x = [0.0f32; 12];
    let mut y = [0.0f32; 12];
    let a = MatRef::dense(&x, 3, 4).unwrap();
    let err = gemm(
        1.0,
        a,
        Op::N,
        a,
        Op::N,
        0.0,
        MatMut::dense(&mut y, 3, 4).unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("op(A) is 3×4 (N), op(B) is 3×4 (N), C is 3×4"),
        "{err}"
    );
    let err = MatRef::new(&x, 4, 4, 4).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    assert!(
        MatRef::new(&x, 2, 4, 3).is_err(),
        "row stride below the column count"
    );
    assert!(
        BatchMut::new(&mut y, 2, 2, 2, 2, 2).is_err(),
        "overlapping outputs"
    );
    let b = BatchRef::new(&x, 3, 4, 1, 4, 4).unwrap();
    let c = BatchMut::new(&mut y, 2, 6, 1, 1, 1).unwrap();
    let err = gemm_batched(1.0, b, Op::N, b, Op::T, 0.0, c).unwrap_err();
    assert!(
        err.to_string().contains("A has 3 matrices but C has 2"),
        "{err}"
    );
}

#[test]
fn rounding_while_packing_equals_a_product_of_rounded_copies() {
    // Shapes past one KC / MC block and with ragged tiles, every op pair,
    // one or both operands rounded: the same bits as rounding first.
    let fill = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    };
    fn mat(x: &[f32], r: usize, c: usize) -> MatRef<'_, f32> {
        MatRef::dense(x, r, c).expect("dense")
    }
    for (m, k, n) in [(7, 300, 33), (150, 17, 20), (1, 5, 1)] {
        let (a, b) = (fill(m * k, 1), fill(k * n, 2));
        for dtype in [DType::BF16, DType::F16] {
            let rounded = |x: &[f32]| {
                let mut r = x.to_vec();
                crate::convert::round_to(&mut r, dtype);
                r
            };
            let (ra, rb) = (rounded(&a), rounded(&b));
            for (op_a, op_b) in [(Op::N, Op::N), (Op::N, Op::T), (Op::T, Op::N)] {
                let (ar, ac) = if op_a == Op::N { (m, k) } else { (k, m) };
                let (br, bc) = if op_b == Op::N { (k, n) } else { (n, k) };
                let run = |a: MatRef<'_, f32>, b: MatRef<'_, f32>| {
                    let mut c = vec![0.0; m * n];
                    gemm(
                        1.0,
                        a,
                        op_a,
                        b,
                        op_b,
                        0.0,
                        MatMut::dense(&mut c, m, n).expect("C"),
                    )
                    .expect("conforming");
                    c
                };
                // Rounding the rounded copies again changes no value, but
                // declares them 16-bit, which selects the same kernel (bf16
                // pairs where the CPU has them) as rounding while packing.
                let want = run(
                    mat(&ra, ar, ac).rounded_to(dtype),
                    mat(&rb, br, bc).rounded_to(dtype),
                );
                let both = run(
                    mat(&a, ar, ac).rounded_to(dtype),
                    mat(&b, br, bc).rounded_to(dtype),
                );
                assert_eq!(both, want, "{dtype:?} {m}x{k}x{n} {op_a:?}{op_b:?}");
                let only_b = run(mat(&ra, ar, ac), mat(&b, br, bc).rounded_to(dtype));
                assert_eq!(
                    only_b,
                    run(mat(&ra, ar, ac), mat(&rb, br, bc)),
                    "{dtype:?} {m}x{k}x{n} {op_a:?}{op_b:?} (B only)"
                );
            }
        }
    }
}

/// Subnormal inputs count as zero on every kernel and thread count (the
/// flush that keeps Intel cores off their microcode assists), and the
/// caller's floating-point mode is left as it was.
#[test]
fn subnormal_inputs_count_as_zero_and_the_fp_mode_is_restored() {
    let (m, n, k) = (37, 45, 300);
    let mut st = SplitMix64::new(3);
    let b: Vec<f32> = (0..k * n).map(|_| st.symmetric()).collect();
    let mut a: Vec<f32> = (0..m * k).map(|_| st.symmetric()).collect();
    // Every third row of A subnormal (a product of those alone would be a
    // subnormal, not zero, unflushed): the product must equal A with those
    // rows zeroed.
    let mut zeroed = a.clone();
    for (i, (x, z)) in a.iter_mut().zip(&mut zeroed).enumerate() {
        if (i / k) % 3 == 0 {
            *x = f32::MIN_POSITIVE * 0.15 * (1.0 + (i % 5) as f32);
            *z = 0.0;
        }
    }
    let tiny = f32::MIN_POSITIVE / 3.0;
    let before = std::hint::black_box(tiny) * 0.5;
    for kern in available(false) {
        for threads in [1, 2] {
            let run = |a: &[f32]| {
                let mut c = vec![0.0f32; m * n];
                run_batch_with(
                    kern,
                    threads,
                    &Problem {
                        m,
                        n,
                        k,
                        alpha: 1.0,
                        beta: 0.0,
                    },
                    Operand::new(a, (k, 1), 0, DType::F32),
                    Operand::new(&b, (n, 1), 0, DType::F32),
                    Output {
                        data: &mut c,
                        ld: n,
                        count: 1,
                        stride: 0,
                    },
                );
                c
            };
            assert_eq!(run(&a), run(&zeroed), "{} on {threads} threads", kern.name);
        }
    }
    // Subnormal arithmetic outside the gemm is untouched.
    let after = std::hint::black_box(tiny) * 0.5;
    assert!(after > 0.0 && after == before, "{after} vs {before}");
}

/// `gemm_packed` against `gemm` with the B it was packed from, to the bit.
fn packed_matches_gemm<E: Element>(
    m: usize,
    n: usize,
    k: usize,
    ops: (Op, Op),
    round: DType,
    seed: u64,
) {
    let s = Setup::<E>::new(m, n, k, ops, 1, seed);
    let (ar, ac) = if ops.0 == Op::N { (m, k) } else { (k, m) };
    let (br, bc) = if ops.1 == Op::N { (k, n) } else { (n, k) };
    let a = MatRef::new(&s.a, ar, ac, s.lda)
        .expect("A")
        .rounded_to(round);
    let b = MatRef::new(&s.b, br, bc, s.ldb)
        .expect("B")
        .rounded_to(round);
    let mut want = s.c.clone();
    let c = MatMut::new(&mut want, m, n, s.ldc).expect("C");
    gemm(0.5, a, ops.0, b, ops.1, 1.5, c).expect("gemm");
    let packed = PackedB::pack(b, ops.1);
    let mut got = s.c.clone();
    let c = MatMut::new(&mut got, m, n, s.ldc).expect("C");
    gemm_packed(0.5, a, ops.0, &packed, 1.5, c).expect("gemm_packed");
    assert!(
        want.iter()
            .zip(&got)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "{m}×{n}×{k} {ops:?} {round:?}: packed B gives other bits"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn packed_b_gives_the_bits_of_gemm(m in dims(), n in dims(), k in dims(), ops in ops(), seed: u64) {
        packed_matches_gemm::<f32>(m, n, k, ops, DType::F32, seed);
        packed_matches_gemm::<f32>(m, n, k, ops, DType::BF16, seed);
        packed_matches_gemm::<bf16>(m, n, k, ops, DType::F32, seed);
        packed_matches_gemm::<f16>(m, n, k, ops, DType::F32, seed);
    }
}

#[test]
fn packed_b_across_block_edges_gives_the_bits_of_gemm() {
    // Several KC slices, partial micro-panels, one A panel and several, and
    // products large enough to split over threads.
    for (m, n, k) in [
        (1, 4100, 1100),
        (16, 517, 513),
        (145, 300, 257),
        (300, 33, 600),
    ] {
        for ops in [(Op::N, Op::T), (Op::T, Op::N)] {
            packed_matches_gemm::<f32>(m, n, k, ops, DType::F32, 3);
            packed_matches_gemm::<f32>(m, n, k, ops, DType::BF16, 3);
        }
    }
}

#[test]
fn packed_b_refuses_a_mismatched_a() {
    let w = vec![0.25f32; 8 * 6];
    let b = MatRef::dense(&w, 8, 6).expect("B").rounded_to(DType::BF16);
    let packed = PackedB::pack(b, Op::T);
    let x = vec![1.0f32; 2 * 6];
    let mut y = vec![0.0f32; 2 * 8];
    let a = MatRef::dense(&x, 2, 6).expect("A");
    let wrong = MatMut::dense(&mut y[..8], 1, 8).expect("C");
    let err = gemm_packed(1.0, a, Op::N, &packed, 0.0, wrong).expect_err("2 rows into 1");
    assert!(err.to_string().contains("C is 1×8"), "{err}");
    let c = MatMut::dense(&mut y, 2, 8).expect("C");
    let f32_a = gemm_packed(1.0, a, Op::N, &packed, 0.0, c);
    // Only a B packed as bf16 pairs (a CPU with AVX-512 BF16) needs a bf16 A.
    assert_eq!(f32_a.is_err(), packed.needs_bf16(), "{f32_a:?}");
}

/// `gemm_new` and `gemm_packed_new` against `gemm` with `beta = 0`, to the
/// bit (including `k == 0` and `alpha == 0`, which store zeros).
fn fresh_matches_gemm<E: Element>(m: usize, n: usize, k: usize, ops: (Op, Op), alpha: f32) {
    let s = Setup::<E>::new(m, n, k, ops, 1, 11);
    let (ar, ac) = if ops.0 == Op::N { (m, k) } else { (k, m) };
    let (br, bc) = if ops.1 == Op::N { (k, n) } else { (n, k) };
    let a = MatRef::new(&s.a, ar, ac, s.lda).expect("A");
    let b = MatRef::new(&s.b, br, bc, s.ldb).expect("B");
    let mut want = vec![f32::NAN; m * n];
    let c = MatMut::dense(&mut want, m, n).expect("C");
    gemm(alpha, a, ops.0, b, ops.1, 0.0, c).expect("gemm");
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let got = gemm_new(alpha, (a, ops.0), (b, ops.1)).expect("gemm_new");
    assert_eq!(bits(&got), bits(&want), "{m}×{n}×{k} {ops:?}: gemm_new");
    let packed = PackedB::pack(b, ops.1);
    let got = gemm_packed_new(alpha, (a, ops.0), &packed).expect("gemm_packed_new");
    assert_eq!(bits(&got), bits(&want), "{m}×{n}×{k} {ops:?}: packed");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn fresh_outputs_give_the_bits_of_gemm(m in dims(), n in dims(), k in dims(), ops in ops()) {
        fresh_matches_gemm::<f32>(m, n, k, ops, 0.5);
        fresh_matches_gemm::<bf16>(m, n, k, ops, 1.0);
    }
}

#[test]
fn fresh_outputs_across_block_edges_and_degenerate_products() {
    // Several KC slices split over two threads (later slices read what the
    // first stored), no reduction at all, and a zero alpha. The pool's size
    // changes no result, so setting it cannot disturb other tests.
    crate::set_num_threads(2).expect("two threads");
    for (m, n, k, alpha) in [
        (145, 300, 600, 1.0),
        (300, 33, 257, -2.0),
        (7, 9, 0, 1.0),
        (5, 6, 4, 0.0),
        (0, 6, 4, 1.0),
    ] {
        for ops in [(Op::N, Op::T), (Op::T, Op::N)] {
            fresh_matches_gemm::<f32>(m, n, k, ops, alpha);
        }
    }
    let x = vec![1.0f32; 6];
    let a = MatRef::dense(&x, 2, 3).expect("A");
    let err = gemm_new(1.0, (a, Op::N), (a, Op::N)).expect_err("3 against 2");
    assert!(err.to_string().contains("op(B) is 2×3"), "{err}");
}

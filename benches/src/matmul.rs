//! The T5 matmul suite and the baseline implementations it is compared with.

use tessera_tensor::rng::SplitMix64;
use tessera_tensor::{gemm, Element, MatMut, MatRef, Op};

/// One product of the suite: `op(A)` is `m × k`, `op(B)` is `k × n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows of C.
    pub m: usize,
    /// The reduction length.
    pub k: usize,
    /// Columns of C.
    pub n: usize,
}

impl Shape {
    /// Floating-point operations of one product (2·m·k·n).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

const fn s(m: usize, k: usize, n: usize) -> Shape {
    Shape { m, k, n }
}

/// The shapes training spends its time in: flan-t5-small and -base
/// projections over 1024 tokens, the LM heads over 80 target tokens, and a
/// square reference.
pub const T5_SHAPES: [Shape; 10] = [
    s(1024, 512, 384),
    s(1024, 384, 512),
    s(1024, 512, 1024),
    s(1024, 1024, 512),
    s(1024, 768, 768),
    s(1024, 768, 2048),
    s(1024, 2048, 768),
    s(80, 512, 32128),
    s(80, 768, 32128),
    s(2048, 2048, 2048),
];

/// The operand orders backprop uses: forward `X·Wᵀ` (nt), input gradient
/// `dY·W` (nn), weight gradient `dYᵀ·X` (tn).
pub const OPS: [(Op, Op); 3] = [(Op::N, Op::N), (Op::N, Op::T), (Op::T, Op::N)];

/// The lowercase name of an operand order, e.g. `"nt"`.
pub fn op_name(ops: (Op, Op)) -> String {
    let c = |o: Op| if o == Op::N { 'n' } else { 't' };
    [c(ops.0), c(ops.1)].iter().collect()
}

/// Operands for one case, stored so that `op(A)` is `m × k` and `op(B)` is `k × n`.
pub struct Case<E> {
    /// The shape of the product.
    pub shape: Shape,
    /// The operand order.
    pub ops: (Op, Op),
    /// A, stored `m × k` (op N) or `k × m` (op T), dense.
    pub a: Vec<E>,
    /// B, stored `k × n` (op N) or `n × k` (op T), dense.
    pub b: Vec<E>,
    /// C, `m × n`, dense.
    pub c: Vec<f32>,
}

impl<E: Element> Case<E> {
    /// Random operands for `shape` and `ops`.
    pub fn new(shape: Shape, ops: (Op, Op)) -> Self {
        let mut st = SplitMix64::new((shape.m * 31 + shape.k * 17 + shape.n) as u64);
        let mut fill = |n: usize| {
            (0..n)
                .map(|_| E::from_f32(st.symmetric()))
                .collect::<Vec<E>>()
        };
        Case {
            shape,
            ops,
            a: fill(shape.m * shape.k),
            b: fill(shape.k * shape.n),
            c: vec![0.0; shape.m * shape.n],
        }
    }

    /// Stored `(rows, cols)` of A and of B.
    fn stored(&self) -> ((usize, usize), (usize, usize)) {
        let Shape { m, k, n } = self.shape;
        let a = if self.ops.0 == Op::N { (m, k) } else { (k, m) };
        let b = if self.ops.1 == Op::N { (k, n) } else { (n, k) };
        (a, b)
    }

    /// Floating-point operations of one product (2·m·k·n).
    pub fn flops(&self) -> f64 {
        self.shape.flops()
    }

    /// `C = A·B` with tessera's kernel.
    pub fn run_tessera(&mut self) {
        let ((ar, ac), (br, bc)) = self.stored();
        let a = MatRef::dense(&self.a, ar, ac).expect("case operands are consistent");
        let b = MatRef::dense(&self.b, br, bc).expect("case operands are consistent");
        let c = MatMut::dense(&mut self.c, self.shape.m, self.shape.n).expect("consistent");
        gemm(1.0, a, self.ops.0, b, self.ops.1, 0.0, c).expect("case shapes conform");
    }
}

impl Case<f32> {
    /// `C = A·B` with the `matrixmultiply` crate (its own threading).
    pub fn run_matrixmultiply(&mut self) {
        let Shape { m, k, n } = self.shape;
        let ((_, ac), (_, bc)) = self.stored();
        let strides = |op: Op, cols: usize| -> (isize, isize) {
            if op == Op::N {
                (cols as isize, 1)
            } else {
                (1, cols as isize)
            }
        };
        let (rsa, csa) = strides(self.ops.0, ac);
        let (rsb, csb) = strides(self.ops.1, bc);
        // SAFETY: the strides describe dense buffers of exactly the stored
        // shapes, and C is a distinct dense m × n buffer.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                self.a.as_ptr(),
                rsa,
                csa,
                self.b.as_ptr(),
                rsb,
                csb,
                0.0,
                self.c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
}

#[cfg(feature = "openblas")]
mod openblas {
    use super::{Case, Op, Shape};
    // The system library provides both the CBLAS symbols `cblas-sys`
    // declares and OpenBLAS's own setter.
    #[link(name = "openblas")]
    extern "C" {
        /// OpenBLAS's own thread-count setter (not part of CBLAS).
        fn openblas_set_num_threads(n: std::ffi::c_int);
    }

    /// Sets OpenBLAS's thread count.
    pub fn set_threads(n: usize) {
        // SAFETY: a plain setter with no pointer arguments.
        unsafe { openblas_set_num_threads(n as std::ffi::c_int) };
    }

    impl Case<f32> {
        /// `C = A·B` with the system OpenBLAS (`cblas_sgemm`).
        pub fn run_openblas(&mut self) {
            use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};
            let Shape { m, k, n } = self.shape;
            let ((_, ac), (_, bc)) = self.stored();
            let t = |op: Op| {
                if op == Op::N {
                    CBLAS_TRANSPOSE::CblasNoTrans
                } else {
                    CBLAS_TRANSPOSE::CblasTrans
                }
            };
            // SAFETY: dense row-major buffers of exactly the stored shapes,
            // with leading dimensions equal to their column counts.
            unsafe {
                cblas_sgemm(
                    CBLAS_LAYOUT::CblasRowMajor,
                    t(self.ops.0),
                    t(self.ops.1),
                    m as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    self.a.as_ptr(),
                    ac as i32,
                    self.b.as_ptr(),
                    bc as i32,
                    0.0,
                    self.c.as_mut_ptr(),
                    n as i32,
                );
            }
        }
    }
}

#[cfg(feature = "openblas")]
pub use openblas::set_threads as set_openblas_threads;

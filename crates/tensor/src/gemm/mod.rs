//! General matrix multiply: `C = alpha * op(A) * op(B) + beta * C`.
//!
//! `op` is identity ([`Op::N`]) or transpose ([`Op::T`]) for each operand, as
//! backprop needs all of NN, NT and TN. A and B may be f32, f16 or bf16
//! (16-bit operands are widened while packing); C and the accumulation are
//! f32. When both operands hold bf16 values (stored as bf16, or rounded to
//! it with [`MatRef::rounded_to`]) and the CPU has AVX-512 BF16, they are
//! packed as bf16 pairs and multiplied with `vdpbf16ps` at twice the f32
//! rate; the products are the same exact values, summed in a different
//! order. [`gemm_batched`] runs the same product over a strided batch, as
//! attention does for every (batch, head).
//!
//! The implementation follows BLIS: B is packed into `KC × NC` panels and A
//! into `MC × KC` panels in the order the micro-kernel reads them, and a
//! register-blocked micro-kernel computes `MR × NR` tiles of C. See
//! [`blocking`] for how the block sizes follow from the caches.
//!
//! Results are identical whatever the number of threads: work is split over
//! blocks of C only, never over K, so every element of C sees the same
//! operations in the same order.

pub mod blocking;
mod driver;
mod kernel;
mod pack;

use crate::error::{shape_err, Result, TensorError};
use crate::{DType, Element};
pub use driver::PackedB;

/// The name of the micro-kernel this CPU runs for operands of `dtype` (e.g.
/// `"avx2-6x16"`, or `"avx512bf16-8x32"` for bf16 where the CPU has
/// AVX-512 BF16), for reports.
pub fn kernel_name(dtype: DType) -> &'static str {
    kernel::best(dtype == DType::BF16).name
}

/// How an operand enters the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// Checks that a `rows × cols` matrix with row stride `ld`, repeated `count`
/// times `stride` elements apart, fits in `len` elements.
fn check_layout(
    op: &'static str,
    len: usize,
    count: usize,
    stride: usize,
    (rows, cols, ld): (usize, usize, usize),
) -> Result<()> {
    let describe =
        || format!("{count} matrices of {rows}×{cols} (row stride {ld}, matrix stride {stride})");
    if rows > 1 && ld < cols {
        return Err(shape_err(
            op,
            format!("row stride {ld} is less than {cols} columns"),
        ));
    }
    if count == 0 || rows == 0 || cols == 0 {
        return Ok(());
    }
    let footprint = (rows - 1)
        .checked_mul(ld)
        .and_then(|x| x.checked_add(cols))
        .and_then(|x| {
            (count - 1)
                .checked_mul(stride)
                .and_then(|y| y.checked_add(x))
        });
    match footprint {
        Some(need) if need <= len => Ok(()),
        _ => Err(TensorError::Buffer {
            op,
            len,
            detail: describe(),
        }),
    }
}

/// A read-only row-major matrix: element `(i, j)` is `data[i * ld + j]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, E> {
    data: &'a [E],
    rows: usize,
    cols: usize,
    ld: usize,
    round: DType,
}

impl<'a, E: Element> MatRef<'a, E> {
    /// A `rows × cols` matrix whose rows start `ld` elements apart.
    pub fn new(data: &'a [E], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        check_layout("MatRef::new", data.len(), 1, 0, (rows, cols, ld))?;
        Ok(MatRef {
            data,
            rows,
            cols,
            ld,
            round: DType::F32,
        })
    }

    /// The same matrix read as if stored in `dtype`: the gemm rounds each
    /// value to `dtype` (nearest-even) as it packs it, so a product of f32
    /// data has the numerics of a 16-bit operand without a 16-bit copy.
    /// `DType::F32` (the default) reads the values as they are.
    pub fn rounded_to(mut self, dtype: DType) -> Self {
        self.round = dtype;
        self
    }

    /// A densely stored `rows × cols` matrix (`ld == cols`).
    pub fn dense(data: &'a [E], rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "MatRef::dense",
                format!("{} elements cannot hold a {rows}×{cols} matrix", data.len()),
            ));
        }
        Self::new(data, rows, cols, cols)
    }

    /// Rows as stored.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns as stored.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// A mutable row-major f32 matrix: element `(i, j)` is `data[i * ld + j]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> MatMut<'a> {
    /// A `rows × cols` matrix whose rows start `ld` elements apart.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        check_layout("MatMut::new", data.len(), 1, 0, (rows, cols, ld))?;
        Ok(MatMut {
            data,
            rows,
            cols,
            ld,
        })
    }

    /// A densely stored `rows × cols` matrix (`ld == cols`).
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "MatMut::dense",
                format!("{} elements cannot hold a {rows}×{cols} matrix", data.len()),
            ));
        }
        Self::new(data, rows, cols, cols)
    }
}

/// `count` read-only matrices of the same shape, `stride` elements apart
/// (stride 0 repeats one matrix for every batch entry).
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a, E> {
    data: &'a [E],
    count: usize,
    stride: usize,
    rows: usize,
    cols: usize,
    ld: usize,
    round: DType,
}

impl<'a, E: Element> BatchRef<'a, E> {
    /// `count` matrices of `rows × cols`, rows `ld` apart, matrices `stride` apart.
    pub fn new(
        data: &'a [E],
        count: usize,
        stride: usize,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Result<Self> {
        check_layout("BatchRef::new", data.len(), count, stride, (rows, cols, ld))?;
        Ok(BatchRef {
            data,
            count,
            stride,
            rows,
            cols,
            ld,
            round: DType::F32,
        })
    }

    /// Every matrix read as if stored in `dtype` (see [`MatRef::rounded_to`]).
    pub fn rounded_to(mut self, dtype: DType) -> Self {
        self.round = dtype;
        self
    }
}

impl<'a, E: Element> From<MatRef<'a, E>> for BatchRef<'a, E> {
    fn from(m: MatRef<'a, E>) -> Self {
        BatchRef {
            data: m.data,
            count: 1,
            stride: 0,
            rows: m.rows,
            cols: m.cols,
            ld: m.ld,
            round: m.round,
        }
    }
}

/// `count` mutable f32 matrices of the same shape, `stride` elements apart.
/// The matrices must not overlap.
#[derive(Debug)]
pub struct BatchMut<'a> {
    data: &'a mut [f32],
    count: usize,
    stride: usize,
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> BatchMut<'a> {
    /// `count` matrices of `rows × cols`, rows `ld` apart, matrices `stride` apart.
    pub fn new(
        data: &'a mut [f32],
        count: usize,
        stride: usize,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Result<Self> {
        check_layout("BatchMut::new", data.len(), count, stride, (rows, cols, ld))?;
        let footprint = if rows == 0 { 0 } else { (rows - 1) * ld + cols };
        if count > 1 && stride < footprint {
            return Err(shape_err(
                "BatchMut::new",
                format!(
                    "matrix stride {stride} makes {rows}×{cols} outputs (row stride {ld}) overlap"
                ),
            ));
        }
        Ok(BatchMut {
            data,
            count,
            stride,
            rows,
            cols,
            ld,
        })
    }
}

impl<'a> From<MatMut<'a>> for BatchMut<'a> {
    fn from(m: MatMut<'a>) -> Self {
        BatchMut {
            data: m.data,
            count: 1,
            stride: 0,
            rows: m.rows,
            cols: m.cols,
            ld: m.ld,
        }
    }
}

/// The shape of `op(X)` for a stored `rows × cols` matrix.
fn op_shape(op: Op, rows: usize, cols: usize) -> (usize, usize) {
    match op {
        Op::N => (rows, cols),
        Op::T => (cols, rows),
    }
}

/// Element strides `(row, col)` of `op(X)` for a matrix stored with row stride `ld`.
fn op_strides(op: Op, ld: usize) -> (usize, usize) {
    match op {
        Op::N => (ld, 1),
        Op::T => (1, ld),
    }
}

/// `C = alpha * op(A) * op(B) + beta * C` for one matrix.
///
/// With `beta == 0`, C is overwritten (NaNs in it are ignored, as in BLAS).
/// Errors name the shapes when `op(A)`, `op(B)` and C do not conform.
pub fn gemm<A: Element, B: Element>(
    alpha: f32,
    a: MatRef<'_, A>,
    op_a: Op,
    b: MatRef<'_, B>,
    op_b: Op,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    gemm_batched(alpha, a.into(), op_a, b.into(), op_b, beta, c.into())
}

impl PackedB {
    /// Packs `op(b)` once for [`gemm_packed`]: for products that read the
    /// same B many times with few rows of A (greedy decoding reads every
    /// decoder weight once per step), packing is then a one-time cost
    /// instead of the largest part of each product. Packed for the kernel
    /// [`gemm`] would choose for this B with an A of the same kind (bf16
    /// pairs when `b` holds bf16 values and the CPU has AVX-512 BF16).
    pub fn pack<E: Element>(b: MatRef<'_, E>, op: Op) -> Self {
        let (k, n) = op_shape(op, b.rows, b.cols);
        let operand = driver::Operand::new(b.data, op_strides(op, b.ld), 0, b.round);
        let kern = kernel::best(operand.holds_bf16());
        PackedB::new(kern, operand, k, n)
    }

    /// Whether products with this B need an A that holds bf16 values.
    pub fn needs_bf16(&self) -> bool {
        self.kernel().packing == kernel::Packing::Bf16Pairs
    }
}

/// `C = alpha * op(A) * B + beta * C` with B packed in advance
/// ([`PackedB::pack`]); bit-identical to [`gemm`] with the B it was packed
/// from.
pub fn gemm_packed<A: Element>(
    alpha: f32,
    a: MatRef<'_, A>,
    op_a: Op,
    b: &PackedB,
    beta: f32,
    c: MatMut<'_>,
) -> Result<()> {
    let (m, ka) = op_shape(op_a, a.rows, a.cols);
    let (kb, n) = b.shape();
    if ka != kb || c.rows != m || c.cols != n {
        let detail = format!(
            "op(A) is {m}×{ka} ({op_a:?}), B is {kb}×{n}, C is {}×{}",
            c.rows, c.cols
        );
        return Err(shape_err("gemm_packed", detail));
    }
    let a = driver::Operand::new(a.data, op_strides(op_a, a.ld), 0, a.round);
    check_packed_a("gemm_packed (B packed as bf16 pairs)", &a, b)?;
    let problem = driver::Problem {
        m,
        n,
        k: ka,
        alpha,
        beta,
    };
    let output = driver::Output {
        data: c.data,
        ld: c.ld,
        count: 1,
        stride: 0,
    };
    driver::run_packed(&problem, a, b, output);
    Ok(())
}

/// `alpha * op(A) * op(B)` as a new `m × n` row-major buffer.
///
/// The product stores every element of memory it has just allocated (the
/// first `KC` slice of the reduction stores each tile before any later one
/// reads it back), where `vec![0.0; m * n]` and [`gemm`] with `beta = 0`
/// write it once more first (the zero fill, on one thread): for a layer's
/// fresh activations and gradients. The same bits as [`gemm`].
pub fn gemm_new<A: Element, B: Element>(
    alpha: f32,
    (a, op_a): (MatRef<'_, A>, Op),
    (b, op_b): (MatRef<'_, B>, Op),
) -> Result<Vec<f32>> {
    let (m, ka) = op_shape(op_a, a.rows, a.cols);
    let (kb, n) = op_shape(op_b, b.rows, b.cols);
    if ka != kb {
        let detail = format!("op(A) is {m}×{ka} ({op_a:?}), op(B) is {kb}×{n} ({op_b:?})");
        return Err(shape_err("gemm_new", detail));
    }
    let a = driver::Operand::new(a.data, op_strides(op_a, a.ld), 0, a.round);
    let b = driver::Operand::new(b.data, op_strides(op_b, b.ld), 0, b.round);
    fresh("gemm_new", alpha, a, (m, kb, n), driver::BPanels::Pack(b))
}

/// [`gemm_new`] with B packed in advance ([`PackedB::pack`]).
pub fn gemm_packed_new<A: Element>(
    alpha: f32,
    (a, op_a): (MatRef<'_, A>, Op),
    b: &PackedB,
) -> Result<Vec<f32>> {
    let (m, ka) = op_shape(op_a, a.rows, a.cols);
    let (kb, n) = b.shape();
    if ka != kb {
        let detail = format!("op(A) is {m}×{ka} ({op_a:?}), B is {kb}×{n}");
        return Err(shape_err("gemm_packed_new", detail));
    }
    let a = driver::Operand::new(a.data, op_strides(op_a, a.ld), 0, a.round);
    check_packed_a("gemm_packed_new", &a, b)?;
    let b = driver::BPanels::<f32>::Packed(b);
    fresh("gemm_packed_new", alpha, a, (m, kb, n), b)
}

/// Runs a product of conforming operands into a new buffer.
fn fresh<A: Element, B: Element>(
    op: &'static str,
    alpha: f32,
    a: driver::Operand<'_, A>,
    (m, k, n): (usize, usize, usize),
    b: driver::BPanels<'_, B>,
) -> Result<Vec<f32>> {
    let len = m
        .checked_mul(n)
        .ok_or_else(|| shape_err(op, format!("a {m}×{n} output overflows the address space")))?;
    let problem = driver::Problem {
        m,
        n,
        k,
        alpha,
        beta: 0.0,
    };
    let mut c = Vec::with_capacity(len);
    driver::run_fresh(&problem, a, b, &mut c.spare_capacity_mut()[..len]);
    // SAFETY: `run_fresh` stored all `len` elements (with `beta = 0` the
    // first KC slice stores every tile of C before a later slice reads it
    // back, and `k == 0` or `alpha == 0` stores zeros).
    unsafe { c.set_len(len) };
    Ok(c)
}

/// Fails when B is packed as bf16 pairs and A does not hold bf16 values.
fn check_packed_a<A: Element>(
    op: &'static str,
    a: &driver::Operand<'_, A>,
    b: &PackedB,
) -> Result<()> {
    if b.needs_bf16() && !a.holds_bf16() {
        return Err(TensorError::DType {
            op,
            expected: DType::BF16,
            found: A::DTYPE,
        });
    }
    Ok(())
}

/// `C[i] = alpha * op(A[i]) * op(B[i]) + beta * C[i]` for every `i` of a batch.
///
/// A and B must have C's batch count, or 1 (then they are shared by every
/// entry). Entries run in parallel when the batch is large enough to occupy
/// every thread; otherwise each product is parallel on its own.
pub fn gemm_batched<A: Element, B: Element>(
    alpha: f32,
    a: BatchRef<'_, A>,
    op_a: Op,
    b: BatchRef<'_, B>,
    op_b: Op,
    beta: f32,
    c: BatchMut<'_>,
) -> Result<()> {
    let (m, ka) = op_shape(op_a, a.rows, a.cols);
    let (kb, n) = op_shape(op_b, b.rows, b.cols);
    let describe = || {
        format!(
            "op(A) is {m}×{ka} ({op_a:?}), op(B) is {kb}×{n} ({op_b:?}), C is {}×{}",
            c.rows, c.cols
        )
    };
    if ka != kb || c.rows != m || c.cols != n {
        return Err(shape_err("gemm", describe()));
    }
    for (name, count) in [("A", a.count), ("B", b.count)] {
        if count != c.count && count != 1 {
            return Err(shape_err(
                "gemm_batched",
                format!("{name} has {count} matrices but C has {}", c.count),
            ));
        }
    }
    let stride = |count: usize, stride: usize| if count == 1 { 0 } else { stride };
    let (rsa, csa) = op_strides(op_a, a.ld);
    let (rsb, csb) = op_strides(op_b, b.ld);
    let problem = driver::Problem {
        m,
        n,
        k: ka,
        alpha,
        beta,
    };
    driver::run_batch(
        &problem,
        driver::Operand::new(a.data, (rsa, csa), stride(a.count, a.stride), a.round),
        driver::Operand::new(b.data, (rsb, csb), stride(b.count, b.stride), b.round),
        driver::Output {
            data: c.data,
            ld: c.ld,
            count: c.count,
            stride: c.stride,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests;

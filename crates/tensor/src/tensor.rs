//! The [`Tensor`] type: a shape, a dtype and shared, 64-byte-aligned,
//! contiguous row-major storage.
//!
//! Views are cheap: `reshape` and `narrow` (along the first axis) share the
//! storage and only change the shape and offset. Writing to a tensor whose
//! storage is shared copies it first (copy-on-write), so a view never changes
//! under another holder.

use crate::error::{shape_err, Result, TensorError};
use crate::gemm::{gemm_batched, BatchMut, BatchRef, Op};
use crate::{DType, Element};
use bytemuck::{Pod, Zeroable};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// One cache line; storage is a vector of these so every buffer starts on a
/// 64-byte boundary, as aligned SIMD loads and the packing routines want.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Owned, aligned bytes.
#[derive(Clone)]
struct Storage {
    lines: Vec<Line>,
    len: usize,
}

impl Storage {
    fn zeroed(len: usize) -> Self {
        Storage {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// An n-dimensional array of f32, f16 or bf16 in contiguous row-major order.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Arc<Storage>,
    /// Offset of the first element, in elements.
    offset: usize,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            dtype,
            storage: Arc::new(Storage::zeroed(numel(shape) * dtype.size())),
            offset: 0,
        }
    }

    /// A tensor holding a copy of `data`, which must have `shape`'s element count.
    pub fn from_slice<E: Element>(data: &[E], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(shape_err(
                "Tensor::from_slice",
                format!("{} elements cannot have shape {shape:?}", data.len()),
            ));
        }
        let mut t = Tensor::zeros(shape, E::DTYPE);
        t.as_mut_slice::<E>()?.copy_from_slice(data);
        Ok(t)
    }

    /// The shape, outermost axis first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    fn check_dtype<E: Element>(&self, op: &'static str) -> Result<()> {
        if self.dtype == E::DTYPE {
            Ok(())
        } else {
            Err(TensorError::DType {
                op,
                expected: E::DTYPE,
                found: self.dtype,
            })
        }
    }

    /// The elements, if `E` is this tensor's dtype.
    pub fn as_slice<E: Element>(&self) -> Result<&[E]> {
        self.check_dtype::<E>("Tensor::as_slice")?;
        Ok(bytemuck::cast_slice(self.bytes()))
    }

    /// The elements, mutably; copies the storage first if it is shared.
    pub fn as_mut_slice<E: Element>(&mut self) -> Result<&mut [E]> {
        self.check_dtype::<E>("Tensor::as_mut_slice")?;
        let (offset, n) = (self.offset, self.numel());
        let all: &mut [E] = bytemuck::cast_slice_mut(Arc::make_mut(&mut self.storage).bytes_mut());
        Ok(&mut all[offset..offset + n])
    }

    /// The same elements with another shape of equal element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(shape_err(
                "Tensor::reshape",
                format!("cannot reshape {:?} into {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Rows `start..start + len` of the first axis, as a view (no copy).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Tensor> {
        let rows = *self
            .shape
            .first()
            .ok_or_else(|| shape_err("Tensor::narrow", "cannot narrow a 0-dimensional tensor"))?;
        if start.checked_add(len).is_none_or(|end| end > rows) {
            return Err(shape_err(
                "Tensor::narrow",
                format!(
                    "rows {start}..{} out of range for shape {:?}",
                    start + len,
                    self.shape
                ),
            ));
        }
        let row = numel(&self.shape[1..]);
        let mut shape = self.shape.clone();
        shape[0] = len;
        Ok(Tensor {
            shape,
            offset: self.offset + start * row,
            ..self.clone()
        })
    }

    /// This tensor's bytes (its view of the storage).
    fn bytes(&self) -> &[u8] {
        let size = self.dtype.size();
        &self.storage.bytes()[self.offset * size..][..self.numel() * size]
    }

    /// The elements widened to f32 (a copy, whatever the dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        let bytes = self.bytes();
        match self.dtype {
            DType::F32 => out.copy_from_slice(bytemuck::cast_slice(bytes)),
            DType::F16 => half::f16::slice_to_f32(bytemuck::cast_slice(bytes), &mut out),
            DType::BF16 => half::bf16::slice_to_f32(bytemuck::cast_slice(bytes), &mut out),
        }
        out
    }

    /// A copy converted to `dtype` (round-to-nearest-even when narrowing).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype {
            return self.clone();
        }
        let wide = self.to_f32_vec();
        let mut out = Tensor::zeros(&self.shape, dtype);
        let bytes = Arc::make_mut(&mut out.storage).bytes_mut();
        match dtype {
            DType::F32 => bytemuck::cast_slice_mut::<u8, f32>(bytes).copy_from_slice(&wide),
            DType::F16 => half::f16::slice_from_f32(&wide, bytemuck::cast_slice_mut(bytes)),
            DType::BF16 => half::bf16::slice_from_f32(&wide, bytemuck::cast_slice_mut(bytes)),
        }
        out
    }

    /// Copies an `ndarray` array (any layout) into a new tensor.
    pub fn from_ndarray<E: Element>(a: &ArrayD<E>) -> Tensor {
        let data: Vec<E> = a.iter().copied().collect();
        Tensor::from_slice(&data, a.shape()).expect("element count equals the array's shape")
    }

    /// Copies this tensor into an `ndarray` array, if `E` is its dtype.
    pub fn to_ndarray<E: Element>(&self) -> Result<ArrayD<E>> {
        let data = self.as_slice::<E>()?.to_vec();
        ArrayD::from_shape_vec(IxDyn(&self.shape), data)
            .map_err(|e| shape_err("Tensor::to_ndarray", e.to_string()))
    }
}

impl Tensor {
    /// `op_a(self) · op_b(other)` as a new f32 tensor.
    ///
    /// Two 2-D tensors give one product; two 3-D tensors `[batch, rows,
    /// cols]` give a batched product (a batch of 1 on either side is shared
    /// by every entry). Both operands must have the same dtype; f16 and bf16
    /// are widened while packing and the result is f32.
    pub fn matmul(&self, op_a: Op, other: &Tensor, op_b: Op) -> Result<Tensor> {
        if self.dtype != other.dtype {
            return Err(TensorError::DType {
                op: "Tensor::matmul",
                expected: self.dtype,
                found: other.dtype,
            });
        }
        match self.dtype {
            DType::F32 => matmul_typed::<f32>(self, op_a, other, op_b),
            DType::F16 => matmul_typed::<half::f16>(self, op_a, other, op_b),
            DType::BF16 => matmul_typed::<half::bf16>(self, op_a, other, op_b),
        }
    }
}

/// `[batch, rows, cols]` of a 2-D or 3-D matmul operand.
fn as_batch(t: &Tensor) -> Result<[usize; 3]> {
    match *t.shape() {
        [r, c] => Ok([1, r, c]),
        [b, r, c] => Ok([b, r, c]),
        _ => Err(shape_err(
            "Tensor::matmul",
            format!("operands must be 2-D or 3-D, not {:?}", t.shape()),
        )),
    }
}

fn matmul_typed<E: Element>(a: &Tensor, op_a: Op, b: &Tensor, op_b: Op) -> Result<Tensor> {
    let ([ba, ra, ca], [bb, rb, cb]) = (as_batch(a)?, as_batch(b)?);
    let m = if op_a == Op::N { ra } else { ca };
    let n = if op_b == Op::N { cb } else { rb };
    let count = ba.max(bb);
    let two_d = a.shape().len() == 2 && b.shape().len() == 2;
    let shape = if two_d { vec![m, n] } else { vec![count, m, n] };
    let mut out = Tensor::zeros(&shape, DType::F32);
    let c = BatchMut::new(out.as_mut_slice::<f32>()?, count, m * n, m, n, n)?;
    let a = BatchRef::new(a.as_slice::<E>()?, ba, ra * ca, ra, ca, ca)?;
    let b = BatchRef::new(b.as_slice::<E>()?, bb, rb * cb, rb, cb, cb)?;
    gemm_batched(1.0, a, op_a, b, op_b, 0.0, c)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_aligned_and_views_share_it() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap().as_ptr() as usize % 64, 0);
        let v = t.narrow(1, 2).unwrap();
        assert_eq!(v.as_slice::<f32>().unwrap(), &[3.0, 4.0, 5.0, 6.0]);
        let r = v.reshape(&[4]).unwrap();
        assert_eq!(r.shape(), &[4]);
        assert!(t.reshape(&[4]).is_err());
        assert!(t.narrow(2, 2).is_err());
    }

    #[test]
    fn writes_do_not_leak_into_views() {
        let t = Tensor::from_slice(&[1.0f32, 2.0], &[2]).unwrap();
        let mut u = t.clone();
        u.as_mut_slice::<f32>().unwrap()[0] = 9.0;
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 2.0]);
    }

    #[test]
    fn matmul_2d_and_batched() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let c = a.matmul(Op::N, &a, Op::T).unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        assert_eq!(c.as_slice::<f32>().unwrap(), &[14.0, 32.0, 32.0, 77.0]);
        let b3 = a.reshape(&[1, 2, 3]).unwrap();
        let two =
            Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0], &[2, 2, 2]).unwrap();
        let d = two.matmul(Op::N, &b3, Op::N).unwrap();
        assert_eq!(d.shape(), &[2, 2, 3]);
        assert_eq!(
            &d.as_slice::<f32>().unwrap()[6..],
            &[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
        let h = a.to_dtype(DType::BF16);
        let e = h.matmul(Op::T, &h, Op::N).unwrap();
        assert_eq!(e.shape(), &[3, 3]);
        assert!(a
            .matmul(Op::N, &a, Op::N)
            .unwrap_err()
            .to_string()
            .contains("op(A) is 2×3"));
        assert!(a.matmul(Op::N, &h, Op::T).is_err());
    }

    #[test]
    fn dtype_round_trips_and_errors() {
        let t = Tensor::from_slice(&[1.5f32, -2.25, 3.0], &[3]).unwrap();
        let h = t.to_dtype(DType::BF16);
        assert_eq!(h.to_f32_vec(), vec![1.5, -2.25, 3.0]);
        assert!(h.as_slice::<f32>().is_err());
        let a = t.to_dtype(DType::F16).to_ndarray::<half::f16>().unwrap();
        assert_eq!(Tensor::from_ndarray(&a).to_f32_vec(), vec![1.5, -2.25, 3.0]);
    }
}

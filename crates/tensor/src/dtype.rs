//! Element types: f32 for arithmetic, f16 and bf16 for storage and transfer.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (`half::f16`).
    F16,
    /// bfloat16: binary32's exponent, 7 mantissa bits (`half::bf16`).
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A Rust type that can be a tensor element. Implemented for `f32`, `f16`
/// and `bf16` only; arithmetic always happens in f32.
pub trait Element:
    sealed::Sealed + bytemuck::Pod + Copy + Default + Send + Sync + PartialEq + fmt::Debug + 'static
{
    /// The [`DType`] tag of this type.
    const DTYPE: DType;
    /// Widens one element to f32 (exact for every type).
    fn to_f32(self) -> f32;
    /// Narrows an f32 with round-to-nearest-even.
    fn from_f32(x: f32) -> Self;
    /// Widens a slice into `dst` (same length), using the hardware path when present.
    fn slice_to_f32(src: &[Self], dst: &mut [f32]);
    /// Narrows a slice from `src` (same length), using the hardware path when present.
    fn slice_from_f32(src: &[f32], dst: &mut [Self]);
    /// `x` moved to one of its two neighbours in this type, chosen by 32
    /// uniform `noise` bits (see [`crate::round_stochastic`]), as an f32
    /// that narrows exactly; `x` itself for f32.
    fn stochastic_neighbour(x: f32, noise: u32) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn slice_from_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn stochastic_neighbour(x: f32, _noise: u32) -> f32 {
        x
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        crate::convert::f16_to_f32(src, dst);
    }
    fn slice_from_f32(src: &[f32], dst: &mut [Self]) {
        crate::convert::f32_to_f16(src, dst);
    }
    fn stochastic_neighbour(x: f32, noise: u32) -> f32 {
        crate::convert::f16_stochastic(x, noise)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        crate::convert::bf16_to_f32(src, dst);
    }
    fn slice_from_f32(src: &[f32], dst: &mut [Self]) {
        crate::convert::f32_to_bf16(src, dst);
    }
    fn stochastic_neighbour(x: f32, noise: u32) -> f32 {
        crate::convert::bf16_stochastic(x, noise)
    }
}

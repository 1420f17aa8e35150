//! tessera's tensor engine: the kernels training spends its time in, on
//! plain slices of f32, f16 and bf16.
//!
//! A BLIS-style matrix multiply ([`mod@gemm`]) with SIMD micro-kernels chosen
//! at run time, fused variable-length attention ([`attention`]), the
//! element-wise and loss kernels ([`ops`]), 16-bit conversions with nearest
//! and stochastic rounding, and the one random generator ([`rng`]).
//! Arithmetic is f32 whatever the storage type. Shapes travel as explicit
//! arguments beside the slices, as in llm.c; the model crate owns the
//! buffers.
//!
//! `unsafe` code is in the SIMD kernels (gemm, attention, conversions,
//! vector math), in the one call that tunes glibc's allocator and in the
//! two constructors of buffers written once without a zero fill
//! ([`gemm_new`], [`memory::build_regions`]); each is behind a safe
//! function of this crate and each block is justified by a `SAFETY:`
//! comment.

pub mod attention;
mod convert;
mod dtype;
mod error;
pub mod gemm;
pub mod machine;
pub mod memory;
pub mod ops;
pub mod rng;
#[cfg(target_arch = "x86_64")]
mod simd;
mod threads;

pub use convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, round_stochastic};
pub use dtype::{DType, Element};
pub use error::{Result, TensorError};
pub use gemm::{
    gemm, gemm_batched, gemm_new, gemm_packed, gemm_packed_new, BatchMut, BatchRef, MatMut, MatRef,
    Op, PackedB,
};
pub use half::{bf16, f16};
pub use threads::{install, num_threads, set_num_threads};

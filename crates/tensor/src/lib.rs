//! tessera's tensor engine.
//!
//! Tensors of f32, f16 and bf16 with contiguous, 64-byte-aligned storage, and
//! the hand-tuned kernels that training spends its time in: a BLIS-style
//! matrix multiply ([`gemm`]) with SIMD micro-kernels chosen at run time.
//! Arithmetic is f32 whatever the storage type.
//!
//! `unsafe` code lives only in the kernels, behind the safe functions of
//! this crate, each block justified by a `SAFETY:` comment.

pub mod attention;
mod convert;
mod dtype;
mod error;
pub mod gemm;
pub mod memory;
pub mod ops;
pub mod rng;
#[cfg(target_arch = "x86_64")]
mod simd;
mod tensor;
mod threads;

pub use convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, round_stochastic};
pub use dtype::{DType, Element};
pub use error::{Result, TensorError};
pub use gemm::{gemm, gemm_batched, BatchMut, BatchRef, MatMut, MatRef, Op};
pub use half::{bf16, f16};
pub use tensor::Tensor;
pub use threads::{install, num_threads, set_num_threads};

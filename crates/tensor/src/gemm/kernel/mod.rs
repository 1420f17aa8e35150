//! Micro-kernels: `C_tile = alpha * A_sliver · B_sliver + beta * C_tile` for
//! one `MR × NR` tile, reading packed operands.
//!
//! A kernel is chosen once, at run time, from what the CPU supports:
//! AVX-512F, else AVX2 + FMA, else a portable kernel written so that the
//! compiler can vectorise it for any target. Products whose operands both hold bf16
//! values have a second choice: where the CPU has AVX-512 BF16, a kernel
//! that multiplies pairs of bf16 with `vdpbf16ps` at twice the f32 rate
//! (see [`Packing::Bf16Pairs`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

use super::blocking::Blocking;
use std::sync::OnceLock;

/// The signature every micro-kernel has.
///
/// # Safety
/// `a` points to a packed `k`-step sliver of `mr` lines and `b` to one of
/// `nr` lines, in the kernel's [`Packing`]: for [`Packing::F32`], `k * mr`
/// f32 (`a[p * mr + i]`) and `k * nr` f32 (`b[p * nr + j]`); for
/// [`Packing::Bf16Pairs`], `k.div_ceil(2) * mr` and `k.div_ceil(2) * nr`
/// pairs. `c` points to an `m × n` tile (with `m ≤ mr`, `n ≤ nr`) whose rows
/// are `ldc` elements apart and valid for writes, and for reads of
/// initialised values when `tile.beta != 0` (with `beta == 0` the kernel
/// never reads C, which may then be uninitialised); the CPU supports the
/// kernel's instructions.
pub(crate) type KernelFn =
    unsafe fn(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, tile: Tile);

/// What a kernel call does with its tile of C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// Rows of the tile that exist (≤ MR).
    pub m: usize,
    /// Columns of the tile that exist (≤ NR).
    pub n: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C; 0 means C is overwritten without being read.
    pub beta: f32,
}

/// The layout of the packed slivers a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// Group `p` of a sliver is element `p` of every line, as f32.
    F32,
    /// Pair `q` of a sliver holds elements `2q` and `2q + 1` of every line as
    /// two bf16 in one 32-bit slot (`2q` in the low half), the operand layout
    /// of `vdpbf16ps`; an odd last step is paired with zero. Only operands
    /// whose values are bf16 can be packed this way: the pairs are the upper
    /// halves of their f32 bits.
    Bf16Pairs,
}

/// A micro-kernel with its tile shape and the blocking tuned for it.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// Short name for benchmark reports, e.g. `"avx2-6x16"`.
    pub name: &'static str,
    /// How the operands are packed for it.
    pub packing: Packing,
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Cache blocking for this tile shape.
    pub blocking: Blocking,
    /// The kernel itself.
    pub run: KernelFn,
}

/// The best kernel this CPU runs for operands that hold bf16 values (both
/// of them) or not: the last of [`available`], chosen on first use.
pub(crate) fn best(bf16_operands: bool) -> &'static Kernel {
    static BEST: [OnceLock<&'static Kernel>; 2] = [OnceLock::new(), OnceLock::new()];
    BEST[usize::from(bf16_operands)].get_or_init(|| {
        available(bf16_operands)
            .pop()
            .expect("the portable kernel runs everywhere")
    })
}

/// Every kernel this CPU can run on operands that hold bf16 values (both of
/// them) or not, slowest first (tests compare them all).
pub(crate) fn available(bf16_operands: bool) -> Vec<&'static Kernel> {
    let mut all = vec![&portable::KERNEL];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            all.push(&avx2::KERNEL);
        }
        if avx512::has_f32() {
            all.push(&avx512::F32);
        }
        if bf16_operands && avx512::has_bf16() {
            all.push(&avx512::BF16);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bf16_operands;
    all
}

/// Applies `C = alpha * acc + beta * C` to an `m × n` tile from a dense
/// `MR × NR` accumulator; shared by the portable kernel and the partial
/// tiles of the SIMD kernels so that all paths round identically.
///
/// # Safety
/// `c` must be valid for writes of an `m × n` tile with row stride `ldc`,
/// and for reads of initialised values when `t.beta != 0`.
#[inline(always)]
pub(crate) unsafe fn store_tile(acc: &[f32], nr: usize, c: *mut f32, ldc: usize, t: Tile) {
    for i in 0..t.m {
        for j in 0..t.n {
            let x = t.alpha * acc[i * nr + j];
            // SAFETY: (i, j) is inside the m × n tile the caller vouches for.
            unsafe {
                let dst = c.add(i * ldc + j);
                *dst = if t.beta == 0.0 {
                    x
                } else {
                    t.beta.mul_add(*dst, x)
                };
            }
        }
    }
}

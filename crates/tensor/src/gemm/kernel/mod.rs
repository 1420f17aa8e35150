//! Micro-kernels: `C_tile = alpha * A_sliver · B_sliver + beta * C_tile` for
//! one `MR × NR` tile, reading packed operands.
//!
//! A kernel is chosen once, at run time, from what the CPU supports: AVX2 +
//! FMA where present, else a portable kernel written so that the compiler can
//! vectorise it for any target. An AVX-512 (and `vdpbf16ps`) kernel plugs in
//! here as another [`Kernel`] with its own tile size.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;

use super::blocking::Blocking;
use std::sync::OnceLock;

/// The signature every micro-kernel has.
///
/// # Safety
/// `a` points to `k * mr` packed f32 (`a[p * mr + i]`), `b` to `k * nr`
/// packed f32 (`b[p * nr + j]`); `c` points to an `m × n` tile (with
/// `m ≤ mr`, `n ≤ nr`) whose rows are `ldc` elements apart and valid for
/// reads and writes; the CPU supports the kernel's instructions.
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

/// A micro-kernel with its tile shape and the blocking tuned for it.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// Short name for benchmark reports, e.g. `"avx2-6x16"`.
    pub name: &'static str,
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Cache blocking for this tile shape.
    pub blocking: Blocking,
    /// The kernel itself.
    pub run: KernelFn,
}

/// The best kernel this CPU runs, chosen on first use.
pub(crate) fn best() -> &'static Kernel {
    static BEST: OnceLock<&'static Kernel> = OnceLock::new();
    BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return &avx2::KERNEL;
        }
        &portable::KERNEL
    })
}

/// Every kernel this CPU can run (for tests that compare them).
#[cfg(test)]
pub(crate) fn available() -> Vec<&'static Kernel> {
    let mut all = vec![&portable::KERNEL];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        all.push(&avx2::KERNEL);
    }
    all
}

/// Applies `C = alpha * acc + beta * C` to an `m × n` tile from a dense
/// `MR × NR` accumulator; shared by the portable kernel and the partial
/// tiles of the SIMD kernels so that all paths round identically.
///
/// # Safety
/// `c` must be valid for reads and writes of an `m × n` tile with row stride `ldc`.
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

//! The AVX2 + FMA micro-kernel: a 6 × 16 tile of C in 12 ymm registers.
//!
//! Per step of the reduction it loads one 16-wide row of packed B (two
//! registers), broadcasts six values of packed A one at a time, and issues 12
//! FMAs: 15 of the 16 ymm registers in use, and 12 FMAs per 2 loads + 6
//! broadcasts keep both FMA pipes of Zen 3 / Haswell-class cores busy.

use super::{store_tile, Kernel, Packing, Tile};
use crate::gemm::blocking::Blocking;
use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;

/// The AVX2 kernel, 6 × 16.
pub(crate) static KERNEL: Kernel = Kernel {
    name: "avx2-6x16",
    packing: Packing::F32,
    mr: MR,
    nr: NR,
    blocking: Blocking::for_tile(MR, NR, 1),
    run: kernel,
};

/// # Safety
/// See [`super::KernelFn`]; additionally the CPU must support AVX2 and FMA.
unsafe fn kernel(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: forwarded contract; `best()` only selects this kernel when the
    // CPU reports AVX2 and FMA.
    unsafe { kernel_avx2(k, a, b, c, ldc, t) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // Start fetching the tile of C now, so that the epilogue does not wait
    // for it (first and last float of each row cover both cache lines).
    for i in 0..t.m {
        // SAFETY: prefetches never fault; the addresses are inside the tile.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + t.n - 1).cast());
        }
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..k {
        // SAFETY: p < k, and the packed panels hold k * NR and k * MR floats.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    if t.m == MR && t.n == NR {
        // SAFETY: a full tile: the caller vouches for MR rows of NR floats at c.
        unsafe { store_full(&acc, c, ldc, t) };
    } else {
        let mut buf = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: each row of buf holds NR = 16 floats.
            unsafe {
                _mm256_storeu_ps(buf.as_mut_ptr().add(i * NR), row[0]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(i * NR + 8), row[1]);
            }
        }
        // SAFETY: the caller vouches for the m × n tile at c.
        unsafe { store_tile(&buf, NR, c, ldc, t) };
    }
}

/// `C = alpha * acc + beta * C` on a full tile, rounding exactly as
/// [`store_tile`] does (one multiply, then one fused multiply-add).
#[target_feature(enable = "avx2,fma")]
unsafe fn store_full(acc: &[[__m256; 2]; MR], c: *mut f32, ldc: usize, t: Tile) {
    let alpha = _mm256_set1_ps(t.alpha);
    let beta = _mm256_set1_ps(t.beta);
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            // SAFETY: row i < MR, columns 8h..8h+8 < NR: inside the full tile.
            unsafe {
                let dst = c.add(i * ldc + 8 * h);
                let x = _mm256_mul_ps(alpha, v);
                let r = if t.beta == 0.0 {
                    x
                } else {
                    _mm256_fmadd_ps(beta, _mm256_loadu_ps(dst), x)
                };
                _mm256_storeu_ps(dst, r);
            }
        }
    }
}

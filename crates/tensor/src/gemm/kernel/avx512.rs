//! The AVX-512 micro-kernels: an 8 × 32 tile of C in 16 zmm registers, fed
//! f32 by FMA or pairs of bf16 by `vdpbf16ps`.
//!
//! Per step of the reduction each loads one 32-wide row of packed B (two
//! zmm), broadcasts eight values of packed A one at a time, and issues 16
//! multiply-adds into independent accumulators — more than the latency of
//! either instruction (4–6 cycles) times its throughput, so the pipes never
//! wait, with 14 of the 32 zmm registers left for the compiler.
//!
//! The bf16 kernel's step is a pair of steps: each `vdpbf16ps` multiplies
//! 16 pairs of bf16 and adds both products to 16 f32 accumulators, 32
//! multiply-adds per instruction against an f32 FMA's 16, at the same issue
//! rate on Zen 4 (one zmm per cycle). The products of two bf16 are exact in
//! f32, so its result differs from the f32 kernels' on the same values only
//! in the order of the additions (the odd step of a pair is added first)
//! and in flushing subnormal inputs and results to zero, as the instruction
//! does.

use super::{store_tile, Kernel, Packing, Tile};
use crate::gemm::blocking::Blocking;
use std::arch::x86_64::*;

const MR: usize = 8;
const NR: usize = 32;

/// The AVX-512F kernel, 8 × 32, on f32.
pub(crate) static F32: Kernel = Kernel {
    name: "avx512-8x32",
    packing: Packing::F32,
    mr: MR,
    nr: NR,
    blocking: Blocking::for_tile(MR, NR, 1),
    run: kernel_f32,
};

/// The AVX-512 BF16 kernel, 8 × 32, on bf16 pairs.
pub(crate) static BF16: Kernel = Kernel {
    name: "avx512bf16-8x32",
    packing: Packing::Bf16Pairs,
    mr: MR,
    nr: NR,
    blocking: Blocking::for_tile(MR, NR, 2),
    run: kernel_bf16,
};

/// Whether this CPU runs [`F32`].
pub(crate) fn has_f32() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether this CPU runs [`BF16`].
pub(crate) fn has_bf16() -> bool {
    has_f32() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// # Safety
/// See [`super::KernelFn`]; additionally the CPU must support AVX-512F.
unsafe fn kernel_f32(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: forwarded contract; `best()` only selects this kernel when
    // `has_f32()` holds.
    unsafe { f32_avx512(k, a, b, c, ldc, t) }
}

/// # Safety
/// See [`super::KernelFn`]; additionally the CPU must support AVX-512F and
/// AVX-512 BF16.
unsafe fn kernel_bf16(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: forwarded contract; `best()` only selects this kernel when
    // `has_bf16()` holds.
    unsafe { bf16_avx512(k, a.cast(), b.cast(), c, ldc, t) }
}

/// The accumulators of one tile: two zmm of 16 columns per row.
type Acc = [[__m512; 2]; MR];

#[target_feature(enable = "avx512f")]
unsafe fn f32_avx512(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: the tile is the caller's.
    unsafe { prefetch(c, ldc, t) };
    let mut acc: Acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..k {
        // SAFETY: p < k, and the packed slivers hold k steps of NR (B) and
        // MR (A) floats.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    // SAFETY: the tile is the caller's.
    unsafe { store(&acc, c, ldc, t) };
}

/// Reinterprets 32 bf16 (as 16 pairs) for `vdpbf16ps`.
#[target_feature(enable = "avx512f")]
#[inline]
fn pairs(v: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors; every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_avx512(k: usize, a: *const i32, b: *const i32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: the tile is the caller's.
    unsafe { prefetch(c, ldc, t) };
    let mut acc: Acc = [[_mm512_setzero_ps(); 2]; MR];
    for q in 0..k.div_ceil(2) {
        // SAFETY: q < ceil(k / 2), and the packed slivers hold ceil(k / 2)
        // pairs per line: NR per step for B, MR for A.
        unsafe {
            let b0 = pairs(_mm512_loadu_si512(b.add(q * NR).cast()));
            let b1 = pairs(_mm512_loadu_si512(b.add(q * NR + 16).cast()));
            let ap = a.add(q * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = pairs(_mm512_set1_epi32(*ap.add(i)));
                row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
            }
        }
    }
    // SAFETY: the tile is the caller's.
    unsafe { store(&acc, c, ldc, t) };
}

/// Starts fetching the tile of C, so that the epilogue does not wait for it
/// (the first, middle and last float of a row cover its two cache lines, or
/// three when the row is not aligned).
///
/// # Safety
/// None beyond the target feature: prefetches never fault.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn prefetch(c: *const f32, ldc: usize, t: Tile) {
    for i in 0..t.m {
        for j in [0, t.n / 2, t.n - 1] {
            // SAFETY: prefetches never fault; the addresses are inside the tile.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + j).cast()) };
        }
    }
}

/// `C = alpha * acc + beta * C` on the tile: full tiles straight from the
/// registers, partial ones through [`store_tile`].
///
/// # Safety
/// `c` must be valid for writes of the `t.m × t.n` tile, and for reads of
/// initialised values when `t.beta != 0`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(acc: &Acc, c: *mut f32, ldc: usize, t: Tile) {
    if t.m == MR && t.n == NR {
        // SAFETY: a full tile: the caller vouches for MR rows of NR floats at c.
        unsafe { store_full(acc, c, ldc, t) };
    } else {
        let mut buf = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: each row of buf holds NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(buf.as_mut_ptr().add(i * NR), row[0]);
                _mm512_storeu_ps(buf.as_mut_ptr().add(i * NR + 16), row[1]);
            }
        }
        // SAFETY: the caller vouches for the m × n tile at c.
        unsafe { store_tile(&buf, NR, c, ldc, t) };
    }
}

/// `C = alpha * acc + beta * C` on a full tile, rounding exactly as
/// [`store_tile`] does (one multiply, then one fused multiply-add).
#[target_feature(enable = "avx512f")]
unsafe fn store_full(acc: &Acc, c: *mut f32, ldc: usize, t: Tile) {
    let alpha = _mm512_set1_ps(t.alpha);
    let beta = _mm512_set1_ps(t.beta);
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            // SAFETY: row i < MR, columns 16h..16h+16 < NR: inside the full tile.
            unsafe {
                let dst = c.add(i * ldc + 16 * h);
                let x = _mm512_mul_ps(alpha, v);
                let r = if t.beta == 0.0 {
                    x
                } else {
                    _mm512_fmadd_ps(beta, _mm512_loadu_ps(dst), x)
                };
                _mm512_storeu_ps(dst, r);
            }
        }
    }
}

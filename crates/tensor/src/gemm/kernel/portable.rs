//! The portable micro-kernel: plain Rust over fixed-size arrays, which the
//! compiler unrolls and vectorises for whatever target it builds for. It
//! multiplies and adds separately, since a target without FMA hardware would
//! otherwise call a slow software `fma`.

use super::{store_tile, Kernel, Packing, Tile};
use crate::gemm::blocking::Blocking;

const MR: usize = 4;
const NR: usize = 8;

/// The portable kernel, 4 × 8.
pub(crate) static KERNEL: Kernel = Kernel {
    name: "portable-4x8",
    packing: Packing::F32,
    mr: MR,
    nr: NR,
    blocking: Blocking::for_tile(MR, NR, 1),
    run: kernel,
};

/// # Safety
/// See [`super::KernelFn`].
unsafe fn kernel(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, t: Tile) {
    // SAFETY: the caller guarantees k * MR and k * NR packed elements.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, k * MR),
            std::slice::from_raw_parts(b, k * NR),
        )
    };
    let mut acc = [0.0f32; MR * NR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                acc[i * NR + j] += ap[i] * bp[j];
            }
        }
    }
    // SAFETY: the caller guarantees the tile of C.
    unsafe { store_tile(&acc, NR, c, ldc, t) };
}

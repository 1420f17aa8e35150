//! The tile primitives the fused attention kernels are built from: a small
//! strided matrix product, the row operations of the softmax (max, shifted
//! exponential with its sum) and, for one query row, dot products against
//! many keys and the probability-weighted sum of value rows.
//!
//! Each primitive has an AVX2 + FMA version (chosen at run time, see
//! [`Isa::best`]) and a portable version. The safe wrappers check every
//! index the unsafe code will touch, so the `unsafe` is confined to this file.
//! Every primitive's order of operations is fixed by its arguments alone, so
//! results never depend on how work is split between threads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Which implementation of the primitives runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust, for any CPU.
    Portable,
    /// AVX2 + FMA intrinsics (x86-64 with both features only).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best implementation this CPU supports, detected once.
    pub(crate) fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
            Isa::Portable
        })
    }

    /// Every implementation this CPU runs (for tests that compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Isa::best() != Isa::Portable {
            all.push(Isa::best());
        }
        all
    }
}

/// A read-only matrix with arbitrary row and column strides: element
/// `(i, p)` is `data[i * rs + p * cs]`. A transposed view of a row-major
/// tile is the same data with the strides swapped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// Sizes of one tile product `C (m × n) (+)= A (m × k) · B (k × n)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
}

/// `C = A·B` (or `C += A·B` when `accumulate`), B and C row-major with row
/// strides `ldb` and `ldc`. Each element of C is `Σ_p a·b` accumulated in
/// order of `p` from zero, then stored or added to C.
///
/// Panics if a buffer is too short for its layout (an internal bug: the
/// public kernels check their callers' buffers).
pub(crate) fn matmul(
    isa: Isa,
    Dims { m, n, k }: Dims,
    a: Strided<'_>,
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!(
            (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
            "A too short"
        );
        assert!((k - 1) * ldb + n <= b.len(), "B too short");
    }
    assert!((m - 1) * ldc + n <= c.len(), "C too short");
    match isa {
        Isa::Portable => matmul_portable(Dims { m, n, k }, a, (b, ldb), (c, ldc), accumulate),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the asserts above bound every index the kernel reads or
        // writes; `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe {
            let tile = TileArgs {
                k,
                rs: a.rs,
                cs: a.cs,
                ldb,
                ldc,
                accumulate,
            };
            matmul_avx2(m, n, a.data.as_ptr(), b.as_ptr(), c.as_mut_ptr(), tile)
        },
    }
}

fn matmul_portable(
    Dims { m, n, k }: Dims,
    a: Strided<'_>,
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    const W: usize = 16;
    for i in 0..m {
        for j0 in (0..n).step_by(W) {
            let w = W.min(n - j0);
            let mut acc = [0.0f32; W];
            for p in 0..k {
                let x = a.data[i * a.rs + p * a.cs];
                let row = &b[p * ldb + j0..p * ldb + j0 + w];
                for (s, y) in acc.iter_mut().zip(row) {
                    *s = x.mul_add(*y, *s);
                }
            }
            let dst = &mut c[i * ldc + j0..i * ldc + j0 + w];
            for (d, s) in dst.iter_mut().zip(&acc) {
                *d = if accumulate { *d + s } else { *s };
            }
        }
    }
}

/// The scalar arguments of one AVX2 tile call.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct TileArgs {
    k: usize,
    rs: usize,
    cs: usize,
    ldb: usize,
    ldc: usize,
    accumulate: bool,
}

/// Rows of C per register tile (6 × 16 floats in 12 ymm registers).
#[cfg(target_arch = "x86_64")]
const MR: usize = 6;

/// # Safety
/// The CPU supports AVX2 and FMA; A, B and C hold every element of the
/// `m × k`, `k × n` and `m × n` matrices their strides describe.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_avx2(m: usize, n: usize, a: *const f32, b: *const f32, c: *mut f32, t: TileArgs) {
    for j in (0..n).step_by(16) {
        let w = (n - j).min(16);
        for i in (0..m).step_by(MR) {
            let rows = (m - i).min(MR);
            // SAFETY: i < m and j < n, so the offsets stay inside the
            // matrices; the tile reads rows i..i+rows and columns j..j+w only.
            unsafe {
                let (ap, bp, cp) = (a.add(i * t.rs), b.add(j), c.add(i * t.ldc + j));
                match (rows, w == 16) {
                    (6, true) => tile::<6, true>(ap, bp, cp, w, t),
                    (6, false) => tile::<6, false>(ap, bp, cp, w, t),
                    (5, _) => tile::<5, false>(ap, bp, cp, w, t),
                    (4, _) => tile::<4, false>(ap, bp, cp, w, t),
                    (3, _) => tile::<3, false>(ap, bp, cp, w, t),
                    (2, _) => tile::<2, false>(ap, bp, cp, w, t),
                    _ => tile::<1, false>(ap, bp, cp, w, t),
                }
            }
        }
    }
}

/// Lane masks selecting the first `w` of 16 columns, as two 8-lane halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lane_masks(w: usize) -> [__m256i; 2] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let w = w as i32;
    [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8), lanes),
    ]
}

/// One `R × w` tile of C (`w ≤ 16`; `FULL` means `w == 16`, with unmasked
/// loads and stores).
///
/// # Safety
/// As [`matmul_avx2`], for the tile's `R` rows of A and C and `w` columns of B and C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, const FULL: bool>(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    w: usize,
    t: TileArgs,
) {
    let masks = lane_masks(w);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..t.k {
        // SAFETY: row p < k of B; masked lanes (columns ≥ w) are never
        // accessed, and `wrapping_add` keeps the address computation defined.
        let (b0, b1) = unsafe {
            let bp = b.add(p * t.ldb);
            if FULL {
                (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)))
            } else {
                (
                    _mm256_maskload_ps(bp, masks[0]),
                    _mm256_maskload_ps(bp.wrapping_add(8), masks[1]),
                )
            }
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: element (r, p) of A, r < R rows of the tile, p < k.
            let x = unsafe { _mm256_broadcast_ss(&*a.add(r * t.rs + p * t.cs)) };
            row[0] = _mm256_fmadd_ps(x, b0, row[0]);
            row[1] = _mm256_fmadd_ps(x, b1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r < R of the tile of C, columns < w only (masked).
        unsafe {
            let cp = c.add(r * t.ldc);
            let hi = cp.wrapping_add(8);
            if FULL {
                let (mut v0, mut v1) = (row[0], row[1]);
                if t.accumulate {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(cp), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(hi), v1);
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(hi, v1);
            } else {
                let (mut v0, mut v1) = (row[0], row[1]);
                if t.accumulate {
                    v0 = _mm256_add_ps(_mm256_maskload_ps(cp, masks[0]), v0);
                    v1 = _mm256_add_ps(_mm256_maskload_ps(hi, masks[1]), v1);
                }
                _mm256_maskstore_ps(cp, masks[0], v0);
                _mm256_maskstore_ps(hi, masks[1], v1);
            }
        }
    }
}

/// Runs `f`, compiled for AVX2 + FMA when `isa` says so: element-wise
/// loops in `f` (inlined into the wrapper) then vectorise 8 lanes wide
/// instead of the baseline's 4.
#[inline(always)]
pub(crate) fn vectorised(isa: Isa, f: impl FnOnce()) {
    match isa {
        Isa::Portable => f(),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { run_avx2(f) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(f: impl FnOnce()) {
    f()
}

/// The largest element of `row` (`-inf` for an empty or fully masked row).
pub(crate) fn row_max(isa: Isa, row: &[f32]) -> f32 {
    match isa {
        Isa::Portable => row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
        Isa::Avx2 => unsafe { row_max_avx2(row) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_max_avx2(row: &[f32]) -> f32 {
    let mut best = _mm256_set1_ps(f32::NEG_INFINITY);
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 8 floats.
        best = _mm256_max_ps(best, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), best) };
    lanes
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces each `x` of `row` by `exp(x - shift)` and returns their sum.
/// `-inf` entries become exact zeros; `shift` must be finite.
pub(crate) fn exp_shifted(isa: Isa, row: &mut [f32], shift: f32) -> f32 {
    match isa {
        Isa::Portable => {
            let mut sum = 0.0;
            for x in row.iter_mut() {
                *x = (*x - shift).exp();
                sum += *x;
            }
            sum
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { exp_shifted_avx2(row, shift) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(row: &mut [f32], shift: f32) -> f32 {
    let s = _mm256_set1_ps(shift);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [f32::NEG_INFINITY; 8];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 8 floats.
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), s));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
        tail.copy_from_slice(&buf[..tail.len()]);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// `exp(x)` on 8 lanes: Cephes' range reduction `x = n·ln2 + r` and degree-7
/// polynomial for `exp(r)` (about 1 ulp), then `2^n` through the exponent
/// bits. Inputs below about -87.3 (including `-inf`) give exact zeros.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_avx2(x: __m256) -> __m256 {
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.3));
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2)))
}

/// `a · b` as one chain of fused multiply-adds in order of the index: the
/// rounding of each element of a [`matmul`] product.
pub(crate) fn dot_in_order(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        Isa::Portable => a.iter().zip(b).fold(0.0, |s, (x, y)| x.mul_add(*y, s)),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { dot_in_order_fma(a, b) },
    }
}

/// With FMA enabled, `mul_add` is one instruction instead of a libm call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_in_order_fma(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |s, (x, y)| x.mul_add(*y, s))
}

/// `out[j] = q · K_j` for the `out.len()` key rows of `keys` (rows `ldk`
/// apart, each `q.len()` long): the scores of one query row.
pub(crate) fn dots(isa: Isa, q: &[f32], (keys, ldk): (&[f32], usize), out: &mut [f32]) {
    let (d, n) = (q.len(), out.len());
    if n == 0 {
        return;
    }
    assert!((n - 1) * ldk + d <= keys.len(), "keys too short");
    match isa {
        Isa::Portable => {
            for (j, o) in out.iter_mut().enumerate() {
                let key = &keys[j * ldk..j * ldk + d];
                *o = q.iter().zip(key).fold(0.0, |s, (x, y)| x.mul_add(*y, s));
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the assert bounds every key row read; `Isa::Avx2` is only
        // chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { dots_avx2(q, keys.as_ptr(), ldk, out) },
    }
}

/// # Safety
/// The CPU supports AVX2 and FMA; `keys` holds `out.len()` rows of
/// `q.len()` floats, `ldk` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(q: &[f32], keys: *const f32, ldk: usize, out: &mut [f32]) {
    let d = q.len();
    let rem = lane_masks(d % 8)[0];
    for j0 in (0..out.len()).step_by(8) {
        let live = (out.len() - j0).min(8);
        // Eight keys at once (a short final group repeats its first key),
        // one accumulator each, so the FMA chains run side by side.
        let rows: [*const f32; 8] = std::array::from_fn(|r| {
            // SAFETY: j0 + r, or j0 when it is past the end, is a key row.
            unsafe { keys.add((j0 + if r < live { r } else { 0 }) * ldk) }
        });
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d - d % 8).step_by(8) {
            // SAFETY: columns c..c+8 ≤ d of q and of each key row.
            let x = unsafe { _mm256_loadu_ps(q.as_ptr().add(c)) };
            for (a, row) in acc.iter_mut().zip(&rows) {
                // SAFETY: as above.
                *a = _mm256_fmadd_ps(x, unsafe { _mm256_loadu_ps(row.add(c)) }, *a);
            }
        }
        if !d.is_multiple_of(8) {
            let c = d - d % 8;
            // SAFETY: only the d % 8 live lanes past column c are read.
            let x = unsafe { _mm256_maskload_ps(q.as_ptr().add(c), rem) };
            for (a, row) in acc.iter_mut().zip(&rows) {
                // SAFETY: as above.
                *a = _mm256_fmadd_ps(x, unsafe { _mm256_maskload_ps(row.add(c), rem) }, *a);
            }
        }
        let mut sums = [0.0f32; 8];
        // SAFETY: `sums` holds 8 floats.
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), reduce8(&acc)) };
        out[j0..j0 + live].copy_from_slice(&sums[..live]);
    }
}

/// The 8 horizontal sums of 8 vectors, as one vector (lane r = Σ lanes of `v[r]`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn reduce8(v: &[__m256; 8]) -> __m256 {
    let t01 = _mm256_hadd_ps(v[0], v[1]);
    let t23 = _mm256_hadd_ps(v[2], v[3]);
    let t45 = _mm256_hadd_ps(v[4], v[5]);
    let t67 = _mm256_hadd_ps(v[6], v[7]);
    let lo = _mm256_hadd_ps(t01, t23);
    let hi = _mm256_hadd_ps(t45, t67);
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    )
}

/// `out = Σ_j w[j] · V_j` over the `w.len()` value rows of `values` (rows
/// `ldv` apart, each `out.len()` long), accumulated in order of `j`.
pub(crate) fn weighted_rows(isa: Isa, w: &[f32], (values, ldv): (&[f32], usize), out: &mut [f32]) {
    let (d, n) = (out.len(), w.len());
    out.fill(0.0);
    if n == 0 {
        return;
    }
    assert!((n - 1) * ldv + d <= values.len(), "values too short");
    match isa {
        Isa::Portable => {
            for (j, &x) in w.iter().enumerate() {
                for (o, y) in out.iter_mut().zip(&values[j * ldv..j * ldv + d]) {
                    *o = x.mul_add(*y, *o);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the assert bounds every value row read; `Isa::Avx2` is
        // only chosen when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { weighted_rows_avx2(w, values.as_ptr(), ldv, out) },
    }
}

/// # Safety
/// The CPU supports AVX2 and FMA; `values` holds `w.len()` rows of
/// `out.len()` floats, `ldv` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_avx2(w: &[f32], values: *const f32, ldv: usize, out: &mut [f32]) {
    // 64 columns (8 registers) at a time: one broadcast feeds 8 FMA chains.
    for c0 in (0..out.len()).step_by(64) {
        let width = (out.len() - c0).min(64);
        let masks: [__m256i; 8] =
            std::array::from_fn(|v| lane_masks((width.saturating_sub(8 * v)).min(8))[0]);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &x) in w.iter().enumerate() {
            let x = _mm256_set1_ps(x);
            // SAFETY: row j < w.len(); columns c0.. c0+width ≤ d, masked lanes unread.
            let row = unsafe { values.add(j * ldv + c0) };
            for (v, a) in acc.iter_mut().enumerate().take(width.div_ceil(8)) {
                // SAFETY: as above.
                let y = unsafe {
                    if width == 64 {
                        _mm256_loadu_ps(row.add(8 * v))
                    } else {
                        _mm256_maskload_ps(row.wrapping_add(8 * v), masks[v])
                    }
                };
                *a = _mm256_fmadd_ps(x, y, *a);
            }
        }
        for (v, a) in acc.iter().enumerate().take(width.div_ceil(8)) {
            // SAFETY: columns c0 + 8v.. of out, masked to those < d.
            unsafe { _mm256_maskstore_ps(out.as_mut_ptr().add(c0 + 8 * v), masks[v], *a) };
        }
    }
}

/// Writes the row-major `n × d` matrix `src` (`n = src.len() / d`)
/// transposed into `dst` (`d × n`, row stride `ld`): `dst[p·ld + j] =
/// src[j·d + p]`. `dst` may be uninitialised memory ([`MaybeUninit`]
/// slots); every element of the `d × n` block is written and nothing else
/// is touched.
///
/// Panics if `dst` is too short for that block (an internal bug).
pub(crate) fn transpose<T: Slot>(isa: Isa, src: &[f32], d: usize, (dst, ld): (&mut [T], usize)) {
    if d == 0 || src.len() < d {
        return;
    }
    let n = src.len() / d;
    assert!(
        n <= ld && (d - 1) * ld + n <= dst.len(),
        "transpose: destination too short"
    );
    let (mut n8, mut d8) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        (n8, d8) = (n - n % 8, d - d % 8);
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2; the
        // kernel reads rows < n8 ≤ n and columns < d8 ≤ d of `src` and
        // writes rows < d8 and columns < n8 of the `d × n` block of `dst`,
        // whose bounds the assert above checked.
        unsafe { transpose_avx2(src.as_ptr(), d, (n8, d8), dst.as_mut_ptr().cast(), ld) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    // The edges the 8 × 8 blocks leave: columns ≥ d8 of every row, and
    // rows ≥ n8 of the first d8 columns.
    for (j, row) in src.chunks_exact(d).enumerate() {
        let from = if j < n8 { d8 } else { 0 };
        for (p, &x) in row.iter().enumerate().skip(from) {
            dst[p * ld + j].put(x);
        }
    }
}

/// Where [`transpose`] may store a float: `f32` itself, or a
/// `MaybeUninit<f32>` of memory not yet initialised.
///
/// # Safety
/// Implementors have the size and alignment of `f32`, so the SIMD path may
/// store floats through a `*mut f32` to them.
pub(crate) unsafe trait Slot {
    /// Stores `x`.
    fn put(&mut self, x: f32);
}

// SAFETY: `f32` is `f32`.
unsafe impl Slot for f32 {
    fn put(&mut self, x: f32) {
        *self = x;
    }
}

// SAFETY: `MaybeUninit<T>` has the size and alignment of `T`.
unsafe impl Slot for MaybeUninit<f32> {
    fn put(&mut self, x: f32) {
        self.write(x);
    }
}

/// The 8 × 8 blocks of [`transpose`]: rows `< n8` and columns `< d8` of
/// `src` (row stride `d`), both multiples of 8.
///
/// # Safety
/// The CPU supports AVX2; `src` holds `n8` rows of stride `d ≥ d8`; `dst`
/// holds `d8` rows of stride `ld` with at least `n8` columns each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(
    src: *const f32,
    d: usize,
    (n8, d8): (usize, usize),
    dst: *mut f32,
    ld: usize,
) {
    for j in (0..n8).step_by(8) {
        for p in (0..d8).step_by(8) {
            // SAFETY: rows j..j+8 < n8 and columns p..p+8 ≤ d8 of `src`.
            let r: [__m256; 8] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add((j + i) * d + p)) });
            // SAFETY: register-only shuffles; this function has AVX2.
            let cols = unsafe { crate::simd::transpose8(r) };
            for (c, col) in cols.into_iter().enumerate() {
                // SAFETY: row p + c < d8 of `dst`, columns j..j+8 ≤ n8.
                unsafe { _mm256_storeu_ps(dst.add((p + c) * ld + j), col) };
            }
        }
    }
}

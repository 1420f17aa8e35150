//! Packing: copying a block of A or B into the order the micro-kernel reads,
//! widening f16/bf16 to f32 on the way.
//!
//! A micro-panel of width `R` (MR for A, NR for B) is stored as `kc` groups
//! of `R` floats: group `p` holds element `p` of every line. Lines past the
//! edge of the matrix are zero, so the kernel always computes full tiles.
//!
//! Two source layouts occur, and each has its own routine:
//! * the `R` values of a group are contiguous in the source (A transposed,
//!   B as stored): each group is one short copy;
//! * each line is contiguous (A as stored, B transposed — the forward
//!   `X·Wᵀ`): the block is transposed, 8 × 8 at a time with AVX2 shuffles
//!   where the CPU has them.

use super::kernel::Packing;
use crate::{DType, Element};

/// Packs a whole block of `lines` lines (any count) as consecutive
/// micro-panels of width `r`, each `kc * r` floats; the last one is padded.
///
/// When the values of a group are contiguous in the source (each step `p`
/// is one row of memory), an f32 block is packed row by row across all its
/// micro-panels: the source is then read as a few long streams, which the
/// prefetcher follows, instead of `kc` short pieces a page apart per panel.
///
/// With `round` other than F32, every packed value is then rounded to that
/// dtype in place ([`crate::convert::round_to`]) while the block is still
/// in cache; with [`Packing::Bf16Pairs`] each micro-panel is then turned
/// into bf16 pairs in place ([`pair_up`]), its pairs where its first
/// `kc.div_ceil(2)` groups were.
pub(crate) fn pack_block<E: Element>(
    dst: &mut [f32],
    src: &[E],
    (ls, es): (usize, usize),
    (lines, kc, r): (usize, usize, usize),
    (round, packing): (DType, Packing),
) {
    if let (1, Some(s)) = (ls, as_f32(src)) {
        match r {
            4 => rows_across_panels::<4>(dst, s, es, lines, kc),
            6 => rows_across_panels::<6>(dst, s, es, lines, kc),
            8 => rows_across_panels::<8>(dst, s, es, lines, kc),
            16 => rows_across_panels::<16>(dst, s, es, lines, kc),
            32 => rows_across_panels::<32>(dst, s, es, lines, kc),
            _ => unreachable!("micro-kernel tile widths are 4, 6, 8, 16 or 32, not {r}"),
        }
    } else {
        for (q, l0) in (0..lines).step_by(r).enumerate() {
            let part = &mut dst[q * kc * r..];
            pack_panel(part, &src[l0 * ls..], (ls, es), r.min(lines - l0), kc, r);
        }
    }
    let packed = &mut dst[..lines.div_ceil(r) * kc * r];
    crate::convert::round_to(packed, round);
    if packing == Packing::Bf16Pairs {
        for panel in packed.chunks_exact_mut(kc * r) {
            pair_up(panel, kc, r);
        }
    }
}

/// Turns a packed micro-panel of `kc` groups of `r` bf16-valued f32 into
/// `kc.div_ceil(2)` groups of `r` bf16 pairs, in place: slot `l` of pair
/// `q` takes the upper halves of the bits of element `l` of groups `2q`
/// (low half) and `2q + 1` (high half; zero past the last group).
///
/// Pair `q` is written over group `q`, which is never after the groups it
/// reads, so one forward sweep through a copy of the two groups suffices.
fn pair_up(panel: &mut [f32], kc: usize, r: usize) {
    let mut two = [0.0f32; 64];
    for q in 0..kc.div_ceil(2) {
        let src = &panel[2 * q * r..(2 * q * r + 2 * r).min(kc * r)];
        two[..src.len()].copy_from_slice(src);
        two[src.len()..2 * r].fill(0.0);
        let (lo, hi) = two[..2 * r].split_at(r);
        for ((slot, x), y) in panel[q * r..(q + 1) * r].iter_mut().zip(lo).zip(hi) {
            debug_assert_eq!(x.to_bits() & 0xffff, 0, "bf16 pairs need bf16 values");
            debug_assert_eq!(y.to_bits() & 0xffff, 0, "bf16 pairs need bf16 values");
            *slot = f32::from_bits((x.to_bits() >> 16) | (y.to_bits() & 0xffff_0000));
        }
    }
}

/// Step `p` of every line is `src[p * es ..][..lines]`: copy each such row
/// into group `p` of every micro-panel.
fn rows_across_panels<const R: usize>(
    dst: &mut [f32],
    src: &[f32],
    es: usize,
    lines: usize,
    kc: usize,
) {
    let panels = lines.div_ceil(R);
    let (groups, _) = dst[..panels * kc * R].as_chunks_mut::<R>();
    for p in 0..kc {
        let row = &src[p * es..p * es + lines];
        let (full, tail) = row.as_chunks::<R>();
        for (q, part) in full.iter().enumerate() {
            groups[q * kc + p] = *part;
        }
        if !tail.is_empty() {
            let g = &mut groups[full.len() * kc + p];
            g[..tail.len()].copy_from_slice(tail);
            g[tail.len()..].fill(0.0);
        }
    }
}

/// Packs `lines ≤ r` lines of `kc` elements into `dst[..kc * r]`: element `p`
/// of line `l` is `src[l * ls + p * es]`. One of `ls`, `es` is 1.
pub(crate) fn pack_panel<E: Element>(
    dst: &mut [f32],
    src: &[E],
    strides: (usize, usize),
    lines: usize,
    kc: usize,
    r: usize,
) {
    match r {
        4 => pack::<E, 4>(dst, src, strides, lines, kc),
        6 => pack::<E, 6>(dst, src, strides, lines, kc),
        8 => pack::<E, 8>(dst, src, strides, lines, kc),
        16 => pack::<E, 16>(dst, src, strides, lines, kc),
        32 => pack::<E, 32>(dst, src, strides, lines, kc),
        _ => unreachable!("micro-kernel tile widths are 4, 6, 8, 16 or 32, not {r}"),
    }
}

/// The packed groups of width `R` at the start of `dst`.
fn groups<const R: usize>(dst: &mut [f32], kc: usize) -> &mut [[f32; R]] {
    let (groups, _) = dst[..kc * R].as_chunks_mut::<R>();
    groups
}

fn pack<E: Element, const R: usize>(
    dst: &mut [f32],
    src: &[E],
    (ls, es): (usize, usize),
    lines: usize,
    kc: usize,
) {
    let dst = groups::<R>(dst, kc);
    if ls == 1 {
        pack_groups::<E, R>(dst, src, es, lines);
    } else {
        debug_assert_eq!(es, 1, "one stride of a packed operand is 1");
        pack_lines::<E, R>(dst, src, ls, lines);
    }
    if lines < R {
        for g in dst.iter_mut() {
            g[lines..].fill(0.0);
        }
    }
}

/// The source as f32, when it is f32 (a no-op cast the compiler folds away).
fn as_f32<E: Element>(src: &[E]) -> Option<&[f32]> {
    (E::DTYPE == DType::F32).then(|| bytemuck::cast_slice(src))
}

/// Group `p` is `src[p * es ..][..lines]`: one copy (and widening) per group.
fn pack_groups<E: Element, const R: usize>(
    dst: &mut [[f32; R]],
    src: &[E],
    es: usize,
    lines: usize,
) {
    match as_f32(src) {
        Some(s) if lines == R => {
            for (p, g) in dst.iter_mut().enumerate() {
                *g = s[p * es..p * es + R].try_into().expect("slice of length R");
            }
        }
        _ => {
            for (p, g) in dst.iter_mut().enumerate() {
                E::slice_to_f32(&src[p * es..p * es + lines], &mut g[..lines]);
            }
        }
    }
}

/// Steps per widened chunk of a line, when the source is 16-bit.
const CHUNK: usize = 64;

/// Line `l` is `src[l * ls ..][..kc]`: a transpose into the groups.
fn pack_lines<E: Element, const R: usize>(
    dst: &mut [[f32; R]],
    src: &[E],
    ls: usize,
    lines: usize,
) {
    if let Some(s) = as_f32(src) {
        return transpose::<R>(dst, s, ls, lines);
    }
    // 16-bit source: widen CHUNK steps of every line, then transpose those.
    let mut buf = [[0.0f32; CHUNK]; R];
    for (c, part) in dst.chunks_mut(CHUNK).enumerate() {
        for (l, row) in buf.iter_mut().enumerate().take(lines) {
            let start = l * ls + c * CHUNK;
            E::slice_to_f32(&src[start..start + part.len()], &mut row[..part.len()]);
        }
        transpose::<R>(part, buf.as_flattened(), CHUNK, lines);
    }
}

/// `dst[p][l] = src[l * ls + p]` for `l < lines`, `p < dst.len()`.
fn transpose<const R: usize>(dst: &mut [[f32; R]], src: &[f32], ls: usize, lines: usize) {
    let kc = dst.len();
    let last = (lines - 1) * ls + kc;
    let src = &src[..last];
    #[cfg(target_arch = "x86_64")]
    if lines == R && std::arch::is_x86_feature_detected!("avx2") {
        if R.is_multiple_of(8) {
            // SAFETY: AVX2 was detected; `src` holds `lines` lines of `kc`
            // floats `ls` apart (sliced just above), `dst` `kc` groups of R.
            unsafe { x86::transpose_full(dst, src, ls) };
            return;
        }
        if R == 4 || R == 6 {
            // SAFETY: as above, and R is 4 or 6.
            unsafe { x86::transpose_narrow(dst, src, ls) };
            return;
        }
    }
    for p0 in (0..kc).step_by(8) {
        let block = &mut dst[p0..(p0 + 8).min(kc)];
        for l in 0..lines {
            let row = &src[l * ls + p0..l * ls + p0 + block.len()];
            for (g, &v) in block.iter_mut().zip(row) {
                g[l] = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::transpose8;
    use std::arch::x86_64::*;

    /// `dst[p][l] = src[l * ls + p]` for all `R` lines (`R` a multiple of 8).
    ///
    /// # Safety
    /// AVX2 must be available; `src` must hold `R` lines of `dst.len()`
    /// floats, `ls` apart.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_full<const R: usize>(dst: &mut [[f32; R]], src: &[f32], ls: usize) {
        let kc = dst.len();
        let full = kc / 8 * 8;
        for p0 in (0..full).step_by(8) {
            for l0 in (0..R).step_by(8) {
                // SAFETY: lines l0..l0+8 < R and steps p0..p0+8 <= kc are inside
                // `src` by the caller's contract; groups p0..p0+8 exist in `dst`
                // and each holds R >= l0 + 8 floats.
                unsafe {
                    let rows: [__m256; 8] = std::array::from_fn(|i| {
                        _mm256_loadu_ps(src.as_ptr().add((l0 + i) * ls + p0))
                    });
                    for (q, col) in transpose8(rows).into_iter().enumerate() {
                        _mm256_storeu_ps(dst[p0 + q].as_mut_ptr().add(l0), col);
                    }
                }
            }
        }
        tail(dst, src, ls, full);
    }

    /// [`transpose_full`] for the 4 or 6 lines of a narrow A sliver (the
    /// AVX2 kernel's MR = 6): each 8 × 8 transpose takes the lines and zero
    /// rows, and the first R floats of each column are stored (128 bits,
    /// then 64 for the last two of six).
    ///
    /// # Safety
    /// As [`transpose_full`]; `R` must be 4 or 6.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_narrow<const R: usize>(dst: &mut [[f32; R]], src: &[f32], ls: usize) {
        debug_assert!(R == 4 || R == 6);
        let kc = dst.len();
        let full = kc / 8 * 8;
        for p0 in (0..full).step_by(8) {
            // SAFETY: lines i < R and steps p0..p0+8 <= kc are inside `src`
            // by the caller's contract; group p0 + q < kc holds R floats, and
            // the stores write 4, then 2 more when R is 6.
            unsafe {
                let rows: [__m256; 8] = std::array::from_fn(|i| {
                    if i < R {
                        _mm256_loadu_ps(src.as_ptr().add(i * ls + p0))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for (q, col) in transpose8(rows).into_iter().enumerate() {
                    let out = dst[p0 + q].as_mut_ptr();
                    _mm_storeu_ps(out, _mm256_castps256_ps128(col));
                    if R == 6 {
                        let hi = _mm_castps_pd(_mm256_extractf128_ps::<1>(col));
                        _mm_storel_pd(out.add(4).cast(), hi);
                    }
                }
            }
        }
        tail(dst, src, ls, full);
    }

    /// The groups from `from` on, one value at a time.
    fn tail<const R: usize>(dst: &mut [[f32; R]], src: &[f32], ls: usize, from: usize) {
        for (p, g) in dst.iter_mut().enumerate().skip(from) {
            for (l, v) in g.iter_mut().enumerate() {
                *v = src[l * ls + p];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16;

    /// Packs a `lines × kc` block stored by lines and by groups, at width `r`.
    fn both(lines: usize, kc: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
        let by_lines: Vec<f32> = (0..lines * kc).map(|x| x as f32).collect();
        let by_groups: Vec<f32> = (0..lines * kc)
            .map(|x| ((x % lines) * kc + x / lines) as f32)
            .collect();
        let (mut p1, mut p2) = (vec![9.0; kc * r], vec![9.0; kc * r]);
        pack_panel(&mut p1, &by_lines, (kc, 1), lines, kc, r);
        pack_panel(&mut p2, &by_groups, (1, lines), lines, kc, r);
        (p1, p2)
    }

    #[test]
    fn both_layouts_pack_the_same_panel() {
        let (p1, p2) = both(3, 5, 4);
        assert_eq!(p1, p2);
        assert_eq!(&p1[..8], &[0.0, 5.0, 10.0, 0.0, 1.0, 6.0, 11.0, 0.0]);
        // Full SIMD transposes, ragged tails, partial lines, every width.
        for (lines, kc, r) in [
            (16, 37, 16),
            (16, 8, 16),
            (6, 19, 6),
            (8, 1, 8),
            (5, 130, 16),
            (6, 257, 6),
            (4, 21, 4),
            (6, 8, 6),
        ] {
            let (p1, p2) = both(lines, kc, r);
            assert_eq!(p1, p2, "lines={lines} kc={kc} r={r}");
            for p in 0..kc {
                for l in 0..r {
                    let want = if l < lines { (l * kc + p) as f32 } else { 0.0 };
                    assert_eq!(p1[p * r + l], want);
                }
            }
        }
    }

    #[test]
    fn blocks_pack_like_their_panels() {
        for (lines, kc, r) in [
            (37usize, 9usize, 16usize),
            (32, 5, 16),
            (13, 7, 6),
            (5, 3, 8),
        ] {
            let src: Vec<f32> = (0..lines * kc).map(|x| x as f32).collect();
            for strides in [(1, lines), (kc, 1)] {
                let panels = lines.div_ceil(r);
                let mut block = vec![9.0; panels * kc * r];
                let plain = (DType::F32, Packing::F32);
                pack_block(&mut block, &src, strides, (lines, kc, r), plain);
                for q in 0..panels {
                    let mut one = vec![7.0; kc * r];
                    let (l0, n) = (q * r, r.min(lines - q * r));
                    pack_panel(&mut one, &src[l0 * strides.0..], strides, n, kc, r);
                    assert_eq!(
                        &block[q * kc * r..][..kc * r],
                        &one[..],
                        "{lines} {kc} {r} {strides:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn sixteen_bit_lines_are_widened() {
        let (lines, kc) = (16, 150);
        let src: Vec<bf16> = (0..lines * kc)
            .map(|x| bf16::from_f32((x % 251) as f32))
            .collect();
        let mut p = vec![0.0; kc * 16];
        pack_panel(&mut p, &src, (kc, 1), lines, kc, 16);
        for q in 0..kc {
            for l in 0..lines {
                assert_eq!(p[q * 16 + l], ((l * kc + q) % 251) as f32);
            }
        }
    }
}

//! How the process's C allocator treats the engine's large, short-lived
//! buffers.
//!
//! A training step allocates the same activation and gradient buffers every
//! step (hundreds of KiB to tens of MiB each) and frees them at its end.
//! glibc's defaults give such blocks back to the kernel — blocks of 128 KiB
//! and more are `mmap`ed and unmapped, and the heap top is trimmed past
//! 128 KiB — so the next step pays one page fault per 4 KiB page to get the
//! memory back, zeroed. On the quickstart that was 6.5 million faults for
//! 150 steps and 40 % of the wall time (`/usr/bin/time -v`, see
//! `docs/benchmarks.md`). [`retain_freed_memory`] asks glibc to keep freed
//! memory for reuse instead.
//!
//! A library should not change a process-wide setting behind its user's
//! back, so nothing here runs unless the program calls it (`cargo xtask`
//! does, first thing).
//!
//! [`build_regions`] writes a new buffer on the worker pool without
//! zero-filling it first; [`zeros`] writes a zeroed one; [`zero_fill`]
//! zeroes an existing one (gradients between steps).

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Largest `mmap` threshold glibc accepts on 64-bit targets (32 MiB): blocks
/// below it come from the heap and are reused after `free`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of the heap kept before glibc trims it (1 GiB):
/// in practice, never trim during a run.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Makes the C allocator keep freed blocks below 32 MiB for reuse instead of
/// returning them to the operating system, and returns whether the setting
/// took effect (it does only with glibc; elsewhere this does nothing and
/// returns `false`).
///
/// The cost is that a process's resident memory stays at its peak; the gain
/// is that per-step buffers are reused instead of faulted in again.
/// Call it once at start-up, before worker threads allocate.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's allocation parameters, takes
        // plain integers, is safe to call at any time from any thread (it
        // takes the arena locks itself), and returns 0 when it rejects a value.
        let set = |param, value| unsafe { libc::mallopt(param, value) } == 1;
        let mmap = set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let trim = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        mmap && trim
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Buffers below this many elements are built on the calling thread: for
/// them, waking the pool costs more than the copy.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// Writes a new buffer region by region, front to back within each region.
/// See [`build_regions`].
pub struct Cursor<'a, T> {
    slots: &'a mut [MaybeUninit<T>],
    at: usize,
}

impl<T: Copy> Cursor<'_, T> {
    /// Appends `src` to the region.
    ///
    /// # Panics
    /// If the region has no room for it.
    pub fn extend_from_slice(&mut self, src: &[T]) {
        let room = self.slots.len() - self.at;
        assert!(
            src.len() <= room,
            "{} elements written into a region with room for {room}",
            src.len()
        );
        let dst = &mut self.slots[self.at..self.at + src.len()];
        dst.iter_mut().zip(src).for_each(|(d, &s)| {
            d.write(s);
        });
        self.at += src.len();
    }

    /// Fills the rest of the region with `value`.
    pub fn fill_rest(&mut self, value: T) {
        self.slots[self.at..].iter_mut().for_each(|d| {
            d.write(value);
        });
        self.at = self.slots.len();
    }
}

/// `len` zeros, written on the worker pool (one region per thread), for a
/// large buffer that is read before it is first written.
///
/// `vec![0.0; len]` of a large size gets pages that the kernel maps to its
/// shared zero page until first written. A buffer read before it is
/// written (an optimizer's moments, read and then updated) then takes two
/// page faults per 4 KiB page on its first pass, the second one flushing
/// every other core's TLB: 1.9 s of flan-t5-small's first AdamW step on a
/// 2-vCPU Zen 3, against 0.06 s with the zeros written here first (one
/// fault per page, taken on every thread).
pub fn zeros(len: usize) -> Vec<f32> {
    let region = len.div_ceil(crate::num_threads()).max(PARALLEL_MIN_ELEMS);
    let ends: Vec<usize> = (1..=len.div_ceil(region))
        .map(|r| (r * region).min(len))
        .collect();
    build_regions(len, &ends, |_, out| out.fill_rest(0.0))
}

/// Bytes per work item of [`zero_fill`] (1 MiB): enough to amortise
/// scheduling, and a split that does not depend on the thread count.
const ZERO_FILL_CHUNK: usize = 1 << 20;

/// Sets every value of `values` to zero (all bits clear), on the worker pool,
/// with streaming stores where the CPU has AVX: a model's gradients between
/// optimizer steps, hundreds of MB, far more than the caches hold, so
/// writing them past the caches loses nothing.
///
/// An ordinary store first reads the cache line it writes (to merge the
/// rest of the line), so zeroing moves every byte twice; a streaming store
/// writes the line whole, straight to memory. Measured on a 2-vCPU Zen 3:
/// 308 MB (flan-t5-small's gradients) in 15–16 ms with `fill(0.0)` on both
/// threads, 6.6–6.9 ms streamed.
pub fn zero_fill<T: bytemuck::Pod + Send>(values: &mut [T]) {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(values);
    crate::install(|| bytes.par_chunks_mut(ZERO_FILL_CHUNK).for_each(zero_bytes));
}

/// Zeroes `bytes` on the calling thread: streamed where the CPU has AVX.
fn zero_bytes(bytes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX, checked on the line above.
        return unsafe { zero_bytes_streamed(bytes) };
    }
    bytes.fill(0);
}

/// [`zero_bytes`] with 32-byte streaming stores between the unaligned ends.
///
/// # Safety
/// The CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn zero_bytes_streamed(bytes: &mut [u8]) {
    use std::arch::x86_64::{__m256i, _mm256_setzero_si256, _mm256_stream_si256, _mm_sfence};
    // SAFETY: every bit pattern is a valid `u8` and a valid `__m256i`, so
    // viewing the aligned middle of the bytes as vectors is sound.
    let (head, middle, tail) = unsafe { bytes.align_to_mut::<__m256i>() };
    head.fill(0);
    tail.fill(0);
    for v in middle {
        // SAFETY: `v` is a 32-byte-aligned, writable `__m256i` of the slice.
        unsafe { _mm256_stream_si256(v, _mm256_setzero_si256()) };
    }
    // Streaming stores are weakly ordered: fence them before the pool's
    // join hands the buffer to other threads.
    _mm_sfence();
}

/// A new buffer of `len` elements, written once, never zero-filled first:
/// `ends` are the end offsets of its regions (increasing, the last one
/// `len`), and `fill(r, cursor)` writes region `r` through `cursor`. The
/// regions are written on the worker pool, as `vec![0.0; len]` followed by
/// a copy would be written twice, on the calling thread (splitting and
/// merging attention heads, one region per sequence).
///
/// # Panics
/// If `ends` does not end at `len` or decreases, or a `fill` leaves part of
/// its region unwritten.
pub fn build_regions<T: Copy + Send + Sync>(
    len: usize,
    ends: &[usize],
    fill: impl Fn(usize, &mut Cursor<'_, T>) + Sync,
) -> Vec<T> {
    assert_eq!(
        ends.last().copied().unwrap_or(0),
        len,
        "the regions end at the buffer's end"
    );
    let mut buf = Vec::with_capacity(len);
    let mut rest = &mut buf.spare_capacity_mut()[..len];
    let mut regions = Vec::with_capacity(ends.len());
    let mut at = 0;
    for &end in ends {
        assert!(end >= at, "region ends decrease: {end} after {at}");
        let (region, tail) = std::mem::take(&mut rest).split_at_mut(end - at);
        regions.push(region);
        (rest, at) = (tail, end);
    }
    let write = |(r, slots): (usize, &mut [MaybeUninit<T>])| {
        let mut cursor = Cursor { slots, at: 0 };
        fill(r, &mut cursor);
        let (wrote, room) = (cursor.at, cursor.slots.len());
        assert_eq!(
            wrote, room,
            "region {r}: {wrote} of {room} elements written"
        );
    };
    if len < PARALLEL_MIN_ELEMS {
        regions.into_iter().enumerate().for_each(write);
    } else {
        crate::install(|| regions.into_par_iter().enumerate().for_each(write));
    }
    // SAFETY: the regions cover `0..len` (they are consecutive and the last
    // ends at `len`), and each was written in full: every cursor wrote as
    // many elements as its region holds, front to back, each exactly once.
    unsafe { buf.set_len(len) };
    buf
}

/// The machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`),
/// or `None` where that cannot be read.
pub fn total_memory() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemTotal:")
}

/// This process's peak resident size so far in bytes (Linux `VmHWM`), or
/// `None` where that cannot be read.
pub fn peak_rss() -> Option<u64> {
    proc_bytes("/proc/self/status", "VmHWM:")
}

/// Runs `f` and returns its result with the rise of this process's peak
/// resident size over its resident size just before (Linux: `VmHWM` after
/// resetting it through `/proc/self/clear_refs`, against `VmRSS`). A reader
/// that kept a whole file mapped beside its copy, or a writer that buffered
/// one, shows here as a growth of the file's size. An error where the peak
/// cannot be reset or read: the caller must not report a number it did not
/// measure.
pub fn peak_growth<T>(f: impl FnOnce() -> T) -> std::io::Result<(T, u64)> {
    const STATUS: &str = "/proc/self/status";
    let field = |name| {
        proc_bytes(STATUS, name).ok_or_else(|| {
            std::io::Error::other(format!("{STATUS} has no {name} field (Linux only)"))
        })
    };
    std::fs::write("/proc/self/clear_refs", "5")?;
    let before = field("VmRSS:")?;
    let value = f();
    Ok((value, field("VmHWM:")?.saturating_sub(before)))
}

/// A `kB` field of a `/proc` file (`/proc/meminfo`, `/proc/self/status`),
/// in bytes.
fn proc_bytes(file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix(field))?;
    let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_memory_is_read_on_linux() {
        let total = total_memory();
        assert_eq!(total.is_some(), cfg!(target_os = "linux"));
        let peak = peak_rss();
        assert_eq!(peak.is_some(), cfg!(target_os = "linux"));
        assert!(
            peak.is_none_or(|p| p > 1 << 20 && total.is_some_and(|t| p < t)),
            "{peak:?}"
        );
        assert!(total.is_none_or(|t| t > 1 << 28), "{total:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_growth_sees_memory_touched_inside() {
        let (sum, growth) = peak_growth(|| {
            vec![1u8; 64 << 20]
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>()
        })
        .expect("Linux reports the peak");
        assert_eq!(sum, 64 << 20);
        assert!(growth >= 60 << 20, "{growth}");
    }

    #[test]
    fn regions_are_written_in_place_in_order() {
        for len in [0usize, 10, PARALLEL_MIN_ELEMS + 7] {
            let ends = [len / 3, len / 3, len / 2, len];
            let built = build_regions(len, &ends, |r, out| {
                let start = if r == 0 { 0 } else { ends[r - 1] };
                let values: Vec<u32> = (start as u32..ends[r] as u32).collect();
                let (a, b) = values.split_at(values.len() / 2);
                out.extend_from_slice(a);
                out.extend_from_slice(b);
            });
            assert_eq!(built, (0..len as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn zeros_are_zeros() {
        for len in [0, 5, 2 * PARALLEL_MIN_ELEMS + 3] {
            let z = zeros(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&x| x.to_bits() == 0));
        }
    }

    #[test]
    fn zero_fill_clears_every_value_past_the_unaligned_ends_and_chunks() {
        // Offsets 1 and 3 put both ends of the slices off 32-byte
        // alignment; 300_001 floats span two work items.
        let mut f = vec![1.5f32; 300_001 + 4];
        zero_fill(&mut f[1..300_002]);
        assert_eq!((f[0], f[300_002]), (1.5, 1.5));
        assert!(f[1..300_002].iter().all(|&v| v.to_bits() == 0));
        let mut h = [crate::bf16::ONE; 77];
        zero_fill(&mut h[3..]);
        assert_eq!(h[2], crate::bf16::ONE);
        assert!(h[3..].iter().all(|v| v.to_bits() == 0));
        zero_fill::<f32>(&mut []);
    }

    #[test]
    #[should_panic(expected = "region 1: 2 of 3 elements written")]
    fn a_region_left_short_panics() {
        build_regions(5, &[2, 5], |r, out| out.extend_from_slice(&[r as u8; 2]));
    }

    #[test]
    #[should_panic(expected = "room for 2")]
    fn writing_past_a_region_panics() {
        build_regions(5, &[2, 5], |_, out| out.extend_from_slice(&[0u8; 3]));
    }

    #[test]
    fn glibc_accepts_the_settings() {
        let took = retain_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Memory still allocates and frees normally afterwards.
        let big = vec![1.0f32; 4 << 20];
        assert_eq!(big.iter().sum::<f32>(), (4 << 20) as f32);
    }
}

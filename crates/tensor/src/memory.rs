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
    fn glibc_accepts_the_settings() {
        let took = retain_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Memory still allocates and frees normally afterwards.
        let big = vec![1.0f32; 4 << 20];
        assert_eq!(big.iter().sum::<f32>(), (4 << 20) as f32);
    }
}

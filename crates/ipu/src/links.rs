//! Time of collectives and sends over IPU-Links (ring algorithms).
//!
//! A ring collective over `n` IPUs moves the tensor in `n` chunks; each of
//! its steps costs one latency plus one chunk at the ring bandwidth:
//!
//! - all-reduce: `2 (n − 1) · (λ + B / (n · β))`
//! - all-gather or reduce-scatter: `(n − 1) · (λ + B / (n · β))`
//! - point-to-point send: `λ + B / β`
//!
//! with `B` the full tensor's bytes, `λ` the link latency and `β` the ring
//! bandwidth of [`crate::Assumptions`].

use crate::hardware::Assumptions;

/// Seconds for a ring all-reduce of `bytes` over `n` IPUs (0 when `n ≤ 1`).
pub fn all_reduce_s(bytes: f64, n: u64, a: &Assumptions) -> f64 {
    2.0 * ring_half_s(bytes, n, a)
}

/// Seconds for a ring all-gather (or reduce-scatter) whose full result is
/// `bytes`, over `n` IPUs (0 when `n ≤ 1`).
pub fn all_gather_s(bytes: f64, n: u64, a: &Assumptions) -> f64 {
    ring_half_s(bytes, n, a)
}

/// Seconds to send `bytes` to a neighbouring IPU.
pub fn send_s(bytes: f64, a: &Assumptions) -> f64 {
    a.link_latency_s + bytes / a.ring_bytes_per_s
}

fn ring_half_s(bytes: f64, n: u64, a: &Assumptions) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n_f = n as f64;
    (n_f - 1.0) * (a.link_latency_s + bytes / (n_f * a.ring_bytes_per_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple() -> Assumptions {
        Assumptions {
            link_latency_s: 1e-6,
            ring_bytes_per_s: 1e9,
            ..Assumptions::DEFAULT
        }
    }

    #[test]
    fn all_reduce_matches_hand_computation() {
        // 4 IPUs, 4 MB: 2·3·(1 µs + 1 MB / 1 GB/s) = 6·(1e-6 + 1e-3) s.
        let t = all_reduce_s(4e6, 4, &simple());
        assert!((t - 6.0 * 1.001e-3).abs() < 1e-12, "{t}");
        assert_eq!(all_reduce_s(4e6, 1, &simple()), 0.0);
    }

    #[test]
    fn all_gather_is_half_an_all_reduce() {
        let a = simple();
        let t = all_gather_s(8e6, 8, &a);
        assert!((t - 7.0 * (1e-6 + 1e-3)).abs() < 1e-12, "{t}");
        assert!((2.0 * t - all_reduce_s(8e6, 8, &a)).abs() < 1e-15);
    }

    #[test]
    fn send_is_latency_plus_bytes_over_bandwidth() {
        assert!((send_s(2e6, &simple()) - (1e-6 + 2e-3)).abs() < 1e-15);
    }
}

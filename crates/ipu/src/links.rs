//! Time of collectives and sends over IPU-Links (ring algorithms).
//!
//! A ring collective over `n` IPUs moves the tensor in `n` chunks; each of
//! its steps costs one latency plus one chunk at the ring bandwidth:
//!
//! - all-reduce: `2 (n − 1) · (λ + B / (n · β))`
//! - all-gather or reduce-scatter: `(n − 1) · (λ + B / (n · β))`
//! - point-to-point send: `λ + B / β`
//!
//! with `B` the full tensor's bytes, `λ` the link latency and `β` the
//! bandwidth one IPU drives toward one neighbour.

use crate::hardware::{Assumptions, Ipu};

/// The IPU-Link figures a collective needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// `λ`: fixed cost of one ring step or send, seconds.
    pub latency_s: f64,
    /// `β`: bytes/s from one IPU toward one neighbour.
    pub bytes_per_s: f64,
}

impl Link {
    /// `β = (links bandwidth / links / 2 directions) · ring links`: the
    /// one-way bandwidth of one IPU-Link times the links facing the
    /// neighbour (320 GB/s / 10 / 2 · 4 = 64 GB/s for the GC200).
    pub fn of(ipu: &Ipu, a: &Assumptions) -> Link {
        let one_way_per_link = ipu.links_bytes_per_s / ipu.ipu_links as f64 / 2.0;
        Link {
            latency_s: a.link_latency_s,
            bytes_per_s: one_way_per_link * a.ring_links,
        }
    }

    /// Seconds for a ring all-reduce of `bytes` over `n` IPUs (0 when `n ≤ 1`).
    pub fn all_reduce_s(&self, bytes: f64, n: u64) -> f64 {
        2.0 * self.ring_half_s(bytes, n)
    }

    /// Seconds for a ring all-gather (or reduce-scatter) whose full result
    /// is `bytes`, over `n` IPUs (0 when `n ≤ 1`).
    pub fn all_gather_s(&self, bytes: f64, n: u64) -> f64 {
        self.ring_half_s(bytes, n)
    }

    /// Seconds to send `bytes` to a neighbouring IPU.
    pub fn send_s(&self, bytes: f64) -> f64 {
        self.latency_s + bytes / self.bytes_per_s
    }

    fn ring_half_s(&self, bytes: f64, n: u64) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let n_f = n as f64;
        (n_f - 1.0) * (self.latency_s + bytes / (n_f * self.bytes_per_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: Link = Link {
        latency_s: 1e-6,
        bytes_per_s: 1e9,
    };

    #[test]
    fn gc200_ring_bandwidth_is_four_one_way_links() {
        let link = Link::of(&Ipu::GC200, &Assumptions::DEFAULT);
        assert_eq!(link.bytes_per_s, 64e9);
    }

    #[test]
    fn all_reduce_matches_hand_computation() {
        // 4 IPUs, 4 MB: 2·3·(1 µs + 1 MB / 1 GB/s) = 6·(1e-6 + 1e-3) s.
        let t = SIMPLE.all_reduce_s(4e6, 4);
        assert!((t - 6.0 * 1.001e-3).abs() < 1e-12, "{t}");
        assert_eq!(SIMPLE.all_reduce_s(4e6, 1), 0.0);
    }

    #[test]
    fn all_gather_is_half_an_all_reduce() {
        let t = SIMPLE.all_gather_s(8e6, 8);
        assert!((t - 7.0 * (1e-6 + 1e-3)).abs() < 1e-12, "{t}");
        assert!((2.0 * t - SIMPLE.all_reduce_s(8e6, 8)).abs() < 1e-15);
    }

    #[test]
    fn send_is_latency_plus_bytes_over_bandwidth() {
        assert!((SIMPLE.send_s(2e6) - (1e-6 + 2e-3)).abs() < 1e-15);
    }
}

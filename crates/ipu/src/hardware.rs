//! The hardware: the GC200 IPU, the IPU-M2000 and the pods built from it,
//! plus the named assumptions for the figures Graphcore did not publish.
//!
//! Every constant here appears, with its source, in `docs/ipu.md`.

use serde::Serialize;

/// One Mk2 IPU (GC200): published figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ipu {
    /// Tiles (processor cores, each with its own SRAM).
    pub tiles: u64,
    /// SRAM of one tile: 624 KiB.
    pub sram_per_tile_bytes: u64,
    /// Peak fp16 matmul throughput (AMP units), FLOP/s.
    pub peak_fp16_flops: f64,
    /// Peak fp32 matmul throughput, FLOP/s.
    pub peak_fp32_flops: f64,
    /// On-chip exchange bandwidth between tiles, bytes/s.
    pub exchange_bytes_per_s: f64,
    /// IPU-Links per chip.
    pub ipu_links: u64,
    /// All IPU-Links together, bytes/s.
    pub links_bytes_per_s: f64,
}

impl Ipu {
    /// The GC200 as shipped in the IPU-M2000.
    pub const GC200: Ipu = Ipu {
        tiles: 1472,
        sram_per_tile_bytes: 624 * 1024,
        peak_fp16_flops: 250e12,
        peak_fp32_flops: 62.5e12,
        exchange_bytes_per_s: 8e12,
        ipu_links: 10,
        links_bytes_per_s: 320e9,
    };

    /// In-processor memory of the whole chip (1,472 × 624 KiB ≈ 897 MiB).
    pub fn sram_bytes(&self) -> u64 {
        self.tiles * self.sram_per_tile_bytes
    }
}

/// Streaming Memory (DDR) of one IPU-M2000 as shipped in pods: 128 GiB
/// (two 64 GiB DIMMs), shared by its four IPUs.
pub const STREAMING_BYTES_PER_M2000: u64 = 128 << 30;

/// IPUs in one IPU-M2000.
pub const IPUS_PER_M2000: u64 = 4;

/// An IPU-POD: IPU-M2000s joined by IPU-Links (ring / 2D torus).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pod {
    /// `POD4`, `POD8`, `POD16` or `POD64`.
    pub name: String,
    /// IPU-M2000 machines.
    pub m2000s: u64,
    /// The chip.
    pub ipu: Ipu,
}

impl Pod {
    /// The pod called `name` (`pod4`, `pod8`, `pod16`, `pod64`, any case).
    pub fn named(name: &str) -> Option<Pod> {
        let m2000s = match name.to_ascii_lowercase().as_str() {
            "pod4" => 1,
            "pod8" => 2,
            "pod16" => 4,
            "pod64" => 16,
            _ => return None,
        };
        Some(Pod {
            name: format!("POD{}", m2000s * IPUS_PER_M2000),
            m2000s,
            ipu: Ipu::GC200,
        })
    }

    /// IPUs in the pod.
    pub fn ipus(&self) -> u64 {
        self.m2000s * IPUS_PER_M2000
    }

    /// Streaming Memory available to one IPU (its M2000's DDR split four ways).
    pub fn streaming_bytes_per_ipu(&self) -> u64 {
        STREAMING_BYTES_PER_M2000 / IPUS_PER_M2000
    }
}

/// Figures Graphcore did not publish, as named parameters. Each value and
/// its reason is in `docs/ipu.md`; `matmul_efficiency` is the one number
/// calibrated against a measurement (XXL on POD16, ≈ 36 s per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Assumptions {
    /// Fraction of peak FLOP/s that T5's operations reach on large
    /// matmuls, everything that the model does not itemise included.
    /// Calibrated.
    pub matmul_efficiency: f64,
    /// Token rows at which a matmul reaches half of `matmul_efficiency`
    /// (few rows cannot keep 1,472 tiles' AMP units busy).
    pub half_efficiency_rows: f64,
    /// Streaming Memory bandwidth seen by one IPU when all four IPUs of an
    /// M2000 stream at once, bytes/s.
    pub streaming_bytes_per_s: f64,
    /// Fixed cost of one step of a ring collective or one point-to-point
    /// send over IPU-Links (sync + hop), seconds.
    pub link_latency_s: f64,
    /// IPU-Links one IPU drives toward its next neighbour in a ring
    /// collective or a pipeline send.
    pub ring_links: f64,
    /// Tiles set aside for overlapped I/O in phased execution (the seed's
    /// `io_tiles: 128`); they do no compute.
    pub io_tiles: u64,
    /// Share of each IPU's SRAM taken by code, exchange buffers and
    /// operation temporaries, unavailable for tensors.
    pub sram_reserved_fraction: f64,
}

impl Assumptions {
    /// The values used throughout (see `docs/ipu.md` for each reason).
    pub const DEFAULT: Assumptions = Assumptions {
        matmul_efficiency: CALIBRATED_MATMUL_EFFICIENCY,
        half_efficiency_rows: 64.0,
        streaming_bytes_per_s: 12e9,
        link_latency_s: 3e-6,
        ring_links: 4.0,
        io_tiles: 128,
        sram_reserved_fraction: 0.25,
    };
}

impl Assumptions {
    /// The share of `matmul_efficiency` a matmul over `rows` token rows
    /// reaches: `rows / (rows + half_efficiency_rows)`.
    pub fn shape_factor(&self, rows: f64) -> f64 {
        rows / (rows + self.half_efficiency_rows)
    }
}

/// `matmul_efficiency` solved so that Flan-T5 XXL training on a POD16
/// (phased TP 16, 1 replica, the seed's settings) takes Graphcore's
/// published ≈ 36 s per step. The test `calibration_matches_the_constant`
/// re-solves it and fails if the model changes under it.
pub const CALIBRATED_MATMUL_EFFICIENCY: f64 = 0.0764;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc200_sram_is_about_900_mb() {
        assert_eq!(Ipu::GC200.sram_bytes(), 1472 * 638_976);
        assert_eq!(Ipu::GC200.sram_bytes(), 940_572_672);
    }

    #[test]
    fn shape_factor_halves_at_the_named_row_count() {
        let a = Assumptions::DEFAULT;
        assert_eq!(a.shape_factor(64.0), 0.5);
        assert_eq!(a.shape_factor(192.0), 0.75);
        assert!(a.shape_factor(512.0) < a.shape_factor(513.0));
    }

    #[test]
    fn pods_have_four_ipus_per_m2000() {
        let sizes: Vec<u64> = ["pod4", "POD8", "pod16", "pod64"]
            .iter()
            .map(|n| Pod::named(n).expect("known pod").ipus())
            .collect();
        assert_eq!(sizes, [4, 8, 16, 64]);
        assert_eq!(Pod::named("pod16").expect("known").name, "POD16");
        assert!(Pod::named("pod32").is_none());
        let pod = Pod::named("pod4").expect("known");
        assert_eq!(pod.streaming_bytes_per_ipu(), 32 << 30);
    }
}

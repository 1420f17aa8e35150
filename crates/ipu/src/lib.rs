//! An IPU-topology simulator: does a T5 model fit on a Graphcore pod, how,
//! and how long will a training or generation step take?
//!
//! The workload comes from the same [`tessera_t5_config::T5Config`] the real model
//! uses ([`workload`]); the hardware from published GC200 / IPU-M2000
//! figures plus named assumptions ([`hardware`]); the two strategies
//! Graphcore ran T5 with are [`phased`] tensor parallelism and [`pipeline`]
//! parallelism. [`simulate`] returns a [`Plan`]; [`svg::timeline`] draws it.
//! `docs/ipu.md` gives every equation with its source.

#![forbid(unsafe_code)]

pub mod hardware;
pub mod links;
pub mod phased;
pub mod pipeline;
pub mod plan;
pub mod svg;
pub mod workload;

pub use hardware::{Assumptions, Ipu, Pod};
pub use plan::{IpuMemory, MemoryPart, Plan, Segment, SegmentKind, Strategy, TimeBreakdown};
pub use workload::{ElementBytes, Generation, Layer, LayerKind, Mode, Pass, Workload};

/// A question for the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Model, batch, lengths, mode.
    pub workload: Workload,
    /// The system.
    pub pod: Pod,
    /// How to spread the model.
    pub strategy: Strategy,
    /// Data-parallel replicas; each gets `ipus / replicas` IPUs.
    pub replicas: u64,
    /// Unpublished figures.
    pub assumptions: Assumptions,
}

/// A request the simulator cannot even plan (a plan that merely does not
/// fit is a [`Plan`] with `fits == false`, not an error).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    /// Replicas must split the pod's IPUs evenly.
    #[error("--replicas {replicas} does not divide the {ipus} IPUs of the pod")]
    Replicas {
        /// Requested replicas.
        replicas: u64,
        /// IPUs in the pod.
        ipus: u64,
    },
    /// The global batch must be a whole number of micro-batches per replica.
    #[error("--global-batch {global} is not a positive multiple of micro-batch {micro} × {replicas} replica(s)")]
    Batch {
        /// Global batch.
        global: u64,
        /// Micro-batch.
        micro: u64,
        /// Replicas.
        replicas: u64,
    },
    /// A length or batch of zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Tensor parallelism splits heads and `d_ff`; they must divide evenly.
    #[error("tensor parallelism over {tp} IPUs needs num_heads ({heads}) and d_ff ({d_ff}) divisible by {tp}")]
    TensorParallel {
        /// IPUs per replica.
        tp: u64,
        /// Attention heads.
        heads: usize,
        /// Feed-forward width.
        d_ff: usize,
    },
    /// Pipelined training needs enough micro-batches to fill the pipeline.
    #[error("pipelined training needs gradient accumulation ≥ 2 × {stages} stages, but global batch {global} gives only {micro_batches} micro-batches per replica")]
    Accumulation {
        /// Pipeline stages.
        stages: u64,
        /// Micro-batches per replica.
        micro_batches: u64,
        /// Global batch.
        global: u64,
    },
}

/// Plans `req`: memory per IPU, verdict, step time and schedule.
pub fn simulate(req: &Request) -> Result<Plan, SimError> {
    let ctx = Context::new(req)?;
    Ok(match req.strategy {
        Strategy::PhasedTp => phased::plan(&ctx)?,
        Strategy::Pipeline => pipeline::plan(&ctx)?,
    })
}

/// A validated request with its derived counts.
pub(crate) struct Context<'a> {
    /// The request.
    pub req: &'a Request,
    /// IPUs per replica (TP degree or pipeline stages).
    pub n: u64,
    /// Micro-batches per replica per step.
    pub m: u64,
}

impl<'a> Context<'a> {
    pub(crate) fn new(req: &'a Request) -> Result<Self, SimError> {
        let w = &req.workload;
        for (name, v) in [
            ("--micro-batch", w.micro_batch),
            ("--seq-len", w.source_len),
            ("the target length", w.target_len),
            ("--replicas", req.replicas),
        ] {
            if v == 0 {
                return Err(SimError::Zero(name));
            }
        }
        let ipus = req.pod.ipus();
        if !ipus.is_multiple_of(req.replicas) {
            return Err(SimError::Replicas {
                replicas: req.replicas,
                ipus,
            });
        }
        let m = w
            .micro_batches_per_replica(req.replicas)
            .filter(|&m| m > 0)
            .ok_or(SimError::Batch {
                global: w.global_batch,
                micro: w.micro_batch,
                replicas: req.replicas,
            })?;
        Ok(Context {
            req,
            n: ipus / req.replicas,
            m,
        })
    }

    /// Sustained FLOP/s of one IPU: peak × efficiency, times the share of
    /// tiles that compute (all but the I/O tiles when `io_tiles`).
    pub fn flops_per_s(&self, io_tiles: bool) -> f64 {
        let ipu = &self.req.pod.ipu;
        let a = &self.req.assumptions;
        let peak = if self.req.workload.precision.fp16_matmuls {
            ipu.peak_fp16_flops
        } else {
            ipu.peak_fp32_flops
        };
        let compute_tiles = if io_tiles {
            ipu.tiles - a.io_tiles
        } else {
            ipu.tiles
        };
        peak * a.matmul_efficiency * compute_tiles as f64 / ipu.tiles as f64
    }

    /// Seconds for `flops` of matmuls over `rows` token rows on one IPU:
    /// `flops / (peak · efficiency · compute-tile share · rows / (rows + r½))`.
    pub fn matmul_s(&self, flops: f64, rows: f64, io_tiles: bool) -> f64 {
        flops / (self.flops_per_s(io_tiles) * self.req.assumptions.shape_factor(rows))
    }

    /// The IPU-Link figures for collectives and sends.
    pub fn link(&self) -> links::Link {
        links::Link::of(&self.req.pod.ipu, &self.req.assumptions)
    }

    /// The SRAM share reserved for code, exchange buffers and temporaries.
    pub fn reserve(&self) -> MemoryPart {
        let sram = self.req.pod.ipu.sram_bytes() as f64;
        part(
            "code+exchange reserve",
            sram * self.req.assumptions.sram_reserved_fraction,
        )
    }

    /// Assembles the plan; `memory` and `timeline` cover replica 0.
    pub fn finish(&self, o: Outcome) -> Plan {
        let req = self.req;
        let w = &req.workload;
        let sram = req.pod.ipu.sram_bytes();
        let per_ipu_peak_bytes = (0..req.replicas)
            .flat_map(|_| o.memory.iter().map(|m| m.total_bytes))
            .collect();
        let (step_time_s, samples_per_s, time) = match o.time {
            Some(t) if o.fits => (
                Some(t.total_s),
                Some(w.global_batch as f64 / t.total_s),
                Some(t),
            ),
            _ => (None, None, None),
        };
        Plan {
            model: w.model.clone(),
            system: req.pod.name.clone(),
            ipus: req.pod.ipus(),
            strategy: req.strategy,
            mode: w.mode,
            fits: o.fits,
            reason: o.reason,
            step_time_s,
            samples_per_s,
            per_ipu_peak_bytes,
            sram_bytes_per_ipu: sram,
            replicas: req.replicas,
            ipus_per_replica: self.n,
            micro_batch: w.micro_batch,
            global_batch: w.global_batch,
            micro_batches_per_replica: self.m,
            source_len: w.source_len,
            target_len: w.target_len,
            time,
            memory: o.memory,
            streaming_bytes_per_ipu: o.streaming_bytes_per_ipu.ceil() as u64,
            streaming_capacity_bytes_per_ipu: req.pod.streaming_bytes_per_ipu(),
            placement: o.placement,
            assumptions: req.assumptions,
            timeline: if o.fits { o.timeline } else { Vec::new() },
        }
    }
}

/// What a strategy works out, before it becomes a [`Plan`].
pub(crate) struct Outcome {
    pub fits: bool,
    pub reason: String,
    pub time: Option<TimeBreakdown>,
    pub memory: Vec<IpuMemory>,
    pub streaming_bytes_per_ipu: f64,
    pub placement: Vec<String>,
    pub timeline: Vec<Segment>,
}

/// A memory part from a byte count computed in floating point.
pub(crate) fn part(name: &str, bytes: f64) -> MemoryPart {
    MemoryPart {
        name: name.to_string(),
        bytes: bytes.ceil() as u64,
    }
}

/// `bytes` in MiB, for messages.
pub(crate) fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// `bytes` in GiB, for messages.
pub(crate) fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

/// AdamW arithmetic per parameter (two moment updates, bias corrections,
/// square root, division, weight decay, update) — about 10 operations.
pub const ADAMW_FLOPS_PER_PARAM: f64 = 10.0;

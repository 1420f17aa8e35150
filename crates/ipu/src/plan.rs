//! The simulator's answer: does it fit, how, how long a step takes, and
//! the schedule behind that time. Printed for people (`Display`) and
//! serialised for scripts (`serde`).

use crate::hardware::Assumptions;
use crate::workload::Mode;
use serde::Serialize;
use std::fmt;

/// How the model is spread over the IPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Layers one after another as phases, each sharded over all IPUs of a
    /// replica, state in Streaming Memory (PopXL, the seed's notebook).
    PhasedTp,
    /// Layers placed on IPUs as pipeline stages, weights resident in SRAM
    /// (PopTorch, optimum-graphcore).
    Pipeline,
}

impl Strategy {
    fn describe(self) -> &'static str {
        match self {
            Strategy::PhasedTp => "phased tensor parallelism",
            Strategy::Pipeline => "pipelining",
        }
    }
}

/// Where a step's time goes. `compute_s + links_s + streaming_s +
/// bubbles_s = total_s`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct TimeBreakdown {
    /// Arithmetic (and on-chip exchange of streamed data).
    pub compute_s: f64,
    /// Collectives and sends over IPU-Links.
    pub links_s: f64,
    /// Streaming Memory transfers not hidden behind compute.
    pub streaming_s: f64,
    /// Pipeline ramp-up and ramp-down.
    pub bubbles_s: f64,
    /// The whole step.
    pub total_s: f64,
}

impl std::ops::AddAssign for TimeBreakdown {
    /// Appends `o`'s time, part by part.
    fn add_assign(&mut self, o: TimeBreakdown) {
        self.compute_s += o.compute_s;
        self.links_s += o.links_s;
        self.streaming_s += o.streaming_s;
        self.bubbles_s += o.bubbles_s;
        self.total_s += o.total_s;
    }
}

/// One named share of an IPU's SRAM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPart {
    /// What it holds.
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// An IPU's SRAM at its fullest moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpuMemory {
    /// IPU number within the pod.
    pub ipu: u64,
    /// When the peak happens (a phase) or what the IPU holds (a stage).
    pub at: String,
    /// The parts; they sum to `total_bytes`.
    pub parts: Vec<MemoryPart>,
    /// The peak.
    pub total_bytes: u64,
}

impl IpuMemory {
    /// Builds the record, totalling the parts.
    pub fn new(ipu: u64, at: String, parts: Vec<MemoryPart>) -> IpuMemory {
        let total_bytes = parts.iter().map(|p| p.bytes).sum();
        IpuMemory {
            ipu,
            at,
            parts,
            total_bytes,
        }
    }
}

/// What a stretch of an IPU's time is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// Forward compute (and generation).
    Forward,
    /// Backward compute with recomputation.
    Backward,
    /// The AdamW update.
    Optimizer,
    /// Collectives over IPU-Links.
    Links,
    /// Pipeline stage-to-stage sends.
    Send,
    /// Waiting for Streaming Memory.
    StreamingWait,
    /// A Streaming Memory transfer overlapped with compute (drawn thin).
    Streaming,
    /// Idle: pipeline ramp-up or ramp-down.
    Bubble,
}

/// One stretch of one IPU's time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// IPU number.
    pub ipu: u64,
    /// Start, seconds from the step's start.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
    /// What happens.
    pub kind: SegmentKind,
    /// Which layer, stage or micro-batch.
    pub label: String,
    /// The part of the step it belongs to (`encoder fwd`, `token 2`, …),
    /// drawn as a band above the lanes.
    pub group: String,
}

/// The answer to "does this model fit on this pod, how, and how fast?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Model name or config path.
    pub model: String,
    /// `POD4` … `POD64`.
    pub system: String,
    /// IPUs in the pod.
    pub ipus: u64,
    /// The strategy.
    pub strategy: Strategy,
    /// Training or inference.
    pub mode: Mode,
    /// Whether every IPU's SRAM and every M2000's Streaming Memory suffice.
    pub fits: bool,
    /// Why it fits (tightest margin) or why not.
    pub reason: String,
    /// Seconds per step (`null` when it does not fit).
    pub step_time_s: Option<f64>,
    /// Examples per second (`null` when it does not fit).
    pub samples_per_s: Option<f64>,
    /// Peak SRAM use of each IPU.
    pub per_ipu_peak_bytes: Vec<u64>,
    /// SRAM of one IPU.
    pub sram_bytes_per_ipu: u64,
    /// Data-parallel replicas.
    pub replicas: u64,
    /// IPUs per replica (TP degree or pipeline stages).
    pub ipus_per_replica: u64,
    /// Examples per micro-batch.
    pub micro_batch: u64,
    /// Examples per step.
    pub global_batch: u64,
    /// Micro-batches per replica per step (gradient accumulation).
    pub micro_batches_per_replica: u64,
    /// Source tokens.
    pub source_len: u64,
    /// Target tokens (generated tokens in inference).
    pub target_len: u64,
    /// Where the step time goes (`null` when it does not fit).
    pub time: Option<TimeBreakdown>,
    /// Each IPU's SRAM at its peak, part by part.
    pub memory: Vec<IpuMemory>,
    /// Streaming Memory each IPU needs.
    pub streaming_bytes_per_ipu: u64,
    /// Streaming Memory available to each IPU.
    pub streaming_capacity_bytes_per_ipu: u64,
    /// What each IPU of replica 0 runs.
    pub placement: Vec<String>,
    /// The unpublished figures used.
    pub assumptions: Assumptions,
    /// The schedule of one step (drawn by `--timeline`; not in the JSON).
    #[serde(skip)]
    pub timeline: Vec<Segment>,
}

/// Seconds, or milliseconds below one second.
fn duration(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Train => "training",
            Mode::Infer => "greedy generation",
        };
        writeln!(
            f,
            "{} on {} ({} × GC200), {}, {mode}",
            self.model,
            self.system,
            self.ipus,
            self.strategy.describe()
        )?;
        writeln!(
            f,
            "  {} replica(s) × {} IPUs; micro-batch {}, global batch {}, {} micro-batches per replica; {} → {} tokens",
            self.replicas,
            self.ipus_per_replica,
            self.micro_batch,
            self.global_batch,
            self.micro_batches_per_replica,
            self.source_len,
            self.target_len
        )?;
        self.fmt_memory(f)?;
        writeln!(
            f,
            "Streaming Memory: {:.1} GiB per IPU of {:.1} GiB",
            self.streaming_bytes_per_ipu as f64 / GIB,
            self.streaming_capacity_bytes_per_ipu as f64 / GIB
        )?;
        writeln!(f, "Placement (replica 0):")?;
        for line in &self.placement {
            writeln!(f, "  {line}")?;
        }
        if let (Some(t), Some(sps)) = (self.time, self.samples_per_s) {
            writeln!(
                f,
                "Step time: {} = compute {} + links {} + streaming (not hidden) {} + bubbles {}",
                duration(t.total_s),
                duration(t.compute_s),
                duration(t.links_s),
                duration(t.streaming_s),
                duration(t.bubbles_s)
            )?;
            writeln!(f, "Throughput: {sps:.2} samples/s")?;
        }
        let verdict = if self.fits { "fits" } else { "DOES NOT FIT" };
        writeln!(f, "Verdict: {verdict}: {}", self.reason)
    }
}

impl Plan {
    /// Prints the memory table, one line per run of IPUs with the same
    /// breakdown.
    fn fmt_memory(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let replica = if self.replicas > 1 {
            "; replica 0, the others are the same"
        } else {
            ""
        };
        writeln!(
            f,
            "SRAM per IPU at its peak (of {:.1} MiB{replica}):",
            self.sram_bytes_per_ipu as f64 / MIB
        )?;
        let mut k = 0;
        while k < self.memory.len() {
            let first = &self.memory[k];
            let mut last = k;
            while last + 1 < self.memory.len()
                && self.memory[last + 1].parts == first.parts
                && self.memory[last + 1].at == first.at
            {
                last += 1;
            }
            let ipus = if last == k {
                format!("ipu {}", first.ipu)
            } else {
                format!("ipu {}-{}", first.ipu, self.memory[last].ipu)
            };
            let parts: Vec<String> = first
                .parts
                .iter()
                .map(|p| format!("{} {:.1}", p.name, p.bytes as f64 / MIB))
                .collect();
            writeln!(
                f,
                "  {ipus} ({}): {:.1} MiB ({:.0}%) = {}",
                first.at,
                first.total_bytes as f64 / MIB,
                100.0 * first.total_bytes as f64 / self.sram_bytes_per_ipu as f64,
                parts.join(" + ")
            )?;
            k = last + 1;
        }
        Ok(())
    }
}

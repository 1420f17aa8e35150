//! Strategy 1: phased tensor parallelism, as the seed's PopXL notebook ran
//! Flan-T5.
//!
//! Every layer is sharded over the `n` IPUs of a replica and runs as one
//! phase. A phase loads its weight shard from Streaming Memory once and
//! loops over the replica's `m` micro-batches (batch serialisation),
//! loading each micro-batch's input and storing its output; the I/O tiles
//! overlap these transfers with compute, so a phase lasts
//!
//! `T_phase = max(T_compute + T_links, T_streaming)`.
//!
//! Training runs the forward phases, the LM head (forward + backward), the
//! backward phases in reverse (each recomputing its block), then one AdamW
//! phase per layer with the optimizer state sharded over replicas (RTS).

use crate::plan::{IpuMemory, MemoryPart, Segment, SegmentKind, TimeBreakdown};
use crate::workload::{Layer, LayerKind, Mode, Pass};
use crate::{gib, mib, part, Context, Outcome, SimError, ADAMW_FLOPS_PER_PARAM};

/// One phase as seen by each IPU of a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Layer and pass, e.g. `dec 3 bwd`.
    pub label: String,
    /// The part of the step, e.g. `decoder bwd`.
    pub group: String,
    /// Forward, backward or optimizer.
    pub kind: SegmentKind,
    /// Seconds of arithmetic on each IPU (its FLOPs at the sustained rate
    /// for the phase's matmul shape).
    pub arithmetic_s: f64,
    /// Time in collectives over IPU-Links.
    pub links_s: f64,
    /// Bytes moved between Streaming Memory and this IPU.
    pub streamed_bytes: f64,
    /// SRAM in use on each IPU during the phase.
    pub sram: Vec<MemoryPart>,
}

/// How long a phase takes and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTime {
    /// Arithmetic plus on-chip exchange of the streamed bytes.
    pub compute_s: f64,
    /// Collectives.
    pub links_s: f64,
    /// Streaming Memory transfers (overlapped with the two above).
    pub streaming_s: f64,
    /// `max(compute + links, streaming)`.
    pub total_s: f64,
}

/// Times a phase: `compute = arithmetic + streamed / exchange`,
/// `streaming = streamed / streaming bandwidth`, and the phase lasts
/// `max(compute + links, streaming)`.
pub fn phase_time(p: &Phase, exchange_bytes_per_s: f64, streaming_bytes_per_s: f64) -> PhaseTime {
    let compute_s = p.arithmetic_s + p.streamed_bytes / exchange_bytes_per_s;
    let streaming_s = p.streamed_bytes / streaming_bytes_per_s;
    PhaseTime {
        compute_s,
        links_s: p.links_s,
        streaming_s,
        total_s: (compute_s + p.links_s).max(streaming_s),
    }
}

/// Plans the request under phased tensor parallelism.
pub(crate) fn plan(ctx: &Context) -> Result<crate::Plan, SimError> {
    let c = &ctx.req.workload.config;
    let n = ctx.n;
    if !(c.num_heads as u64).is_multiple_of(n) || !(c.d_ff as u64).is_multiple_of(n) {
        return Err(SimError::TensorParallel {
            tp: n,
            heads: c.num_heads,
            d_ff: c.d_ff,
        });
    }
    let phases = match ctx.req.workload.mode {
        Mode::Train => train_phases(ctx),
        Mode::Infer if ctx.req.workload.uses_kv_cache() => cached_phases(ctx),
        Mode::Infer => recompute_phases(ctx),
    };
    let (time, timeline) = schedule(ctx, &phases);
    let peak = phases
        .iter()
        .max_by_key(|p| p.sram.iter().map(|q| q.bytes).sum::<u64>())
        .expect("every model has phases");
    let memory: Vec<IpuMemory> = (0..n)
        .map(|ipu| IpuMemory::new(ipu, peak.label.clone(), peak.sram.clone()))
        .collect();
    let streaming = streaming_footprint(ctx);
    let (fits, reason) = verdict(ctx, &memory[0], streaming);
    let ipus = if n == 1 {
        "ipu 0".to_string()
    } else {
        format!("ipu 0-{}", n - 1)
    };
    let placement = vec![format!(
        "{ipus}: every layer, sharded {n} ways (heads, d_ff and vocabulary split), run as {} phases",
        phases.len()
    )];
    Ok(ctx.finish(Outcome {
        fits,
        reason,
        time: Some(time),
        memory,
        streaming_bytes_per_ipu: streaming,
        placement,
        timeline,
    }))
}

/// Whether the peak phase fits in SRAM and the state in Streaming Memory.
fn verdict(ctx: &Context, peak: &IpuMemory, streaming: f64) -> (bool, String) {
    let sram = ctx.req.pod.ipu.sram_bytes() as f64;
    let capacity = ctx.req.pod.streaming_bytes_per_ipu() as f64;
    let used = peak.total_bytes as f64;
    let mut problems = Vec::new();
    if used > sram {
        problems.push(format!(
            "phase `{}` needs {:.1} MiB of SRAM on each IPU, more than its {:.1} MiB",
            peak.at,
            mib(used),
            mib(sram)
        ));
    }
    if streaming > capacity {
        problems.push(format!(
            "weights, gradients, optimizer state and activations need {:.1} GiB of Streaming Memory per IPU, more than its {:.1} GiB share of the M2000's DDR",
            gib(streaming),
            gib(capacity)
        ));
    }
    if !problems.is_empty() {
        return (false, problems.join("; and "));
    }
    (
        true,
        format!(
            "peak SRAM {:.1} of {:.1} MiB ({:.0}%) in phase `{}`; Streaming Memory {:.1} of {:.1} GiB per IPU",
            mib(used),
            mib(sram),
            100.0 * used / sram,
            peak.at,
            gib(streaming),
            gib(capacity)
        ),
    )
}

/// Streaming Memory each IPU needs. Training: weight and gradient shards
/// `P(w + g)/n`, optimizer state `P·o/(n·r)`, and the activation
/// checkpoints `m·(L_enc·h_s + L_dec·h_t + h_s)/n` (each block's input plus
/// the encoder output). Inference: weights `P·w/n` and the encoder output
/// `m·h_s/n`, plus the current hidden states `m·h_s/n` (recomputing; the
/// target is padded to `s`) or the key/value caches `m·L_dec·kv/n`.
pub(crate) fn streaming_footprint(ctx: &Context) -> f64 {
    let w = &ctx.req.workload;
    let p = &w.precision;
    let (n, r, m) = (ctx.n as f64, ctx.req.replicas as f64, ctx.m as f64);
    let params: f64 = w.layers().iter().map(|l| l.params as f64).sum();
    let (enc, dec) = (w.config.num_layers as f64, w.config.decoder_layers() as f64);
    let (h_s, h_t) = (w.hidden_bytes(w.source_len), w.hidden_bytes(w.target_len));
    match w.mode {
        Mode::Train => {
            params * (p.weight_bytes + p.grad_bytes) as f64 / n
                + params * p.optimizer_state_bytes as f64 / (n * r)
                + m * (enc * h_s + dec * h_t + h_s) / n
        }
        Mode::Infer => {
            let state = if w.uses_kv_cache() {
                dec * w.kv_cache_bytes(ctx.n)
            } else {
                h_s / n
            };
            params * p.weight_bytes as f64 / n + m * (state + h_s / n)
        }
    }
}

/// Runs the phases back to back on every IPU of replica 0.
fn schedule(ctx: &Context, phases: &[Phase]) -> (TimeBreakdown, Vec<Segment>) {
    let ipu = &ctx.req.pod.ipu;
    let stream_bw = ctx.req.assumptions.streaming_bytes_per_s;
    let mut total = TimeBreakdown::default();
    let mut timeline = Vec::new();
    for p in phases {
        let t = phase_time(p, ipu.exchange_bytes_per_s, stream_bw);
        let start = total.total_s;
        let busy = t.compute_s + t.links_s;
        let pieces = [
            (p.kind, start, start + t.compute_s),
            (SegmentKind::Links, start + t.compute_s, start + busy),
            (SegmentKind::StreamingWait, start + busy, start + t.total_s),
            (SegmentKind::Streaming, start, start + t.streaming_s),
        ];
        for k in 0..ctx.n {
            for &(kind, s, e) in &pieces {
                if e > s {
                    timeline.push(Segment {
                        ipu: k,
                        start_s: s,
                        end_s: e,
                        kind,
                        label: p.label.clone(),
                        group: p.group.clone(),
                    });
                }
            }
        }
        total += TimeBreakdown {
            compute_s: t.compute_s,
            links_s: t.links_s,
            streaming_s: t.total_s - busy,
            bubbles_s: 0.0,
            total_s: t.total_s,
        };
    }
    (total, timeline)
}

/// Builds the phases of a step from the per-IPU quantities they share.
struct PhaseBuilder<'a> {
    ctx: &'a Context<'a>,
    n: u64,
    m: f64,
    h_s: f64,
    h_t: f64,
}

impl<'a> PhaseBuilder<'a> {
    fn new(ctx: &'a Context<'a>) -> Self {
        let w = &ctx.req.workload;
        PhaseBuilder {
            ctx,
            n: ctx.n,
            m: ctx.m as f64,
            h_s: w.hidden_bytes(w.source_len),
            h_t: w.hidden_bytes(w.target_len),
        }
    }

    fn ar(&self, bytes: f64) -> f64 {
        self.ctx.link().all_reduce_s(bytes, self.n)
    }

    fn ag(&self, bytes: f64) -> f64 {
        self.ctx.link().all_gather_s(bytes, self.n)
    }

    /// Elements of `layer`'s weights on each IPU.
    fn shard(&self, layer: &Layer) -> f64 {
        layer.weight_elems as f64 / self.n as f64
    }

    fn weight_bytes(&self, layer: &Layer) -> f64 {
        self.shard(layer) * self.ctx.req.workload.precision.weight_bytes as f64
    }

    fn grad_bytes(&self, layer: &Layer) -> f64 {
        self.shard(layer) * self.ctx.req.workload.precision.grad_bytes as f64
    }

    /// Collectives of one micro-batch's forward through a block: two
    /// all-reduces per encoder layer (attention and feed-forward outputs),
    /// three per decoder layer plus an all-gather of the encoder output.
    fn block_forward_links_s(&self, layer: &Layer) -> f64 {
        match layer.kind {
            LayerKind::Encoder => 2.0 * self.ar(self.h_s),
            _ => 3.0 * self.ar(self.h_t) + self.ag(self.h_s),
        }
    }

    /// Hidden-state bytes one micro-batch streams through a block
    /// (sharded `1/n`): forward loads the input and stores the output
    /// (decoder: plus the encoder output); backward loads the checkpoint
    /// and the output gradient and stores the input gradient (decoder: plus
    /// the encoder output and its gradient accumulator, loaded and stored).
    fn block_activation_bytes(&self, layer: &Layer, backward: bool) -> f64 {
        let n = self.n as f64;
        let (own, enc) = match layer.kind {
            LayerKind::Encoder => (self.h_s, 0.0),
            _ => (self.h_t, self.h_s),
        };
        if backward {
            (3.0 * own + 3.0 * enc) / n
        } else {
            (2.0 * own + enc) / n
        }
    }

    /// The pass a phase of `kind` runs on `layer`: backward phases are
    /// backward, decoder-side phases of cached generation decode one token.
    fn pass(&self, layer: &Layer, kind: SegmentKind) -> Pass {
        let decode = self.ctx.req.workload.uses_kv_cache();
        match (kind, layer.kind) {
            (SegmentKind::Backward, _) => Pass::Backward,
            (_, LayerKind::Decoder | LayerKind::LmHead) if decode => Pass::Decode,
            _ => Pass::Forward,
        }
    }

    /// SRAM of a forward or backward phase of `layer`.
    fn sram(&self, layer: &Layer, pass: Pass, io_bytes: f64) -> Vec<MemoryPart> {
        let w = &self.ctx.req.workload;
        let working = w.working_bytes(layer, self.n, pass);
        let backward = pass == Pass::Backward;
        let mut parts = vec![
            part("weights", self.weight_bytes(layer)),
            part("next weights (prefetch)", self.weight_bytes(layer)),
        ];
        if backward {
            parts.push(part("gradient accumulator", self.grad_bytes(layer)));
            parts.push(part("activations+gradients", working));
        } else {
            parts.push(part("activations", working));
        }
        if pass == Pass::Decode && layer.kind == LayerKind::Decoder {
            parts.push(part("kv cache", w.kv_cache_bytes(self.n)));
        }
        parts.push(part("I/O buffers", 2.0 * io_bytes));
        parts.push(self.ctx.reserve());
        parts
    }

    /// Assembles a phase of `kind` on `layer`: its label and group, its
    /// SRAM, and the arithmetic time of `flops` at the layer's matmul shape.
    fn phase(
        &self,
        layer: &Layer,
        kind: SegmentKind,
        flops: f64,
        links_s: f64,
        streamed: f64,
        io: f64,
    ) -> Phase {
        let pass = match kind {
            SegmentKind::Forward => "fwd",
            SegmentKind::Backward => "bwd",
            _ => "adamw",
        };
        let ctx = self.ctx;
        let (sram, arithmetic_s) = match kind {
            SegmentKind::Optimizer => (self.optimizer_sram(layer), flops / ctx.flops_per_s(true)),
            _ => {
                let p = self.pass(layer, kind);
                let rows = ctx.req.workload.matmul_rows(layer, p);
                (self.sram(layer, p, io), ctx.matmul_s(flops, rows, true))
            }
        };
        let group = match (kind, layer.kind) {
            (SegmentKind::Optimizer, _) => "AdamW".to_string(),
            (_, LayerKind::Embedding) => format!("emb {pass}"),
            (_, LayerKind::Encoder) => format!("encoder {pass}"),
            (_, LayerKind::Decoder) => format!("decoder {pass}"),
            (_, LayerKind::LmHead) => "head".to_string(),
        };
        Phase {
            label: format!("{} {pass}", layer.name()),
            group,
            kind,
            arithmetic_s,
            links_s,
            streamed_bytes: streamed,
            sram,
        }
    }

    /// The forward phase of `layer` over all micro-batches (training, a
    /// recomputed generation step, the encoder pass of cached generation).
    /// The LM head appears here only in generation: logits for every
    /// position, then the arg-max over the vocabulary shards (an all-reduce
    /// of `8b` bytes: value and index per example).
    fn forward(&self, layer: &Layer) -> Phase {
        let w = &self.ctx.req.workload;
        let n = self.n as f64;
        let flops = self.m * w.forward_flops(layer) / n;
        let (links, io) = match layer.kind {
            LayerKind::Embedding => (
                self.ar(self.h_s) + self.ar(self.h_t),
                (self.h_s + self.h_t) / n,
            ),
            LayerKind::LmHead => (self.ar((w.micro_batch * 8) as f64), self.h_t / n),
            _ => (
                self.block_forward_links_s(layer),
                self.block_activation_bytes(layer, false),
            ),
        };
        let streamed = self.weight_bytes(layer) + self.m * io;
        self.phase(
            layer,
            SegmentKind::Forward,
            flops,
            self.m * links,
            streamed,
            io,
        )
    }

    /// The LM head and loss: forward and backward per micro-batch; the
    /// softmax needs a max and a sum over the vocabulary shards.
    fn train_head(&self, layer: &Layer) -> Phase {
        let w = &self.ctx.req.workload;
        let n = self.n as f64;
        let per_token_fp32 = (w.micro_batch * w.target_len * 4) as f64;
        let links = self.ar(self.h_t) + 2.0 * self.ar(per_token_fp32);
        let io = 2.0 * self.h_t / n;
        let streamed = self.weight_bytes(layer) + self.grad_bytes(layer) + self.m * io;
        let flops = self.m * w.train_flops(layer) / n;
        let mut phase = self.phase(
            layer,
            SegmentKind::Backward,
            flops,
            self.m * links,
            streamed,
            io,
        );
        phase.label = "lm head fwd+bwd".into();
        phase
    }

    /// The backward phase of `layer`: recomputation and backward per
    /// micro-batch, then the gradient shard is stored and reduce-scattered
    /// over the replicas.
    fn train_backward(&self, layer: &Layer) -> Phase {
        let w = &self.ctx.req.workload;
        let n = self.n as f64;
        let replica_reduce = self
            .ctx
            .link()
            .all_gather_s(self.grad_bytes(layer), self.ctx.req.replicas);
        let (flops, links, io, weights) = match layer.kind {
            LayerKind::Embedding => (0.0, 0.0, (self.h_s + self.h_t) / n, 0.0),
            _ => (
                self.m * (w.train_flops(layer) - w.forward_flops(layer)) / n,
                2.0 * self.block_forward_links_s(layer),
                self.block_activation_bytes(layer, true),
                self.weight_bytes(layer),
            ),
        };
        let streamed = weights + self.grad_bytes(layer) + self.m * io;
        self.phase(
            layer,
            SegmentKind::Backward,
            flops,
            self.m * links + replica_reduce,
            streamed,
            io,
        )
    }

    /// The AdamW phase of `layer`: each replica updates `1/r` of the shard
    /// (load gradient, weights, state; store weights, state) and the updated
    /// weights are all-gathered over the replicas and stored.
    fn optimizer(&self, layer: &Layer) -> Phase {
        let p = &self.ctx.req.workload.precision;
        let r = self.ctx.req.replicas as f64;
        let elems = layer.params as f64 / self.n as f64;
        let per_replica = elems / r;
        let streamed = per_replica
            * (p.grad_bytes + p.weight_bytes + 2 * p.optimizer_state_bytes) as f64
            + elems * p.weight_bytes as f64;
        let links = self
            .ctx
            .link()
            .all_gather_s(elems * p.weight_bytes as f64, self.ctx.req.replicas);
        self.phase(
            layer,
            SegmentKind::Optimizer,
            ADAMW_FLOPS_PER_PARAM * per_replica,
            links,
            streamed,
            0.0,
        )
    }

    fn optimizer_sram(&self, layer: &Layer) -> Vec<MemoryPart> {
        let p = &self.ctx.req.workload.precision;
        let elems = layer.params as f64 / self.n as f64;
        let per_replica = elems / self.ctx.req.replicas as f64;
        vec![
            part("weights", elems * p.weight_bytes as f64),
            part("gradient", per_replica * p.grad_bytes as f64),
            part(
                "optimizer state",
                per_replica * p.optimizer_state_bytes as f64,
            ),
            self.ctx.reserve(),
        ]
    }

    /// One generation step of a decoder-side layer: embedding of the new
    /// token, decoder blocks reading their key/value cache, and the LM head
    /// with an arg-max over the vocabulary shards.
    fn decode(&self, layer: &Layer, step: u64) -> Phase {
        let w = &self.ctx.req.workload;
        let n = self.n as f64;
        let h1 = w.hidden_bytes(1);
        let (links, io) = match layer.kind {
            LayerKind::Embedding => (self.ar(h1), h1 / n),
            LayerKind::LmHead => (self.ar((w.micro_batch * 8) as f64), h1 / n),
            _ => {
                let first = if step == 0 {
                    (self.ag(self.h_s), self.h_s / n)
                } else {
                    (0.0, 0.0)
                };
                (
                    3.0 * self.ar(h1) + first.0,
                    2.0 * h1 / n + w.kv_cache_bytes(self.n) + first.1,
                )
            }
        };
        let flops = self.m * w.decode_flops(layer, step) / n;
        let streamed = self.weight_bytes(layer) + self.m * io;
        let mut phase = self.phase(
            layer,
            SegmentKind::Forward,
            flops,
            self.m * links,
            streamed,
            io,
        );
        phase.label = format!("{} tok {step}", layer.name());
        phase.group = format!("token {step}");
        phase
    }
}

/// Training phases: forward, head, backward in reverse, AdamW.
fn train_phases(ctx: &Context) -> Vec<Phase> {
    let s = PhaseBuilder::new(ctx);
    let layers = ctx.req.workload.layers();
    let (head, body) = layers.split_last().expect("layers end with the LM head");
    let mut phases: Vec<Phase> = body.iter().map(|l| s.forward(l)).collect();
    phases.push(s.train_head(head));
    phases.extend(body.iter().rev().map(|l| s.train_backward(l)));
    phases.extend(
        layers
            .iter()
            .filter(|l| l.params > 0)
            .map(|l| s.optimizer(l)),
    );
    phases
}

/// Generation as the seed's eval runs it: for each new token, the forward
/// phases of the whole model over the padded sequence
/// ([`crate::Workload::recompute_step`]).
fn recompute_phases(ctx: &Context) -> Vec<Phase> {
    let w = &ctx.req.workload;
    let req = crate::Request {
        workload: w.recompute_step(),
        ..ctx.req.clone()
    };
    let step_ctx = Context {
        req: &req,
        n: ctx.n,
        m: ctx.m,
    };
    let b = PhaseBuilder::new(&step_ctx);
    let layers = req.workload.layers();
    let mut phases = Vec::new();
    for step in 0..w.target_len {
        for l in &layers {
            let mut p = b.forward(l);
            p.label = format!("{} tok {step}", l.name());
            p.group = format!("token {step}");
            phases.push(p);
        }
    }
    phases
}

/// Generation with a key/value cache: the encoder pass, then for each new
/// token the embedding, every decoder block and the LM head.
fn cached_phases(ctx: &Context) -> Vec<Phase> {
    let s = PhaseBuilder::new(ctx);
    let w = &ctx.req.workload;
    let layers = w.layers();
    let mut phases: Vec<Phase> = layers
        .iter()
        .filter(|l| matches!(l.kind, LayerKind::Embedding | LayerKind::Encoder))
        .map(|l| s.forward(l))
        .collect();
    for step in 0..w.target_len {
        phases.extend(
            layers
                .iter()
                .filter(|l| l.kind != LayerKind::Encoder)
                .map(|l| s.decode(l, step)),
        );
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    fn phase(arithmetic_s: f64, links_s: f64, streamed_bytes: f64) -> Phase {
        Phase {
            label: "x".into(),
            group: "x".into(),
            kind: SegmentKind::Forward,
            arithmetic_s,
            links_s,
            streamed_bytes,
            sram: Vec::new(),
        }
    }

    /// The tiny workload (see `workload::tests::tiny`) on a POD4: TP 4,
    /// `m` = 8 / 2 = 4 micro-batches, `h(s)` = 2·3·8·2 = 96 B, `h(t)` = 160 B.
    fn tiny_request() -> Request {
        crate::workload::tests::tiny_request(crate::Strategy::PhasedTp, 8)
    }

    #[test]
    fn encoder_forward_phase_by_hand() {
        let req = tiny_request();
        let ctx = Context::new(&req).expect("valid");
        let b = PhaseBuilder::new(&ctx);
        let enc0 = req.workload.layers()[1];
        let p = b.forward(&enc0);
        // 664 params / 4 × 2 B = 332 B of weights, then per micro-batch the
        // input and output shards 2·96/4 = 48 B: 332 + 4·48 = 524 B.
        assert_eq!(p.streamed_bytes, 524.0);
        // 4 micro-batches × 2 all-reduces of 96 B over 4 IPUs at λ = 3 µs,
        // β = 64 GB/s: 8 · 2·3·(3e-6 + 96/(4·64e9)).
        let expected = 8.0 * 6.0 * (3e-6 + 96.0 / 256e9);
        assert!((p.links_s - expected).abs() < 1e-15, "{}", p.links_s);
        assert_eq!(p.label, "enc 0 fwd");
    }

    #[test]
    fn optimizer_phase_and_footprint_by_hand() {
        let req = tiny_request();
        let ctx = Context::new(&req).expect("valid");
        let enc0 = req.workload.layers()[1];
        let p = PhaseBuilder::new(&ctx).optimizer(&enc0);
        // 166 params per IPU: load gradient 2, weights 2, state 8, store
        // state 8 and the gathered weights 2 → 166 · 22 B.
        assert_eq!(p.streamed_bytes, 166.0 * 22.0);
        assert_eq!(p.links_s, 0.0, "one replica gathers nothing");
        // P = 3344: P(2+2)/4 + 8P/4 + m(2·96 + 2·160 + 96)/4 = 3344 + 6688 + 608.
        assert_eq!(streaming_footprint(&ctx), 10640.0);
    }

    #[test]
    fn phase_time_is_the_longer_of_busy_and_streaming() {
        // 1 s of arithmetic + 1e9 B over 1e12 B/s exchange = 1 ms; links
        // 0.5 s; streaming 1e9 B at 1e9 B/s = 1 s → compute-bound 1.501 s.
        let t = phase_time(&phase(1.0, 0.5, 1e9), 1e12, 1e9);
        assert!((t.compute_s - 1.001).abs() < 1e-12);
        assert!((t.total_s - 1.501).abs() < 1e-12);
        // With 4e9 B streamed: 4 s of streaming exceeds 1.004 + 0.5.
        let t = phase_time(&phase(1.0, 0.5, 4e9), 1e12, 1e9);
        assert!((t.total_s - 4.0).abs() < 1e-12);
    }
}

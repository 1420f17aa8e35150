//! Strategy 2: pipelining, as optimum-graphcore ran T5 with PopTorch.
//!
//! The blocks are placed on the `S` IPUs of a replica as contiguous
//! pipeline stages, with the embedding and the LM head on IPU 0 and every
//! weight resident in SRAM. Micro-batches flow through the stages; with
//! `t_k` the time of stage `k` for one micro-batch (compute plus its send
//! to the next stage), a pass of `M` micro-batches takes
//!
//! `T_pass = Σ_k t_k + (M − 1) · max_k t_k`
//!
//! (ramp-up and ramp-down are the `Σ_k t_k − max_k t_k` of bubbles). The
//! placement search picks the split that minimises `max_k t_k` while every
//! IPU stays under its SRAM, first with the optimizer state resident, then
//! with it offloaded to Streaming Memory.

use crate::plan::{IpuMemory, MemoryPart, Segment, SegmentKind, TimeBreakdown};
use crate::workload::{Layer, LayerKind, Mode, Pass, Workload};
use crate::{gib, mib, part, Context, Outcome, SimError, ADAMW_FLOPS_PER_PARAM};

/// Time of one micro-batch on one stage in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTime {
    /// Forward compute.
    pub forward_s: f64,
    /// Recomputation and backward compute (0 in inference).
    pub backward_s: f64,
    /// Sends to the neighbouring stages.
    pub send_s: f64,
}

impl StageTime {
    /// `t_k`: everything the stage does for one micro-batch.
    pub fn total_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.send_s
    }
}

/// `Σ_k t_k + (M − 1) · max_k t_k`: a pass of `m` micro-batches through
/// stages taking `stage_s` each.
pub fn pass_s(stage_s: &[f64], m: u64) -> f64 {
    let sum: f64 = stage_s.iter().sum();
    sum + (m as f64 - 1.0) * max(stage_s)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0.0, f64::max)
}

/// Plans the request under pipelining.
pub(crate) fn plan(ctx: &Context) -> Result<crate::Plan, SimError> {
    let w = &ctx.req.workload;
    if w.mode == Mode::Train && ctx.m < 2 * ctx.n {
        return Err(SimError::Accumulation {
            stages: ctx.n,
            micro_batches: ctx.m,
            global: w.global_batch,
        });
    }
    let p = Pipeline::new(ctx);
    let sram = ctx.req.pod.ipu.sram_bytes() as f64;
    let weights: f64 = w.layers().iter().map(|l| p.weight_bytes(l)).sum();
    let replica_sram = sram * ctx.n as f64;
    if weights > replica_sram {
        let reason = format!(
            "the weights alone ({:.1} GiB) exceed the total SRAM of the {} IPUs of a replica ({:.1} GiB)",
            gib(weights),
            ctx.n,
            gib(replica_sram)
        );
        return Ok(p.unplaceable(reason));
    }
    let placed = [false, true]
        .into_iter()
        .find_map(|offload| p.search(offload).map(|cuts| (offload, cuts)));
    let Some((offload, cuts)) = placed else {
        let even_offloaded = match w.mode {
            Mode::Train => ", even with the optimizer state in Streaming Memory",
            Mode::Infer => "",
        };
        let reason = format!(
            "no placement of the {} blocks on {} IPUs keeps every IPU under its {:.1} MiB of SRAM{even_offloaded}",
            p.blocks.len(),
            ctx.n,
            mib(sram)
        );
        return Ok(p.unplaceable(reason));
    };
    Ok(p.placed(&cuts, offload))
}

/// The blocks to place and the costs of placing them.
struct Pipeline<'a> {
    ctx: &'a Context<'a>,
    /// Embedding and LM head (always on IPU 0).
    fixed: Vec<Layer>,
    /// Encoder then decoder blocks, in order.
    blocks: Vec<Layer>,
    /// The shapes the passes run: the request's workload, or for recomputed
    /// generation one padded step of it ([`Workload::recompute_step`]).
    shapes: Workload,
}

impl<'a> Pipeline<'a> {
    fn new(ctx: &'a Context<'a>) -> Self {
        let w = &ctx.req.workload;
        let (blocks, fixed) = w.layers().into_iter().partition(Layer::is_block);
        let shapes = match w.mode {
            Mode::Infer if !w.uses_kv_cache() => w.recompute_step(),
            _ => w.clone(),
        };
        Pipeline {
            ctx,
            fixed,
            blocks,
            shapes,
        }
    }

    fn weight_bytes(&self, l: &Layer) -> f64 {
        (l.params * self.ctx.req.workload.precision.weight_bytes) as f64
    }

    /// The layers of stage `k` whose blocks are `blocks[range]`.
    fn stage_layers(&self, k: u64, range: std::ops::Range<usize>) -> Vec<Layer> {
        let mut layers = if k == 0 {
            self.fixed.clone()
        } else {
            Vec::new()
        };
        layers.extend_from_slice(&self.blocks[range]);
        layers
    }

    /// SRAM of stage `k` holding `layers`. Training: weights, gradient
    /// accumulators, optimizer state (unless `offload`), stashed inputs of
    /// the `min(M, S − k)` micro-batches in flight (1F1B), the working set
    /// of its largest layer (activations and their gradients). Inference:
    /// weights, the forward working set, and with a cache the key/value
    /// caches of its decoder blocks for all `M` micro-batches.
    fn stage_memory(&self, k: u64, layers: &[Layer], offload: bool) -> Vec<MemoryPart> {
        let w = &self.shapes;
        let p = &w.precision;
        let params: f64 = layers.iter().map(|l| l.params as f64).sum();
        let pass = |l: &Layer| match w.mode {
            Mode::Train => Pass::Backward,
            Mode::Infer if w.uses_kv_cache() && l.kind != LayerKind::Encoder => Pass::Decode,
            Mode::Infer => Pass::Forward,
        };
        let working = layers
            .iter()
            .map(|l| w.working_bytes(l, 1, pass(l)))
            .fold(0.0, f64::max);
        let mut parts = vec![part("weights", params * p.weight_bytes as f64)];
        match w.mode {
            Mode::Train => {
                let depth = self.ctx.m.min(self.ctx.n - k) as f64;
                let state = if offload {
                    0.0
                } else {
                    params * p.optimizer_state_bytes as f64
                };
                parts.push(part("gradient accumulators", params * p.grad_bytes as f64));
                parts.push(part("optimizer state", state));
                parts.push(part("stashed inputs", depth * self.boundary_bytes()));
                parts.push(part("activations+gradients", working));
            }
            Mode::Infer => {
                parts.push(part("activations", working));
                if w.uses_kv_cache() {
                    let dec = layers
                        .iter()
                        .filter(|l| l.kind == LayerKind::Decoder)
                        .count() as f64;
                    let caches = self.ctx.m as f64 * dec * w.kv_cache_bytes(1);
                    parts.push(part("kv cache", caches));
                }
            }
        }
        parts.push(self.ctx.reserve());
        parts
    }

    /// Bytes a stage passes on per micro-batch over full sequences: the
    /// source and target hidden states (`h_s + h_t`), since the decoder's
    /// embedded input travels with the encoder activations.
    fn boundary_bytes(&self) -> f64 {
        let w = &self.shapes;
        w.hidden_bytes(w.source_len) + w.hidden_bytes(w.target_len)
    }

    /// Training time of one micro-batch on a stage: forward, then
    /// recomputation and backward, plus a send forward and one backward.
    fn train_time(&self, layers: &[Layer]) -> StageTime {
        let w = &self.shapes;
        let fwd = self.matmul_s(layers, Pass::Forward, |l| w.forward_flops(l));
        let bwd = self.matmul_s(layers, Pass::Backward, |l| {
            w.train_flops(l) - w.forward_flops(l)
        });
        StageTime {
            forward_s: fwd,
            backward_s: bwd,
            send_s: 2.0 * self.ctx.link().send_s(self.boundary_bytes()),
        }
    }

    /// Inference passes of a stage, one per generated token: recomputed,
    /// each is the forward of its layers over the padded sequence; with a
    /// cache, an encoder pass comes first and each token pass runs the
    /// decoder blocks and LM head on one position, sending one token's
    /// hidden state.
    fn infer_times(&self, layers: &[Layer]) -> Vec<StageTime> {
        let w = &self.shapes;
        let link = self.ctx.link();
        if !w.uses_kv_cache() {
            let step = StageTime {
                forward_s: self.matmul_s(layers, Pass::Forward, |l| w.forward_flops(l)),
                backward_s: 0.0,
                send_s: link.send_s(self.boundary_bytes()),
            };
            // `w` is one padded step; the request says how many tokens.
            return vec![step; self.ctx.req.workload.target_len as usize];
        }
        let encode = self.matmul_s(layers, Pass::Forward, |l| match l.kind {
            LayerKind::Encoder => w.forward_flops(l),
            _ => 0.0,
        });
        let mut passes = vec![StageTime {
            forward_s: encode,
            backward_s: 0.0,
            send_s: link.send_s(self.boundary_bytes()),
        }];
        passes.extend((0..w.target_len).map(|step| StageTime {
            forward_s: self.matmul_s(layers, Pass::Decode, |l| w.decode_flops(l, step)),
            backward_s: 0.0,
            send_s: link.send_s(w.hidden_bytes(1)),
        }));
        passes
    }

    /// Seconds for `flops(l)` of each of `layers` in `pass`, each at the
    /// sustained rate for its matmul shape.
    fn matmul_s(&self, layers: &[Layer], pass: Pass, flops: impl Fn(&Layer) -> f64) -> f64 {
        let w = &self.shapes;
        layers
            .iter()
            .map(|l| self.ctx.matmul_s(flops(l), w.matmul_rows(l, pass), false))
            .sum()
    }

    /// Per pass, the time of stage `layers` (training has one pass).
    fn stage_passes(&self, layers: &[Layer]) -> Vec<StageTime> {
        match self.ctx.req.workload.mode {
            Mode::Train => vec![self.train_time(layers)],
            Mode::Infer => self.infer_times(layers),
        }
    }

    /// The cost the search balances: the stage's total over all passes.
    fn stage_cost(&self, layers: &[Layer]) -> f64 {
        self.stage_passes(layers)
            .iter()
            .map(StageTime::total_s)
            .sum()
    }

    fn fits(&self, k: u64, layers: &[Layer], offload: bool) -> bool {
        let used: u64 = self
            .stage_memory(k, layers, offload)
            .iter()
            .map(|p| p.bytes)
            .sum();
        used <= self.ctx.req.pod.ipu.sram_bytes()
    }

    /// The cut points `c_0 = 0 ≤ c_1 ≤ … ≤ c_S = N` (stage `k` holds blocks
    /// `c_k..c_{k+1}`) minimising the slowest stage with every stage within
    /// its SRAM, by dynamic programming over (stage, blocks placed); `None`
    /// when no split fits.
    fn search(&self, offload: bool) -> Option<Vec<usize>> {
        let (s, nb) = (self.ctx.n as usize, self.blocks.len());
        // best[k][j]: the slowest stage when stages 0..=k hold blocks 0..j.
        let mut best = vec![vec![f64::INFINITY; nb + 1]; s];
        let mut from = vec![vec![0usize; nb + 1]; s];
        for (j, cost) in best[0].iter_mut().enumerate() {
            let layers = self.stage_layers(0, 0..j);
            if self.fits(0, &layers, offload) {
                *cost = self.stage_cost(&layers);
            }
        }
        for k in 1..s {
            for j in 0..=nb {
                for i in 0..=j {
                    if !best[k - 1][i].is_finite() {
                        continue;
                    }
                    let layers = self.stage_layers(k as u64, i..j);
                    if !self.fits(k as u64, &layers, offload) {
                        continue;
                    }
                    let cost = best[k - 1][i].max(self.stage_cost(&layers));
                    if cost < best[k][j] {
                        best[k][j] = cost;
                        from[k][j] = i;
                    }
                }
            }
        }
        if !best[s - 1][nb].is_finite() {
            return None;
        }
        let mut cuts = vec![nb; s + 1];
        for k in (1..s).rev() {
            cuts[k] = from[k][cuts[k + 1]];
        }
        cuts[0] = 0;
        Some(cuts)
    }

    /// The outcome when nothing fits: memory shown for an even split with
    /// the optimizer state offloaded (the most lenient attempt).
    fn unplaceable(&self, reason: String) -> crate::Plan {
        let s = self.ctx.n as usize;
        let nb = self.blocks.len();
        let cuts: Vec<usize> = (0..=s).map(|k| k * nb / s).collect();
        let (memory, mut placement) = self.describe(&cuts, true);
        let note = match self.ctx.req.workload.mode {
            Mode::Train => "(no placement fits: an even split is shown, optimizer state offloaded)",
            Mode::Infer => "(no placement fits: an even split is shown)",
        };
        placement.push(note.into());
        self.ctx.finish(Outcome {
            fits: false,
            reason,
            time: None,
            memory,
            streaming_bytes_per_ipu: 0.0,
            placement,
            timeline: Vec::new(),
        })
    }

    /// Memory records and placement lines for `cuts`.
    fn describe(&self, cuts: &[usize], offload: bool) -> (Vec<IpuMemory>, Vec<String>) {
        let mut memory = Vec::new();
        let mut placement = Vec::new();
        for k in 0..self.ctx.n {
            let layers = self.stage_layers(k, cuts[k as usize]..cuts[k as usize + 1]);
            let names = layer_ranges(&layers);
            memory.push(IpuMemory::new(
                k,
                format!("stage {k}"),
                self.stage_memory(k, &layers, offload),
            ));
            placement.push(format!("ipu {k}: {names}"));
        }
        (memory, placement)
    }

    /// The plan for a placement that fits.
    fn placed(&self, cuts: &[usize], offload: bool) -> crate::Plan {
        let (memory, mut placement) = self.describe(cuts, offload);
        if offload {
            placement.push("optimizer state offloaded to Streaming Memory".into());
        }
        let stages: Vec<Vec<Layer>> = (0..self.ctx.n)
            .map(|k| self.stage_layers(k, cuts[k as usize]..cuts[k as usize + 1]))
            .collect();
        let (time, timeline) = self.schedule(&stages, offload);
        let sram = self.ctx.req.pod.ipu.sram_bytes() as f64;
        let tight = memory
            .iter()
            .max_by_key(|m| m.total_bytes)
            .expect("at least one stage");
        let streaming = if offload {
            self.max_stage_params(&stages)
                * self.ctx.req.workload.precision.optimizer_state_bytes as f64
        } else {
            0.0
        };
        let reason = format!(
            "fullest IPU {} uses {:.1} of {:.1} MiB ({:.0}%)",
            tight.ipu,
            mib(tight.total_bytes as f64),
            mib(sram),
            100.0 * tight.total_bytes as f64 / sram
        );
        let fits = streaming <= self.ctx.req.pod.streaming_bytes_per_ipu() as f64;
        self.ctx.finish(Outcome {
            fits,
            reason,
            time: Some(time),
            memory,
            streaming_bytes_per_ipu: streaming,
            placement,
            timeline,
        })
    }

    fn max_stage_params(&self, stages: &[Vec<Layer>]) -> f64 {
        stages
            .iter()
            .map(|s| s.iter().map(|l| l.params as f64).sum::<f64>())
            .fold(0.0, f64::max)
    }

    /// Times the step and draws it: each pass by the flow-shop recurrence
    /// (`start[k][j] = max(end[k][j−1], end[k−1][j])`, whose makespan is
    /// [`pass_s`]), then in training the AdamW update and the gradient
    /// all-reduce over replicas.
    fn schedule(&self, stages: &[Vec<Layer>], offload: bool) -> (TimeBreakdown, Vec<Segment>) {
        let per_stage: Vec<Vec<StageTime>> = stages.iter().map(|l| self.stage_passes(l)).collect();
        let mut total = TimeBreakdown::default();
        let mut timeline = Vec::new();
        for pass in 0..per_stage[0].len() {
            let times: Vec<StageTime> = per_stage.iter().map(|p| p[pass]).collect();
            let b = pass_breakdown(&times, self.ctx.m);
            let cached = self.shapes.uses_kv_cache();
            let group = match (self.shapes.mode, cached, pass) {
                (Mode::Train, ..) => format!("{} micro-batches, forward + backward", self.ctx.m),
                (Mode::Infer, true, 0) => "encoder pass".to_string(),
                (Mode::Infer, true, k) => format!("token {}", k - 1),
                (Mode::Infer, false, k) => format!("token {k}"),
            };
            draw_pass(&times, self.ctx.m, total.total_s, &group, &mut timeline);
            total += b;
        }
        if self.ctx.req.workload.mode == Mode::Train {
            let update = self.update(stages, offload, total.total_s, &mut timeline);
            total += update;
        }
        (total, timeline)
    }

    /// The AdamW update (state streamed in and out when offloaded) and the
    /// gradient all-reduce over replicas, each as long as its slowest stage.
    fn update(
        &self,
        stages: &[Vec<Layer>],
        offload: bool,
        start: f64,
        timeline: &mut Vec<Segment>,
    ) -> TimeBreakdown {
        let p = &self.ctx.req.workload.precision;
        let a = &self.ctx.req.assumptions;
        let params = self.max_stage_params(stages);
        let compute_s = params * ADAMW_FLOPS_PER_PARAM / self.ctx.flops_per_s(false);
        let streaming_s = if offload {
            2.0 * params * p.optimizer_state_bytes as f64 / a.streaming_bytes_per_s
        } else {
            0.0
        };
        let links_s = self
            .ctx
            .link()
            .all_reduce_s(params * p.grad_bytes as f64, self.ctx.req.replicas);
        for k in 0..self.ctx.n {
            let mut t = start;
            for (kind, d, label) in [
                (SegmentKind::Links, links_s, "gradient all-reduce"),
                (SegmentKind::StreamingWait, streaming_s, "optimizer state"),
                (SegmentKind::Optimizer, compute_s, "adamw"),
            ] {
                if d > 0.0 {
                    timeline.push(Segment {
                        ipu: k,
                        start_s: t,
                        end_s: t + d,
                        kind,
                        label: label.into(),
                        group: "update".into(),
                    });
                    t += d;
                }
            }
        }
        TimeBreakdown {
            compute_s,
            links_s,
            streaming_s,
            bubbles_s: 0.0,
            total_s: compute_s + links_s + streaming_s,
        }
    }
}

/// A pass's time split: the bottleneck stage's compute and sends `M`
/// times, plus the ramp-up/ramp-down bubbles `Σ_k t_k − max_k t_k`.
pub fn pass_breakdown(times: &[StageTime], m: u64) -> TimeBreakdown {
    let totals: Vec<f64> = times.iter().map(StageTime::total_s).collect();
    let slowest = times
        .iter()
        .max_by(|a, b| a.total_s().total_cmp(&b.total_s()))
        .copied()
        .unwrap_or_default();
    let mf = m as f64;
    let compute_s = mf * (slowest.forward_s + slowest.backward_s);
    let links_s = mf * slowest.send_s;
    let total_s = pass_s(&totals, m);
    TimeBreakdown {
        compute_s,
        links_s,
        streaming_s: 0.0,
        bubbles_s: total_s - compute_s - links_s,
        total_s,
    }
}

/// Appends a pass's schedule starting at `t0`: per stage and micro-batch a
/// forward, a backward and a send segment, and a bubble wherever a stage
/// waits.
pub fn draw_pass(times: &[StageTime], m: u64, t0: f64, group: &str, out: &mut Vec<Segment>) -> f64 {
    let mut prev_stage_end = vec![t0; m as usize];
    let mut makespan = t0;
    for (k, t) in times.iter().enumerate() {
        let mut free = t0;
        for (j, ready) in prev_stage_end.iter_mut().enumerate() {
            let start = free.max(*ready);
            let ipu = k as u64;
            if start > free {
                out.push(Segment {
                    ipu,
                    start_s: free,
                    end_s: start,
                    kind: SegmentKind::Bubble,
                    label: "idle".into(),
                    group: group.into(),
                });
            }
            let mut at = start;
            for (kind, d) in [
                (SegmentKind::Forward, t.forward_s),
                (SegmentKind::Backward, t.backward_s),
                (SegmentKind::Send, t.send_s),
            ] {
                if d > 0.0 {
                    out.push(Segment {
                        ipu,
                        start_s: at,
                        end_s: at + d,
                        kind,
                        label: format!("mb {j}"),
                        group: group.into(),
                    });
                    at += d;
                }
            }
            free = at;
            *ready = at;
        }
        makespan = makespan.max(free);
    }
    makespan
}

/// `embedding, lm head, enc 0-5` for a stage's layers.
fn layer_ranges(layers: &[Layer]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut k = 0;
    while k < layers.len() {
        let l = layers[k];
        if !l.is_block() {
            parts.push(l.name());
            k += 1;
            continue;
        }
        let mut end = k;
        while end + 1 < layers.len() && layers[end + 1].kind == l.kind {
            end += 1;
        }
        let prefix = if l.kind == LayerKind::Encoder {
            "enc"
        } else {
            "dec"
        };
        parts.push(if end == k {
            l.name()
        } else {
            format!("{prefix} {}-{}", l.index, layers[end].index)
        });
        k = end + 1;
    }
    if parts.is_empty() {
        "(nothing)".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::CALIBRATED_MATMUL_EFFICIENCY;
    use crate::Request;

    /// The tiny workload (see `workload::tests::tiny`) on a POD4 as a
    /// 4-stage pipeline with 16 examples: `m` = 8 = 2 × stages.
    fn tiny_request() -> Request {
        crate::workload::tests::tiny_request(crate::Strategy::Pipeline, 16)
    }

    #[test]
    fn stage_memory_by_hand() {
        let req = tiny_request();
        let ctx = Context::new(&req).expect("valid");
        let enc1 = [req.workload.layers()[2]];
        let bytes: Vec<u64> = Pipeline::new(&ctx)
            .stage_memory(1, &enc1, false)
            .iter()
            .map(|p| p.bytes)
            .collect();
        // 664 params: weights 2 B, gradients 2 B, AdamW 8 B; 3 micro-batches
        // in flight on stage 1 of 4, each h(s) + h(t) = 96 + 160 B; backward
        // working set 2·(96 + 264 + 288) elements of 2 B; a quarter of SRAM.
        assert_eq!(bytes, [1328, 1328, 5312, 768, 2592, 235_143_168]);
        let offloaded = Pipeline::new(&ctx).stage_memory(1, &enc1, true);
        assert_eq!(offloaded[2].bytes, 0);
    }

    #[test]
    fn stage_time_by_hand() {
        let req = tiny_request();
        let ctx = Context::new(&req).expect("valid");
        let enc1 = [req.workload.layers()[2]];
        let t = Pipeline::new(&ctx).train_time(&enc1);
        // 8256 forward FLOPs over b·s = 6 rows: 250 TFLOP/s × efficiency × 6/70.
        let rate = 250e12 * CALIBRATED_MATMUL_EFFICIENCY * 6.0 / 70.0;
        assert!((t.forward_s - 8256.0 / rate).abs() < 1e-18);
        assert!((t.backward_s - 3.0 * 8256.0 / rate).abs() < 1e-18);
        // A send each way of 256 B: 2·(3 µs + 256 B / 64 GB/s).
        assert!((t.send_s - 2.0 * (3e-6 + 4e-9)).abs() < 1e-15);
    }

    fn st(f: f64) -> StageTime {
        StageTime {
            forward_s: f,
            backward_s: 2.0 * f,
            send_s: 0.0,
        }
    }

    #[test]
    fn pass_time_by_hand() {
        // Stages of 1, 3, 2 s, 4 micro-batches: 6 + 3·3 = 15 s.
        assert_eq!(pass_s(&[1.0, 3.0, 2.0], 4), 15.0);
        let b = pass_breakdown(&[st(1.0 / 3.0), st(1.0), st(2.0 / 3.0)], 4);
        assert!((b.total_s - 15.0).abs() < 1e-12);
        assert!((b.compute_s - 12.0).abs() < 1e-12);
        assert!((b.bubbles_s - 3.0).abs() < 1e-12);
    }

    #[test]
    fn drawn_schedule_ends_at_the_pass_time() {
        let times = [st(0.5), st(1.0), st(0.2), st(0.7)];
        for m in [1, 2, 5, 9] {
            let mut segs = Vec::new();
            let end = draw_pass(&times, m, 0.0, "pass", &mut segs);
            let totals: Vec<f64> = times.iter().map(StageTime::total_s).collect();
            assert!((end - pass_s(&totals, m)).abs() < 1e-9, "m = {m}");
            assert!(segs.iter().all(|s| s.end_s > s.start_s));
        }
    }

    #[test]
    fn bubble_fraction_vanishes_as_accumulation_grows() {
        let times = [st(1.0), st(1.0), st(1.0), st(1.0)];
        let fraction = |m| {
            let b = pass_breakdown(&times, m);
            b.bubbles_s / b.total_s
        };
        // (S − 1) / (M + S − 1) for balanced stages.
        assert!((fraction(8) - 3.0 / 11.0).abs() < 1e-12);
        assert!(fraction(64) < fraction(8));
        assert!(fraction(10_000) < 1e-3);
    }
}

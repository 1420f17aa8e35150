//! The simulator against Graphcore's published claims, and the invariants
//! any sensible IPU cost model must keep. One published point (XXL on a
//! POD16) calibrates the model (tests named `calibration_…`); every other
//! published number is out of sample.

use tessera_ipu::hardware::CALIBRATED_MATMUL_EFFICIENCY;
use tessera_ipu::{
    simulate, Assumptions, Generation, Mode, Plan, Pod, Request, SimError, Strategy, Workload,
};
use tessera_t5_config::T5Config;

/// The seed's settings for `model` on `pod`.
fn request(model: &str, pod: &str, strategy: Strategy, mode: Mode) -> Request {
    let config = T5Config::preset(model).expect("known preset");
    Request {
        workload: Workload::seed(model, config, mode),
        pod: Pod::named(pod).expect("known pod"),
        strategy,
        replicas: 1,
        assumptions: Assumptions::DEFAULT,
    }
}

fn plan(req: &Request) -> Plan {
    simulate(req).expect("a valid request")
}

/// Flan-T5-Large generating on a POD4 pipeline, two micro-batches of 4.
fn large_pipelined_on_a_pod4() -> Request {
    let mut req = request("flan-t5-large", "pod4", Strategy::Pipeline, Mode::Infer);
    req.workload.micro_batch = 4;
    req.workload.global_batch = 8;
    req
}

fn xxl_pod16_train() -> Request {
    request("flan-t5-xxl", "pod16", Strategy::PhasedTp, Mode::Train)
}

/// A calibration check, not a prediction: `CALIBRATED_MATMUL_EFFICIENCY`
/// was fitted to this very point (XXL, POD16, 36 s), so it only guards the
/// fit; the out-of-sample checks are the XL step and XXL validation below.
#[test]
fn calibration_xxl_trains_on_a_pod16_under_phased_tp_in_about_36_s_per_step() {
    let p = plan(&xxl_pod16_train());
    assert!(p.fits, "{}", p.reason);
    let t = p.step_time_s.expect("fits, so timed");
    assert!((t - 36.0).abs() <= 0.25 * 36.0, "step time {t} s");
}

#[test]
fn xl_trains_on_a_pod8_near_the_published_16_s_without_retuning() {
    // Out of sample: the notebook quotes ≈ 16 s per step for XL with its
    // `xl_pod8` config (TP 8, 1 replica); nothing was fitted to it.
    let p = plan(&request(
        "flan-t5-xl",
        "pod8",
        Strategy::PhasedTp,
        Mode::Train,
    ));
    assert!(p.fits, "{}", p.reason);
    let t = p.step_time_s.expect("fits, so timed");
    assert!((t - 16.0).abs() <= 0.25 * 16.0, "step time {t} s");
}

#[test]
fn xxl_validation_takes_about_the_published_18_minutes() {
    // Out of sample: the notebook's validation of the 9,832 MNLI
    // validation_mismatched examples takes "around 18 minutes" on a POD16.
    // Its loop (`batch_inference`) re-runs the whole model per token and
    // stops a sample at EOS or after 4 new tokens (`batch_lens` starts at 1
    // and stops at `output_length` 5), so at most 4 token steps per batch.
    let mut req = request("flan-t5-xxl", "pod16", Strategy::PhasedTp, Mode::Infer);
    req.workload.target_len = 4;
    let p = plan(&req);
    assert!(p.fits, "{}", p.reason);
    let batches = 9832_f64 / 20.0;
    let minutes = batches.ceil() * p.step_time_s.expect("timed") / 60.0;
    assert!((minutes - 18.0).abs() <= 0.25 * 18.0, "{minutes} min");
}

#[test]
fn a_kv_cache_would_make_generation_several_times_faster() {
    let recompute = plan(&request(
        "flan-t5-xxl",
        "pod16",
        Strategy::PhasedTp,
        Mode::Infer,
    ));
    let mut req = request("flan-t5-xxl", "pod16", Strategy::PhasedTp, Mode::Infer);
    req.workload.generation = Generation::KvCache;
    let cached = plan(&req);
    assert!(cached.fits, "{}", cached.reason);
    let (r, c) = (
        recompute.step_time_s.expect("timed"),
        cached.step_time_s.expect("timed"),
    );
    assert!(c < r / 2.0, "cached {c} s vs recomputed {r} s");
}

#[test]
fn calibration_re_solves_to_the_constant() {
    // Re-solve matmul_efficiency for 36.0 s by bisection (step time falls
    // as efficiency rises) and check the documented constant is that value.
    let step = |eff: f64| {
        let mut req = xxl_pod16_train();
        req.assumptions.matmul_efficiency = eff;
        plan(&req).step_time_s.expect("fits")
    };
    let (mut lo, mut hi) = (0.01, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if step(mid) > 36.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let solved = 0.5 * (lo + hi);
    let rel = (solved - CALIBRATED_MATMUL_EFFICIENCY).abs() / solved;
    assert!(
        rel < 0.01,
        "the model now calibrates to {solved:.4}, not {CALIBRATED_MATMUL_EFFICIENCY}"
    );
}

#[test]
fn xxl_pipelined_with_resident_weights_does_not_fit_a_pod16() {
    let p = plan(&request(
        "flan-t5-xxl",
        "pod16",
        Strategy::Pipeline,
        Mode::Train,
    ));
    assert!(!p.fits);
    assert!(p.reason.contains("weights alone"), "{}", p.reason);
    assert_eq!(p.step_time_s, None);
    assert_eq!(p.samples_per_s, None);
    assert!(p.timeline.is_empty());
}

#[test]
fn xl_inference_fits_a_pod4() {
    let p = plan(&request(
        "flan-t5-xl",
        "pod4",
        Strategy::PhasedTp,
        Mode::Infer,
    ));
    assert!(p.fits, "{}", p.reason);
    assert_eq!(p.micro_batch, 24);
    assert_eq!((p.source_len, p.target_len), (268, 5));
    assert!(p.step_time_s.expect("timed") > 0.0);
}

#[test]
fn more_ipus_never_slow_down_compute() {
    for (model, mode, pods) in [
        (
            "flan-t5-xl",
            Mode::Infer,
            ["pod4", "pod8", "pod16"].as_slice(),
        ),
        (
            "flan-t5-xl",
            Mode::Train,
            ["pod4", "pod8", "pod16"].as_slice(),
        ),
        ("flan-t5-xxl", Mode::Train, ["pod16", "pod64"].as_slice()),
    ] {
        let compute: Vec<f64> = pods
            .iter()
            .map(|pod| {
                let p = plan(&request(model, pod, Strategy::PhasedTp, mode));
                p.timeline
                    .iter()
                    .filter(|s| s.ipu == 0 && is_compute(s.kind))
                    .map(|s| s.end_s - s.start_s)
                    .sum()
            })
            .collect();
        assert!(
            compute.windows(2).all(|w| w[1] <= w[0]),
            "{model} {mode:?}: {compute:?}"
        );
    }
}

fn is_compute(kind: tessera_ipu::SegmentKind) -> bool {
    use tessera_ipu::SegmentKind::*;
    matches!(kind, Forward | Backward | Optimizer)
}

#[test]
fn memory_and_time_totals_equal_the_sum_of_their_parts() {
    let cases = [
        xxl_pod16_train(),
        request("flan-t5-xl", "pod4", Strategy::PhasedTp, Mode::Infer),
        request("flan-t5-large", "pod16", Strategy::Pipeline, Mode::Train),
        request("flan-t5-large", "pod4", Strategy::Pipeline, Mode::Infer),
        large_pipelined_on_a_pod4(),
        request("flan-t5-xxl", "pod16", Strategy::Pipeline, Mode::Train),
    ];
    for req in &cases {
        let p = plan(req);
        assert_eq!(p.memory.len() as u64, p.ipus_per_replica);
        for m in &p.memory {
            assert_eq!(m.total_bytes, m.parts.iter().map(|q| q.bytes).sum::<u64>());
        }
        let totals: Vec<u64> = p.memory.iter().map(|m| m.total_bytes).collect();
        assert_eq!(p.per_ipu_peak_bytes.len() as u64, p.ipus);
        assert_eq!(&p.per_ipu_peak_bytes[..totals.len()], &totals[..]);
        if let Some(t) = p.time {
            let sum = t.compute_s + t.links_s + t.streaming_s + t.bubbles_s;
            assert!(
                (sum - t.total_s).abs() <= 1e-9 * t.total_s,
                "{}: {t:?}",
                p.model
            );
            let end = p.timeline.iter().map(|s| s.end_s).fold(0.0, f64::max);
            assert!(
                (end - t.total_s).abs() <= 1e-9 * t.total_s,
                "{}: timeline ends at {end}",
                p.model
            );
        }
    }
}

#[test]
fn pipeline_bubbles_vanish_as_accumulation_grows() {
    let fraction = |global: u64| {
        let mut req = request("flan-t5-large", "pod16", Strategy::Pipeline, Mode::Train);
        req.workload.global_batch = global;
        let t = plan(&req).time.expect("Large fits a POD16");
        t.bubbles_s / t.total_s
    };
    let (f32_, f128, f1024) = (fraction(32), fraction(128), fraction(1024));
    assert!(f32_ > f128 && f128 > f1024, "{f32_} {f128} {f1024}");
    assert!(f1024 < 0.02, "{f1024}");
}

#[test]
fn data_parallel_replicas_shard_the_optimizer_state() {
    let one = plan(&request(
        "flan-t5-xl",
        "pod16",
        Strategy::PhasedTp,
        Mode::Train,
    ));
    let mut req = request("flan-t5-xl", "pod16", Strategy::PhasedTp, Mode::Train);
    req.replicas = 2;
    let two = plan(&req);
    assert_eq!(
        (two.ipus_per_replica, two.micro_batches_per_replica),
        (8, 64)
    );
    assert!(two.fits, "{}", two.reason);
    assert_eq!(two.per_ipu_peak_bytes.len(), 16);
    assert!(two.streaming_bytes_per_ipu > one.streaming_bytes_per_ipu / 2);
}

#[test]
fn json_has_the_documented_keys() {
    let p = plan(&request(
        "flan-t5-xxl",
        "pod16",
        Strategy::Pipeline,
        Mode::Train,
    ));
    let v = serde_json::to_value(&p).expect("plans serialise");
    for key in [
        "model",
        "system",
        "ipus",
        "strategy",
        "mode",
        "fits",
        "reason",
        "step_time_s",
        "samples_per_s",
        "per_ipu_peak_bytes",
        "sram_bytes_per_ipu",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["step_time_s"], serde_json::Value::Null);
    assert_eq!(v["strategy"], "pipeline");
    assert_eq!(v["mode"], "train");
    assert_eq!(v["system"], "POD16");
    assert_eq!(v["per_ipu_peak_bytes"].as_array().map(Vec::len), Some(16));
}

#[test]
fn the_timeline_has_a_lane_per_ipu_and_a_legend() {
    let p = plan(&large_pipelined_on_a_pod4());
    assert!(p.fits, "{}", p.reason);
    let svg = tessera_ipu::svg::timeline(&p);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for k in 0..4 {
        assert!(svg.contains(&format!(">IPU {k}</text>")), "lane {k}");
    }
    assert!(svg.contains("forward compute") && svg.contains("idle (pipeline bubble)"));
    assert!(
        !svg.contains("AdamW update"),
        "legend lists only kinds drawn"
    );
}

#[test]
fn impossible_requests_are_errors_naming_the_flag() {
    let mut req = xxl_pod16_train();
    req.replicas = 3;
    assert!(matches!(simulate(&req), Err(SimError::Replicas { .. })));
    let mut req = xxl_pod16_train();
    req.workload.global_batch = 100;
    req.replicas = 8;
    let err = simulate(&req).expect_err("100 is not a multiple of 8");
    assert!(err.to_string().contains("--global-batch 100"), "{err}");
    let req = request("flan-t5-xl", "pod64", Strategy::PhasedTp, Mode::Train);
    assert!(matches!(
        simulate(&req),
        Err(SimError::TensorParallel { tp: 64, .. })
    ));
    let mut req = request("flan-t5-large", "pod16", Strategy::Pipeline, Mode::Train);
    req.workload.global_batch = 16;
    assert!(matches!(
        simulate(&req),
        Err(SimError::Accumulation { stages: 16, .. })
    ));
    let mut req = xxl_pod16_train();
    req.workload.micro_batch = 0;
    assert_eq!(simulate(&req), Err(SimError::Zero("--micro-batch")));
}

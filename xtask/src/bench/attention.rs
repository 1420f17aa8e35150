//! `cargo xtask bench attention`: the T5 attention suite, the fused kernels
//! side by side with the unfused matmul + softmax + matmul path, timed
//! interleaved in one run.

use super::{best_times, Contender};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tessera_benches::attention::{suite, Case, Spec, BATCH, D_HEAD};

/// Flags of `bench attention`.
#[derive(clap::Args)]
pub struct Args {
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Minimum seconds spent timing each implementation of each case.
    #[arg(long, default_value_t = 0.3)]
    min_time: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    kind: &'static str,
    batch: usize,
    heads: usize,
    q_len: usize,
    k_len: usize,
    d_head: usize,
    pass: &'static str,
    implementation: &'static str,
    threads: usize,
    ms: f64,
}

/// The two implementations of one case, each on its own buffers.
fn contenders(spec: Spec) -> Vec<Contender> {
    let (mut fused, mut unfused) = (Case::new(spec), Case::new(spec));
    vec![
        (
            "fused",
            Box::new(move || fused.run_fused().expect("suite cases are valid")),
        ),
        (
            "unfused",
            Box::new(move || unfused.run_unfused().expect("suite cases are valid")),
        ),
    ]
}

fn row(spec: Spec, implementation: &'static str, threads: usize, t: Duration) -> Row {
    Row {
        kind: spec.kind,
        batch: BATCH,
        heads: spec.heads,
        q_len: spec.q_len,
        k_len: spec.k_len,
        d_head: D_HEAD,
        pass: spec.pass.name(),
        implementation,
        threads,
        ms: t.as_secs_f64() * 1e3,
    }
}

/// Runs the suite and prints one line per case: both times and the speed-up.
pub fn run(args: Args) -> Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if !(args.min_time.is_finite() && args.min_time >= 0.0) {
        bail!("--min-time must be a non-negative number of seconds");
    }
    tessera_tensor::set_num_threads(args.threads)?;
    let min = Duration::from_secs_f64(args.min_time);
    println!(
        "kind     heads  q_len  k_len  pass      fused ms  unfused ms  speed-up (batch {BATCH}, d_head {D_HEAD}, {} threads)",
        args.threads
    );
    let mut rows = Vec::new();
    for spec in suite() {
        let mut list = contenders(spec);
        let times = best_times(min, &mut list);
        let (fused, unfused) = (times[0], times[1]);
        println!(
            "{:<8} {:>5} {:>6} {:>6}  {:<8} {:>9.3} {:>11.3} {:>8.2}x",
            spec.kind,
            spec.heads,
            spec.q_len,
            spec.k_len,
            spec.pass.name(),
            fused.as_secs_f64() * 1e3,
            unfused.as_secs_f64() * 1e3,
            unfused.as_secs_f64() / fused.as_secs_f64()
        );
        for ((implementation, _), t) in list.iter().zip(times) {
            rows.push(row(spec, implementation, args.threads, t));
        }
    }
    super::write_suite(args.json.as_deref(), args.threads, rows)
}

//! `cargo xtask bench …`: measurements, printed as a table and optionally
//! written as JSON.

mod matmul;

use anyhow::Result;
use clap::Subcommand;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// The f32/f16/bf16 matmul on the T5 shape suite, with baselines.
    Matmul(matmul::Args),
}

/// Runs one bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Matmul(args) => matmul::run(args),
    }
}

/// Times `f`: one warm-up call, then repeats for at least `min_time` and
/// `min_reps` calls, and returns the fastest call. The fastest call is the
/// one least disturbed by the rest of the machine, which is what a kernel
/// comparison wants.
pub fn best_time(min_time: Duration, min_reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut reps = 0;
    while reps < min_reps || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

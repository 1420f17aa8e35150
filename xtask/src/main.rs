//! `cargo xtask …`: the one command-line entry point of tessera.
//!
//! Each subcommand lives in its own module; this file parses the command
//! line, sets up the allocator (`tessera_tensor::memory`), and turns errors
//! into one readable line and a non-zero exit.

#![forbid(unsafe_code)]

mod bench;
mod eval;
mod export;
mod fixtures;
mod generate;
mod model_args;
mod output;
mod report;
mod simulate;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// tessera: fine-tune Flan-T5 on GLUE from Rust, and plan it on IPU pods.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the kernels and the training step.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Score a model on a GLUE validation set by greedy generation (accuracy, loss).
    Eval(eval::Args),
    /// Write a training checkpoint as a Hugging Face model folder.
    Export(export::Args),
    /// Regenerate the PyTorch reference fixtures (needs python3 + torch).
    Fixtures(fixtures::Args),
    /// Generate text for prompts with a model (greedy decoding).
    Generate(generate::Args),
    /// Draw training runs as one HTML page (charts, last evaluation, configuration).
    Report(report::Args),
    /// Plan and time a T5 job on a Graphcore IPU pod (the IPU-topology simulator).
    Simulate(simulate::Args),
    /// Fine-tune a T5 on a GLUE task (no arguments: the offline quickstart).
    Train(Box<train::Args>),
}

fn main() -> ExitCode {
    // Training and evaluation allocate the same large buffers every step;
    // keeping freed memory spares a page fault per page per step.
    tessera_tensor::memory::retain_freed_memory();
    let cli = Cli::parse();
    // Held for the whole program: MPI stays initialised until it drops.
    let session = match tessera_dist::Session::init() {
        Ok(session) => session,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let comm = session.comm();
    let result = match cli.command {
        Command::Train(args) => train::run(*args, comm),
        _ if comm.size() > 1 => Err(anyhow::anyhow!(
            "only `train` runs across the {} ranks of an MPI job; start this command without mpirun",
            comm.size()
        )),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Fixtures(args) => fixtures::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Report(args) => report::run(args),
        Command::Simulate(args) => simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if comm.size() > 1 => {
            // The other ranks may be waiting in a collective for this one:
            // end the whole job now rather than leave them hanging.
            eprintln!(
                "error (rank {} of {}): {}",
                comm.rank(),
                comm.size(),
                output::one_line(&err)
            );
            comm.abort(1)
        }
        Err(err) => {
            eprintln!("error: {}", output::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask …`: the one command-line entry point of tessera.
//!
//! Each subcommand lives in its own module; this file only parses the
//! command line and turns errors into one readable line and a non-zero exit.

mod bench;
mod fixtures;
mod output;
mod simulate;

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
    /// Regenerate the PyTorch reference fixtures (needs python3 + torch).
    Fixtures(fixtures::Args),
    /// Plan and time a T5 job on a Graphcore IPU pod (the IPU-topology simulator).
    Simulate(simulate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Fixtures(args) => fixtures::run(args),
        Command::Simulate(args) => simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", output::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

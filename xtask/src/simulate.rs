//! `cargo xtask simulate …`: plan and time a T5 job on a Graphcore IPU pod
//! with the `tessera-ipu` simulator.

use crate::output;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::{Path, PathBuf};
use tessera_ipu::{simulate, Assumptions, Mode, Pod, Request, Strategy, Workload};
use tessera_t5::T5Config;

/// The pods the simulator knows.
#[derive(Clone, Copy, ValueEnum)]
enum System {
    Pod4,
    Pod8,
    Pod16,
    Pod64,
}

/// How the model is spread over the IPUs.
#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    /// Layers as phases, each sharded over a replica's IPUs; state in Streaming Memory.
    PhasedTp,
    /// Layers as pipeline stages with resident weights.
    Pipeline,
}

/// Training step or greedy generation.
#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Train,
    Infer,
}

/// Plan a Flan-T5 job on an IPU pod: memory per IPU, step time, verdict.
#[derive(clap::Args)]
pub struct Args {
    /// A Flan-T5 preset (flan-t5-small … flan-t5-xxl) or a path to a config.json.
    #[arg(long)]
    model: String,
    /// The pod.
    #[arg(long, value_enum)]
    system: System,
    /// Phased tensor parallelism (PopXL) or pipelining (PopTorch).
    #[arg(long, value_enum)]
    strategy: StrategyArg,
    /// Training (one optimizer step) or inference (greedy generation).
    #[arg(long, value_enum)]
    mode: ModeArg,
    /// Examples per micro-batch [default: 1 in training; 20 (XXL) or 24 in inference].
    #[arg(long)]
    micro_batch: Option<u64>,
    /// Examples per step [default: 128 in training; one micro-batch per replica in inference].
    #[arg(long)]
    global_batch: Option<u64>,
    /// Source length, and target length in training [default: 512; 268 in inference].
    #[arg(long)]
    seq_len: Option<u64>,
    /// Data-parallel replicas; each gets IPUs / replicas IPUs.
    #[arg(long, default_value_t = 1)]
    replicas: u64,
    /// Also write the plan as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the step's schedule as an SVG picture to this file.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
    /// Write the plan and its timeline as one HTML page (as a training run's report).
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

/// Runs the simulation and prints (and optionally writes) the plan.
pub fn run(args: Args) -> Result<()> {
    let plan = simulate(&request(&args)?)?;
    print!("{plan}");
    if let Some(path) = &args.json {
        output::write_json(path, &plan)?;
    }
    if let Some(path) = &args.timeline {
        if !plan.fits {
            bail!(
                "no timeline written to {}: the plan does not fit",
                path.display()
            );
        }
        output::write_atomic(path, tessera_ipu::svg::timeline(&plan).as_bytes())?;
    }
    if let Some(path) = &args.report {
        output::write_atomic(path, report_page(&args.model, &plan).as_bytes())?;
        println!("report: {}", path.display());
    }
    Ok(())
}

/// The plan as printed and, when it fits, its timeline, as one page.
fn report_page(model: &str, plan: &tessera_ipu::Plan) -> String {
    let mut body = format!("<pre>{}</pre>\n", tessera_report::escape(&plan.to_string()));
    if plan.fits {
        body.push_str(&tessera_ipu::svg::timeline(plan));
    }
    tessera_report::page(&format!("tessera IPU plan: {model}"), &body)
}

/// The simulator request the flags describe: the seed's settings for the
/// mode, overridden by any flag given.
fn request(args: &Args) -> Result<Request> {
    let config = load_model(&args.model)?;
    let mode = match args.mode {
        ModeArg::Train => Mode::Train,
        ModeArg::Infer => Mode::Infer,
    };
    let mut workload = Workload::seed(&args.model, config, mode);
    if let Some(b) = args.micro_batch {
        workload.micro_batch = b;
    }
    if let Some(len) = args.seq_len {
        workload.source_len = len;
        if mode == Mode::Train {
            workload.target_len = len;
        }
    }
    workload.global_batch = match (args.global_batch, mode) {
        (Some(g), _) => g,
        (None, Mode::Train) => workload.global_batch,
        (None, Mode::Infer) => workload.micro_batch * args.replicas,
    };
    let name = match args.system {
        System::Pod4 => "pod4",
        System::Pod8 => "pod8",
        System::Pod16 => "pod16",
        System::Pod64 => "pod64",
    };
    Ok(Request {
        workload,
        pod: Pod::named(name).context("the pod table lost a pod")?,
        strategy: match args.strategy {
            StrategyArg::PhasedTp => Strategy::PhasedTp,
            StrategyArg::Pipeline => Strategy::Pipeline,
        },
        replicas: args.replicas,
        assumptions: Assumptions::DEFAULT,
    })
}

/// A preset name, or a path to a `config.json` when one exists there.
fn load_model(model: &str) -> Result<T5Config> {
    let path = Path::new(model);
    if path.exists() || model.ends_with(".json") {
        return Ok(T5Config::from_file(path)?);
    }
    T5Config::preset(model).map_err(|_| {
        anyhow::anyhow!(
            "--model {model:?} is neither a Flan-T5 preset (flan-t5-small, -base, -large, -xl, -xxl) nor an existing config.json"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &str) -> Result<Request> {
        let argv = std::iter::once("simulate").chain(flags.split_whitespace());
        request(&Cli::try_parse_from(argv)?.args)
    }

    #[test]
    fn defaults_are_the_seeds_settings() {
        let r = parse(
            "--model flan-t5-xxl --system pod16 --strategy phased-tp --mode infer --replicas 2",
        )
        .expect("valid flags");
        let w = &r.workload;
        assert_eq!(
            (w.micro_batch, w.global_batch, w.source_len, w.target_len),
            (20, 40, 268, 5)
        );
        let r = parse(
            "--model flan-t5-xl --system pod8 --strategy pipeline --mode train --seq-len 128",
        )
        .expect("valid flags");
        let w = &r.workload;
        assert_eq!(
            (w.micro_batch, w.global_batch, w.source_len, w.target_len),
            (1, 128, 128, 128)
        );
        assert_eq!(r.pod.ipus(), 8);
        assert_eq!(r.strategy, Strategy::Pipeline);
    }

    #[test]
    fn the_report_page_holds_the_plan_and_its_timeline() {
        let r = parse("--model flan-t5-xxl --system pod16 --strategy phased-tp --mode train")
            .expect("valid flags");
        let plan = simulate(&r).expect("the seed's plan");
        let page = report_page("flan-t5-xxl", &plan);
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        let doc = roxmltree::Document::parse_with_options(&page, options).expect("well-formed");
        assert!(doc.descendants().any(|n| n.tag_name().name() == "svg"));
        let pre = doc
            .descendants()
            .find(|n| n.tag_name().name() == "pre")
            .expect("the plan");
        assert_eq!(pre.text(), Some(plan.to_string().as_str()));
    }

    #[test]
    fn bad_models_are_named() {
        let err = parse("--model t5-huge --system pod4 --strategy phased-tp --mode infer")
            .expect_err("unknown preset");
        assert!(err.to_string().contains("\"t5-huge\""), "{err}");
        let err =
            parse("--model /no/such/config.json --system pod4 --strategy phased-tp --mode infer")
                .expect_err("missing file");
        assert!(
            err.to_string()
                .starts_with("cannot read /no/such/config.json"),
            "{err}"
        );
    }
}

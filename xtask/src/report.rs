//! `cargo xtask report`: a run's page (or several runs overlaid) from
//! their `metrics.jsonl`, as the trainer writes it during a run.

use crate::output;
use anyhow::{bail, Result};
use std::path::PathBuf;
use tessera_report::{render, RunLog, REPORT_FILE};

/// Draw training runs as one self-contained HTML page (SVG charts, their
/// numbers, the last evaluation, configuration, data, model and machine).
#[derive(clap::Args)]
pub struct Args {
    /// Run output folders (each holding metrics.jsonl); several are overlaid.
    #[arg(required = true, value_name = "OUTPUT")]
    runs: Vec<PathBuf>,
    /// Where to write the page [default: OUTPUT/report.html for one run,
    /// report.html here for several].
    #[arg(long, value_name = "FILE.html")]
    out: Option<PathBuf>,
}

/// Reads every run, renders the page and writes it atomically.
pub fn run(args: Args) -> Result<()> {
    let mut logs = Vec::with_capacity(args.runs.len());
    for dir in &args.runs {
        let metrics = dir.join(tessera_train::metrics::METRICS_FILE);
        if !metrics.is_file() {
            bail!(
                "{} has no metrics.jsonl (is it a training output folder?)",
                dir.display()
            );
        }
        let log = RunLog::read(&metrics, &dir.display().to_string())?;
        if log.truncated {
            eprintln!(
                "note: the last line of {} was cut short and is left out",
                metrics.display()
            );
        }
        logs.push(log);
    }
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join(REPORT_FILE),
        (None, _) => PathBuf::from(REPORT_FILE),
    };
    output::write_atomic(&out, render(&logs)?.as_bytes())?;
    println!("report: {}", out.display());
    Ok(())
}

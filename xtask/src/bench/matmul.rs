//! `cargo xtask bench matmul`: the T5 shape suite, every operand order,
//! tessera side by side with its baselines in one run.

use super::{best_times, Contender};
use crate::output::write_json;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tessera_benches::matmul::{op_name, Case, OPS, T5_SHAPES};
use tessera_tensor::{bf16, f16, DType, Element};

/// Flags of `bench matmul`.
#[derive(clap::Args)]
pub struct Args {
    /// Worker threads for tessera and the baselines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Operand dtypes to measure (C and accumulation are always f32).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtype: Vec<String>,
    /// Also time the baselines on every f32 case: the `matrixmultiply` crate,
    /// and the system OpenBLAS when built with `--features openblas`.
    #[arg(long)]
    baselines: bool,
    /// Minimum seconds spent timing each case.
    #[arg(long, default_value_t = 0.5)]
    min_time: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    m: usize,
    k: usize,
    n: usize,
    op: String,
    dtype: String,
    implementation: &'static str,
    threads: usize,
    gflops: f64,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    results: Vec<Row>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype {other:?} is not one of f32, f16, bf16"),
    })
}

fn gflops(flops: f64, t: Duration) -> f64 {
    flops / t.as_secs_f64() / 1e9
}

/// The implementations timed for one case: tessera, then the baselines.
fn contenders<E: Element>(args: &Args, mut case: Case<E>) -> Vec<Contender> {
    let (shape, ops) = (case.shape, case.ops);
    let mut list: Vec<Contender> = vec![("tessera", Box::new(move || case.run_tessera()))];
    if args.baselines && E::DTYPE == DType::F32 {
        let mut mm = Case::<f32>::new(shape, ops);
        list.push(("matrixmultiply", Box::new(move || mm.run_matrixmultiply())));
        #[cfg(feature = "openblas")]
        {
            let mut ob = Case::<f32>::new(shape, ops);
            list.push(("openblas", Box::new(move || ob.run_openblas())));
        }
    }
    list
}

/// Times every suite case for operand type `E`, the implementations of a
/// case interleaved so that a busy machine slows them all alike.
fn measure<E: Element>(args: &Args, rows: &mut Vec<Row>) {
    let min = Duration::from_secs_f64(args.min_time);
    for shape in T5_SHAPES {
        for ops in OPS {
            let mut list = contenders(args, Case::<E>::new(shape, ops));
            let times = best_times(min, &mut list);
            for ((implementation, _), t) in list.iter().zip(times) {
                let row = Row {
                    m: shape.m,
                    k: shape.k,
                    n: shape.n,
                    op: op_name(ops),
                    dtype: E::DTYPE.to_string(),
                    implementation,
                    threads: args.threads,
                    gflops: gflops(shape.flops(), t),
                };
                println!(
                    "{:>5} {:>5} {:>6}  {:<3} {:<5} {:<15} {:>8.1}",
                    row.m, row.k, row.n, row.op, row.dtype, row.implementation, row.gflops
                );
                rows.push(row);
            }
        }
    }
}

/// Prints the geometric mean of GFLOP/s per implementation and dtype, and for
/// each baseline the worst and geometric-mean ratio of tessera to it.
fn print_summary(rows: &[Row]) {
    let mut keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.implementation, r.dtype.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    println!();
    for (imp, dtype) in &keys {
        let g: Vec<f64> = rows
            .iter()
            .filter(|r| r.implementation == *imp && r.dtype == *dtype)
            .map(|r| r.gflops)
            .collect();
        println!("geomean {imp:<15} {dtype:<5} {:>8.1} GFLOP/s", geomean(&g));
        if *imp == "tessera" {
            continue;
        }
        let ratios: Vec<f64> = rows
            .iter()
            .filter(|r| r.implementation == *imp && r.dtype == *dtype)
            .filter_map(|b| {
                rows.iter()
                    .find(|t| t.implementation == "tessera" && same_case(t, b))
                    .map(|t| t.gflops / b.gflops)
            })
            .collect();
        let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "        tessera / {imp}: geomean {:.2}, worst case {worst:.2}",
            geomean(&ratios)
        );
    }
}

fn same_case(a: &Row, b: &Row) -> bool {
    (a.m, a.k, a.n, &a.op, &a.dtype) == (b.m, b.k, b.n, &b.op, &b.dtype)
}

fn geomean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len().max(1) as f64).exp()
}

/// Runs the suite and prints one row per case and implementation.
pub fn run(args: Args) -> Result<()> {
    let dtypes = args
        .dtype
        .iter()
        .map(|d| parse_dtype(d))
        .collect::<Result<Vec<_>>>()?;
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    tessera_tensor::set_num_threads(args.threads)?;
    // matrixmultiply's threading reads this once, on first use.
    std::env::set_var("MATMUL_NUM_THREADS", args.threads.to_string());
    #[cfg(feature = "openblas")]
    tessera_benches::matmul::set_openblas_threads(args.threads);
    println!("    m     k      n  op  dtype impl               GFLOP/s");
    let mut rows = Vec::new();
    for dtype in dtypes {
        match dtype {
            DType::F32 => measure::<f32>(&args, &mut rows),
            DType::F16 => measure::<f16>(&args, &mut rows),
            DType::BF16 => measure::<bf16>(&args, &mut rows),
        }
    }
    print_summary(&rows);
    if let Some(path) = &args.json {
        write_json(
            path,
            &Report {
                threads: args.threads,
                results: rows,
            },
        )?;
    }
    Ok(())
}

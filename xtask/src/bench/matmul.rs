//! `cargo xtask bench matmul`: the T5 shape suite, every operand order,
//! tessera side by side with its baselines in one run.

use super::{best_times, Contender};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tessera_benches::matmul::{op_name, Case, Shape, OPS, T5_SHAPES};
use tessera_tensor::{bf16, f16, DType, Element, Op};

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

/// The implementations timed for one case, each with its operand dtype:
/// tessera on every dtype asked for, then (when f32 is among them) the f32
/// baselines.
fn contenders(
    args: &Args,
    dtypes: &[DType],
    shape: Shape,
    ops: (Op, Op),
) -> Vec<(DType, Contender)> {
    fn tessera<E: Element>(shape: Shape, ops: (Op, Op)) -> (DType, Contender) {
        let mut case = Case::<E>::new(shape, ops);
        (E::DTYPE, ("tessera", Box::new(move || case.run_tessera())))
    }
    let mut list: Vec<(DType, Contender)> = dtypes
        .iter()
        .map(|dtype| match dtype {
            DType::F32 => tessera::<f32>(shape, ops),
            DType::F16 => tessera::<f16>(shape, ops),
            DType::BF16 => tessera::<bf16>(shape, ops),
        })
        .collect();
    if args.baselines && dtypes.contains(&DType::F32) {
        let mut mm = Case::<f32>::new(shape, ops);
        list.push((
            DType::F32,
            ("matrixmultiply", Box::new(move || mm.run_matrixmultiply())),
        ));
        #[cfg(feature = "openblas")]
        {
            let mut ob = Case::<f32>::new(shape, ops);
            list.push((
                DType::F32,
                ("openblas", Box::new(move || ob.run_openblas())),
            ));
        }
    }
    list
}

/// Times every suite case, all implementations and dtypes of a case
/// interleaved so that a busy machine slows them all alike.
fn measure(args: &Args, dtypes: &[DType]) -> Vec<Row> {
    let min = Duration::from_secs_f64(args.min_time);
    let mut rows = Vec::new();
    for shape in T5_SHAPES {
        for ops in OPS {
            let (kinds, mut list): (Vec<DType>, Vec<Contender>) =
                contenders(args, dtypes, shape, ops).into_iter().unzip();
            let times = best_times(min, &mut list);
            for (((implementation, _), t), dtype) in list.iter().zip(times).zip(kinds) {
                rows.push(Row {
                    m: shape.m,
                    k: shape.k,
                    n: shape.n,
                    op: op_name(ops),
                    dtype: dtype.to_string(),
                    implementation,
                    threads: args.threads,
                    gflops: gflops(shape.flops(), t),
                });
            }
        }
    }
    rows
}

/// Prints the geometric mean of GFLOP/s per implementation and dtype; for
/// each baseline the worst and geometric-mean ratio of tessera to it, and
/// for each 16-bit dtype that of tessera on it to tessera on f32.
fn print_summary(rows: &[Row]) {
    let mut keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.implementation, r.dtype.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    println!();
    for &(imp, dtype) in &keys {
        let g: Vec<f64> = rows
            .iter()
            .filter(|r| r.implementation == imp && r.dtype == dtype)
            .map(|r| r.gflops)
            .collect();
        println!("geomean {imp:<15} {dtype:<5} {:>8.1} GFLOP/s", geomean(&g));
        let (over, under) = if imp != "tessera" {
            (("tessera", dtype), (imp, dtype))
        } else if dtype != "f32" && keys.contains(&("tessera", "f32")) {
            (("tessera", dtype), ("tessera", "f32"))
        } else {
            continue;
        };
        let ratios = case_ratios(rows, over, under);
        let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "        {} {} / {} {}: geomean {:.2}, worst case {worst:.2}",
            over.0,
            over.1,
            under.0,
            under.1,
            geomean(&ratios)
        );
    }
}

/// GFLOP/s of `over` divided by those of `under`, case by case, each an
/// (implementation, dtype) pair.
fn case_ratios(rows: &[Row], over: (&str, &str), under: (&str, &str)) -> Vec<f64> {
    let is = |r: &Row, (imp, dtype): (&str, &str)| r.implementation == imp && r.dtype == dtype;
    rows.iter()
        .filter(|u| is(u, under))
        .filter_map(|u| {
            rows.iter()
                .find(|o| is(o, over) && same_shape(o, u))
                .map(|o| o.gflops / u.gflops)
        })
        .collect()
}

fn same_shape(a: &Row, b: &Row) -> bool {
    (a.m, a.k, a.n, &a.op) == (b.m, b.k, b.n, &b.op)
}

fn geomean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len().max(1) as f64).exp()
}

/// The matmul peak that model FLOP utilisation is a fraction of: the
/// geometric mean of tessera's GFLOP/s over the suite in `dtype`, on the
/// threads set now, timed briefly (`bench train` and `bench eval` measure
/// it in the same run as the model).
pub fn peak_gflops(dtype: DType) -> f64 {
    let args = Args {
        threads: tessera_tensor::num_threads(),
        dtype: Vec::new(),
        baselines: false,
        min_time: 0.15,
        json: None,
    };
    let g: Vec<f64> = measure(&args, &[dtype]).iter().map(|r| r.gflops).collect();
    geomean(&g)
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
    for &dtype in &dtypes {
        println!(
            "tessera {dtype} kernel: {}",
            tessera_tensor::gemm::kernel_name(dtype)
        );
    }
    println!("    m     k      n  op  dtype impl               GFLOP/s");
    let rows = measure(&args, &dtypes);
    for row in &rows {
        println!(
            "{:>5} {:>5} {:>6}  {:<3} {:<5} {:<15} {:>8.1}",
            row.m, row.k, row.n, row.op, row.dtype, row.implementation, row.gflops
        );
    }
    print_summary(&rows);
    super::write_suite(args.json.as_deref(), args.threads, rows)
}

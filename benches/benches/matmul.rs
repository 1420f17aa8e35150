//! Criterion benches of the f32 matmul on the T5 suite, tessera against the
//! `matrixmultiply` crate, every operand order backprop uses.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera_benches::matmul::{op_name, Case, OPS, T5_SHAPES};

fn matmul(c: &mut Criterion) {
    for shape in T5_SHAPES {
        let mut group = c.benchmark_group(format!("matmul/{}x{}x{}", shape.m, shape.k, shape.n));
        group.sample_size(10);
        for ops in OPS {
            let mut case = Case::<f32>::new(shape, ops);
            group.throughput(Throughput::Elements(case.flops() as u64));
            let name = op_name(ops);
            group.bench_function(format!("tessera/{name}"), |b| b.iter(|| case.run_tessera()));
            group.bench_function(format!("matrixmultiply/{name}"), |b| {
                b.iter(|| case.run_matrixmultiply())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);

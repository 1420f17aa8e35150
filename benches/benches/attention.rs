//! Criterion benches of T5 attention: the fused kernels against the unfused
//! matmul + softmax + matmul path, on the suite of `cargo xtask bench attention`.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use tessera_benches::attention::{suite, Case};

fn attention(c: &mut Criterion) {
    for spec in suite() {
        let mut group = c.benchmark_group(format!(
            "attention/{}/h{}/q{}/k{}/{}",
            spec.kind,
            spec.heads,
            spec.q_len,
            spec.k_len,
            spec.pass.name()
        ));
        group.sample_size(10);
        let mut case = Case::new(spec);
        group.bench_function("fused", |b| {
            b.iter(|| case.run_fused().expect("valid case"))
        });
        group.bench_function("unfused", |b| {
            b.iter(|| case.run_unfused().expect("valid case"))
        });
        group.finish();
    }
}

criterion_group!(benches, attention);
criterion_main!(benches);

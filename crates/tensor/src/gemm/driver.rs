//! Loops around the kernels: batch, blocks of C, threads.

use crate::Element;
use rayon::prelude::*;

/// Sizes and scalars of one product `C = alpha * op(A) op(B) + beta * C`.
pub(crate) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// An input operand as element strides of `op(X)`: `(i, j)` is at
/// `batch * stride + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a, E> {
    pub data: &'a [E],
    pub rs: usize,
    pub cs: usize,
    pub stride: usize,
}

impl<'a, E> Operand<'a, E> {
    pub fn new(data: &'a [E], rs: usize, cs: usize, stride: usize) -> Self {
        Operand {
            data,
            rs,
            cs,
            stride,
        }
    }
}

/// The output batch: row-major matrices `ld` apart in rows, `stride` apart.
pub(crate) struct Output<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
    pub count: usize,
    pub stride: usize,
}

/// Runs every product of the batch.
pub(crate) fn run_batch<A: Element, B: Element>(
    p: &Problem,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    c: Output<'_>,
) {
    if c.count == 0 || p.m == 0 || p.n == 0 {
        return;
    }
    let ld = c.ld;
    let one = |(i, c): (usize, &mut [f32])| {
        let a = Operand {
            data: &a.data[i * a.stride..],
            ..a
        };
        let b = Operand {
            data: &b.data[i * b.stride..],
            ..b
        };
        single(p, a, b, c, ld);
    };
    if c.count == 1 {
        one((0, c.data));
    } else {
        crate::install(|| {
            c.data
                .par_chunks_mut(c.stride)
                .take(c.count)
                .enumerate()
                .for_each(one)
        });
    }
}

fn single<A: Element, B: Element>(
    p: &Problem,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..p.m {
        for j in 0..p.n {
            let mut acc = 0.0f32;
            for l in 0..p.k {
                acc += a.data[i * a.rs + l * a.cs].to_f32() * b.data[l * b.rs + j * b.cs].to_f32();
            }
            let out = &mut c[i * ldc + j];
            *out = if p.beta == 0.0 {
                p.alpha * acc
            } else {
                p.alpha * acc + p.beta * *out
            };
        }
    }
}

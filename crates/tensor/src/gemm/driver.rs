//! The loops around the micro-kernel: batch entries, thread tasks, and the
//! BLIS cache-blocking loops (see [`super::blocking`]).

use super::kernel::{self, Kernel, Packing, Tile};
use super::pack::pack_block;
use crate::{DType, Element};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Sizes and scalars of one product `C = alpha * op(A) op(B) + beta * C`.
pub(crate) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// An input operand as element strides of `op(X)`: element `(i, j)` of
/// batch entry `e` is at `e * stride + i * rs + j * cs`; packing rounds its
/// values to `round` (no-op for F32).
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a, E> {
    pub data: &'a [E],
    pub rs: usize,
    pub cs: usize,
    pub stride: usize,
    pub round: DType,
}

impl<'a, E> Operand<'a, E> {
    pub fn new(data: &'a [E], (rs, cs): (usize, usize), stride: usize, round: DType) -> Self {
        Operand {
            data,
            rs,
            cs,
            stride,
            round,
        }
    }

    /// Whether every value the product reads is a bf16 value: stored as
    /// bf16 and read as is, or rounded to bf16 while packed.
    pub fn holds_bf16(&self) -> bool
    where
        E: Element,
    {
        self.round == DType::BF16 || (E::DTYPE == DType::BF16 && self.round == DType::F32)
    }

    /// The same operand starting at element `(i, j)` of batch entry `e`.
    fn at(&self, e: usize, i: usize, j: usize) -> &'a [E] {
        &self.data[e * self.stride + i * self.rs + j * self.cs..]
    }
}

/// Where the micro-kernel's B panels come from: packed from an operand
/// block by block as the product runs, or read from a [`PackedB`] made once
/// for many products.
#[derive(Clone, Copy)]
pub(crate) enum BPanels<'a, B> {
    Pack(Operand<'a, B>),
    Packed(&'a PackedB),
}

/// `op(B)` (`k × n`) packed once in the layout the blocked loops read: for each
/// `KC`-deep slice `pc`, the `n.div_ceil(nr)` micro-panels of every column,
/// `kc × nr` slots each, back to back. Products that share B then skip its
/// packing; their results are bit-identical to packing it each time, as the
/// same kernel reads the same panels.
#[derive(Debug)]
pub struct PackedB {
    kernel: &'static Kernel,
    k: usize,
    n: usize,
    buf: Vec<f32>,
    /// Where the 64-byte-aligned panels start in `buf`.
    start: usize,
}

impl PackedB {
    /// Packs `b` (read with strides `(rs, cs)` as `op(B)`, `k × n`) for `kern`.
    pub(crate) fn new<B: Element>(
        kern: &'static Kernel,
        b: Operand<'_, B>,
        k: usize,
        n: usize,
    ) -> Self {
        let width = n.div_ceil(kern.nr) * kern.nr;
        let mut buf = Vec::new();
        let start = aligned(&mut buf, width * k).as_ptr() as usize - buf.as_ptr() as usize;
        let start = start / std::mem::size_of::<f32>();
        for pc in (0..k).step_by(kern.blocking.kc) {
            let kc = kern.blocking.kc.min(k - pc);
            let dst = &mut buf[start + pc * width..];
            pack_block(
                dst,
                b.at(0, pc, 0),
                (b.cs, b.rs),
                (n, kc, kern.nr),
                (b.round, kern.packing),
            );
        }
        PackedB {
            kernel: kern,
            k,
            n,
            buf,
            start,
        }
    }

    /// Rows and columns of `op(B)`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The kernel the panels were packed for.
    pub(crate) fn kernel(&self) -> &'static Kernel {
        self.kernel
    }

    /// The micro-panels of columns `jc..` in the slice of depth `kc` at `pc`.
    fn panel(&self, pc: usize, jc: usize, kc: usize) -> &[f32] {
        let width = self.n.div_ceil(self.kernel.nr) * self.kernel.nr;
        &self.buf[self.start + pc * width + jc * kc..]
    }
}

/// The output batch: row-major matrices with row stride `ld`, `stride` apart.
pub(crate) struct Output<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
    pub count: usize,
    pub stride: usize,
}

/// Products smaller than this many multiply-adds run on one thread: below
/// it, waking a second thread costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Runs every product of the batch with the best kernel for this CPU.
pub(crate) fn run_batch<A: Element, B: Element>(
    p: &Problem,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    c: Output<'_>,
) {
    let kern = kernel::best(a.holds_bf16() && b.holds_bf16());
    run_batch_with(kern, crate::num_threads(), p, a, b, c);
}

/// [`run_batch`] with a given kernel and thread count.
///
/// # Panics
/// If the kernel reads bf16 pairs and an operand does not hold bf16 values.
pub(crate) fn run_batch_with<A: Element, B: Element>(
    kern: &Kernel,
    threads: usize,
    p: &Problem,
    a: Operand<'_, A>,
    b: Operand<'_, B>,
    c: Output<'_>,
) {
    assert!(
        kern.packing == Packing::F32 || (a.holds_bf16() && b.holds_bf16()),
        "the {} kernel needs operands that hold bf16 values",
        kern.name
    );
    if c.count == 0 || p.m == 0 || p.n == 0 {
        return;
    }
    let ld = c.ld;
    let b = BPanels::Pack(b);
    if c.count == 1 {
        return single(kern, threads, p, (a, b, 0), CTile::new(c.data, ld));
    }
    let one = |(e, cs): (usize, &mut [f32])| single(kern, 1, p, (a, b, e), CTile::new(cs, ld));
    let entries = c.data.chunks_mut(c.stride.max(1)).take(c.count).enumerate();
    if threads > 1 && c.count >= threads {
        let entries: Vec<_> = entries.collect();
        crate::install(|| entries.into_par_iter().for_each(one));
    } else {
        entries.for_each(|(e, cs)| single(kern, threads, p, (a, b, e), CTile::new(cs, ld)));
    }
}

/// One product whose B was packed in advance, with `packed`'s kernel.
///
/// # Panics
/// If that kernel reads bf16 pairs and A does not hold bf16 values.
pub(crate) fn run_packed<A: Element>(
    p: &Problem,
    a: Operand<'_, A>,
    packed: &PackedB,
    c: Output<'_>,
) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let kern = packed_kernel(&a, packed);
    let b = BPanels::<f32>::Packed(packed);
    single(
        kern,
        crate::num_threads(),
        p,
        (a, b, 0),
        CTile::new(c.data, c.ld),
    );
}

/// `C = alpha * op(A) op(B)` into `c`, a dense `m × n` buffer that may be
/// uninitialised, with the kernel [`run_batch`] (or [`run_packed`]) would
/// choose. The first `KC` slice of the reduction stores every tile before a
/// later slice reads it back, so no element is read before it is stored.
///
/// # Panics
/// If `beta` is not 0, `c` does not hold `m × n` elements, or B is packed
/// for bf16 pairs and A does not hold bf16 values.
pub(crate) fn run_fresh<A: Element, B: Element>(
    p: &Problem,
    a: Operand<'_, A>,
    b: BPanels<'_, B>,
    c: &mut [MaybeUninit<f32>],
) {
    assert!(p.beta == 0.0, "a fresh output is written, never read");
    assert_eq!(c.len(), p.m * p.n, "a fresh output holds m × n elements");
    if c.is_empty() {
        return;
    }
    let kern = match b {
        BPanels::Pack(b) => kernel::best(a.holds_bf16() && b.holds_bf16()),
        BPanels::Packed(packed) => packed_kernel(&a, packed),
    };
    let tile = CTile {
        ptr: c.as_mut_ptr().cast(),
        ld: p.n,
    };
    single(kern, crate::num_threads(), p, (a, b, 0), tile);
}

/// The kernel `packed` was packed for, checked against A.
fn packed_kernel<A: Element>(a: &Operand<'_, A>, packed: &PackedB) -> &'static Kernel {
    let kern = packed.kernel;
    assert!(
        kern.packing == Packing::F32 || a.holds_bf16(),
        "the {} kernel needs an A that holds bf16 values",
        kern.name
    );
    kern
}

/// A raw view of C that thread tasks share; each task writes a disjoint
/// block. C may be uninitialised when `beta == 0`: the kernels and
/// [`scale`] then store each element before anything reads it.
#[derive(Clone, Copy)]
struct CTile {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: tasks only ever write disjoint blocks of C (see `single`), and the
// borrow of C outlives every task because tasks finish before `single` returns.
unsafe impl Send for CTile {}
// SAFETY: as above.
unsafe impl Sync for CTile {}

impl CTile {
    fn new(data: &mut [f32], ld: usize) -> Self {
        CTile {
            ptr: data.as_mut_ptr(),
            ld,
        }
    }
}

/// One product, split into at most `threads` tasks over rows or columns of C.
///
/// The split duplicates the packing of one operand in every task, so it cuts
/// the longer of M and N: then the duplicated operand is the smaller one.
fn single<A: Element, B: Element>(
    kern: &Kernel,
    threads: usize,
    p: &Problem,
    (a, b, entry): (Operand<'_, A>, BPanels<'_, B>, usize),
    c: CTile,
) {
    if p.k == 0 || p.alpha == 0.0 {
        return scale(p, c);
    }
    let macs = p.m * p.n * p.k;
    let tasks = if macs < PARALLEL_MIN_MACS { 1 } else { threads };
    let split_n = p.n > p.m;
    let (len, unit) = if split_n {
        (p.n, kern.nr)
    } else {
        (p.m, kern.mr)
    };
    let chunk = len.div_ceil(tasks).div_ceil(unit) * unit;
    let ranges: Vec<(usize, usize)> = (0..len)
        .step_by(chunk)
        .map(|s| (s, (s + chunk).min(len)))
        .collect();
    let task = |&(s, e): &(usize, usize)| {
        let (rows, cols) = if split_n {
            ((0, p.m), (s, e))
        } else {
            ((s, e), (0, p.n))
        };
        block(kern, p, (a, b, entry), c, rows, cols);
    };
    if ranges.len() == 1 {
        task(&ranges[0]);
    } else {
        crate::install(|| ranges.par_iter().for_each(task));
    }
}

/// `C = beta * C` (the whole product when `k == 0` or `alpha == 0`).
fn scale(p: &Problem, c: CTile) {
    for i in 0..p.m {
        for j in 0..p.n {
            // SAFETY: (i, j) is inside C (checked by the public API, or C is
            // a fresh m × n buffer), this runs on one thread, and C is only
            // read when beta != 0, when it was initialised by the caller.
            unsafe {
                let dst = c.ptr.add(i * c.ld + j);
                dst.write(if p.beta == 0.0 {
                    0.0
                } else {
                    p.beta * dst.read()
                });
            }
        }
    }
}

thread_local! {
    /// Packing buffers, reused across calls on each thread.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A 64-byte-aligned window of `len` floats inside `buf`, growing it if needed.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(16);
    &mut buf[off..off + len]
}

/// Subnormal floats off for as long as it lives, on the calling thread
/// (x86-64: MXCSR's flush-to-zero and denormals-are-zero bits), restored
/// on drop.
///
/// Gradients are full of subnormals: the loss gradient of a confident model
/// is `softmax − onehot`, and most of its 32128 probabilities per row are
/// `exp` of a large negative number. Intel cores take a microcode assist
/// for every multiply-add that reads one (measured on a Xeon with AVX-512:
/// the LM head's two backward products ran at 5 GFLOP/s instead of
/// 130–190, two thirds of a flan-t5-small training step). Values below
/// 2^-126 contribute nothing a sum of f32 can keep, so the kernels treat
/// them as zero, as `vdpbf16ps` does by definition. AMD cores handle
/// subnormals at full speed, and the results differ from unflushed ones
/// only in such values.
struct FlushSubnormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

/// MXCSR bits: flush-to-zero (15) and denormals-are-zero (6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

impl FlushSubnormals {
    fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved = 0u32;
            // SAFETY: `stmxcsr` stores the 32-bit control register into the
            // local `saved`; `ldmxcsr` loads a value that differs from the
            // current one only in the FTZ and DAZ bits, which every x86-64
            // CPU supports (SSE2 is baseline).
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack, preserves_flags));
                let flushed = saved | FTZ_DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack, preserves_flags));
            }
            FlushSubnormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushSubnormals {}
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the control register saved by `new` on this thread.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, preserves_flags));
        }
    }
}

/// The BLIS loops over the block `rows × cols` of C, on the calling thread,
/// with subnormals flushed ([`FlushSubnormals`]).
fn block<A: Element, B: Element>(
    kern: &Kernel,
    p: &Problem,
    (a, b, e): (Operand<'_, A>, BPanels<'_, B>, usize),
    c: CTile,
    (m0, m1): (usize, usize),
    (n0, n1): (usize, usize),
) {
    let _flush = FlushSubnormals::new();
    let (mr, nr, bl) = (kern.mr, kern.nr, kern.blocking);
    // When every row fits in one A panel (the LM head, small batches), A is
    // packed once for the whole reduction, one `MC × KC` slice per `pc`, and
    // reused by every B panel instead of being packed again for each.
    let a_once = m1 - m0 <= bl.mc;
    SCRATCH.with_borrow_mut(|(abuf, bbuf)| {
        let apack = aligned(abuf, bl.mc * if a_once { p.k } else { bl.kc });
        if a_once {
            for pc in (0..p.k).step_by(bl.kc) {
                let kc = bl.kc.min(p.k - pc);
                let dst = &mut apack[pc * bl.mc..];
                pack_block(
                    dst,
                    a.at(e, m0, pc),
                    (a.rs, a.cs),
                    (m1 - m0, kc, mr),
                    (a.round, kern.packing),
                );
            }
        }
        let ncb = bl.nc_for(m1 - m0);
        let bpack = match b {
            BPanels::Pack(_) => aligned(bbuf, ncb.min((n1 - n0).div_ceil(nr) * nr) * bl.kc),
            BPanels::Packed(_) => &mut [],
        };
        for jc in (n0..n1).step_by(ncb) {
            let nc = ncb.min(n1 - jc);
            for pc in (0..p.k).step_by(bl.kc) {
                let kc = bl.kc.min(p.k - pc);
                let bp: &[f32] = match b {
                    BPanels::Pack(b) => {
                        let how = (b.round, kern.packing);
                        pack_block(bpack, b.at(e, pc, jc), (b.cs, b.rs), (nc, kc, nr), how);
                        bpack
                    }
                    BPanels::Packed(packed) => packed.panel(pc, jc, kc),
                };
                let beta = if pc == 0 { p.beta } else { 1.0 };
                for ic in (m0..m1).step_by(bl.mc) {
                    let mc = bl.mc.min(m1 - ic);
                    let ap = if a_once {
                        &apack[pc * bl.mc..]
                    } else {
                        let how = (a.round, kern.packing);
                        pack_block(apack, a.at(e, ic, pc), (a.rs, a.cs), (mc, kc, mr), how);
                        &apack[..]
                    };
                    for jr in (0..nc).step_by(nr) {
                        for ir in (0..mc).step_by(mr) {
                            let tile = Tile {
                                m: mr.min(mc - ir),
                                n: nr.min(nc - jr),
                                alpha: p.alpha,
                                beta,
                            };
                            // SAFETY: the packed slivers hold kc * mr and kc * nr
                            // floats (a `PackedB` holds every column's slivers for
                            // every slice, as its own packing wrote them); the tile
                            // lies inside this task's block of C, which the public
                            // API (or `run_fresh`'s length check) checked against
                            // C's buffer and no other task writes; a slice after
                            // the first reads only tiles the first stored; the
                            // kernel was selected for
                            // this CPU (and, for bf16 pairs, these operands) by
                            // `kernel::best` / `available`.
                            unsafe {
                                let cptr = c.ptr.add((ic + ir) * c.ld + jc + jr);
                                (kern.run)(
                                    kc,
                                    ap.as_ptr().add(ir * kc),
                                    bp.as_ptr().add(jr * kc),
                                    cptr,
                                    c.ld,
                                    tile,
                                );
                            }
                        }
                    }
                }
            }
        }
    });
}

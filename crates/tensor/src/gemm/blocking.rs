//! Cache blocking: how big the packed panels of A and B are.
//!
//! The loops follow BLIS. For each `NC`-wide column block of C and each
//! `KC`-deep slice of the reduction, a `KC × NC` panel of B is packed once
//! and reused by every row block; for each `MC`-tall row block, an
//! `MC × KC` panel of A is packed and swept by the micro-kernel, which keeps
//! an `MR × NR` tile of C in registers.
//!
//! The sizes follow from the caches of the machines they were tuned on (AMD
//! Zen 3: L1d 32 KiB and L2 512 KiB per core; Zen 4: L1d 32 KiB and L2
//! 1 MiB per core; L3 32 MiB shared on both):
//!
//! * `KC = 256` steps: one micro-panel of B (256 · 16 · 4 B = 16 KiB for
//!   the AVX2 6 × 16 kernel) stays in L1d while the micro-kernel streams
//!   `MR × KC` slivers of A (6 KiB) through it, leaving room for C's tile
//!   and the hardware prefetcher. The AVX-512 8 × 32 kernel keeps 256 too,
//!   though its micro-panel (32 KiB) fills L1d: measured on Zen 4, 128 steps
//!   were slower (reloading C's tile twice as often costs more than B's
//!   trips to L2).
//! * `KC = 512` steps for bf16 pairs, whose 4-byte slots hold two steps:
//!   the same 256 slots per line as above, in the same cache footprint,
//!   and C's tile reloaded half as often (measured on Zen 4: about 8 %
//!   faster than 256 steps). The f32 staging of a block before it is paired
//!   is twice that and still fits L2 (144 · 512 · 4 B = 288 KiB of A).
//! * `MC = 144`: the packed A panel (144 rows · 256 slots · 4 B = 144 KiB)
//!   sits in L2 with room to spare for the B micro-panels passing through on
//!   their way to L1.
//! * `NC = 4080`: the packed B panel (up to 256 · 4080 · 4 B ≈ 4 MiB) sits
//!   in L3, a fraction of it per core, so the other core's panel fits
//!   beside it.
//!
//! * `NC_SMALL = 256` when all rows of C fit in one `MC` block (the LM head:
//!   80 target tokens × 32128 vocabulary). Then every packed B panel is used
//!   by a single A panel, so there is no reuse to gain from a large one;
//!   instead the panel is kept small enough (256 · 256 · 4 B = 256 KiB) to
//!   stay in L2 beside A from packing until the kernel reads it, and B makes
//!   one trip from memory instead of three.
//!
//! MC and NC are multiples of the micro-tile, so only the last block of a
//! matrix has partial tiles.

/// Block sizes of the cache-blocked loops, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of one packed slice of the reduction dimension.
    pub kc: usize,
    /// Rows of C per packed A panel (a multiple of the kernel's MR).
    pub mc: usize,
    /// Columns of C per packed B panel (a multiple of the kernel's NR).
    pub nc: usize,
    /// Columns per packed B panel when all rows fit in one A panel.
    pub nc_small: usize,
}

impl Blocking {
    /// Sizes for a micro-kernel of `mr × nr` whose packed 4-byte slots each
    /// hold `steps_per_slot` steps of the reduction: 1 for f32, 2 for bf16
    /// pairs (see the module docs).
    pub const fn for_tile(mr: usize, nr: usize, steps_per_slot: usize) -> Blocking {
        Blocking {
            kc: 256 * steps_per_slot,
            mc: 144 / mr * mr,
            nc: 4080 / nr * nr,
            nc_small: 256 / nr * nr,
        }
    }

    /// The B panel width for a block of `rows` rows of C.
    pub const fn nc_for(&self, rows: usize) -> usize {
        if rows <= self.mc {
            self.nc_small
        } else {
            self.nc
        }
    }
}

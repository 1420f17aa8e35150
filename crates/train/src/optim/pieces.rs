//! Work items of an elementwise optimizer step: runs of at most
//! [`PIECE`] elements that never straddle two parameters.
//!
//! The split depends only on the layout, never on the thread count, so
//! whatever the pool's size each element sees the same operations.

use rayon::prelude::*;
use std::ops::Range;
use tessera_t5::{FlatMut, ParamEntry, ParamStore};
use tessera_tensor::{round_stochastic, Element};

/// Elements per work item: enough to amortise scheduling (~100 µs of work),
/// few enough that 2 to 64 threads share a large tensor evenly.
pub(super) const PIECE: usize = 1 << 16;

/// A run of elements of one parameter within the flat store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Piece {
    /// Index of the parameter in the layout.
    pub entry: usize,
    /// Position in the flat buffer.
    pub range: Range<usize>,
}

/// Cuts a layout (entries back to back, in order) into pieces.
pub(super) fn pieces(entries: &[ParamEntry]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (entry, e) in entries.iter().enumerate() {
        let end = offset + e.numel();
        while offset < end {
            let stop = (offset + PIECE).min(end);
            out.push(Piece {
                entry,
                range: offset..stop,
            });
            offset = stop;
        }
    }
    out
}

/// Splits `buf` into consecutive mutable slices of the given lengths, from
/// its start (one per piece, or one per parameter).
pub(super) fn split_mut<E>(
    mut buf: &mut [E],
    lens: impl IntoIterator<Item = usize>,
) -> Vec<&mut [E]> {
    lens.into_iter()
        .map(|len| {
            let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
            buf = tail;
            head
        })
        .collect()
}

/// Applies `update` to consecutive runs of the parameters' values (lengths
/// `lens`, from position `start` of the store: a shard's first value), in
/// parallel, each run with its item. The update sees f32 values: an f32 store is updated in place; a
/// bf16 or fp16 store's run is widened, updated, and rounded back
/// stochastically with the noise of `key` (one per step), drawn by position
/// in the store so the result does not depend on the thread count.
pub(super) fn update_runs<T: Send>(
    params: &mut ParamStore,
    start: usize,
    lens: impl IntoIterator<Item = usize>,
    items: Vec<T>,
    key: u64,
    update: impl Fn(&mut [f32], T) + Sync,
) {
    match params.flat_values_mut() {
        FlatMut::F32(p) => split_mut(&mut p[start..], lens)
            .into_par_iter()
            .zip(items)
            .for_each(|(p, item)| update(p, item)),
        FlatMut::Bf16(p) => update_narrow(p, start, lens, items, key, update),
        FlatMut::F16(p) => update_narrow(p, start, lens, items, key, update),
    }
}

fn update_narrow<E: Element, T: Send>(
    p: &mut [E],
    start: usize,
    lens: impl IntoIterator<Item = usize>,
    items: Vec<T>,
    key: u64,
    update: impl Fn(&mut [f32], T) + Sync,
) {
    let lens: Vec<usize> = lens.into_iter().collect();
    let starts: Vec<u64> = ranges(lens.iter().copied())
        .map(|r| (start + r.start) as u64)
        .collect();
    split_mut(&mut p[start..], lens)
        .into_par_iter()
        .zip(items)
        .zip(starts)
        .for_each(|((p, item), start)| {
            let mut wide = vec![0.0; p.len()];
            E::slice_to_f32(p, &mut wide);
            update(&mut wide, item);
            round_stochastic(&wide, p, key, start);
        });
}

/// Lengths of the pieces, for [`split_mut`].
pub(super) fn lens(pieces: &[Piece]) -> impl Iterator<Item = usize> + '_ {
    pieces.iter().map(|p| p.range.len())
}

/// Each parameter's range in the flat store.
pub(super) fn entry_ranges(entries: &[ParamEntry]) -> impl Iterator<Item = Range<usize>> + '_ {
    ranges(entries.iter().map(ParamEntry::numel))
}

/// The ranges of consecutive runs of the given lengths, from 0.
fn ranges(lens: impl IntoIterator<Item = usize>) -> impl Iterator<Item = Range<usize>> {
    lens.into_iter().scan(0, |offset, len| {
        let start = *offset;
        *offset += len;
        Some(start..*offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_store_and_respect_parameters() {
        let store = crate::optim::test_support::tiny_params(1);
        let ps = pieces(store.entries());
        assert_eq!(ps.first().map(|p| p.range.start), Some(0));
        assert_eq!(ps.last().map(|p| p.range.end), Some(store.flat().len()));
        assert!(ps.windows(2).all(|w| w[0].range.end == w[1].range.start));
        assert!(ps
            .iter()
            .all(|p| !p.range.is_empty() && p.range.len() <= PIECE));
        for (i, e) in store.entries().iter().enumerate() {
            let total: usize = ps
                .iter()
                .filter(|p| p.entry == i)
                .map(|p| p.range.len())
                .sum();
            assert_eq!(total, e.numel(), "{}", e.name);
        }
        let mut buf = vec![0.0; store.flat().len()];
        let parts = split_mut(&mut buf, lens(&ps));
        assert!(parts.iter().zip(&ps).all(|(s, p)| s.len() == p.range.len()));
        let ranges: Vec<_> = entry_ranges(store.entries()).collect();
        let per_entry = split_mut(&mut buf, store.entries().iter().map(ParamEntry::numel));
        assert!(per_entry
            .iter()
            .zip(&ranges)
            .all(|(s, r)| s.len() == r.len()));
        assert_eq!(ranges.last().map(|r| r.end), Some(store.flat().len()));
    }
}

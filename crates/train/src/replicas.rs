//! Data parallelism over the ranks of a [`Comm`], with the optimizer state
//! sharded (ZeRO-1), arranged so that a run's bits do not depend on how
//! many ranks share it.
//!
//! **The canonical gradient.** A step's micro-batches are cut into `G`
//! contiguous groups ([`group_ranges`]); each group is accumulated into its
//! own zeroed buffer and the groups are added in index order,
//! `((g₀ + g₁) + g₂) + …`. One process computes exactly that (folding each
//! group in as it finishes, so it needs one extra buffer); `N` ranks, `N`
//! dividing `G`, each take `G/N` consecutive groups. Rank 0 folds its own
//! groups as one process would (its sum is a prefix of the fold); every
//! other rank keeps its groups apart, and [`reduce_scatter`] adds every
//! part into its owner's shard in the same order. Floating-point addition
//! is commutative, so `N = G` ranks reproduce one process with `G` groups
//! bit for bit; MPI's own reduction tree is never used.
//!
//! **ZeRO-1.** Each rank owns one range of the flat parameter store
//! ([`crate::optim::shard_ranges`]): the reduction leaves the summed
//! gradients of that range only on its owner, which keeps optimizer state
//! for it alone, updates those weights, and [`share_shards`] sends the
//! updated values to every rank. The weights and the gradient buffers stay
//! whole on every rank.

use crate::error::{Result, TrainError};
use bytemuck::Pod;
use std::ops::Range;
use tessera_dist::Comm;
use tessera_t5::{FlatMut, ParamStore};

/// Values of one shard moved per round of the reduction: the staging
/// buffers stay near 16 MiB per part whatever the model's size.
const ROUND_VALUES: usize = 1 << 22;

/// `groups` contiguous, nearly equal runs of `passes` micro-batches (some
/// empty when there are fewer passes than groups).
pub fn group_ranges(passes: usize, groups: usize) -> Vec<Range<usize>> {
    (0..groups)
        .map(|g| passes * g / groups..passes * (g + 1) / groups)
        .collect()
}

/// How many gradient parts each rank sends to [`reduce_scatter`]: rank 0
/// one (its groups folded), the others one per group.
pub fn parts_per_rank(ranks: usize, groups_per_rank: usize) -> Vec<usize> {
    (0..ranks)
        .map(|r| if r == 0 { 1 } else { groups_per_rank })
        .collect()
}

/// Adds every rank's gradient parts into their owners' shards, in rank
/// order and each rank's parts in order: on return `first[shards[rank]]`
/// holds `((p₀ + p₁) + p₂) + …` over all parts of all ranks. This rank's
/// parts are `first` (whole buffer) then `rest`; `parts[r]` is how many
/// rank `r` sends. Outside its own shard `first` is left as it was.
pub fn reduce_scatter(
    comm: Comm,
    first: &mut [f32],
    rest: &[&[f32]],
    parts: &[usize],
    shards: &[Range<usize>],
) {
    if comm.size() == 1 {
        return;
    }
    let me = comm.rank();
    let per = (ROUND_VALUES / comm.size()).max(1);
    let rounds = shards
        .iter()
        .map(|s| s.len().div_ceil(per))
        .max()
        .unwrap_or(0);
    let sub = |s: &Range<usize>, r: usize| {
        let start = (s.start + r * per).min(s.end);
        start..(start + per).min(s.end)
    };
    for r in 0..rounds {
        let subs: Vec<Range<usize>> = shards.iter().map(|s| sub(s, r)).collect();
        let mut send = Vec::new();
        let mut send_counts = Vec::with_capacity(subs.len());
        for range in &subs {
            send.extend_from_slice(&first[range.clone()]);
            for part in rest {
                send.extend_from_slice(&part[range.clone()]);
            }
            send_counts.push(range.len() * (1 + rest.len()));
        }
        let mine = subs[me].clone();
        let recv_counts: Vec<usize> = parts.iter().map(|&k| k * mine.len()).collect();
        let mut recv = vec![0.0f32; recv_counts.iter().sum()];
        comm.all_to_all(&send, &send_counts, &mut recv, &recv_counts);
        let acc = &mut first[mine.clone()];
        let mut segments = recv.chunks_exact(mine.len().max(1));
        if let Some(head) = segments.next() {
            acc.copy_from_slice(head);
        }
        for segment in segments {
            add_into(acc, segment);
        }
    }
}

/// `acc += x`, element by element in f32.
pub fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// After each rank has updated the values of its shard, gives every rank
/// all of them (in the store's own type: f32, bf16 or fp16).
pub fn share_shards(comm: Comm, store: &mut ParamStore, shards: &[Range<usize>]) {
    if comm.size() == 1 {
        return;
    }
    match store.flat_values_mut() {
        FlatMut::F32(v) => gather_in_place(comm, v, shards),
        FlatMut::Bf16(v) => gather_in_place(comm, v, shards),
        FlatMut::F16(v) => gather_in_place(comm, v, shards),
    }
}

fn gather_in_place<T: Pod>(comm: Comm, values: &mut [T], shards: &[Range<usize>]) {
    let mine = values[shards[comm.rank()].clone()].to_vec();
    let counts: Vec<usize> = shards.iter().map(Range::len).collect();
    comm.all_gather(&mine, values, &counts);
}

/// Every rank's `mine`, concatenated in rank order.
pub fn gather_f64(comm: Comm, mine: &[f64]) -> Result<Vec<f64>> {
    if comm.size() == 1 {
        return Ok(mine.to_vec());
    }
    let bytes: &[u8] = bytemuck::cast_slice(mine);
    let mut all = Vec::new();
    for part in comm.all_gather_bytes(bytes) {
        if part.len() % 8 != 0 {
            return Err(TrainError::Distributed(format!(
                "a rank sent {} bytes of f64 values",
                part.len()
            )));
        }
        all.extend(
            part.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of eight bytes"))),
        );
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_the_passes_in_order() {
        assert_eq!(group_ranges(4, 2), vec![0..2, 2..4]);
        assert_eq!(group_ranges(3, 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(group_ranges(1, 2), vec![0..0, 0..1]);
        assert_eq!(group_ranges(5, 1), vec![0..5]);
        assert_eq!(parts_per_rank(3, 2), vec![1, 2, 2]);
    }

    #[test]
    fn one_rank_changes_nothing() {
        let mut g = vec![1.0, 2.0];
        let whole = std::slice::from_ref(&(0..2));
        reduce_scatter(Comm::SINGLE, &mut g, &[], &[1], whole);
        assert_eq!(g, [1.0, 2.0]);
        assert_eq!(gather_f64(Comm::SINGLE, &[0.5]).unwrap(), [0.5]);
    }
}

//! The collectives on MPI's world communicator (feature `mpi`).
//!
//! Everything moves as bytes. A transfer is cut into rounds of at most
//! [`ROUND_BYTES`] in all, `ROUND_BYTES / size` per rank, so every count
//! and displacement fits MPI's `int`; each round is staged through one
//! buffer and copied into place.

use crate::{Comm, Error, ROUND_BYTES};
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// Starts MPI; ranks never call it from rayon's worker threads.
pub(crate) fn init() -> Result<(mpi::environment::Universe, Comm), Error> {
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        .ok_or_else(|| Error::Init("MPI was initialised already".into()))?;
    let world = universe.world();
    let comm = Comm {
        rank: usize::try_from(world.rank()).map_err(|e| Error::Init(e.to_string()))?,
        size: usize::try_from(world.size()).map_err(|e| Error::Init(e.to_string()))?,
    };
    Ok((universe, comm))
}

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// Bytes per rank per round.
fn per_rank(size: usize) -> usize {
    (ROUND_BYTES / size).max(1)
}

/// Round `r`'s share of a transfer of `len` bytes.
fn share(len: usize, r: usize, per: usize) -> std::ops::Range<usize> {
    let start = (r * per).min(len);
    start..(start + per).min(len)
}

/// Counts and displacements of one round, as MPI takes them.
fn layout(counts: impl Iterator<Item = usize>) -> (Vec<Count>, Vec<Count>) {
    let counts: Vec<usize> = counts.collect();
    let displs = offsets(&counts).into_iter().map(count).collect();
    (counts.into_iter().map(count).collect(), displs)
}

fn count(n: usize) -> Count {
    Count::try_from(n).expect("a round's counts fit an MPI int")
}

/// Offsets of consecutive parts of the given lengths.
fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect()
}

/// Copies a round's received parts, back to back in `staged`, to their
/// places in `dst`: part `i` is bytes `parts[i]` of the transfer whose
/// whole part starts at `starts[i]`.
fn unstage(dst: &mut [u8], staged: &[u8], parts: &[std::ops::Range<usize>], starts: &[usize]) {
    let mut from = 0;
    for (part, start) in parts.iter().zip(starts) {
        let to = start + part.start;
        dst[to..to + part.len()].copy_from_slice(&staged[from..from + part.len()]);
        from += part.len();
    }
}

/// `buf`, or when it is empty a zero-length slice of `spare`. Every buffer
/// reaches MPI through it: an empty Rust slice may point at address 1,
/// which Open MPI reads as `MPI_IN_PLACE`, so an empty part would not mean
/// "nothing" to it.
fn real<'a>(buf: &'a [u8], spare: &'a [u8; 1]) -> &'a [u8] {
    if buf.is_empty() {
        &spare[..0]
    } else {
        buf
    }
}

/// [`real`], mutable.
fn real_mut<'a>(buf: &'a mut [u8], spare: &'a mut [u8; 1]) -> &'a mut [u8] {
    if buf.is_empty() {
        &mut spare[..0]
    } else {
        buf
    }
}

pub(crate) fn all_gather(mine: &[u8], all: &mut [u8], counts: &[usize]) {
    let per = per_rank(counts.len());
    let rounds = counts.iter().max().map_or(0, |m| m.div_ceil(per));
    if rounds == 1 {
        // One round: straight between the callers' buffers.
        let (rc, displs) = layout(counts.iter().copied());
        let (a, mut b) = ([0u8], [0u8]);
        world().all_gather_varcount_into(
            real(mine, &a),
            &mut PartitionMut::new(real_mut(all, &mut b), &rc[..], &displs[..]),
        );
        return;
    }
    let starts = offsets(counts);
    for r in 0..rounds {
        let parts: Vec<_> = counts.iter().map(|&c| share(c, r, per)).collect();
        let (rc, displs) = layout(parts.iter().map(|p| p.len()));
        let mut staged = vec![0u8; parts.iter().map(|p| p.len()).sum()];
        let (a, mut b) = ([0u8], [0u8]);
        world().all_gather_varcount_into(
            real(&mine[share(mine.len(), r, per)], &a),
            &mut PartitionMut::new(real_mut(&mut staged, &mut b), &rc[..], &displs[..]),
        );
        unstage(all, &staged, &parts, &starts);
    }
}

pub(crate) fn all_to_all(
    send: &[u8],
    send_counts: &[usize],
    recv: &mut [u8],
    recv_counts: &[usize],
) {
    let per = per_rank(send_counts.len());
    let longest = send_counts
        .iter()
        .chain(recv_counts)
        .max()
        .copied()
        .unwrap_or(0);
    let mut rounds = 0u64;
    world().all_reduce_into(
        &(longest.div_ceil(per) as u64),
        &mut rounds,
        SystemOperation::max(),
    );
    if rounds == 1 {
        let (sc, sd) = layout(send_counts.iter().copied());
        let (rc, rd) = layout(recv_counts.iter().copied());
        let (a, mut b) = ([0u8], [0u8]);
        world().all_to_all_varcount_into(
            &Partition::new(real(send, &a), &sc[..], &sd[..]),
            &mut PartitionMut::new(real_mut(recv, &mut b), &rc[..], &rd[..]),
        );
        return;
    }
    let (send_starts, recv_starts) = (offsets(send_counts), offsets(recv_counts));
    for r in 0..rounds as usize {
        let out: Vec<_> = send_counts.iter().map(|&c| share(c, r, per)).collect();
        let inc: Vec<_> = recv_counts.iter().map(|&c| share(c, r, per)).collect();
        let mut staged_out = Vec::with_capacity(out.iter().map(|p| p.len()).sum());
        for (part, start) in out.iter().zip(&send_starts) {
            staged_out.extend_from_slice(&send[start + part.start..start + part.end]);
        }
        let mut staged_in = vec![0u8; inc.iter().map(|p| p.len()).sum()];
        let (sc, sd) = layout(out.iter().map(|p| p.len()));
        let (rc, rd) = layout(inc.iter().map(|p| p.len()));
        let (a, mut b) = ([0u8], [0u8]);
        world().all_to_all_varcount_into(
            &Partition::new(real(&staged_out, &a), &sc[..], &sd[..]),
            &mut PartitionMut::new(real_mut(&mut staged_in, &mut b), &rc[..], &rd[..]),
        );
        unstage(recv, &staged_in, &inc, &recv_starts);
    }
}

pub(crate) fn barrier() {
    world().barrier();
}

pub(crate) fn abort(code: i32) -> ! {
    world().abort(code)
}

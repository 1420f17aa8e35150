//! The processes of one training run and the collectives data-parallel
//! training needs, with no networking of our own: on MPI (cargo feature
//! `mpi`, the `mpi` crate over the system's Open MPI) when the program was
//! started by `mpirun`, or one process otherwise.
//!
//! [`Session::init`] decides once, at start-up: a launcher in the
//! environment (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `PMIX_RANK`) means MPI;
//! anything else is a world of one, which does exactly what a program
//! without this crate would. The [`Comm`] it hands out is a plain `Copy`
//! value (rank and size); each collective reaches MPI's world communicator
//! itself, so a trainer can hold one without lifetimes.
//!
//! Every collective is blocking and is called by every rank in the same
//! order. Sums are never left to MPI: callers gather the parts and add them
//! in rank order, so results do not depend on MPI's reduction tree.
//! Transfers larger than MPI's `int` counts allow go in rounds of at most
//! [`ROUND_BYTES`].

#[cfg(feature = "mpi")]
mod backend;

use bytemuck::Pod;

/// Bytes moved per collective call: MPI counts and displacements are C
/// `int`s, so a larger transfer is cut into rounds, each staged through a
/// buffer of at most this size.
pub const ROUND_BYTES: usize = 1 << 30;

/// Why the processes of a run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `mpirun` started several ranks of a program built without MPI.
    #[error("this program was started by an MPI launcher with {size} ranks but was built without MPI; rebuild it with `cargo build --release -p xtask --features mpi`")]
    NoMpi {
        /// The world size the launcher announced.
        size: usize,
    },
    /// MPI did not initialise.
    #[error("MPI could not be initialised ({0})")]
    Init(String),
}

/// This process's place in the run: its rank and the number of ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    rank: usize,
    size: usize,
}

/// The run's processes for as long as the program runs: holds MPI open
/// (finalised when dropped) and hands out the [`Comm`].
pub struct Session {
    comm: Comm,
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Session {
    /// Joins the run: MPI when a launcher started this process (and the
    /// feature is on), one process otherwise.
    pub fn init() -> Result<Session, Error> {
        let launched = launcher_size();
        #[cfg(feature = "mpi")]
        if launched.is_some() {
            let (universe, comm) = backend::init()?;
            return Ok(Session {
                comm,
                _universe: Some(universe),
            });
        }
        if let Some(size) = launched.filter(|&s| s > 1) {
            return Err(Error::NoMpi { size });
        }
        Ok(Session {
            comm: Comm::SINGLE,
            #[cfg(feature = "mpi")]
            _universe: None,
        })
    }

    /// This process's rank and the world's size.
    pub fn comm(&self) -> Comm {
        self.comm
    }
}

/// The world size an MPI launcher announced in the environment, if one
/// started this process (Open MPI, MPICH/Hydra and PMIx launchers).
fn launcher_size() -> Option<usize> {
    let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok());
    size.or_else(|| std::env::var_os("PMIX_RANK").map(|_| 1))
}

impl Comm {
    /// A world of one process.
    pub const SINGLE: Comm = Comm { rank: 0, size: 1 };

    /// This process's rank, from 0.
    pub fn rank(self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the one that prints, logs and writes.
    pub fn is_root(self) -> bool {
        self.rank == 0
    }

    /// Every rank's `mine`, in rank order (small, variable-length records:
    /// losses, norm partials, evaluation results).
    pub fn all_gather_bytes(self, mine: &[u8]) -> Vec<Vec<u8>> {
        let lens = self.all_gather_u64(mine.len() as u64);
        let counts: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        let mut all = vec![0u8; counts.iter().sum()];
        self.all_gather(mine, &mut all, &counts);
        let mut rest = all.as_slice();
        counts
            .iter()
            .map(|&n| {
                let (head, tail) = rest.split_at(n);
                rest = tail;
                head.to_vec()
            })
            .collect()
    }

    /// Every rank's `value`, in rank order.
    pub fn all_gather_u64(self, value: u64) -> Vec<u64> {
        let mut all = vec![0u64; self.size];
        self.all_gather(&[value], &mut all, &vec![1; self.size]);
        all
    }

    /// Concatenates every rank's `mine` into `all` in rank order; rank `i`
    /// contributes `counts[i]` elements (the same `counts` on every rank).
    ///
    /// # Panics
    /// If `counts` has not one entry per rank, or the buffers do not match it.
    pub fn all_gather<T: Pod>(self, mine: &[T], all: &mut [T], counts: &[usize]) {
        assert_eq!(counts.len(), self.size, "one count per rank");
        assert_eq!(mine.len(), counts[self.rank], "this rank's count");
        assert_eq!(all.len(), counts.iter().sum::<usize>(), "the total");
        // Only MPI makes a world of more than one.
        if self.size == 1 {
            all.copy_from_slice(mine);
        } else {
            #[cfg(feature = "mpi")]
            backend::all_gather(
                bytemuck::cast_slice(mine),
                bytemuck::cast_slice_mut(all),
                &bytes(counts, size_of::<T>()),
            );
        }
    }

    /// Sends `send[part d]` to rank `d` and receives rank `s`'s part for
    /// this rank into `recv[part s]`, parts laid out back to back in rank
    /// order with `send_counts[d]` and `recv_counts[s]` elements.
    ///
    /// # Panics
    /// If the counts have not one entry per rank or the buffers do not
    /// match them.
    pub fn all_to_all<T: Pod>(
        self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) {
        assert_eq!(send_counts.len(), self.size, "one send count per rank");
        assert_eq!(recv_counts.len(), self.size, "one receive count per rank");
        assert_eq!(send.len(), send_counts.iter().sum::<usize>(), "send total");
        assert_eq!(recv.len(), recv_counts.iter().sum::<usize>(), "recv total");
        // Only MPI makes a world of more than one.
        if self.size == 1 {
            recv.copy_from_slice(send);
        } else {
            #[cfg(feature = "mpi")]
            backend::all_to_all(
                bytemuck::cast_slice(send),
                &bytes(send_counts, size_of::<T>()),
                bytemuck::cast_slice_mut(recv),
                &bytes(recv_counts, size_of::<T>()),
            );
        }
    }

    /// Every rank's `mine` concatenated in rank order on rank 0 (`None` on
    /// the others): a whole state gathered to be saved, without every rank
    /// holding all of it.
    pub fn gather_to_root<T: Pod>(self, mine: &[T]) -> Option<Vec<T>> {
        let counts: Vec<usize> = self
            .all_gather_u64(mine.len() as u64)
            .iter()
            .map(|&c| c as usize)
            .collect();
        let mut send_counts = vec![0; self.size];
        send_counts[0] = mine.len();
        let recv_counts = if self.is_root() {
            counts
        } else {
            vec![0; self.size]
        };
        let mut all = vec![T::zeroed(); recv_counts.iter().sum()];
        self.all_to_all(mine, &send_counts, &mut all, &recv_counts);
        self.is_root().then_some(all)
    }

    /// Whether any rank passed `true` (a stop request, an overflow).
    pub fn any(self, flag: bool) -> bool {
        self.all_gather_u64(u64::from(flag)).contains(&1)
    }

    /// Waits until every rank has called it.
    pub fn barrier(self) {
        if self.size > 1 {
            #[cfg(feature = "mpi")]
            backend::barrier();
        }
    }

    /// Ends the whole run at once with exit status `code`: under MPI every
    /// rank is killed (`MPI_Abort`), so no rank waits forever for one that
    /// failed; alone, the process exits.
    pub fn abort(self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            backend::abort(code);
        }
        std::process::exit(code)
    }
}

/// Element counts as byte counts.
#[cfg(feature = "mpi")]
fn bytes(counts: &[usize], size: usize) -> Vec<usize> {
    counts.iter().map(|c| c * size).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_copies() {
        let c = Comm::SINGLE;
        assert!(c.is_root() && c.size() == 1);
        let mut all = [0.0f32; 3];
        c.all_gather(&[1.0, 2.0, 3.0], &mut all, &[3]);
        assert_eq!(all, [1.0, 2.0, 3.0]);
        let mut recv = [0u16; 2];
        c.all_to_all(&[7, 8], &[2], &mut recv, &[2]);
        assert_eq!(recv, [7, 8]);
        assert_eq!(c.all_gather_bytes(b"abc"), vec![b"abc".to_vec()]);
        assert!(c.any(true) && !c.any(false));
    }

    #[test]
    #[should_panic(expected = "this rank's count")]
    fn counts_must_match_the_buffers() {
        let mut all = [0.0f32; 3];
        Comm::SINGLE.all_gather(&[1.0, 2.0], &mut all, &[3]);
    }
}

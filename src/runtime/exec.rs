//! Running a stage over segments on every core: segments are cut into (segment, range) pieces
//! of at least [`GRAIN`] elements, dealt into one batch per thread, and each batch is one
//! kernel (or interpreter) call on a persistent pool: rayon's, or optjit's pinned one (see
//! [`PoolKind`]). Both run the same batches, so their results are identical bit for bit.

use crate::interp::{run_chunked, run_eager, run_reference};
use crate::program::Stage;
use crate::segment::Segment;
use crate::{Executor, Float, Kernel, Result};
use rayon::prelude::*;

use super::pool::{PoolKind, Threads};

/// Fewest elements worth a thread of their own. Measured with `optjit bench --impl jit
/// --threads 1,2` at 2^15 … 2^19 elements: below 2^16 per thread a second thread never
/// helped (waking a pool thread costs tens of µs); Adam gains from 2^17 elements in all,
/// SGD-momentum (4× cheaper per element) from 2^19.
pub const GRAIN: usize = 1 << 16;

/// What runs a batch of segments.
#[derive(Clone, Copy)]
pub(crate) enum Runner<'a> {
    /// A compiled kernel.
    Jit(&'a Kernel),
    /// An interpreter (reference, eager or chunked), on this stage.
    Interp(Executor, &'a Stage),
}

impl Runner<'_> {
    fn run<T: Float>(self, segments: &mut [Segment<'_, T>]) -> Result<()> {
        match self {
            Runner::Jit(kernel) => kernel.run(segments),
            Runner::Interp(Executor::Eager, stage) => run_eager(stage, segments),
            Runner::Interp(Executor::Chunked, stage) => run_chunked(stage, segments),
            Runner::Interp(_, stage) => run_reference(stage, segments),
        }
    }
}

/// Runs `segments` with `runner`, split over at most `threads.count` threads of
/// `threads.pool`.
///
/// Every segment is validated by the runner before it touches memory; since all batches are
/// built from already checked buffers, a batch failing while another succeeds would be an
/// optjit bug, not a user error.
pub(crate) fn run_parallel<T: Float>(
    runner: Runner<'_>,
    segments: Vec<Segment<'_, T>>,
    threads: Threads,
) -> Result<()> {
    let total: usize = segments.iter().map(Segment::len).sum();
    let pool = threads.pool;
    let threads = threads.count.min(total / GRAIN).max(1);
    if threads == 1 {
        let mut segments = segments;
        return runner.run(&mut segments);
    }
    // Whole 64-byte blocks per batch, so that cutting on block boundaries adds no batch.
    let per_batch = crate::runtime::store::round_up::<T>(total.div_ceil(threads));
    let mut batches: Vec<Vec<Segment<'_, T>>> = vec![Vec::new()];
    let mut room = per_batch;
    for mut seg in segments {
        while seg.len() > room {
            // Cut on a 64-byte boundary so that every piece keeps the buffers' alignment.
            let block = crate::runtime::store::align_elems::<T>();
            let cut = room / block * block;
            if cut > 0 {
                let (head, tail) = split_segment(seg, cut);
                batches.last_mut().expect("one batch exists").push(head);
                seg = tail;
            }
            batches.push(Vec::new());
            room = per_batch;
        }
        room -= seg.len();
        batches.last_mut().expect("one batch exists").push(seg);
    }
    let run = || {
        batches
            .into_par_iter()
            .try_for_each(|mut batch| runner.run(&mut batch))
    };
    match pool.pool() {
        Some(pool) => pool.install(run),
        None => run(),
    }
}

/// `seg` as its first `k` elements and the rest.
fn split_segment<'a, T>(seg: Segment<'a, T>, k: usize) -> (Segment<'a, T>, Segment<'a, T>) {
    let (p0, p1) = seg.param.split_at_mut(k);
    let (g0, g1) = seg.grad.split_at(k);
    let (s0, s1): (Vec<&mut [T]>, Vec<&mut [T]>) =
        seg.state.into_iter().map(|s| s.split_at_mut(k)).unzip();
    (
        Segment {
            param: p0,
            grad: g0,
            state: s0,
            scalars: seg.scalars,
        },
        Segment {
            param: p1,
            grad: g1,
            state: s1,
            scalars: seg.scalars,
        },
    )
}

/// The threads a step uses by default: as many as rayon's pool has, from the default pool.
pub(crate) fn default_threads() -> Threads {
    Threads {
        count: rayon::current_num_threads(),
        pool: PoolKind::default(),
    }
}

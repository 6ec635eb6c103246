//! Running a stage over segments on every core: when there are at least [`GRAIN`] elements
//! per thread, segments are cut into (segment, range) pieces dealt into one batch per thread
//! (see [`batches_in_units`]), and each batch is one kernel (or interpreter) call on a
//! persistent pool: rayon's, or optjit's pinned one (see [`PoolKind`]). Both run the same
//! batches, so their results are identical bit for bit.

use super::Executor;
use crate::interp::{run_chunked, run_eager, run_reference};
use crate::program::Stage;
use crate::segment::Segment;
use crate::{Float, Kernel, Result};
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

impl<'a> Runner<'a> {
    /// The JIT's `kernel` if there is one, else `executor` on `stage`.
    pub(crate) fn of(kernel: Option<&'a Kernel>, executor: Executor, stage: &'a Stage) -> Self {
        match kernel {
            Some(k) => Runner::Jit(k),
            None => Runner::Interp(executor, stage),
        }
    }

    fn run<T: Float>(self, segments: &mut [Segment<'_, T>]) -> Result<()> {
        match self {
            Runner::Jit(kernel) => kernel.run(segments),
            Runner::Interp(Executor::Eager, stage) => run_eager(stage, segments),
            Runner::Interp(Executor::Chunked, stage) => run_chunked(stage, segments),
            Runner::Interp(_, stage) => run_reference(stage, segments),
        }
    }
}

/// A stretch of one segment that one batch runs: elements `start..start + len` of segment
/// `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) segment: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// How the segments of one parallel run are cut and dealt to threads: the pieces in segment
/// order, and the index one past each batch's last piece.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Batches {
    pub(crate) pieces: Vec<Piece>,
    pub(crate) ends: Vec<usize>,
}

/// [`batches_in_units`] for a stage without reductions over elements of `T`: cuts on
/// 64-byte boundaries.
#[cfg(test)]
fn batches<T>(lens: &[usize], threads: usize) -> Batches {
    batches_in_units(lens, threads, super::ALIGN / std::mem::size_of::<T>())
}

/// Cuts segments of lengths `lens` into one batch per thread, at most `threads` of them and
/// no more than [`GRAIN`] elements allow: each batch gets about the same number of elements,
/// and a segment is cut only at multiples of `unit` elements from its start — a multiple of
/// the 64-byte block, so that every piece keeps its buffers' alignment;
/// [`crate::ir::reduce::BLOCK`] for a stage with reductions, whose partials are per block of
/// a parameter. With one batch, each segment is one piece.
pub(crate) fn batches_in_units(lens: &[usize], threads: usize, unit: usize) -> Batches {
    let whole = |(segment, &len): (usize, &usize)| Piece {
        segment,
        start: 0,
        len,
    };
    let total: usize = lens.iter().sum();
    let threads = threads.min(total / GRAIN).max(1);
    if threads == 1 {
        return Batches {
            pieces: lens.iter().enumerate().map(whole).collect(),
            ends: vec![lens.len()],
        };
    }
    // Whole units per batch, so that cutting on unit boundaries adds no batch.
    let block = unit;
    let per_batch = total.div_ceil(threads).div_ceil(unit) * unit;
    let mut pieces = Vec::with_capacity(lens.len() + threads);
    let mut ends = Vec::with_capacity(threads + 1);
    let mut room = per_batch;
    for (segment, &len) in lens.iter().enumerate() {
        let mut start = 0;
        while len - start > room {
            // The room rounded up to whole blocks: a batch may take a few elements more than
            // its share, never fewer, so that the batches are at most `threads`.
            let cut = room.div_ceil(block) * block;
            if cut >= len - start {
                break;
            }
            if cut > 0 {
                pieces.push(Piece {
                    segment,
                    start,
                    len: cut,
                });
                start += cut;
            }
            ends.push(pieces.len());
            room = per_batch;
        }
        room = room.saturating_sub(len - start);
        pieces.push(Piece {
            segment,
            start,
            len: len - start,
        });
    }
    ends.push(pieces.len());
    Batches { pieces, ends }
}

/// Runs `segments` (one per piece of `ends`'s batches, see [`batches_in_units`]) with
/// `runner`, each batch one call on a thread of `pool`.
///
/// Every segment is validated by the runner before it touches memory; since all batches are
/// cut from already checked buffers, a batch failing while another succeeds would be an
/// optjit bug, not a user error.
pub(crate) fn run_batches<T: Float>(
    runner: Runner<'_>,
    segments: &mut [Segment<'_, T>],
    ends: &[usize],
    pool: PoolKind,
) -> Result<()> {
    if ends.len() <= 1 {
        return runner.run(segments);
    }
    let mut batches = Vec::with_capacity(ends.len());
    let mut rest = segments;
    let mut done = 0;
    for &end in ends {
        let (batch, tail) = std::mem::take(&mut rest).split_at_mut(end - done);
        batches.push(batch);
        rest = tail;
        done = end;
    }
    let run = || {
        batches
            .into_par_iter()
            .try_for_each(|batch| runner.run(batch))
    };
    match pool.pool() {
        Some(pool) => pool.install(run),
        None => run(),
    }
}

/// The threads a step uses by default: as many as rayon's pool has, from the default pool.
pub(crate) fn default_threads() -> Threads {
    Threads {
        count: rayon::current_num_threads(),
        pool: PoolKind::default(),
    }
}

/// A program's JIT kernels, compiled on first use: one per stage (its phases in order, then
/// the last) and layout, so that a step finds them without hashing a stage in the JIT's cache.
pub(crate) struct StageKernels {
    /// Per stage, the kernels compiled so far and their layouts (a program runs on a few).
    cells: Vec<std::sync::Mutex<Vec<(crate::Layout, Kernel)>>>,
}

impl StageKernels {
    /// Empty cells for `program`'s stages.
    pub(crate) fn new(program: &crate::Program) -> Self {
        let cells = (0..=program.phases.len())
            .map(|_| Default::default())
            .collect();
        StageKernels { cells }
    }

    /// The kernel of stage `k` of `program` (phases in order, then the last) for `layout`,
    /// compiled with `jit` (the process-wide one if `None`) on first use.
    pub(crate) fn get(
        &self,
        jit: Option<&crate::Jit>,
        program: &crate::Program,
        k: usize,
        layout: &crate::Layout,
    ) -> Result<Kernel> {
        // A panic cannot leave the list half updated (a push is the only write).
        let mut cell = self.cells[k].lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, kernel)) = cell.iter().find(|(l, _)| l == layout) {
            return Ok(kernel.clone());
        }
        let jit = match jit {
            Some(jit) => jit.clone(),
            None => crate::Jit::global()?,
        };
        let kernel = match program.phases.get(k) {
            Some(phase) => {
                jit.compile_stage(&phase.stage, layout.clone(), crate::JitOptions::default())?
            }
            None => jit.compile(program, layout.clone())?,
        };
        cell.push((layout.clone(), kernel.clone()));
        Ok(kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of `b` cover segments of `lens` exactly once, in order; cuts fall on 64-byte
    /// boundaries; there are at most `threads` batches, none empty.
    fn check<T>(lens: &[usize], threads: usize) {
        let b = batches::<T>(lens, threads);
        let block = 64 / std::mem::size_of::<T>();
        let mut next = vec![0; lens.len()];
        let mut last = 0;
        for p in &b.pieces {
            assert!(p.segment >= last, "{lens:?}: pieces in segment order");
            last = p.segment;
            assert_eq!(p.start, next[p.segment], "{lens:?}: no gap, no overlap");
            assert_eq!(p.start % block, 0, "{lens:?}: cut on a 64-byte boundary");
            next[p.segment] += p.len;
        }
        assert_eq!(next, lens, "every element once");
        assert!(b.ends.len() <= threads.max(1), "{lens:?}: {:?}", b.ends);
        assert_eq!(b.ends.last(), Some(&b.pieces.len()));
        assert!(
            b.ends.windows(2).all(|w| w[0] < w[1]),
            "{lens:?}: no empty batch"
        );
    }

    #[test]
    fn batches_cover_every_element_once_on_aligned_cuts() {
        for threads in [2, 3, 4] {
            check::<f32>(&[], threads);
            check::<f32>(&[0, 5], threads);
            check::<f32>(&[GRAIN * 2], threads);
            check::<f32>(&[GRAIN * 2 + 3], threads);
            check::<f64>(&[GRAIN * 4 + 7], threads);
            check::<f32>(&[1000; 600], threads);
            check::<f64>(&[1000; 600], threads);
            // The first segment leaves a room smaller than a block: the next cut rounds up.
            check::<f32>(&[GRAIN - 1, GRAIN + 1], threads);
            check::<f64>(&[GRAIN - 1, GRAIN + 1], threads);
            check::<f32>(&[GRAIN - 1, 5, GRAIN * 3, 17, 0, GRAIN + 1], threads);
        }
        // Pseudo-random lengths.
        let mut x = 12345u64;
        for _ in 0..2000 {
            let lens: Vec<usize> = (0..1 + x as usize % 7)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) as usize % (3 * GRAIN)
                })
                .collect();
            check::<f32>(&lens, 2 + (x >> 60) as usize % 3);
            check::<f64>(&lens, 2);
        }
        // One thread, or too little work for two: each segment is one whole piece.
        let one = batches::<f32>(&[GRAIN, 3], 1);
        assert_eq!((one.pieces.len(), one.ends.clone()), (2, vec![2]));
        let small = batches::<f32>(&[GRAIN / 2, GRAIN / 2 + 15], 8);
        assert_eq!(small.ends, vec![2]);
        // Two threads share a big segment about evenly.
        let big = batches::<f32>(&[GRAIN * 8 + 32], 2);
        assert_eq!(big.ends.len(), 2);
        let first: usize = big.pieces[..big.ends[0]].iter().map(|p| p.len).sum();
        assert!(first.abs_diff(GRAIN * 4) <= 16, "{first}");
    }
}

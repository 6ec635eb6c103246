//! The buffers a run updates, seen by the engine without their element type: a list of
//! [`Buffers`] of one dtype is a [`StreamSets`], which cuts a stage's runs into one batch per
//! thread and executes them.

use super::exec::{batches_in_units, run_batches, Runner};
use super::pool::Threads;
use crate::segment::{blocks, Elems, ElemsRef, Pieces};
use crate::{Float, Layout, Result};
use std::marker::PhantomData;

/// The streams of the kernel contract for some parameters: a flat store's (many parameters
/// one after the other) or one caller-owned parameter's, each stream in its storage dtype;
/// `T` is the type they compute in.
pub(crate) struct Buffers<'s, 'a, T> {
    /// Stream 0.
    pub(crate) param: Elems<'s>,
    /// Stream 1.
    pub(crate) grad: ElemsRef<'s>,
    /// Streams 2.., one per element slot, each as long as `param` (a part of one list of
    /// every set's, so that making the sets allocates nothing per set).
    pub(crate) state: &'s mut [Elems<'a>],
    /// The generator key of its stochastic rounding this step, and the generator index of
    /// element 0 (see [`crate::Noise`]).
    pub(crate) noise: ([u32; 2], u32),
    pub(crate) compute: PhantomData<T>,
}

/// The sets of buffers of one [`Layout`] (every stream of every set stored as it says),
/// computing in `T`.
pub(crate) struct Sets<'s, 'a, T> {
    /// Resolved to the program's streams.
    pub(crate) layout: Layout,
    pub(crate) list: Vec<Buffers<'s, 'a, T>>,
}

/// A stretch of one set of buffers that one scalar block runs over: elements
/// `offset..offset + len` of set `set`, with block `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) set: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) block: usize,
}

/// One stage over some runs of a list of sets.
pub(crate) struct Job<'j> {
    /// What runs each batch: the stage's kernel, or an interpreter.
    pub(crate) runner: Runner<'j>,
    /// Sorted by set, then offset; disjoint.
    pub(crate) runs: &'j [Run],
    /// The scalar blocks in f64, `n_scalars` each, rounded to the element type here.
    pub(crate) blocks: &'j [f64],
    /// Scalars per block.
    pub(crate) n_scalars: usize,
    /// For a stage with reductions: per run in order, one f64 per reduction for each block
    /// of [`crate::ir::reduce::BLOCK`] elements (see [`crate::Segment::partials`]).
    pub(crate) partials: &'j mut [f64],
    /// The stage's number of reductions (0: none, and `partials` is empty).
    pub(crate) reductions: usize,
    /// At most how many batches, on which pool.
    pub(crate) threads: Threads,
}

/// Sets of buffers of one layout.
pub(crate) trait StreamSets {
    /// The layout of every set.
    fn layout(&self) -> &Layout;

    /// Sets the element state of each `(set, offset, len)` range to `inits` (one per slot).
    fn fill(&mut self, ranges: &[(usize, usize, usize)], inits: &[f64]);

    /// Runs `job`: its runs cut into one batch per thread (a stage with reductions only at
    /// block boundaries from a run's start), each batch one call.
    fn run(&mut self, job: Job<'_>) -> Result<()>;
}

impl<T: Float> StreamSets for Sets<'_, '_, T> {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn fill(&mut self, ranges: &[(usize, usize, usize)], inits: &[f64]) {
        for &(set, offset, len) in ranges {
            for (slot, &init) in self.list[set].state.iter_mut().zip(inits) {
                let value = T::from_f64(init);
                match slot.as_compute_mut::<T>() {
                    Some(native) => native[offset..offset + len].fill(value),
                    None => (offset..offset + len).for_each(|i| slot.set(i, value, None)),
                }
            }
        }
    }

    fn run(&mut self, job: Job<'_>) -> Result<()> {
        let Job {
            runs, n_scalars, ..
        } = job;
        let scalars: Vec<T> = job.blocks.iter().map(|&v| T::from_f64(v)).collect();
        let block = |b: usize| &scalars[b * n_scalars..(b + 1) * n_scalars];
        let lens: Vec<usize> = runs.iter().map(|r| r.len).collect();
        let unit = match job.reductions {
            0 => super::align_of(&self.layout),
            _ => crate::ir::reduce::BLOCK,
        };
        let batches = batches_in_units(&lens, job.threads.count, unit);
        let slots = runs.first().map_or(0, |r| self.list[r.set].state.len());
        let mut pieces = Pieces::with_capacity(batches.pieces.len(), slots);
        let mut next = batches.pieces.iter().peekable();
        let mut partials = job.partials;
        let mut ranges = Vec::new();
        let mut first = 0;
        for (s, set) in self.list.iter_mut().enumerate() {
            // The runs of this set: `first..end`.
            let end = first + runs[first..].iter().take_while(|r| r.set == s).count();
            if end == first {
                continue;
            }
            ranges.clear();
            while let Some(piece) = next.next_if(|p| p.segment < end) {
                let run = &runs[piece.segment];
                ranges.push((run.offset + piece.start, piece.len, block(run.block)));
            }
            let reduced: usize = runs[first..end].iter().map(|r| blocks(r.len)).sum();
            let (mine, rest) = std::mem::take(&mut partials).split_at_mut(reduced * job.reductions);
            partials = rest;
            let state = set.state.iter_mut().map(|b| b.reborrow());
            pieces.cut(
                set.param.reborrow(),
                set.grad,
                state,
                &ranges,
                mine,
                job.reductions,
                set.noise,
            );
            first = end;
        }
        debug_assert_eq!(first, runs.len(), "runs sorted by set");
        let mut storage = Vec::new();
        let mut segments = pieces.into_segments(&mut storage, self.layout.stochastic());
        run_batches(job.runner, &mut segments, &batches.ends, job.threads.pool)
    }
}

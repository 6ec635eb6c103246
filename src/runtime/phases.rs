//! The phases of a program with reductions, run by the [`Optimizer`] before its last stage:
//! each phase reads every parameter that has a gradient, in every group and dtype, and its
//! reductions give, per parameter, the values the rest of the prologue reads (a global one
//! combined over all those parameters in the order they were added; see
//! [`crate::ir::reduce`]). Phases write nothing (only a new parameter's state gets its
//! initial values, which its first step would give it anyway).

use super::exec::{batches_in_units, run_batches, Runner};
use super::step::Pass;
use super::Optimizer;
use crate::ir::reduce::{combine_all, BLOCK};
use crate::ir::Scope;
use crate::program::{Phase, Program};
use crate::segment::{blocks, Pieces};
use crate::{Error, Executor, Float, Result};

/// Per parameter index: the results of the program's reductions, in their order (empty for
/// a parameter the step skips).
pub(super) type Reduced = Vec<Vec<f64>>;

impl Optimizer {
    /// Runs `pass`'s phases; returns what its reductions gave each parameter.
    pub(super) fn run_phases(&mut self, pass: &Pass) -> Result<Reduced> {
        let program = pass.program.clone();
        let n = self.params.len();
        let members: Vec<usize> = (0..n).filter(|&i| self.has_grad[i]).collect();
        for &i in &members {
            if self.state[i].as_ref().is_some_and(|s| s.step == u64::MAX) {
                return Err(Error::StepOverflow);
            }
        }
        let n_reductions = program.reductions().count();
        let mut reduced: Reduced = vec![Vec::new(); n];
        for &i in &members {
            reduced[i] = vec![0.0; n_reductions];
        }
        let mut is_member = vec![false; n];
        for &i in &members {
            is_member[i] = true;
        }
        self.prepare_state::<f32>(&is_member)?;
        self.prepare_state::<f64>(&is_member)?;
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut first = 0;
        for (k, phase) in program.phases.iter().enumerate() {
            for &i in &members {
                self.continue_prologue(
                    &program,
                    pass,
                    i,
                    phase.prologue_end as usize,
                    &reduced[i],
                    &mut values[i],
                );
            }
            // Per parameter: its value of each reduction, before `finish`.
            let count = phase.stage.reductions.len();
            let mut raw = vec![Vec::new(); n];
            self.run_phase::<f32>(&program, k, &is_member, &values, &mut raw)?;
            self.run_phase::<f64>(&program, k, &is_member, &values, &mut raw)?;
            record_results(phase, &members, &raw, &mut reduced, first);
            first += count;
        }
        Ok(reduced)
    }

    /// Runs parameter `i`'s prologue on from `values` up to instruction `end`.
    fn continue_prologue(
        &self,
        program: &Program,
        pass: &Pass,
        i: usize,
        end: usize,
        reduced: &[f64],
        values: &mut Vec<f64>,
    ) {
        let group = &self.groups[self.params[i].group];
        let hypers: Vec<f64> = pass.hypers.iter().map(|&h| group.hypers[h]).collect();
        let (step, scalars) = match &self.state[i] {
            Some(s) => (s.step, s.scalars.as_slice()),
            None => (0, self.slot_inits.as_slice()),
        };
        let g = self.params[i].group;
        let state = |n| self.scalar_state(g, scalars, n);
        program.eval_prologue_until(end, &hypers, step + 1, state, reduced, values);
    }

    /// Allocates the element slots of every group with a member of dtype `T`, and gives the
    /// members without state their slots' initial values (the phases may read them).
    fn prepare_state<T: Float>(&mut self, is_member: &[bool]) -> Result<()> {
        let (slots, huge) = (self.element_inits.len(), self.huge_pages);
        let inits: Vec<T> = self.element_inits.iter().map(|&v| T::from_f64(v)).collect();
        for g in 0..self.groups.len() {
            let mine = |i: &&usize| self.params[**i].dtype == T::DTYPE && is_member[**i];
            if !self.groups[g].params.iter().any(|i| mine(&i)) {
                continue;
            }
            let fresh: Vec<(usize, usize)> = self.groups[g]
                .params
                .iter()
                .filter(|i| mine(i) && self.state[**i].is_none())
                .map(|&i| (self.params[i].offset, self.params[i].len))
                .collect();
            let store = self.groups[g].store_mut::<T>();
            store.ensure_slots(slots, huge)?;
            for (slot, &init) in store.slots.iter_mut().zip(&inits) {
                for &(offset, len) in &fresh {
                    slot.as_mut_slice()[offset..offset + len].fill(init);
                }
            }
        }
        Ok(())
    }

    /// Runs `phase` (stage `k` of the program) over the members of dtype `T`; writes each
    /// member's [`param_values`] into `raw[i]`.
    fn run_phase<T: Float>(
        &mut self,
        program: &Program,
        k: usize,
        is_member: &[bool],
        values: &[Vec<f64>],
        raw: &mut [Vec<f64>],
    ) -> Result<()> {
        let phase = &program.phases[k];
        let count = phase.stage.reductions.len();
        let of_t = |i: &usize| self.params[*i].dtype == T::DTYPE && is_member[*i];
        // Members in storage order, group by group.
        let order: Vec<Vec<usize>> = self
            .groups
            .iter()
            .map(|g| g.params.iter().copied().filter(of_t).collect())
            .collect();
        if order.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let kernel = match self.executor {
            Executor::Jit => Some(self.kernels.get(self.jit.as_ref(), program, k, T::DTYPE)?),
            _ => None,
        };
        let blocks_of: Vec<Vec<T>> = (0..self.params.len())
            .map(|i| match values[i].is_empty() || !of_t(&i) {
                true => Vec::new(),
                false => phase
                    .kernel_scalars
                    .iter()
                    .map(|&k| T::from_f64(values[i][k as usize]))
                    .collect(),
            })
            .collect();
        let lens: Vec<usize> = order
            .iter()
            .flatten()
            .map(|&i| self.params[i].len)
            .collect();
        let mut partials: Vec<Vec<f64>> = order
            .iter()
            .map(|g| vec![0.0; g.iter().map(|&i| blocks(self.params[i].len) * count).sum()])
            .collect();
        let batches = batches_in_units(&lens, self.threads.count, BLOCK);
        let slots = self.element_inits.len();
        let mut pieces = Pieces::with_capacity(batches.pieces.len(), slots);
        let mut next = batches.pieces.iter().peekable();
        let mut segment = 0;
        let params = &self.params;
        for ((group, members), partials) in self.groups.iter_mut().zip(&order).zip(&mut partials) {
            if members.is_empty() {
                continue;
            }
            let mut ranges = Vec::new();
            for &i in members {
                while let Some(piece) = next.next_if(|p| p.segment == segment) {
                    ranges.push((
                        params[i].offset + piece.start,
                        piece.len,
                        blocks_of[i].as_slice(),
                    ));
                }
                segment += 1;
            }
            let store = group.store_mut::<T>();
            let state = store.slots.iter_mut().map(|s| s.as_mut_slice());
            pieces.cut_reducing(
                store.params.as_mut_slice(),
                store.grads.as_slice(),
                state,
                &ranges,
                partials,
                count,
            );
        }
        let mut storage = Vec::new();
        let mut segments = pieces.into_segments(&mut storage);
        let runner = Runner::of(kernel.as_ref(), self.executor, &phase.stage);
        run_batches(runner, &mut segments, &batches.ends, self.threads.pool)?;
        drop(segments);
        for (members, partials) in order.iter().zip(&partials) {
            let mut at = 0;
            for &i in members {
                let len = blocks(self.params[i].len) * count;
                raw[i] = param_values(phase, &partials[at..at + len]);
                at += len;
            }
        }
        Ok(())
    }
}

/// One parameter's value of each of `phase`'s reductions, before [`crate::ir::ReduceOp::
/// finish`], from its block partials (block-major, see [`crate::Segment::partials`]).
pub(crate) fn param_values(phase: &Phase, partials: &[f64]) -> Vec<f64> {
    let n = phase.stage.reductions.len();
    let reductions = phase.stage.reductions.iter().enumerate();
    reductions
        .map(|(r, (op, _))| combine_all(*op, partials.iter().skip(r).step_by(n).copied()))
        .collect()
}

/// Writes the results of `phase`'s reductions, numbered from `first`, into `reduced[i]` for
/// every member `i`, from `raw[i]` (its [`param_values`]): each member's own for a reduction
/// per parameter, all members' combined in their order for a global one.
pub(crate) fn record_results(
    phase: &Phase,
    members: &[usize],
    raw: &[Vec<f64>],
    reduced: &mut [Vec<f64>],
    first: usize,
) {
    let reductions = phase.stage.reductions.iter().zip(&phase.scopes);
    for (r, ((op, _), scope)) in reductions.enumerate() {
        let global = (*scope == Scope::Global)
            .then(|| op.finish(combine_all(*op, members.iter().map(|&i| raw[i][r]))));
        for &i in members {
            reduced[i][first + r] = global.unwrap_or_else(|| op.finish(raw[i][r]));
        }
    }
}

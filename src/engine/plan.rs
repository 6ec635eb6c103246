//! What a run computes before its last stage writes: each member's prologue (shared
//! between members with the same inputs), the distinct scalar blocks, the segments (members
//! merged where the store allows), and what a step computes once per group.

use super::sets::Run;
use super::{padded, Engine, Shared, Work};
use crate::ir::{Scope, SlotKind};
use crate::program::Program;
use crate::{DType, Error, Result};

impl Engine {
    /// The rest of every member's prologue (`values`: as far as the phases went, or empty),
    /// its scalar block and its scalar-state updates. `dtypes`: the dtype of each entry of
    /// the run's stream sets, which blocks are rounded to.
    pub(crate) fn plan(
        &self,
        work: &Work<'_>,
        dtypes: &[DType],
        reduced: &[Vec<f64>],
        mut values: Vec<Vec<f64>>,
    ) -> Plan {
        let program = &self.program;
        let prologue = &program.prologue;
        let n_scalars = prologue.kernel_scalars.len();
        let n = work.members.len();
        let mut plan = Plan {
            blocks: Vec::with_capacity(n_scalars),
            n_scalars,
            members: Vec::with_capacity(n),
            updates: Vec::with_capacity(prologue.state_updates.len()),
            n_updates: prologue.state_updates.len(),
            skip: false,
        };
        // Members with the same (entry, group, step, scalar state) share a prologue run,
        // unless a reduction per parameter is in it (global ones are the same for all);
        // keys and blocks are looked up among the most recent (see `recent`).
        let per_parameter = |phase: &crate::program::Phase| phase.scopes.contains(&Scope::Param);
        let share = !program.phases.iter().any(per_parameter);
        let mut keys: Vec<(usize, usize)> = Vec::new(); // (member that ran it, its block)
        let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        let scalars_of = |i: usize| work.scalars(i);
        let mut own = Vec::with_capacity(prologue.insts.len());
        // Per block, the entry of the stream sets (the dtype) it is rounded for.
        let mut block_entry: Vec<usize> = Vec::new();
        for i in 0..n {
            let m = &work.members[i];
            let known = share.then(|| {
                recent(keys.len(), |k| {
                    let o = &work.members[keys[k].0];
                    (o.entry, o.group, o.step) == (m.entry, m.group, m.step)
                        && same(scalars_of(keys[k].0), scalars_of(i))
                })
            });
            if let Some(Some(key)) = known {
                plan.members.push((key, keys[key].1));
                continue;
            }
            let values = match values.get_mut(i) {
                Some(v) => v,
                None => {
                    own.clear();
                    &mut own
                }
            };
            let no_reductions: &[f64] = &[];
            let reduced = reduced.get(i).map_or(no_reductions, Vec::as_slice);
            self.prologue(work, i, prologue.insts.len(), reduced, values);
            plan.skip |= program.skips(values);
            // The new block goes at the end; it stays there only if no recent block of the
            // same dtype rounds to the same bits.
            let start = plan.blocks.len();
            program.push_prologue_results(values, &mut plan.blocks, &mut plan.updates);
            let dtype = dtypes[m.entry];
            let new = &plan.blocks[start..];
            let same_bits = |b: usize| {
                let old = &plan.blocks[b * n_scalars..(b + 1) * n_scalars];
                block_entry[b] == m.entry
                    && old
                        .iter()
                        .zip(new)
                        .all(|(&x, &y)| rounded(dtype, x) == rounded(dtype, y))
            };
            let index = match recent(block_entry.len(), same_bits) {
                Some(b) => {
                    plan.blocks.truncate(start);
                    b
                }
                None => {
                    block_entry.push(m.entry);
                    block_entry.len() - 1
                }
            };
            keys.push((i, index));
            plan.members.push((keys.len() - 1, index));
        }
        plan
    }
}

/// What the last stage runs, worked out before it writes anything.
pub(crate) struct Plan {
    /// The distinct scalar blocks, in f64 (rounded to a member's dtype when it runs): block
    /// `b` is `blocks[b * n_scalars..][..n_scalars]`. Prologues whose kernel scalars round
    /// to the same bits share a block (an optimizer whose scalars do not depend on the step,
    /// such as SGD-momentum after its first step or Lion, has one block whatever the
    /// members' steps).
    pub(crate) blocks: Vec<f64>,
    /// Scalars per block (the program's kernel scalars).
    pub(crate) n_scalars: usize,
    /// Per member, its prologue run (index into `updates`) and its block.
    pub(crate) members: Vec<(usize, usize)>,
    /// Per prologue run: the new values of scalar state slots, `(slot, value)`, `n_updates`
    /// of them each, in one flat list.
    updates: Vec<(usize, f64)>,
    /// Scalar-state updates per prologue run.
    n_updates: usize,
    /// Whether a member's prologue met the program's skip condition.
    pub(super) skip: bool,
}

impl Plan {
    /// The scalar-state updates of prologue run `key`.
    pub(super) fn update(&self, key: usize) -> &[(usize, f64)] {
        &self.updates[key * self.n_updates..(key + 1) * self.n_updates]
    }

    /// The segments of the stream sets of entry `d` (of `dtype`): its members in storage
    /// order, neighbours in one set with the same block merged into one segment, the
    /// alignment padding between them included (the kernel computes on the padding too and
    /// nothing ever reads the result; a stage with reductions is never merged).
    pub(crate) fn runs(&self, work: &Work<'_>, d: usize, dtype: DType) -> Vec<Run> {
        let size = dtype.size();
        let mine = || {
            let members = work.members.iter().zip(&self.members);
            members
                .filter(|(m, _)| m.entry == d)
                .map(|(m, &(_, block))| Run {
                    set: m.set,
                    offset: m.offset,
                    len: m.len,
                    block,
                })
        };
        let place = |r: &Run| (r.set, r.offset);
        // Members usually come in storage order (a flat store's are added one after the other).
        if mine().is_sorted_by_key(|r| place(&r)) {
            return merge(mine(), size);
        }
        let mut sorted: Vec<Run> = mine().collect();
        sorted.sort_by_key(place);
        merge(sorted.into_iter(), size)
    }
}

/// `runs` (sorted by set and offset, elements of `size` bytes) with neighbours in one set
/// with the same block merged, when the second starts where the first's padding ends (see
/// [`padded`]).
fn merge(runs: impl Iterator<Item = Run>, size: usize) -> Vec<Run> {
    let mut merged: Vec<Run> = Vec::new();
    for run in runs {
        match merged.last_mut() {
            Some(r)
                if r.set == run.set
                    && r.block == run.block
                    && run.offset == r.offset + padded(r.len, size) =>
            {
                r.len = run.offset + run.len - r.offset;
            }
            _ => merged.push(run),
        }
    }
    merged
}

/// `x` rounded to `dtype`, as bits: what a kernel of that dtype would read.
fn rounded(dtype: DType, x: f64) -> u64 {
    match dtype {
        DType::F32 => u64::from((x as f32).to_bits()),
        DType::F64 => x.to_bits(),
        DType::BF16 | DType::F16 => dtype.no_half_params(),
    }
}

/// What a step of a program computes once per group, worked out once per program: the
/// updates of its group and optimizer state `(slot, $ value)`, its skip condition if that
/// reads only group-wide values, and how much of the prologue gives them (0: nothing to
/// compute).
pub(super) struct GroupStep {
    /// `(slot, $ value)` per group or optimizer slot the step changes.
    updates: Vec<(u32, u32)>,
    /// The skip condition's `$ value`, if it reads only group-wide values.
    skip: Option<u32>,
    /// Prologue instructions to run: one past the last of those values.
    pub(super) end: usize,
    /// Every slot's initial value (a parameter's own inputs when its group's are computed).
    inits: Vec<f64>,
}

impl GroupStep {
    /// What a step of `program` computes per group.
    pub(super) fn of(program: &Program) -> GroupStep {
        let slots = &program.slots;
        let group = |&(slot, _): &(u32, u32)| slots[slot as usize].kind.is_shared();
        let updates: Vec<(u32, u32)> = program
            .prologue
            .state_updates
            .iter()
            .copied()
            .filter(group)
            .collect();
        let skip = program
            .prologue
            .skip
            .filter(|&s| !program.per_parameter()[s as usize]);
        let needed = updates.iter().map(|&(_, v)| v).chain(skip);
        let end = needed.max().map_or(0, |last| last as usize + 1);
        let inits = slots.iter().map(|s| s.init).collect();
        GroupStep {
            updates,
            skip,
            end,
            inits,
        }
    }

    /// Per group (whether or not it has a member), the new values of its group state, and
    /// those of the optimizer state; `None` if a skip condition that reads only group-wide
    /// values holds in a group. Those values read only what is the same for the whole group
    /// (see [`SlotKind::Group`]), so one prologue run per group, with a parameter's own
    /// inputs at their initial values, gives them; every group must give optimizer state the
    /// same bits ([`Error::GroupsDisagree`]). `groups`: each group's slot values; `reduced`:
    /// each member's reductions.
    pub(super) fn updates(
        &self,
        program: &Program,
        work: &Work<'_>,
        groups: &[&[f64]],
        reduced: &[Vec<f64>],
    ) -> Result<Option<Shared>> {
        if self.end == 0 {
            return Ok(Some(Shared::default()));
        }
        // The global reductions' results, as any member got them (none: the run had no
        // member, and a reduction over nothing finishes its identity).
        let results = reduced.first().cloned().unwrap_or_else(|| {
            let nothing = |(op, _): (crate::ir::ReduceOp, _)| op.finish(op.identity());
            program.reductions().map(nothing).collect()
        });
        let mut values = Vec::with_capacity(self.end);
        let mut shared = Shared {
            groups: Vec::with_capacity(groups.len()),
            optimizer: Vec::new(),
        };
        for (g, (scalars, hypers)) in groups.iter().zip(&work.hypers).enumerate() {
            values.clear();
            let state = |n: usize| match program.slots[n].kind {
                SlotKind::Group => scalars[n],
                SlotKind::Optimizer => work.optimizer[n],
                _ => self.inits[n],
            };
            program.eval_prologue_until(self.end, hypers, 1, state, &results, &mut values);
            if self.skip.is_some_and(|s| values[s as usize] != 0.0) {
                return Ok(None);
            }
            let mut mine = Vec::with_capacity(self.updates.len());
            for (k, &(slot, v)) in self.updates.iter().enumerate() {
                let (slot, value) = (slot as usize, values[v as usize]);
                let def = &program.slots[slot];
                if def.kind == SlotKind::Group {
                    mine.push((slot, value));
                } else if g == 0 {
                    shared.optimizer.push((slot, value));
                } else if shared.optimizer[k - mine.len()].1.to_bits() != value.to_bits() {
                    return Err(Error::GroupsDisagree {
                        what: format!("the new value of optimizer state `{}`", def.name),
                        groups: (0, g),
                    });
                }
            }
            shared.groups.push(mine);
        }
        Ok(Some(shared))
    }
}

/// The newest of the last 8 of `len` items for which `matches` holds. Searching only those
/// keeps planning linear whatever the steps are; neighbouring members (in the order they
/// were added) have few distinct keys and scalar blocks (parameters skipped now and then
/// fall a step behind). Groups added in turn, parameter by parameter, share less.
fn recent(len: usize, matches: impl Fn(usize) -> bool) -> Option<usize> {
    (len.saturating_sub(8)..len).rev().find(|&k| matches(k))
}

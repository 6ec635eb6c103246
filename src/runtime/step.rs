//! `step`: the update of every parameter that has a gradient, with hooks and the closure
//! form; and the mode swaps of `train()`/`eval()`. One parallel region per dtype covers the
//! segments of every group.

use super::store::round_up;
use super::{batches, run_batches, HookId, Optimizer, Runner, StateInfo};
use crate::ir::SlotKind;
use crate::segment::Pieces;
use crate::{DType, Error, Executor, Float, Program, Result};
use std::sync::Arc;

/// What one (group, dtype) run computed before touching any buffer.
struct Plan<T> {
    /// Parameter indices, in storage order.
    members: Vec<usize>,
    /// Each member's prologue (index into `updates`).
    member_key: Vec<usize>,
    /// The distinct scalar blocks. Members with the same step and scalar state share a
    /// prologue, so it runs once per distinct (step, scalar state), not once per parameter;
    /// prologues whose kernel scalars come out bit for bit the same share a block (an
    /// optimizer whose scalars do not depend on the step, such as SGD-momentum after its
    /// first step or Lion, has one block whatever the members' steps). One flat list:
    /// block `b` is `blocks[b * n_scalars..][..n_scalars]`.
    blocks: Vec<T>,
    /// Per prologue: the new values of scalar state slots, `(slot, value)`, `n_updates` of
    /// them each, in one flat list.
    updates: Vec<(usize, f64)>,
    /// Scalars per block (the program's kernel scalars).
    n_scalars: usize,
    /// Scalar-state updates per prologue.
    n_updates: usize,
    /// Segments to run: `(offset, len, block)`. Neighbouring members in storage with the same
    /// block form one segment, the alignment padding between them included: the kernel
    /// computes on the padding too and nothing ever reads the result (stages have no
    /// reductions; one that did would have to exclude it).
    runs: Vec<(usize, usize, usize)>,
    /// Ranges of members without state yet.
    fresh: Vec<(usize, usize)>,
    /// Whether a member's prologue met the program's skip condition.
    skip: bool,
}

impl<T> Plan<T> {
    /// Scalar block `b`.
    fn block(&self, b: usize) -> &[T] {
        &self.blocks[b * self.n_scalars..(b + 1) * self.n_scalars]
    }

    /// The scalar-state updates of prologue `key`.
    fn update(&self, key: usize) -> &[(usize, f64)] {
        &self.updates[key * self.n_updates..(key + 1) * self.n_updates]
    }
}

/// A program to run over the parameters: the optimizer's own step, or a mode swap.
pub(super) struct Pass {
    pub(super) program: Arc<Program>,
    /// Per hyperparameter of `program`: its index among the optimizer's hyperparameters.
    pub(super) hypers: Vec<usize>,
    /// A step updates the parameters with a gradient and counts; a swap rewrites every
    /// parameter that has state and does not count.
    is_step: bool,
}

impl Optimizer {
    /// Updates every parameter that has a gradient; parameters without one are skipped, their
    /// state and step count untouched. Returns whether the step was applied: `false` when
    /// the program's skip condition held (see [`crate::Graph::skip`]; e.g. an overflowed
    /// gradient under [`crate::optim::amp`]), and then no parameter, state or step count
    /// changed in any group. The hooks run either way.
    ///
    /// Everything is checked before the first buffer is written; on error nothing changed.
    /// Fails with [`Error::EvalMode`] between [`Optimizer::eval`] and [`Optimizer::train`].
    pub fn step(&mut self) -> Result<bool> {
        if !self.training {
            return Err(Error::EvalMode);
        }
        self.run_hooks(true);
        let pass = Pass {
            program: self.program.clone(),
            hypers: (0..self.program.hypers.len()).collect(),
            is_step: true,
        };
        let applied = self.run_pass(&pass)?;
        self.run_hooks(false);
        Ok(applied)
    }

    /// Runs `pass` over every group and dtype: plans first (every check), then one parallel
    /// region per dtype over the segments of every group, then the bookkeeping. Returns
    /// whether it ran (`false`: the skip condition held, nothing changed).
    fn run_pass(&mut self, pass: &Pass) -> Result<bool> {
        // A program with reductions runs its phases first: they write nothing.
        let reduced = match pass.program.phases.is_empty() {
            true => None,
            false => Some(self.run_phases(pass)?),
        };
        let mut plans32 = Vec::with_capacity(self.groups.len());
        let mut plans64 = Vec::with_capacity(self.groups.len());
        for g in 0..self.groups.len() {
            plans32.push(self.plan::<f32>(g, pass, reduced.as_ref())?);
            plans64.push(self.plan::<f64>(g, pass, reduced.as_ref())?);
        }
        // Group state's new values (and a skip condition that reads only group-wide values,
        // which holds or not even in a group without gradients).
        let groups = match pass.is_step {
            true => self.group_updates(reduced.as_ref()),
            false => Some(Vec::new()),
        };
        let skip = plans32.iter().any(|p| p.skip) || plans64.iter().any(|p| p.skip);
        let Some(groups) = groups.filter(|_| !skip) else {
            return Ok(false);
        };
        let kernel32 = self.runner_kernel(&pass.program, DType::F32, &plans32)?;
        let kernel64 = self.runner_kernel(&pass.program, DType::F64, &plans64)?;
        // State memory for both dtypes before either runs: running out of it is an error with
        // nothing changed.
        self.allocate_slots(&plans32)?;
        self.allocate_slots(&plans64)?;
        // Every user mistake has been reported by now; an error below would be an internal
        // bug. Each dtype's bookkeeping follows its own run, so state and step counts always
        // describe the buffers.
        self.execute(&plans32, &pass.program, kernel32.as_ref())?;
        for plan in &plans32 {
            self.finish(plan, pass.is_step);
        }
        self.execute(&plans64, &pass.program, kernel64.as_ref())?;
        for plan in &plans64 {
            self.finish(plan, pass.is_step);
        }
        for (group, updates) in self.groups.iter_mut().zip(groups) {
            for (slot, value) in updates {
                group.scalars[slot] = value;
            }
        }
        Ok(true)
    }

    /// Per group, the new values of its group state, `(slot, value)`, for a step (whether
    /// or not the group has a parameter with a gradient); `None` if a skip condition that
    /// reads only group-wide values holds in a group. Those values read only what is the same
    /// for the whole group (see [`crate::ir::SlotKind::Group`]), so one prologue run per
    /// group, with a parameter's own inputs at their initial values, gives them.
    fn group_updates(
        &self,
        reduced: Option<&super::phases::Reduced>,
    ) -> Option<Vec<Vec<(usize, f64)>>> {
        let GroupStep { updates, skip, end } = &self.group_step;
        if *end == 0 {
            return Some(Vec::new());
        }
        let program = &self.program;
        // The global reductions' results, as any member of the step got them (none: the
        // step had no member, and a reduction over nothing finishes its identity, as the
        // Stepper's over no parameter does).
        let results = reduced
            .and_then(|r| r.iter().find(|v| !v.is_empty()).cloned())
            .unwrap_or_else(|| {
                let nothing = |(op, _): (crate::ir::ReduceOp, _)| op.finish(op.identity());
                program.reductions().map(nothing).collect()
            });
        let mut values = Vec::with_capacity(*end);
        let mut all = Vec::with_capacity(self.groups.len());
        for g in 0..self.groups.len() {
            values.clear();
            let inits = &self.slot_inits;
            let state = |n: usize| self.scalar_state(g, inits, n);
            let hypers = &self.groups[g].hypers;
            program.eval_prologue_until(*end, hypers, 1, state, &results, &mut values);
            if skip.is_some_and(|s| values[s as usize] != 0.0) {
                return None;
            }
            let updates = updates.iter();
            all.push(
                updates
                    .map(|&(slot, v)| (slot as usize, values[v as usize]))
                    .collect(),
            );
        }
        Some(all)
    }

    /// Switches to evaluation mode, running the optimizer's eval graph (see
    /// [`Optimizer::with_modes`]) over every parameter with state. Does nothing if already in
    /// evaluation mode.
    pub fn eval(&mut self) -> Result<()> {
        self.switch_mode(false)
    }

    /// Switches back to training mode, running the train graph. Does nothing if already
    /// training.
    pub fn train(&mut self) -> Result<()> {
        self.switch_mode(true)
    }

    /// Whether the optimizer is in training mode (the default).
    pub fn is_training(&self) -> bool {
        self.training
    }

    fn switch_mode(&mut self, training: bool) -> Result<()> {
        if self.training == training {
            return Ok(());
        }
        if let Some(modes) = &self.modes {
            let (program, hypers) = if training { &modes.train } else { &modes.eval };
            let pass = Pass {
                program: program.clone(),
                hypers: hypers.clone(),
                is_step: false,
            };
            self.run_pass(&pass)?;
        }
        self.training = training;
        Ok(())
    }

    /// Calls `closure` (which recomputes the loss and the gradients, and may be called again
    /// by optimizers that need it), then steps; returns the loss.
    pub fn step_with_closure(
        &mut self,
        mut closure: impl FnMut(&mut Optimizer) -> Result<f64>,
    ) -> Result<f64> {
        let loss = closure(self)?;
        self.step()?;
        Ok(loss)
    }

    /// Runs the pre- or post-step hooks registered before this call, in order. Each is taken
    /// out of its list while it runs (it gets the optimizer) and put back after, unless it was
    /// removed meanwhile; a hook that panics is put back too, then the panic goes on to the
    /// caller, so one panic never loses another hook.
    fn run_hooks(&mut self, pre: bool) {
        fn list(opt: &mut Optimizer, pre: bool) -> &mut Vec<(HookId, Option<super::Hook>)> {
            match pre {
                true => &mut opt.pre_hooks,
                false => &mut opt.post_hooks,
            }
        }
        let ids: Vec<HookId> = list(self, pre).iter().map(|(id, _)| *id).collect();
        for id in ids {
            // Removed by an earlier hook of this pass: skipped.
            let Some(k) = list(self, pre).iter().position(|(h, _)| *h == id) else {
                continue;
            };
            let Some(mut hook) = list(self, pre)[k].1.take() else {
                continue; // running already (a hook that stepped the optimizer)
            };
            let call = hook
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(self)));
            // Back in its place, if it is still registered (it may have removed itself).
            if let Some(entry) = list(self, pre).iter_mut().find(|(h, _)| *h == id) {
                entry.1 = Some(hook);
            }
            if let Err(panic) = ran {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// The JIT kernel of `program` for `dtype` if the JIT runs and some plan has work.
    fn runner_kernel<T>(
        &self,
        program: &Arc<Program>,
        dtype: DType,
        plans: &[Plan<T>],
    ) -> Result<Option<crate::Kernel>> {
        let needed = self.executor == Executor::Jit && plans.iter().any(|p| !p.members.is_empty());
        if !needed {
            return Ok(None);
        }
        if Arc::ptr_eq(program, &self.program) {
            return self.kernel(dtype).map(Some);
        }
        self.jit()?.compile(program, dtype).map(Some)
    }

    /// Checks and computes the prologue of group `g`'s parameters of dtype `T` that `pass`
    /// runs on (with a gradient for a step, with state for a swap).
    fn plan<T: Float>(
        &self,
        g: usize,
        pass: &Pass,
        reduced: Option<&super::phases::Reduced>,
    ) -> Result<Plan<T>> {
        let program = &pass.program;
        let group = &self.groups[g];
        let selected = |i: usize| match pass.is_step {
            true => self.has_grad[i],
            false => self.state[i].is_some(),
        };
        let runs = |i: &usize| self.params[*i].dtype == T::DTYPE && selected(*i);
        let mut plan = Plan {
            members: Vec::new(),
            member_key: Vec::new(),
            blocks: Vec::new(),
            updates: Vec::new(),
            n_scalars: program.prologue.kernel_scalars.len(),
            n_updates: program.prologue.state_updates.len(),
            runs: Vec::new(),
            fresh: Vec::new(),
            skip: false,
        };
        if !group.params.iter().any(runs) {
            return Ok(plan); // nothing to run (e.g. no parameter of this dtype): no allocation
        }
        let hypers: Vec<f64> = pass.hypers.iter().map(|&h| group.hypers[h]).collect();
        let inits = self.slot_inits.as_slice();
        let prologue = &program.prologue;
        let n_scalars = plan.n_scalars;
        let mut values = Vec::with_capacity(prologue.insts.len());
        let per_param = reduced.is_some()
            && program
                .phases
                .iter()
                .any(|p| p.scopes.contains(&crate::ir::Scope::Param));
        // The keys (step, scalar state) of the prologues run so far, with the block each gave;
        // keys and blocks are looked up among the most recent (see `recent`).
        let mut keys: Vec<(u64, &[f64], usize)> = Vec::new();
        let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        let same_block = |a: &[T], b: &[T]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64())
        };
        for &i in group.params.iter().filter(|i| runs(i)) {
            let info = &self.params[i];
            let (step, scalars) = match &self.state[i] {
                Some(s) => (s.step, s.scalars.as_slice()),
                None => {
                    plan.fresh.push((info.offset, info.len));
                    (0, inits)
                }
            };
            if step == u64::MAX {
                return Err(Error::StepOverflow);
            }
            // Parameters share a prologue run unless reductions differ between them.
            let known = recent(keys.len(), |k| {
                keys[k].0 == step && same(keys[k].1, scalars)
            })
            .filter(|_| !per_param);
            let key = match known {
                Some(key) => key,
                None => {
                    values.clear();
                    let reduced = reduced.map_or(&[][..], |r| r[i].as_slice());
                    let end = prologue.insts.len();
                    let state = |n: usize| self.scalar_state(g, scalars, n);
                    program.eval_prologue_until(
                        end,
                        &hypers,
                        step + 1,
                        state,
                        reduced,
                        &mut values,
                    );
                    // The new block goes at the end; it stays there only if no recent block
                    // has the same bits.
                    let blocks = plan.blocks.len() / n_scalars.max(1);
                    plan.skip |= program.skips(&values);
                    program.push_prologue_results(&values, &mut plan.blocks, &mut plan.updates);
                    let found = recent(blocks, |b| same_block(plan.block(b), plan.block(blocks)));
                    let index = match found {
                        Some(b) => {
                            plan.blocks.truncate(blocks * n_scalars);
                            b
                        }
                        None => blocks,
                    };
                    keys.push((step, scalars, index));
                    keys.len() - 1
                }
            };
            let block = keys[key].2;
            plan.members.push(i);
            plan.member_key.push(key);
            match plan.runs.last_mut() {
                // The next parameter in storage, with the same block: extend the segment.
                Some((offset, len, b))
                    if *b == block && info.offset == *offset + round_up::<T>(*len) =>
                {
                    *len = info.offset + info.len - *offset;
                }
                _ => plan.runs.push((info.offset, info.len, block)),
            }
        }
        Ok(plan)
    }

    /// Initialises new state and runs the stage over the plans' segments of every group in
    /// one parallel region.
    fn execute<T: Float>(
        &mut self,
        plans: &[Plan<T>],
        program: &Program,
        kernel: Option<&crate::Kernel>,
    ) -> Result<()> {
        if plans.iter().all(|p| p.members.is_empty()) {
            return Ok(());
        }
        let elem_inits: Vec<T> = self.element_inits.iter().map(|&v| T::from_f64(v)).collect();
        let slots = elem_inits.len();
        // The runs of every group, cut into one batch per thread.
        let lens: Vec<usize> = plans
            .iter()
            .flat_map(|p| p.runs.iter().map(|r| r.1))
            .collect();
        let batches = batches::<T>(&lens, self.threads.count);
        let mut pieces = Pieces::with_capacity(batches.pieces.len(), slots);
        let mut next = batches.pieces.iter().peekable();
        let mut first_run = 0;
        for (group, plan) in self.groups.iter_mut().zip(plans) {
            let runs = first_run..first_run + plan.runs.len();
            first_run = runs.end;
            if plan.members.is_empty() {
                continue;
            }
            // Its slots exist: `run_pass` allocated them before any kernel ran.
            let store = group.store_mut::<T>();
            for (slot, &init) in store.slots.iter_mut().zip(&elem_inits) {
                for &(offset, len) in &plan.fresh {
                    slot.as_mut_slice()[offset..offset + len].fill(init);
                }
            }
            // This group's pieces, as ranges of its streams.
            let mut ranges = Vec::new();
            while let Some(piece) = next.next_if(|p| runs.contains(&p.segment)) {
                let (offset, _, block) = plan.runs[piece.segment - runs.start];
                ranges.push((offset + piece.start, piece.len, plan.block(block)));
            }
            let slots = store.slots.iter_mut().map(|s| s.as_mut_slice());
            pieces.cut(
                store.params.as_mut_slice(),
                store.grads.as_slice(),
                slots,
                &ranges,
            );
        }
        let mut storage = Vec::new();
        let mut segments = pieces.into_segments(&mut storage);
        let runner = Runner::of(kernel, self.executor, &program.stage);
        run_batches(runner, &mut segments, &batches.ends, self.threads.pool)
    }

    /// Allocates the element-slot buffers of every group the plans run on.
    fn allocate_slots<T: Float>(&mut self, plans: &[Plan<T>]) -> Result<()> {
        let (slots, huge) = (self.element_inits.len(), self.huge_pages);
        for (group, plan) in self.groups.iter_mut().zip(plans) {
            if !plan.members.is_empty() {
                group.store_mut::<T>().ensure_slots(slots, huge)?;
            }
        }
        Ok(())
    }

    /// Counts the step (for a step) and stores the new scalar state of the plan's parameters.
    fn finish<T>(&mut self, plan: &Plan<T>, is_step: bool) {
        for (&i, &key) in plan.members.iter().zip(&plan.member_key) {
            let inits = &self.slot_inits;
            let state = self.state[i].get_or_insert_with(|| StateInfo {
                step: 0,
                scalars: inits.clone(),
            });
            state.step += u64::from(is_step);
            // Group state lives in the group (see `group_updates`), not in its parameters.
            let own = |(slot, _): &&(usize, f64)| self.program.slots[*slot].kind != SlotKind::Group;
            for &(slot, value) in plan.update(key).iter().filter(own) {
                state.scalars[slot] = value;
            }
        }
    }
}

/// What a step of a program computes once per group, worked out once per program: the
/// updates of its group state `(slot, $ value)`, its skip condition if that reads only
/// group-wide values, and how much of the prologue gives them (0: nothing to compute).
pub(super) struct GroupStep {
    updates: Vec<(u32, u32)>,
    skip: Option<u32>,
    end: usize,
}

impl GroupStep {
    pub(super) fn of(program: &Program) -> GroupStep {
        let slots = &program.slots;
        let group = |&(slot, _): &(u32, u32)| slots[slot as usize].kind == SlotKind::Group;
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
        GroupStep { updates, skip, end }
    }
}

/// The newest of the last 8 of `len` items for which `matches` holds. Searching only those
/// keeps planning linear whatever the steps are; a group has few distinct (step, scalar state)
/// keys and scalar blocks (parameters skipped now and then fall a step behind).
fn recent(len: usize, matches: impl Fn(usize) -> bool) -> Option<usize> {
    (len.saturating_sub(8)..len).rev().find(|&k| matches(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Adam, Lion, Sgd};
    use ndarray::Array1;

    /// An optimizer over ten neighbouring parameters where every other one skipped the second
    /// step, so that neighbours are one step apart (and none at its first); then the plan of
    /// the next step.
    fn plan_one_step_apart(graph: &crate::Graph) -> Plan<f32> {
        let mut opt = Optimizer::new(graph).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let handles: Vec<_> = (0..10)
            .map(|k| {
                let values = Array1::from_elem(20, 1.0f32);
                opt.add_param(g, &format!("p{k}"), &values).unwrap()
            })
            .collect();
        for h in &handles {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        opt.step().unwrap();
        opt.zero_grad();
        for h in handles.iter().step_by(2) {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        opt.step().unwrap();
        for h in &handles {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        let pass = Pass {
            program: opt.program.clone(),
            hypers: (0..opt.program.hypers.len()).collect(),
            is_step: true,
        };
        opt.plan::<f32>(g, &pass, None).unwrap()
    }

    #[test]
    fn parameters_at_different_steps_share_a_segment_when_their_scalars_agree() {
        let sgd = Sgd {
            momentum: 0.9,
            ..Sgd::default()
        };
        for graph in [sgd.graph().unwrap(), Lion::default().graph().unwrap()] {
            let plan = plan_one_step_apart(&graph);
            assert_eq!(plan.members.len(), 10, "{}", graph.name());
            assert_eq!(
                plan.member_key.iter().max(),
                Some(&1),
                "two (step, scalar state) keys"
            );
            assert_eq!(
                plan.blocks.len(),
                plan.n_scalars,
                "{}: one block",
                graph.name()
            );
            assert_eq!(plan.runs.len(), 1, "{}: one segment", graph.name());
        }
        // Adam's bias corrections differ from step to step: one segment per parameter.
        let plan = plan_one_step_apart(&Adam::default().graph().unwrap());
        assert_eq!(
            (plan.blocks.len() / plan.n_scalars, plan.runs.len()),
            (2, 10)
        );
    }
}

//! `step`: the update of every parameter that has a gradient, one kernel call per
//! (group, dtype), with hooks and the closure form.

use super::store::{split_ranges_mut, AlignedBuf};
use super::{run_parallel, Optimizer, Runner, StateInfo};
use crate::segment::Segment;
use crate::{DType, Error, Executor, Float, Result};

/// What one (group, dtype) step computed before touching any buffer.
struct Plan<T> {
    /// Parameter indices, in storage order.
    members: Vec<usize>,
    /// Their scalar blocks.
    blocks: Vec<Vec<T>>,
    /// Their scalar state updates: `(slot, value)`.
    updates: Vec<Vec<(usize, f64)>>,
}

impl Optimizer {
    /// Updates every parameter that has a gradient; parameters without one are skipped, their
    /// state and step count untouched.
    ///
    /// Everything is checked before the first buffer is written; on error nothing changed.
    pub fn step(&mut self) -> Result<()> {
        self.run_hooks(true);
        // Plans first (every check), then the kernels, then the bookkeeping.
        let mut plans32 = Vec::new();
        let mut plans64 = Vec::new();
        for g in 0..self.groups.len() {
            plans32.push(self.plan::<f32>(g)?);
            plans64.push(self.plan::<f64>(g)?);
        }
        let kernels = [
            self.runner_kernel(DType::F32, &plans32)?,
            self.runner_kernel(DType::F64, &plans64)?,
        ];
        for (g, (p32, p64)) in plans32.iter().zip(&plans64).enumerate() {
            self.execute(g, p32, kernels[0].as_ref())?;
            self.execute(g, p64, kernels[1].as_ref())?;
        }
        for plan in &plans32 {
            self.finish(plan);
        }
        for plan in &plans64 {
            self.finish(plan);
        }
        self.run_hooks(false);
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

    fn run_hooks(&mut self, pre: bool) {
        let list = if pre {
            &mut self.pre_hooks
        } else {
            &mut self.post_hooks
        };
        let mut hooks = std::mem::take(list);
        for (_, hook) in &mut hooks {
            hook(self);
        }
        // Hooks registered by a hook run from the next step on.
        let list = if pre {
            &mut self.pre_hooks
        } else {
            &mut self.post_hooks
        };
        hooks.append(list);
        *list = hooks;
    }

    /// The JIT kernel for `dtype` if the JIT runs and some plan has work.
    fn runner_kernel<T>(&self, dtype: DType, plans: &[Plan<T>]) -> Result<Option<crate::Kernel>> {
        let needed = self.executor == Executor::Jit && plans.iter().any(|p| !p.members.is_empty());
        needed.then(|| self.kernel(dtype)).transpose()
    }

    /// Checks and computes the prologue of group `g`'s parameters of dtype `T` with a gradient.
    fn plan<T: Float>(&self, g: usize) -> Result<Plan<T>> {
        let program = &self.program;
        let group = &self.groups[g];
        let members: Vec<usize> = group
            .params
            .iter()
            .copied()
            .filter(|&i| self.has_grad[i] && self.params[i].dtype == T::DTYPE)
            .collect();
        let inits = self.slot_inits();
        let mut values = Vec::new();
        let mut blocks = Vec::with_capacity(members.len());
        let mut updates = Vec::with_capacity(members.len());
        for &i in &members {
            let (step, scalars) = match &self.state[i] {
                Some(s) => (s.step, s.scalars.as_slice()),
                None => (0, inits.as_slice()),
            };
            if step == u64::MAX {
                return Err(Error::StepOverflow);
            }
            program.eval_prologue(&group.hypers, step + 1, |n| scalars[n], &mut values);
            let block = program.prologue.kernel_scalars.iter();
            blocks.push(block.map(|&s| T::from_f64(values[s as usize])).collect());
            let state_updates = program.prologue.state_updates.iter();
            updates.push(
                state_updates
                    .map(|&(slot, v)| (slot as usize, values[v as usize]))
                    .collect(),
            );
        }
        Ok(Plan {
            members,
            blocks,
            updates,
        })
    }

    /// Initialises new state and runs the stage over the plan's parameters.
    fn execute<T: Float>(
        &mut self,
        g: usize,
        plan: &Plan<T>,
        kernel: Option<&crate::Kernel>,
    ) -> Result<()> {
        if plan.members.is_empty() {
            return Ok(());
        }
        let elem_inits = self.element_slot_inits();
        let ranges: Vec<(usize, usize)> = plan
            .members
            .iter()
            .map(|&i| (self.params[i].offset, self.params[i].len))
            .collect();
        let fresh: Vec<(usize, usize)> = plan
            .members
            .iter()
            .zip(&ranges)
            .filter(|(&i, _)| self.state[i].is_none())
            .map(|(_, &r)| r)
            .collect();
        let store = self.groups[g].store_mut::<T>();
        if store.slots.len() != elem_inits.len() {
            store.slots = elem_inits
                .iter()
                .map(|_| AlignedBuf::filled(store.len, T::ZERO))
                .collect();
        }
        for (slot, &init) in store.slots.iter_mut().zip(&elem_inits) {
            for &(offset, len) in &fresh {
                slot.as_mut_slice()[offset..offset + len].fill(T::from_f64(init));
            }
        }
        let params = split_ranges_mut(store.params.as_mut_slice(), &ranges);
        let grads = store.grads.as_slice();
        let mut slots: Vec<_> = store
            .slots
            .iter_mut()
            .map(|s| split_ranges_mut(s.as_mut_slice(), &ranges).into_iter())
            .collect();
        let segments: Vec<Segment<'_, T>> = params
            .into_iter()
            .zip(&ranges)
            .zip(&plan.blocks)
            .map(|((param, &(offset, len)), block)| Segment {
                param,
                grad: &grads[offset..offset + len],
                state: slots
                    .iter_mut()
                    .map(|s| s.next().expect("one range per member"))
                    .collect(),
                scalars: block,
            })
            .collect();
        let runner = match kernel {
            Some(k) => Runner::Jit(k),
            None => Runner::Interp(self.executor, &self.program.stage),
        };
        run_parallel(runner, segments, self.threads)
    }

    /// Counts the step and stores the new scalar state of the plan's parameters.
    fn finish<T>(&mut self, plan: &Plan<T>) {
        let inits = self.slot_inits();
        for (&i, updates) in plan.members.iter().zip(&plan.updates) {
            let state = self.state[i].get_or_insert_with(|| StateInfo {
                step: 0,
                scalars: inits.clone(),
            });
            state.step += 1;
            for &(slot, value) in updates {
                state.scalars[slot] = value;
            }
        }
    }
}

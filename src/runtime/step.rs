//! `step`: the update of every parameter that has a gradient, one kernel call per
//! (group, dtype), with hooks and the closure form.

use super::store::{split_ranges_mut, AlignedBuf};
use super::{run_parallel, Optimizer, Runner, StateInfo};
use crate::segment::Segment;
use crate::{DType, Error, Executor, Float, Program, Result};
use std::sync::Arc;

/// What one (group, dtype) run computed before touching any buffer.
struct Plan<T> {
    /// Parameter indices, in storage order.
    members: Vec<usize>,
    /// Their scalar blocks.
    blocks: Vec<Vec<T>>,
    /// Their scalar state updates: `(slot, value)`.
    updates: Vec<Vec<(usize, f64)>>,
}

/// A program to run over the parameters: the optimizer's own step, or a mode swap.
struct Pass {
    program: Arc<Program>,
    /// Per hyperparameter of `program`: its index among the optimizer's hyperparameters.
    hypers: Vec<usize>,
    /// A step updates the parameters with a gradient and counts; a swap rewrites every
    /// parameter that has state and does not count.
    is_step: bool,
}

impl Optimizer {
    /// Updates every parameter that has a gradient; parameters without one are skipped, their
    /// state and step count untouched.
    ///
    /// Everything is checked before the first buffer is written; on error nothing changed.
    /// Fails with [`Error::EvalMode`] between [`Optimizer::eval`] and [`Optimizer::train`].
    pub fn step(&mut self) -> Result<()> {
        if !self.training {
            return Err(Error::EvalMode);
        }
        self.run_hooks(true);
        let pass = Pass {
            program: self.program.clone(),
            hypers: (0..self.program.hypers.len()).collect(),
            is_step: true,
        };
        self.run_pass(&pass)?;
        self.run_hooks(false);
        Ok(())
    }

    /// Runs `pass` over every group and dtype: plans first (every check), then the kernels,
    /// then the bookkeeping.
    fn run_pass(&mut self, pass: &Pass) -> Result<()> {
        let mut plans32 = Vec::new();
        let mut plans64 = Vec::new();
        for g in 0..self.groups.len() {
            plans32.push(self.plan::<f32>(g, pass)?);
            plans64.push(self.plan::<f64>(g, pass)?);
        }
        let kernels = [
            self.runner_kernel(&pass.program, DType::F32, &plans32)?,
            self.runner_kernel(&pass.program, DType::F64, &plans64)?,
        ];
        for (g, (p32, p64)) in plans32.iter().zip(&plans64).enumerate() {
            self.execute(g, p32, &pass.program, kernels[0].as_ref())?;
            self.execute(g, p64, &pass.program, kernels[1].as_ref())?;
        }
        for plan in &plans32 {
            self.finish(plan, pass.is_step);
        }
        for plan in &plans64 {
            self.finish(plan, pass.is_step);
        }
        Ok(())
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

    /// Checks and computes the prologue of group `g`'s parameters of dtype `T` with a gradient.
    fn plan<T: Float>(&self, g: usize, pass: &Pass) -> Result<Plan<T>> {
        let program = &pass.program;
        let group = &self.groups[g];
        let hypers: Vec<f64> = pass.hypers.iter().map(|&h| group.hypers[h]).collect();
        let selected = |i: usize| match pass.is_step {
            true => self.has_grad[i],
            false => self.state[i].is_some(),
        };
        let members: Vec<usize> = group
            .params
            .iter()
            .copied()
            .filter(|&i| selected(i) && self.params[i].dtype == T::DTYPE)
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
            program.eval_prologue(&hypers, step + 1, |n| scalars[n], &mut values);
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
        program: &Program,
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
            None => Runner::Interp(self.executor, &program.stage),
        };
        run_parallel(runner, segments, self.threads)
    }

    /// Counts the step (for a step) and stores the new scalar state of the plan's parameters.
    fn finish<T>(&mut self, plan: &Plan<T>, is_step: bool) {
        let inits = self.slot_inits();
        for (&i, updates) in plan.members.iter().zip(&plan.updates) {
            let state = self.state[i].get_or_insert_with(|| StateInfo {
                step: 0,
                scalars: inits.clone(),
            });
            state.step += u64::from(is_step);
            for &(slot, value) in updates {
                state.scalars[slot] = value;
            }
        }
    }
}

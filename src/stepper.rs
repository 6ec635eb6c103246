//! The functional API: an optimizer applied to caller-owned slices, no copies.
//!
//! A [`Stepper`] holds a compiled [`Program`], the current hyperparameter values and the
//! executor; the caller owns parameters, gradients and each parameter's [`ParamState`].
//! One call updates any number of parameters with one kernel call per thread.

use crate::ir::SlotKind;
use crate::program::Program;
use crate::runtime::{
    batches, batches_in_units, default_threads, run_batches, Runner, StageKernels,
};
use crate::segment::Pieces;
use crate::{passes, DType, Error, Float, Graph, Jit, Kernel, Result};

/// Which executor runs the stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Executor {
    /// Cranelift-compiled kernel (the default).
    #[default]
    Jit,
    /// The reference interpreter, element by element.
    Reference,
    /// One op at a time over whole arrays (ndarray), like an unfused framework.
    Eager,
    /// One op at a time over cache-sized blocks, in loops rustc vectorizes: the fastest
    /// executor without code generation, for platforms where JIT code cannot run.
    Chunked,
}

/// The value of one state slot of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotValue<T> {
    /// A per-element slot: one value per element of the parameter.
    Buffer(Vec<T>),
    /// A per-parameter scalar slot, kept in f64.
    Scalar(f64),
}

/// One parameter's optimizer state: its step count and one value per slot, in slot order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamState<T> {
    /// Updates this parameter has received.
    pub step: u64,
    /// One entry per slot of the optimizer, in definition order.
    pub slots: Vec<SlotValue<T>>,
}

impl<T> ParamState<T> {
    /// The buffer of slot number `n`, if it is a per-element slot.
    pub fn buffer(&self, n: usize) -> Option<&[T]> {
        match self.slots.get(n)? {
            SlotValue::Buffer(b) => Some(b),
            SlotValue::Scalar(_) => None,
        }
    }
}

/// One parameter to update: its values, its gradient and its state.
pub struct ParamRef<'a, T> {
    /// Parameter values, updated in place.
    pub param: &'a mut [T],
    /// Gradient, same length.
    pub grad: &'a [T],
    /// The parameter's state, updated in place.
    pub state: &'a mut ParamState<T>,
}

/// An optimizer ready to update caller-owned slices.
pub struct Stepper {
    program: Program,
    hypers: Vec<f64>,
    executor: Executor,
    jit: Option<Jit>,
    kernels: StageKernels,
}

impl Stepper {
    /// Compiles `graph` (passes now, machine code at the first step of each dtype) for the
    /// JIT executor with the process-wide [`Jit`].
    pub fn new(graph: &Graph) -> Result<Stepper> {
        let program = passes::compile(graph)?;
        let hypers = program.hypers.iter().map(|h| h.default).collect();
        let kernels = StageKernels::new(&program);
        Ok(Stepper {
            program,
            hypers,
            executor: Executor::Jit,
            jit: None,
            kernels,
        })
    }

    /// Uses `executor` instead of the JIT.
    pub fn with_executor(mut self, executor: Executor) -> Stepper {
        self.executor = executor;
        self
    }

    /// Compiles with `jit` (and its cache) instead of the process-wide one.
    pub fn with_jit(mut self, jit: Jit) -> Stepper {
        self.jit = Some(jit);
        self.kernels = StageKernels::new(&self.program);
        self
    }

    /// The compiled program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The executor in use.
    pub fn executor(&self) -> Executor {
        self.executor
    }

    /// The current value of a hyperparameter.
    pub fn hyper(&self, name: &str) -> Result<f64> {
        let n = self.hyper_index(name)?;
        Ok(self.hypers[n])
    }

    /// Sets a hyperparameter for the following steps. Never recompiles.
    pub fn set_hyper(&mut self, name: &str, value: f64) -> Result<()> {
        let n = self.hyper_index(name)?;
        self.hypers[n] = value;
        Ok(())
    }

    fn hyper_index(&self, name: &str) -> Result<usize> {
        self.program
            .hyper_index(name)
            .ok_or_else(|| Error::UnknownHyper {
                name: name.to_string(),
            })
    }

    /// Fresh state for a parameter of `len` elements: step 0, every slot at its init value.
    ///
    /// Fails with [`Error::OutOfMemory`] when the buffers cannot be allocated.
    pub fn init_state<T: Float>(&self, len: usize) -> Result<ParamState<T>> {
        let slots = self
            .program
            .slots
            .iter()
            .map(|s| match s.kind {
                SlotKind::Element => {
                    let mut buffer = Vec::new();
                    buffer
                        .try_reserve_exact(len)
                        .map_err(|_| Error::OutOfMemory {
                            what: "the state of a parameter",
                            bytes: len.saturating_mul(std::mem::size_of::<T>()),
                        })?;
                    buffer.resize(len, T::from_f64(s.init));
                    Ok(SlotValue::Buffer(buffer))
                }
                SlotKind::Scalar | SlotKind::Group => Ok(SlotValue::Scalar(s.init)),
            })
            .collect::<Result<_>>()?;
        Ok(ParamState { step: 0, slots })
    }

    /// Updates one parameter. See [`Stepper::step_many`].
    pub fn step<T: Float>(
        &self,
        param: &mut [T],
        grad: &[T],
        state: &mut ParamState<T>,
    ) -> Result<bool> {
        self.step_many(&mut [ParamRef { param, grad, state }])
    }

    /// Updates every parameter in `params` with one kernel call (one per thread when they are
    /// big enough to share out).
    ///
    /// Everything is checked first (state shape, lengths, aliasing, step overflow): on error
    /// no parameter and no state is changed.
    ///
    /// Returns whether the step was applied: `false` when the program's skip condition held
    /// for any parameter (see [`Graph::skip`]), and then nothing changed.
    pub fn step_many<T: Float>(&self, params: &mut [ParamRef<'_, T>]) -> Result<bool> {
        let program = &self.program;
        for (i, p) in params.iter().enumerate() {
            if p.grad.len() != p.param.len() {
                return Err(Error::LengthMismatch {
                    what: format!("grad of parameter {i}"),
                    expected: p.param.len(),
                    actual: p.grad.len(),
                });
            }
            self.check_state(p.state, p.param.len())?;
            if p.state.step == u64::MAX {
                return Err(Error::StepOverflow);
            }
        }
        if !program.phases.is_empty() {
            return self.step_phased(params);
        }
        // Prologue per parameter, in f64 on the host: each parameter's kernel scalars and
        // scalar-state updates, in one flat list each (a handful of allocations per call,
        // whatever the number of parameters).
        let prologue = &program.prologue;
        let (n_scalars, n_updates) = (prologue.kernel_scalars.len(), prologue.state_updates.len());
        let mut values = Vec::with_capacity(prologue.insts.len());
        let mut blocks: Vec<T> = Vec::with_capacity(params.len() * n_scalars);
        let mut updates: Vec<(usize, f64)> = Vec::with_capacity(params.len() * n_updates);
        for p in params.iter() {
            let state = &p.state.slots;
            let scalar = |n: usize| match state[n] {
                SlotValue::Scalar(v) => v,
                SlotValue::Buffer(_) => unreachable!("checked: slot {n} is a scalar slot"),
            };
            program.eval_prologue(&self.hypers, p.state.step + 1, scalar, &mut values);
            if program.skips(&values) {
                return Ok(false);
            }
            program.push_prologue_results(&values, &mut blocks, &mut updates);
        }
        let lens: Vec<usize> = params.iter().map(|p| p.param.len()).collect();
        self.run_last_stage(params, &lens, &blocks, &updates)
    }

    /// [`Stepper::step_many`] for a program with phases: each phase runs over every
    /// parameter (its reductions per parameter, and for a global one combined over `params`
    /// in their order), the prologue goes on with the results, then the last stage updates.
    /// Inputs are checked; only the last stage writes.
    fn step_phased<T: Float>(&self, params: &mut [ParamRef<'_, T>]) -> Result<bool> {
        use crate::runtime::{param_values, record_results};
        let program = &self.program;
        let n_reductions = program.reductions().count();
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); params.len()];
        let mut reduced: Vec<Vec<f64>> = vec![vec![0.0; n_reductions]; params.len()];
        let lens: Vec<usize> = params.iter().map(|p| p.param.len()).collect();
        let members: Vec<usize> = (0..params.len()).collect();
        // Every parameter's prologue, on up to instruction `end`.
        let advance =
            |params: &[ParamRef<'_, T>], values: &mut [Vec<f64>], reduced: &[Vec<f64>], end| {
                for (i, p) in params.iter().enumerate() {
                    let state = |n: usize| match p.state.slots[n] {
                        SlotValue::Scalar(v) => v,
                        SlotValue::Buffer(_) => unreachable!("checked: slot {n} is a scalar slot"),
                    };
                    let step = p.state.step + 1;
                    program.eval_prologue_until(
                        end,
                        &self.hypers,
                        step,
                        state,
                        &reduced[i],
                        &mut values[i],
                    );
                }
            };
        let mut first = 0;
        for (k, phase) in program.phases.iter().enumerate() {
            advance(params, &mut values, &reduced, phase.prologue_end as usize);
            let n = phase.stage.reductions.len();
            let blocks: Vec<Vec<T>> = values
                .iter()
                .map(|v| {
                    phase
                        .kernel_scalars
                        .iter()
                        .map(|&s| T::from_f64(v[s as usize]))
                        .collect()
                })
                .collect();
            let blocks: Vec<&[T]> = blocks.iter().map(Vec::as_slice).collect();
            let mut partials: Vec<Vec<f64>> = lens
                .iter()
                .map(|&len| vec![0.0; crate::segment::blocks(len) * n])
                .collect();
            self.run_stage(params, &lens, k, &blocks, &mut partials)?;
            let raw: Vec<Vec<f64>> = partials.iter().map(|p| param_values(phase, p)).collect();
            record_results(phase, &members, &raw, &mut reduced, first);
            first += n;
        }
        // The rest of the prologue, then the last stage.
        let prologue = &program.prologue;
        advance(params, &mut values, &reduced, prologue.insts.len());
        if values.iter().any(|v| program.skips(v)) {
            return Ok(false);
        }
        let (n_scalars, n_updates) = (prologue.kernel_scalars.len(), prologue.state_updates.len());
        let mut blocks: Vec<T> = Vec::with_capacity(params.len() * n_scalars);
        let mut updates: Vec<(usize, f64)> = Vec::with_capacity(params.len() * n_updates);
        for v in &values {
            program.push_prologue_results(v, &mut blocks, &mut updates);
        }
        self.run_last_stage(params, &lens, &blocks, &updates)
    }

    /// The last stage over `params` (lengths `lens`), each with its scalar block in
    /// `blocks` and its scalar-state updates in `updates` (flat lists, one entry per
    /// parameter); then the step count and the scalar state.
    fn run_last_stage<T: Float>(
        &self,
        params: &mut [ParamRef<'_, T>],
        lens: &[usize],
        blocks: &[T],
        updates: &[(usize, f64)],
    ) -> Result<bool> {
        let prologue = &self.program.prologue;
        let n_updates = prologue.state_updates.len();
        let n_scalars = prologue.kernel_scalars.len();
        let blocks: Vec<&[T]> = (0..params.len())
            .map(|i| &blocks[i * n_scalars..(i + 1) * n_scalars])
            .collect();
        self.run_stage(params, lens, self.program.phases.len(), &blocks, &mut [])?;
        for (i, p) in params.iter_mut().enumerate() {
            p.state.step += 1;
            for &(slot, v) in &updates[i * n_updates..(i + 1) * n_updates] {
                p.state.slots[slot] = SlotValue::Scalar(v);
            }
        }
        Ok(true)
    }

    /// Runs stage `k` of the program (its phases in order, then the last) over `params`
    /// (lengths `lens`), parameter `i` with scalar block `blocks[i]` and, for a phase, its
    /// partials in `partials[i]`; cut between threads (a phase's only at block boundaries).
    fn run_stage<T: Float>(
        &self,
        params: &mut [ParamRef<'_, T>],
        lens: &[usize],
        k: usize,
        blocks: &[&[T]],
        partials: &mut [Vec<f64>],
    ) -> Result<()> {
        let program = &self.program;
        let stage = program.phases.get(k).map_or(&program.stage, |p| &p.stage);
        let n = stage.reductions.len();
        let threads = default_threads();
        let batches = match n {
            0 => batches::<T>(lens, threads.count),
            _ => batches_in_units(lens, threads.count, crate::ir::reduce::BLOCK),
        };
        let slots = program.element_slots().count();
        let mut pieces = Pieces::with_capacity(batches.pieces.len(), slots);
        let mut next = batches.pieces.iter().peekable();
        let mut partials = partials.iter_mut();
        let mut ranges = Vec::new();
        for (i, p) in params.iter_mut().enumerate() {
            ranges.clear();
            while let Some(piece) = next.next_if(|piece| piece.segment == i) {
                ranges.push((piece.start, piece.len, blocks[i]));
            }
            let buffers = p.state.slots.iter_mut().filter_map(|s| match s {
                SlotValue::Buffer(b) => Some(b.as_mut_slice()),
                SlotValue::Scalar(_) => None,
            });
            let mine = partials.next().map_or(&mut [][..], Vec::as_mut_slice);
            pieces.cut_reducing(&mut *p.param, p.grad, buffers, &ranges, mine, n);
        }
        let mut storage = Vec::new();
        let mut segments = pieces.into_segments(&mut storage);
        let kernel = match self.executor {
            Executor::Jit => Some(self.kernels.get(self.jit.as_ref(), program, k, T::DTYPE)?),
            _ => None,
        };
        let runner = Runner::of(kernel.as_ref(), self.executor, stage);
        run_batches(runner, &mut segments, &batches.ends, threads.pool)
    }

    fn check_state<T>(&self, state: &ParamState<T>, len: usize) -> Result<()> {
        let slots = &self.program.slots;
        if state.slots.len() != slots.len() {
            return Err(Error::StateMismatch {
                slot: format!("#{}", state.slots.len().min(slots.len())),
                reason: "the state has a different number of slots than the optimizer",
            });
        }
        for (def, value) in slots.iter().zip(&state.slots) {
            let reason = match (def.kind, value) {
                (SlotKind::Element, SlotValue::Buffer(b)) if b.len() != len => {
                    "its buffer's length differs from the parameter's"
                }
                (SlotKind::Element, SlotValue::Scalar(_)) => "a scalar where a buffer belongs",
                (SlotKind::Scalar | SlotKind::Group, SlotValue::Buffer(_)) => {
                    "a buffer where a scalar belongs"
                }
                _ => continue,
            };
            return Err(Error::StateMismatch {
                slot: def.name.clone(),
                reason,
            });
        }
        Ok(())
    }

    /// The JIT kernel for `dtype`, compiled on first use.
    pub fn kernel(&self, dtype: DType) -> Result<Kernel> {
        let last = self.program.phases.len();
        self.kernels
            .get(self.jit.as_ref(), &self.program, last, dtype)
    }
}

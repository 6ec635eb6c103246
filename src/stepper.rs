//! The functional API: an optimizer applied to caller-owned slices, no copies.
//!
//! A [`Stepper`] holds a compiled [`Program`], the current hyperparameter values and the
//! executor; the caller owns parameters, gradients and each parameter's [`ParamState`].
//! One call updates any number of parameters with one kernel call per thread.

use crate::engine::{default_threads, Buffers, Engine, Member, Outcome, Sets, Settings, Work};
use crate::ir::SlotKind;
use crate::program::Program;
use crate::segment::{Elems, ElemsRef};
use crate::{passes, round, DType, Element, Error, Executor, Float, Graph, Jit, Kernel, Layout};
use crate::{Precision, Result};

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

/// One parameter to update: its values and gradient (of element type `P`) and its state
/// (element slots of type `S`, the parameter's by default). `P` and `S` must compute in one
/// type (f64 with f64 only).
pub struct ParamRef<'a, P, S = P> {
    /// Parameter values, updated in place.
    pub param: &'a mut [P],
    /// Gradient, same length.
    pub grad: &'a [P],
    /// The parameter's state, updated in place.
    pub state: &'a mut ParamState<S>,
}

/// An optimizer ready to update caller-owned slices.
pub struct Stepper {
    engine: Engine,
    hypers: Vec<f64>,
    /// Per hyperparameter: the value a scheduler first saw (see [`Stepper::initial_hyper`]).
    initial: Vec<Option<f64>>,
    /// Executor and JIT (the threads are rayon's at each call).
    settings: Settings,
    /// The streams whose stores round stochastically, and the generator's seed.
    stochastic: (Vec<u32>, u64),
}

impl Stepper {
    /// Compiles `graph` (passes now, machine code at the first step of each dtype) for the
    /// JIT executor with the process-wide [`Jit`].
    pub fn new(graph: &Graph) -> Result<Stepper> {
        let program = passes::compile(graph)?;
        let hypers: Vec<f64> = program.hypers.iter().map(|h| h.default).collect();
        Ok(Stepper {
            engine: Engine::new(program),
            initial: vec![None; hypers.len()],
            hypers,
            settings: Settings::default(),
            stochastic: (Vec::new(), 0),
        })
    }

    /// Rounds the stores to `streams` (`"param"` or element slot names) stochastically, from
    /// a generator seeded with `seed` (see [`crate::round`]), when they are bf16 or f16 (a
    /// step on other dtypes fails with [`Error::InvalidOption`]). The generator's key is
    /// made of the seed, the parameter's step count and its position in the call, so
    /// parameters stepped in separate calls draw the same bits: step them together.
    /// Fails with [`Error::UnknownSlot`] on a name that is no element slot.
    pub fn with_stochastic_rounding(mut self, streams: &[&str], seed: u64) -> Result<Stepper> {
        let precision = Precision::default().with_stochastic_rounding(streams, seed);
        // Checked on a layout where every stream may round stochastically.
        let layout = precision.layout(DType::BF16, &self.engine.program)?;
        self.stochastic = (layout.stochastic().to_vec(), seed);
        Ok(self)
    }

    /// Uses `executor` instead of the JIT.
    pub fn with_executor(mut self, executor: Executor) -> Stepper {
        self.settings.executor = executor;
        self
    }

    /// Compiles with `jit` (and its cache) instead of the process-wide one.
    pub fn with_jit(mut self, jit: Jit) -> Stepper {
        self.settings.jit = Some(jit);
        self.engine.reset_kernels();
        self
    }

    /// The compiled program.
    pub fn program(&self) -> &Program {
        &self.engine.program
    }

    /// The executor in use.
    pub fn executor(&self) -> Executor {
        self.settings.executor
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

    /// The initial value of hyperparameter `name` as schedulers see it: its value when a
    /// scheduler first asked (see [`crate::Optimizer::initial_hyper`]).
    pub fn initial_hyper(&mut self, name: &str) -> Result<f64> {
        let n = self.hyper_index(name)?;
        Ok(*self.initial[n].get_or_insert(self.hypers[n]))
    }

    fn hyper_index(&self, name: &str) -> Result<usize> {
        (self.engine.program)
            .hyper_index(name)
            .ok_or_else(|| Error::UnknownHyper {
                name: name.to_string(),
            })
    }

    /// Fresh state for a parameter of `len` elements: step 0, every slot at its init value.
    ///
    /// Fails with [`Error::OutOfMemory`] when the buffers cannot be allocated.
    pub fn init_state<T: Element>(&self, len: usize) -> Result<ParamState<T>> {
        let slots = self
            .engine
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
                    buffer.resize(len, crate::dtype::torch_cast::<T>(s.init));
                    Ok(SlotValue::Buffer(buffer))
                }
                SlotKind::Scalar | SlotKind::Group | SlotKind::Optimizer => {
                    Ok(SlotValue::Scalar(s.init))
                }
            })
            .collect::<Result<_>>()?;
        Ok(ParamState { step: 0, slots })
    }

    /// Updates one parameter whose state is stored in its dtype. See [`Stepper::step_many`]
    /// (which also takes state of another dtype).
    pub fn step<T: Element>(
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
    pub fn step_many<P: Element, S: Element>(
        &self,
        params: &mut [ParamRef<'_, P, S>],
    ) -> Result<bool> {
        let layout = self.layout(P::DTYPE, S::DTYPE)?;
        match layout.compute() {
            DType::F64 => self.step_in::<f64, P, S>(layout, params),
            _ => self.step_in::<f32, P, S>(layout, params),
        }
    }

    /// The layout of parameters of `param` with state of `state`, rounding as
    /// [`Stepper::with_stochastic_rounding`] said.
    fn layout(&self, param: DType, state: DType) -> Result<Layout> {
        let n_elem = self.engine.program.element_slots().count();
        let mut dtypes = vec![param, param];
        dtypes.extend(std::iter::repeat_n(state, n_elem));
        let n_streams = dtypes.len() as u32;
        Ok(Layout::new(dtypes)?
            .with_stochastic(&self.stochastic.0)?
            .resolve(n_streams))
    }

    /// [`Stepper::step_many`] computing in `T`.
    fn step_in<T: Float, P: Element, S: Element>(
        &self,
        layout: Layout,
        params: &mut [ParamRef<'_, P, S>],
    ) -> Result<bool> {
        let n_slots = self.engine.program.slots.len();
        let mut members = Vec::with_capacity(params.len());
        let mut scalars = Vec::with_capacity(params.len() * n_slots);
        for (i, p) in params.iter().enumerate() {
            if p.grad.len() != p.param.len() {
                return Err(Error::LengthMismatch {
                    what: format!("grad of parameter {i}"),
                    expected: p.param.len(),
                    actual: p.grad.len(),
                });
            }
            self.check_state(p.state, p.param.len())?;
            members.push(Member {
                id: i,
                entry: 0,
                set: i,
                offset: 0,
                len: p.param.len(),
                group: 0,
                step: p.state.step,
                fresh: false,
            });
            scalars.extend(p.state.slots.iter().map(|s| match s {
                SlotValue::Scalar(v) => *v,
                SlotValue::Buffer(_) => 0.0, // an element slot: not read by the prologue
            }));
        }
        let work = Work {
            members,
            scalars,
            slots: n_slots,
            hypers: vec![&self.hypers],
            groups: None,
            optimizer: &[],
        };
        // Each parameter's buffers for the engine (its element slots a part of one list of
        // all of them), and where its commit goes: its step count and its scalar slots (a
        // part of one list, `n_slots` each, `None` for an element slot).
        let n_elem = self.engine.program.element_slots().count();
        let mut state: Vec<Elems<'_>> = Vec::with_capacity(params.len() * n_elem);
        let mut own: Vec<Option<&mut f64>> = Vec::with_capacity(params.len() * n_slots);
        let mut steps: Vec<&mut u64> = Vec::with_capacity(params.len());
        let mut streams: Vec<(&mut [P], &[P], u64)> = Vec::with_capacity(params.len());
        for p in params.iter_mut() {
            let ParamState { step, slots } = &mut *p.state;
            for slot in slots.iter_mut() {
                match slot {
                    SlotValue::Buffer(b) => {
                        state.push(Elems::of(b.as_mut_slice()));
                        own.push(None);
                    }
                    SlotValue::Scalar(v) => own.push(Some(v)),
                }
            }
            streams.push((&mut *p.param, p.grad, *step));
            steps.push(step);
        }
        let mut rest = state.as_mut_slice();
        let mut list: Vec<Buffers<'_, '_, T>> = Vec::with_capacity(steps.len());
        let seed = self.stochastic.1;
        for (i, (param, grad, step)) in streams.into_iter().enumerate() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n_elem);
            rest = tail;
            let salt = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            list.push(Buffers {
                param: Elems::of(param),
                grad: ElemsRef::of(grad),
                state: mine,
                noise: (round::step_key(seed ^ salt, step), 0),
                compute: std::marker::PhantomData,
            });
        }
        let mut sets = Sets { layout, list };
        let settings = Settings {
            threads: default_threads(),
            ..self.settings.clone()
        };
        let mut commit = |i: usize, updates: &[(usize, f64)]| {
            *steps[i] += 1;
            for &(slot, value) in updates {
                if let Some(v) = own[i * n_slots + slot].as_deref_mut() {
                    *v = value; // a scalar slot, checked above
                }
            }
        };
        let outcome = self
            .engine
            .run(&settings, &work, &mut [&mut sets], &mut commit)?;
        Ok(outcome != Outcome::Skipped)
    }

    fn check_state<S>(&self, state: &ParamState<S>, len: usize) -> Result<()> {
        let slots = &self.engine.program.slots;
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
                (
                    SlotKind::Scalar | SlotKind::Group | SlotKind::Optimizer,
                    SlotValue::Buffer(_),
                ) => "a buffer where a scalar belongs",
                _ => continue,
            };
            return Err(Error::StateMismatch {
                slot: def.name.clone(),
                reason,
            });
        }
        Ok(())
    }

    /// The JIT kernel for `layout` (a [`DType`] for every stream stored as it), compiled on
    /// first use.
    pub fn kernel(&self, layout: impl Into<Layout>) -> Result<Kernel> {
        let last = self.engine.program.phases.len();
        let layout = layout.into().resolve(self.engine.program.stage.n_streams);
        self.engine.kernel(&self.settings, last, &layout)
    }
}

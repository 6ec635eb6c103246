//! The functional API: an optimizer applied to caller-owned slices, no copies.
//!
//! A [`Stepper`] holds a compiled [`Program`], the current hyperparameter values and the
//! executor; the caller owns parameters, gradients and each parameter's [`ParamState`].
//! One call updates any number of parameters with one kernel call per thread.

use crate::engine::{default_threads, Buffers, Engine, Member, Outcome, Sets, Settings};
use crate::engine::{StreamSets, Work};
use crate::ir::SlotKind;
use crate::program::Program;
use crate::segment::{Elems, ElemsRef};
use crate::{passes, round, DType, Element, Error, Executor, Graph, Jit, Kernel, Layout};
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

/// One parameter as borrowed buffers, each stream in its own storage dtype (all computing in
/// one type: f64 with f64 only), and where its step count and scalar state live: what
/// [`Stepper::step_slices`] updates.
pub struct ParamSlices<'a> {
    /// Parameter values, updated in place.
    pub param: Elems<'a>,
    /// Gradient, same length.
    pub grad: ElemsRef<'a>,
    /// One buffer per element slot, in slot order, each as long as `param`; updated in place.
    pub buffers: Vec<Elems<'a>>,
    /// One value per slot of the program, in slot order: the scalar slots' values (an
    /// element slot's entry is not read), updated by an applied step.
    pub scalars: &'a mut [f64],
    /// Updates this parameter has received; incremented by an applied step.
    pub step: &'a mut u64,
}

/// Whether `p`'s streams are stored as `layout` says (its stochastic streams are the
/// Stepper's, the same for every parameter).
fn fits(layout: &Layout, p: &ParamSlices<'_>) -> bool {
    layout.dtype(0) == p.param.dtype()
        && layout.dtype(1) == p.grad.dtype()
        && (p.buffers.iter().enumerate()).all(|(k, b)| layout.dtype(2 + k as u32) == b.dtype())
}

/// Adds one parameter's buffers to `sets`; returns its index there.
fn push<'s, 'a, T>(
    sets: &mut Sets<'s, 'a, T>,
    param: Elems<'s>,
    grad: ElemsRef<'s>,
    state: &'s mut [Elems<'a>],
    noise: ([u32; 2], u32),
) -> usize {
    sets.list.push(Buffers {
        param,
        grad,
        state,
        noise,
        compute: std::marker::PhantomData,
    });
    sets.list.len() - 1
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
    /// At most how many threads a step uses; `None`: as many as rayon's current pool has.
    threads: Option<usize>,
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
            threads: None,
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

    /// Uses at most `threads` threads per step (at least one); by default as many as rayon's
    /// pool of the calling thread has, counted at each step.
    pub fn with_threads(mut self, threads: usize) -> Stepper {
        self.set_threads(threads);
        self
    }

    /// Uses at most `threads` threads (at least one) from the next step on.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = Some(threads.max(1));
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
    /// Everything is checked first (state shape, lengths, dtypes, step overflow): on error no
    /// parameter and no state is changed.
    ///
    /// Returns whether the step was applied: `false` when the program's skip condition held
    /// for any parameter (see [`Graph::skip`]), and then nothing changed.
    pub fn step_many<P: Element, S: Element>(
        &self,
        params: &mut [ParamRef<'_, P, S>],
    ) -> Result<bool> {
        let n_slots = self.engine.program.slots.len();
        for (i, p) in params.iter().enumerate() {
            if p.grad.len() != p.param.len() {
                return Err(Error::LengthMismatch {
                    what: format!("grad of parameter {i}"),
                    expected: p.param.len(),
                    actual: p.grad.len(),
                });
            }
            self.check_state(p.state, p.param.len())?;
        }
        // The scalar slots' values, `n_slots` per parameter, read back after the step.
        let mut scalars: Vec<f64> = params
            .iter()
            .flat_map(|p| p.state.slots.iter())
            .map(|s| match s {
                SlotValue::Scalar(v) => *v,
                SlotValue::Buffer(_) => 0.0, // an element slot: not read by the prologue
            })
            .collect();
        let mut rest = scalars.as_mut_slice();
        let mut slices = Vec::with_capacity(params.len());
        for p in params.iter_mut() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n_slots);
            rest = tail;
            let ParamState { step, slots } = &mut *p.state;
            let buffers = slots
                .iter_mut()
                .filter_map(|s| match s {
                    SlotValue::Buffer(b) => Some(Elems::of(b.as_mut_slice())),
                    SlotValue::Scalar(_) => None,
                })
                .collect();
            slices.push(ParamSlices {
                param: Elems::of(&mut *p.param),
                grad: ElemsRef::of(p.grad),
                buffers,
                scalars: mine,
                step,
            });
        }
        let applied = self.step_slices(&mut slices)?;
        drop(slices);
        let all = params.iter_mut().flat_map(|p| p.state.slots.iter_mut());
        for (slot, &value) in all.zip(&scalars) {
            if let SlotValue::Scalar(v) = slot {
                *v = value;
            }
        }
        Ok(applied)
    }

    /// Updates every parameter in `params`, each stream in its own storage dtype, with one
    /// kernel call per layout (one per thread when they are big enough to share out): the
    /// entry point for buffers that live elsewhere (a Python framework's tensors, a candle
    /// `Var`'s storage), which [`Stepper::step_many`] is built on.
    ///
    /// Everything is checked first (lengths, the number of buffers and scalars, each
    /// parameter's dtypes, step overflow): on error no parameter and no state is changed. An
    /// applied step increments each parameter's step count and stores its new scalar state.
    ///
    /// Returns whether the step was applied: `false` when the program's skip condition held
    /// for any parameter (see [`Graph::skip`]), and then nothing changed.
    ///
    /// ```
    /// use optjit::{optim::Adam, Elems, ElemsRef, ParamSlices, Stepper};
    /// use half::bf16;
    ///
    /// let adam = Stepper::new(&Adam { lr: 0.1, ..Adam::default() }.graph()?)?;
    /// let (mut p, g) = (vec![bf16::ONE; 8], vec![bf16::ONE; 8]);
    /// let (mut m, mut v) = (vec![0f32; 8], vec![0f32; 8]); // f32 state for bf16 params
    /// let (mut scalars, mut step) = (vec![0.0; 2], 0);
    /// let applied = adam.step_slices(&mut [ParamSlices {
    ///     param: Elems::of(&mut p),
    ///     grad: ElemsRef::of(&g),
    ///     buffers: vec![Elems::of(&mut m), Elems::of(&mut v)],
    ///     scalars: &mut scalars,
    ///     step: &mut step,
    /// }])?;
    /// // Adam's first step moves each element by lr against the gradient's sign.
    /// assert!(applied && step == 1 && p[0] == bf16::from_f32(0.9));
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn step_slices(&self, params: &mut [ParamSlices<'_>]) -> Result<bool> {
        let program = &self.engine.program;
        let n_slots = program.slots.len();
        let n_elem = program.element_slots().count();
        // The distinct layouts (the engine's entries) and each parameter's.
        let mut layouts: Vec<Layout> = Vec::new();
        let mut entries = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let len = p.param.len();
            if p.grad.len() != len {
                return Err(Error::LengthMismatch {
                    what: format!("grad of parameter {i}"),
                    expected: len,
                    actual: p.grad.len(),
                });
            }
            if p.buffers.len() != n_elem || p.scalars.len() != n_slots {
                return Err(Error::StateMismatch {
                    slot: format!("#{}", p.buffers.len().min(n_elem)),
                    reason: "the state has a different number of slots than the optimizer",
                });
            }
            for (buffer, s) in p.buffers.iter().zip(program.element_slots()) {
                if buffer.len() != len {
                    return Err(Error::StateMismatch {
                        slot: program.slots[s].name.clone(),
                        reason: "its buffer's length differs from the parameter's",
                    });
                }
            }
            // Usually the previous parameter's layout: compared without building one.
            let entry = match entries.last() {
                Some(&e) if fits(&layouts[e], p) => e,
                _ => {
                    let layout = self.layout(p)?;
                    match layouts.iter().position(|l| *l == layout) {
                        Some(e) => e,
                        None => {
                            layouts.push(layout);
                            layouts.len() - 1
                        }
                    }
                }
            };
            entries.push(entry);
        }
        // Each parameter's buffers for the engine (its element slots a part of one list of
        // all of them), and where its commit goes.
        let mut state: Vec<Elems<'_>> = Vec::with_capacity(params.len() * n_elem);
        let mut heads = Vec::with_capacity(params.len());
        let mut commits: Vec<(&mut u64, &mut [f64])> = Vec::with_capacity(params.len());
        let mut scalars = Vec::with_capacity(params.len() * n_slots);
        for p in params.iter_mut() {
            let ParamSlices {
                param,
                grad,
                buffers,
                scalars: own,
                step,
            } = p;
            state.extend(buffers.iter_mut().map(Elems::reborrow));
            scalars.extend_from_slice(own);
            heads.push((param.reborrow(), *grad, **step));
            commits.push((&mut **step, &mut **own));
        }
        let mut sets32: Vec<Sets<'_, '_, f32>> = Vec::new();
        let mut sets64: Vec<Sets<'_, '_, f64>> = Vec::new();
        // Per entry: whether it computes in f64, and its index in `sets32` or `sets64`.
        let mut typed = Vec::with_capacity(layouts.len());
        for layout in &layouts {
            let layout = layout.clone();
            if layout.compute() == DType::F64 {
                typed.push((true, sets64.len()));
                sets64.push(Sets {
                    layout,
                    list: Vec::new(),
                });
            } else {
                typed.push((false, sets32.len()));
                sets32.push(Sets {
                    layout,
                    list: Vec::new(),
                });
            }
        }
        let mut members = Vec::with_capacity(entries.len());
        let mut rest = state.as_mut_slice();
        let seed = self.stochastic.1;
        for (i, (param, grad, step)) in heads.into_iter().enumerate() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n_elem);
            rest = tail;
            let salt = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let noise = (round::step_key(seed ^ salt, step), 0);
            let (len, entry) = (param.len(), entries[i]);
            let set = match typed[entry] {
                (true, k) => push(&mut sets64[k], param, grad, mine, noise),
                (false, k) => push(&mut sets32[k], param, grad, mine, noise),
            };
            members.push(Member {
                id: i,
                entry,
                set,
                offset: 0,
                len,
                group: 0,
                step,
                fresh: false,
            });
        }
        let work = Work {
            members,
            scalars,
            slots: n_slots,
            hypers: vec![&self.hypers],
            groups: None,
            optimizer: &[],
        };
        // The sets in entry order.
        let (mut it32, mut it64) = (sets32.iter_mut(), sets64.iter_mut());
        let mut sets: Vec<&mut dyn StreamSets> = Vec::with_capacity(layouts.len());
        for &(wide, _) in &typed {
            sets.push(match wide {
                true => it64.next().expect("one f64 set per f64 entry"),
                false => it32.next().expect("one f32 set per f32 entry"),
            });
        }
        let mut settings = self.settings.clone();
        settings.threads.count = self.threads.unwrap_or_else(|| default_threads().count);
        let mut commit = |i: usize, updates: &[(usize, f64)]| {
            let (step, own) = &mut commits[i];
            **step += 1;
            for &(slot, value) in updates {
                own[slot] = value;
            }
        };
        let outcome = self.engine.run(&settings, &work, &mut sets, &mut commit)?;
        Ok(outcome != Outcome::Skipped)
    }

    /// The layout of `p`'s buffers, rounding as [`Stepper::with_stochastic_rounding`] said.
    fn layout(&self, p: &ParamSlices<'_>) -> Result<Layout> {
        let mut dtypes = Vec::with_capacity(2 + p.buffers.len());
        dtypes.extend([p.param.dtype(), p.grad.dtype()]);
        dtypes.extend(p.buffers.iter().map(Elems::dtype));
        let n_streams = dtypes.len() as u32;
        Ok(Layout::new(dtypes)?
            .with_stochastic(&self.stochastic.0)?
            .resolve(n_streams))
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

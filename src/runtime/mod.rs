//! The optimizer runtime, with `torch.optim`'s semantics: parameter groups with per-group
//! hyperparameters, per-parameter state created at a parameter's first update, parameters
//! without a gradient skipped, `zero_grad`, `step`, step with a closure, hooks, and
//! `state_dict` / `load_state_dict`.
//!
//! The optimizer owns its parameters and gradients in flat, aligned buffers per
//! (group, dtype); a typed [`Param`] handle gives a slice or ndarray view of each. One step
//! runs one parallel region per dtype over the segments of every group: neighbouring
//! parameters with a gradient and the same per-step scalars form one segment. For buffers the caller owns, use [`crate::Stepper`].

mod clip;
mod scaler;
mod state_dict;
mod step;
pub(crate) mod store;

pub use crate::engine::{PoolKind, GRAIN};
pub use scaler::{GradScaler, ScalerState};
pub use state_dict::{LoadReport, StateDict, StateEntry, TensorData};

use crate::engine::{Engine, Settings};
use crate::ir::SlotKind;
use crate::{passes, DType, Error, Executor, Float, Graph, Jit, Program, Result};
use ndarray::{ArrayBase, ArrayViewD, ArrayViewMutD, Data, Dimension, IxDyn};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{align_elems, round_up, AlignedBuf};

/// A typed handle to a parameter of one [`Optimizer`].
pub struct Param<T> {
    optimizer: u64,
    index: usize,
    _dtype: PhantomData<fn() -> T>,
}

impl<T> Clone for Param<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Param<T> {}
impl<T> std::fmt::Debug for Param<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param(#{})", self.index)
    }
}
impl<T> PartialEq for Param<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.optimizer, self.index) == (other.optimizer, other.index)
    }
}
impl<T> Eq for Param<T> {}

impl<T> Param<T> {
    /// The parameter's position in the optimizer, in the order parameters were added.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// What the optimizer knows of a parameter.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Unique name (the key of `state_dict` matching).
    pub name: String,
    /// Its group.
    pub group: usize,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// A parameter's optimizer state, once it has been updated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StateInfo {
    step: u64,
    /// One per slot; meaningful for scalar slots only.
    scalars: Vec<f64>,
}

/// The buffers of one (group, dtype).
pub(crate) struct FlatStore<T> {
    params: AlignedBuf<T>,
    grads: AlignedBuf<T>,
    /// One per element slot, allocated at the store's first step or state load.
    slots: Vec<AlignedBuf<T>>,
    /// Elements in use, padding included.
    len: usize,
}

impl<T: Float> FlatStore<T> {
    fn new() -> Self {
        // Empty: a few bytes each (alignment and stagger), which an allocator always has.
        let empty = |stream| AlignedBuf::filled(0, T::ZERO, stream, false).expect("a few bytes");
        FlatStore {
            params: empty(0),
            grads: empty(1),
            slots: Vec::new(),
            len: 0,
        }
    }

    /// Allocates the `n` element-slot buffers (streams 2.. of the kernel) if not yet there;
    /// `huge` as in [`Optimizer::with_huge_pages`]. Fails with [`Error::OutOfMemory`], no
    /// slot allocated, when the memory cannot be had.
    pub(crate) fn ensure_slots(&mut self, n: usize, huge: bool) -> Result<()> {
        debug_assert!(
            self.slots.is_empty() || self.slots.len() == n,
            "slot count is fixed"
        );
        if self.slots.is_empty() && n > 0 {
            self.slots = (0..n)
                .map(|k| AlignedBuf::filled(self.len, T::ZERO, 2 + k, huge))
                .collect::<Result<_>>()?;
        }
        Ok(())
    }

    /// Every stream, for the engine: the parameters, the gradients and the element slots
    /// (none before they exist).
    pub(crate) fn streams(&mut self) -> Streams<'_, T> {
        let state = self.slots.iter_mut().map(|s| s.as_mut_slice()).collect();
        (self.params.as_mut_slice(), self.grads.as_slice(), state)
    }

    /// Grows every stream to `len` elements (new ones zero), all or none: on failure the
    /// streams grown so far shrink back (which never allocates) and the error is returned.
    fn grow(&mut self, len: usize, huge: bool) -> Result<()> {
        let old = self.len;
        let streams = [&mut self.params, &mut self.grads]
            .into_iter()
            .chain(self.slots.iter_mut());
        let mut grown: Vec<&mut AlignedBuf<T>> = Vec::new();
        for buf in streams {
            if let Err(e) = buf.resize(len, T::ZERO, huge) {
                for done in grown {
                    done.resize(old, T::ZERO, huge)
                        .expect("shrinking never allocates");
                }
                return Err(e);
            }
            grown.push(buf);
        }
        self.len = len;
        Ok(())
    }
}

/// A flat store's streams, see [`FlatStore::streams`].
type Streams<'a, T> = (&'a mut [T], &'a [T], Vec<&'a mut [T]>);

/// A parameter group: hyperparameter values and its stores.
pub(crate) struct Group {
    hypers: Vec<f64>,
    /// Per slot: the group state's value (meaningful for group slots only).
    scalars: Vec<f64>,
    params: Vec<usize>,
    f32: FlatStore<f32>,
    f64: FlatStore<f64>,
}

impl Group {
    fn store<T: Float>(&self) -> &FlatStore<T> {
        let any: &dyn Any = match T::DTYPE {
            DType::F32 => &self.f32,
            DType::F64 => &self.f64,
        };
        any.downcast_ref().expect("T::DTYPE names T's store")
    }

    fn store_mut<T: Float>(&mut self) -> &mut FlatStore<T> {
        let any: &mut dyn Any = match T::DTYPE {
            DType::F32 => &mut self.f32,
            DType::F64 => &mut self.f64,
        };
        any.downcast_mut().expect("T::DTYPE names T's store")
    }
}

/// A registered hook. The mutex is never locked: hooks run only through `&mut Optimizer`
/// (`Mutex::get_mut`); it makes the optimizer `Sync` without asking hooks to be `Sync`.
type Hook = std::sync::Mutex<Box<dyn FnMut(&mut Optimizer) + Send>>;

/// Identifies a registered hook, for [`Optimizer::remove_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookId(u64);

/// An optimizer with PyTorch's semantics over parameters it stores.
///
/// ```
/// use optjit::{optim::Adam, Optimizer};
/// use ndarray::array;
///
/// let mut opt = Optimizer::new(&Adam { lr: 0.1, ..Adam::default() }.graph()?)?;
/// let group = opt.add_param_group(&[])?;
/// let w = opt.add_param(group, "w", &array![[1.0f32, 2.0], [3.0, 4.0]])?;
/// opt.set_grad(&w, &[1.0, 1.0, -1.0, 0.0])?;
/// opt.step()?;
/// // Adam's first step moves each element by lr against the sign of its gradient.
/// let moved = [0.9f32, 1.9, 3.1, 4.0];
/// assert!(opt.param(&w)?.iter().zip(moved).all(|(p, m)| (p - m).abs() < 1e-6));
/// let after_one = opt.param(&w)?.to_vec();
/// opt.zero_grad(); // set to none: the next step skips `w`
/// opt.step()?;
/// assert_eq!(opt.param(&w)?, after_one.as_slice());
/// # Ok::<(), optjit::Error>(())
/// ```
pub struct Optimizer {
    id: u64,
    /// The step's program and kernels.
    engine: Engine,
    /// Executor, JIT and threads of every run.
    settings: Settings,
    /// Whether big flat-store streams ask for transparent huge pages.
    huge_pages: bool,
    params: Vec<ParamInfo>,
    /// Parameter index by name.
    names: std::collections::HashMap<String, usize>,
    /// Initial value of every slot, in slot order (the scalar state of a fresh parameter).
    slot_inits: Vec<f64>,
    has_grad: Vec<bool>,
    state: Vec<Option<StateInfo>>,
    /// Per slot: the optimizer state's value (meaningful for optimizer slots only).
    shared: Vec<f64>,
    groups: Vec<Group>,
    /// Registered hooks in registration order; `None` while the hook runs (it is taken out
    /// to be given the optimizer).
    pre_hooks: Vec<(HookId, Option<Hook>)>,
    post_hooks: Vec<(HookId, Option<Hook>)>,
    next_hook: u64,
    /// The graphs `train()` and `eval()` run, with their hyperparameters' indices among the
    /// optimizer's.
    modes: Option<Modes>,
    training: bool,
}

/// The compiled mode-switch programs of an optimizer (see [`Optimizer::with_modes`]).
pub(crate) struct Modes {
    pub(crate) train: (Engine, Vec<usize>),
    pub(crate) eval: (Engine, Vec<usize>),
}

static NEXT_OPTIMIZER: AtomicU64 = AtomicU64::new(1);

impl Optimizer {
    /// An optimizer read from an `.opt` file at run time (see [`crate::text`]), with no
    /// parameter groups yet. Fails with [`crate::Error::Io`] when the file cannot be read
    /// and [`crate::Error::Text`] (line, column and caret) when it does not parse.
    ///
    /// ```
    /// use optjit::Optimizer;
    /// use ndarray::array;
    ///
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/signsgd.opt");
    /// let mut opt = Optimizer::from_file(path).unwrap();
    /// opt.add_param_group(&[("lr", 0.5)]).unwrap();
    /// let w = opt.add_param(0, "w", &array![1.0f32, 2.0]).unwrap();
    /// opt.set_grad(&w, &[3.0, -4.0]).unwrap();
    /// opt.step().unwrap();
    /// // The momentum is 0.1·g, so each weight moves by lr against its gradient's sign.
    /// assert_eq!(opt.param(&w).unwrap(), &[0.5, 2.5]);
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Optimizer> {
        Optimizer::new(&crate::text::parse_file(path)?)
    }

    /// An optimizer running `graph` (compiled now; machine code at the first step of each
    /// dtype), with no parameter groups yet.
    pub fn new(graph: &Graph) -> Result<Optimizer> {
        let program = passes::compile(graph)?;
        let slot_inits: Vec<f64> = program.slots.iter().map(|s| s.init).collect();
        Ok(Optimizer {
            id: NEXT_OPTIMIZER.fetch_add(1, Ordering::Relaxed),
            engine: Engine::new(program),
            shared: slot_inits.clone(),
            slot_inits,
            settings: Settings::default(),
            huge_pages: true,
            params: Vec::new(),
            names: std::collections::HashMap::new(),
            has_grad: Vec::new(),
            state: Vec::new(),
            groups: Vec::new(),
            pre_hooks: Vec::new(),
            post_hooks: Vec::new(),
            next_hook: 0,
            modes: None,
            training: true,
        })
    }

    /// Attaches the graphs that [`Optimizer::train`] and [`Optimizer::eval`] run over every
    /// parameter with state (without counting a step), e.g. schedule-free AdamW's swap
    /// between the training iterate and the evaluation point:
    ///
    /// ```
    /// use optjit::{optim::ScheduleFreeAdamW, Optimizer};
    /// use ndarray::array;
    ///
    /// let sf = ScheduleFreeAdamW { lr: 0.1, ..ScheduleFreeAdamW::default() };
    /// let mut opt = Optimizer::new(&sf.graph()?)?.with_modes(&sf.train_graph()?, &sf.eval_graph()?)?;
    /// let g = opt.add_param_group(&[])?;
    /// let w = opt.add_param(g, "w", &array![1.0f64, -1.0])?;
    /// for _ in 0..3 {
    ///     opt.set_grad(&w, &[0.5, -2.0])?;
    ///     opt.step()?;
    /// }
    /// let y = opt.param(&w)?.to_vec();
    /// opt.eval()?; // the parameter now holds x, the average
    /// assert_ne!(opt.param(&w)?, y.as_slice());
    /// assert!(opt.step().is_err(), "no steps in eval mode");
    /// opt.train()?; // back to y, up to rounding
    /// assert!(opt.param(&w)?.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-12));
    /// # Ok::<(), optjit::Error>(())
    /// ```
    ///
    /// Both graphs must have the optimizer's state slots (same names and kinds, in order) and
    /// only hyperparameters the optimizer has. A mode swap is not a step: the graphs may not
    /// reduce, skip, or change group state ([`Error::Unsupported`]).
    pub fn with_modes(mut self, train: &Graph, eval: &Graph) -> Result<Optimizer> {
        let compile = |graph: &Graph| -> Result<(Engine, Vec<usize>)> {
            let program = passes::compile(graph)?;
            if !program.phases.is_empty() {
                return Err(Error::Unsupported {
                    what: "train and eval graphs with reductions",
                });
            }
            if program.prologue.skip.is_some() {
                return Err(Error::Unsupported {
                    what: "train and eval graphs with a skip condition",
                });
            }
            let group_slot =
                |&(slot, _): &(u32, u32)| program.slots[slot as usize].kind.is_shared();
            if program.prologue.state_updates.iter().any(group_slot) {
                return Err(Error::Unsupported {
                    what: "train and eval graphs that change group or optimizer state",
                });
            }
            let same = |a: &crate::ir::SlotDef, b: &crate::ir::SlotDef| {
                a.name == b.name && a.kind == b.kind
            };
            let slots_match = program.slots.len() == self.engine.program.slots.len()
                && program
                    .slots
                    .iter()
                    .zip(&self.engine.program.slots)
                    .all(|(a, b)| same(a, b));
            if !slots_match {
                return Err(Error::StateMismatch {
                    slot: graph.name().to_string(),
                    reason: "a mode graph must have the optimizer's state slots",
                });
            }
            let hypers = program
                .hypers
                .iter()
                .map(|h| self.hyper_index(&h.name))
                .collect::<Result<Vec<usize>>>()?;
            Ok((Engine::new(program), hypers))
        };
        let modes = Modes {
            train: compile(train)?,
            eval: compile(eval)?,
        };
        self.modes = Some(modes);
        Ok(self)
    }

    /// Runs steps with `executor` instead of the JIT.
    pub fn with_executor(mut self, executor: Executor) -> Optimizer {
        self.settings.executor = executor;
        self
    }

    /// Compiles with `jit` (and its cache) instead of the process-wide one.
    pub fn with_jit(mut self, jit: Jit) -> Optimizer {
        self.settings.jit = Some(jit);
        self.engine.reset_kernels();
        if let Some(modes) = &mut self.modes {
            modes.train.0.reset_kernels();
            modes.eval.0.reset_kernels();
        }
        self
    }

    /// Uses at most `threads` threads per step (default: all of rayon's pool).
    pub fn with_threads(mut self, threads: usize) -> Optimizer {
        self.settings.threads.count = threads.max(1);
        self
    }

    /// Runs steps on `pool` (default: [`PoolKind::Rayon`]); results are identical on every
    /// pool, bit for bit.
    pub fn with_pool(mut self, pool: PoolKind) -> Optimizer {
        self.settings.threads.pool = pool;
        self
    }

    /// Whether the flat store asks for transparent huge pages for its big streams (4 MiB and
    /// more; default: yes). On Linux such a stream is mapped on its own and advised
    /// (`MADV_HUGEPAGE`) before its first write; with THP in `always` or `madvise` mode the
    /// kernel then backs it with 2 MiB pages where it can (fewer TLB misses). Elsewhere, or
    /// when the advice is refused, the memory is an ordinary allocation. Applies to buffers
    /// allocated from now on (call it before adding parameters); results are identical either
    /// way.
    pub fn with_huge_pages(mut self, huge: bool) -> Optimizer {
        self.huge_pages = huge;
        self
    }

    /// The compiled program.
    pub fn program(&self) -> &Program {
        &self.engine.program
    }

    /// Adds a parameter group whose hyperparameters are the definition's defaults, except
    /// those in `overrides`; returns its index.
    pub fn add_param_group(&mut self, overrides: &[(&str, f64)]) -> Result<usize> {
        let mut hypers: Vec<f64> = self
            .engine
            .program
            .hypers
            .iter()
            .map(|h| h.default)
            .collect();
        for &(name, value) in overrides {
            hypers[self.hyper_index(name)?] = value;
        }
        self.groups.push(Group {
            hypers,
            scalars: self.slot_inits.clone(),
            params: Vec::new(),
            f32: FlatStore::new(),
            f64: FlatStore::new(),
        });
        Ok(self.groups.len() - 1)
    }

    /// Adds a parameter to `group`, copying `values` into the optimizer's flat storage.
    ///
    /// Fails on an unknown group or a name already used.
    pub fn add_param<T: Float, S: Data<Elem = T>, D: Dimension>(
        &mut self,
        group: usize,
        name: &str,
        values: &ArrayBase<S, D>,
    ) -> Result<Param<T>> {
        self.check_group(group)?;
        if self.names.contains_key(name) {
            return Err(Error::DuplicateParam {
                name: name.to_string(),
            });
        }
        let len = values.len();
        let huge = self.huge_pages;
        let store = self.groups[group].store_mut::<T>();
        let offset = store.len;
        let too_big = || Error::OutOfMemory {
            what: "parameter storage",
            bytes: usize::MAX,
        };
        // Rounded up to whole aligned blocks (which cannot overflow when `len + block` does
        // not). All streams grow, or none and nothing else changes.
        let end = len
            .checked_add(align_elems::<T>())
            .and_then(|_| offset.checked_add(round_up::<T>(len)))
            .ok_or_else(too_big)?;
        store.grow(end, huge)?;
        for (dst, src) in store.params.as_mut_slice()[offset..offset + len]
            .iter_mut()
            .zip(values.iter())
        {
            *dst = *src;
        }
        let index = self.params.len();
        self.names.insert(name.to_string(), self.params.len());
        self.params.push(ParamInfo {
            name: name.to_string(),
            group,
            dtype: T::DTYPE,
            shape: values.shape().to_vec(),
            offset,
            len,
        });
        self.has_grad.push(false);
        self.state.push(None);
        self.groups[group].params.push(index);
        Ok(Param {
            optimizer: self.id,
            index,
            _dtype: PhantomData,
        })
    }

    fn check_group(&self, group: usize) -> Result<()> {
        if group < self.groups.len() {
            Ok(())
        } else {
            Err(Error::UnknownGroup {
                index: group,
                count: self.groups.len(),
            })
        }
    }

    fn hyper_index(&self, name: &str) -> Result<usize> {
        self.engine
            .program
            .hyper_index(name)
            .ok_or_else(|| Error::UnknownHyper {
                name: name.to_string(),
            })
    }

    /// Number of parameter groups.
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The parameters of `group`, in the order they were added.
    pub fn group_params(&self, group: usize) -> Result<Vec<&ParamInfo>> {
        self.check_group(group)?;
        Ok(self.groups[group]
            .params
            .iter()
            .map(|&i| &self.params[i])
            .collect())
    }

    /// The handle of parameter number `index` (in the order parameters were added), if it
    /// exists and has dtype `T`.
    pub fn handle<T: Float>(&self, index: usize) -> Option<Param<T>> {
        let info = self.params.get(index)?;
        (info.dtype == T::DTYPE).then_some(Param {
            optimizer: self.id,
            index,
            _dtype: PhantomData,
        })
    }

    /// Every parameter, in the order they were added.
    pub fn params_info(&self) -> &[ParamInfo] {
        &self.params
    }

    /// The value of hyperparameter `name` in `group`.
    pub fn hyper(&self, group: usize, name: &str) -> Result<f64> {
        self.check_group(group)?;
        Ok(self.groups[group].hypers[self.hyper_index(name)?])
    }

    /// Sets hyperparameter `name` of `group` for the following steps (never recompiles).
    /// Every `f64` is accepted — infinities are legitimate (Rprop's `step_size_max`), NaN
    /// propagates as IEEE says — and saved by [`Optimizer::state_dict`] bit for bit.
    pub fn set_hyper(&mut self, group: usize, name: &str, value: f64) -> Result<()> {
        self.check_group(group)?;
        let n = self.hyper_index(name)?;
        self.groups[group].hypers[n] = value;
        Ok(())
    }

    /// Sets hyperparameter `name` in every group.
    pub fn set_hyper_all(&mut self, name: &str, value: f64) -> Result<()> {
        let n = self.hyper_index(name)?;
        for g in &mut self.groups {
            g.hypers[n] = value;
        }
        Ok(())
    }

    fn info<T: Float>(&self, handle: &Param<T>) -> Result<&ParamInfo> {
        match self.params.get(handle.index) {
            Some(info) if handle.optimizer == self.id && info.dtype == T::DTYPE => Ok(info),
            _ => Err(Error::UnknownParam {
                what: format!("{handle:?} (from another optimizer)"),
            }),
        }
    }

    /// The parameter's values.
    pub fn param<T: Float>(&self, handle: &Param<T>) -> Result<&[T]> {
        let info = self.info(handle)?;
        let store = self.groups[info.group].store::<T>();
        Ok(&store.params.as_slice()[info.offset..info.offset + info.len])
    }

    /// The parameter's values, writable (e.g. to initialise them).
    pub fn param_mut<T: Float>(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
        let info = self.info(handle)?.clone();
        let store = self.groups[info.group].store_mut::<T>();
        Ok(&mut store.params.as_mut_slice()[info.offset..info.offset + info.len])
    }

    /// The parameter as an ndarray view of its shape.
    pub fn param_view<T: Float>(&self, handle: &Param<T>) -> Result<ArrayViewD<'_, T>> {
        let shape = IxDyn(&self.info(handle)?.shape);
        Ok(ArrayViewD::from_shape(shape, self.param(handle)?).expect("length matches shape"))
    }

    /// The gradient, or `None` when the parameter has none (it will be skipped by `step`).
    pub fn grad<T: Float>(&self, handle: &Param<T>) -> Result<Option<&[T]>> {
        self.info(handle)?;
        if !self.has_grad[handle.index] {
            return Ok(None);
        }
        Ok(Some(self.grad_slice(handle.index)))
    }

    /// Parameter `i`'s gradient buffer, whatever it holds; `T` must be its dtype.
    fn grad_slice<T: Float>(&self, i: usize) -> &[T] {
        let info = &self.params[i];
        let store = self.groups[info.group].store::<T>();
        &store.grads.as_slice()[info.offset..info.offset + info.len]
    }

    /// [`Optimizer::grad_slice`] for writing.
    fn grad_slice_mut<T: Float>(&mut self, i: usize) -> &mut [T] {
        let info = &self.params[i];
        let (offset, len) = (info.offset, info.len);
        let store = self.groups[info.group].store_mut::<T>();
        &mut store.grads.as_mut_slice()[offset..offset + len]
    }

    /// The gradient for writing or accumulating into; a parameter without a gradient gets a
    /// zero one first, as PyTorch's autograd creates it.
    pub fn grad_mut<T: Float>(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
        self.info(handle)?;
        let had = std::mem::replace(&mut self.has_grad[handle.index], true);
        let grad = self.grad_slice_mut(handle.index);
        if !had {
            grad.fill(T::ZERO);
        }
        Ok(grad)
    }

    /// The gradient as a writable ndarray view of the parameter's shape (see
    /// [`Optimizer::grad_mut`]).
    pub fn grad_view_mut<T: Float>(&mut self, handle: &Param<T>) -> Result<ArrayViewMutD<'_, T>> {
        let shape = IxDyn(&self.info(handle)?.shape.clone());
        Ok(ArrayViewMutD::from_shape(shape, self.grad_mut(handle)?).expect("length matches shape"))
    }

    /// Sets the gradient to `grad` (same length as the parameter).
    pub fn set_grad<T: Float>(&mut self, handle: &Param<T>, grad: &[T]) -> Result<()> {
        let info = self.info(handle)?;
        if grad.len() != info.len {
            return Err(Error::LengthMismatch {
                what: format!("grad of `{}`", info.name),
                expected: info.len,
                actual: grad.len(),
            });
        }
        self.grad_mut(handle)?.copy_from_slice(grad);
        Ok(())
    }

    /// Read access to every parameter of dtype `T` and write access to every gradient at the
    /// same time, for a forward and backward pass.
    pub fn split<T: Float>(&mut self) -> (Params<'_, T>, Grads<'_, T>) {
        let mut params = Vec::with_capacity(self.groups.len());
        let mut grads = Vec::with_capacity(self.groups.len());
        for g in &mut self.groups {
            let store = g.store_mut::<T>();
            params.push(store.params.as_slice());
            grads.push(store.grads.as_mut_slice());
        }
        let info = &self.params;
        let id = self.id;
        (
            Params { id, info, params },
            Grads {
                id,
                info,
                has_grad: &mut self.has_grad,
                grads,
            },
        )
    }

    /// Clears every gradient, setting it to none (PyTorch's default): parameters get no
    /// update until a gradient is written again.
    pub fn zero_grad(&mut self) {
        self.has_grad.fill(false);
    }

    /// Like `zero_grad`; with `set_to_none = false`, existing gradients are set to zero
    /// instead (parameters without one stay without one).
    pub fn zero_grad_with(&mut self, set_to_none: bool) {
        if set_to_none {
            return self.zero_grad();
        }
        for (info, &has) in self.params.iter().zip(&self.has_grad) {
            if has {
                let range = info.offset..info.offset + info.len;
                match info.dtype {
                    DType::F32 => self.groups[info.group].f32.grads.as_mut_slice()[range].fill(0.0),
                    DType::F64 => self.groups[info.group].f64.grads.as_mut_slice()[range].fill(0.0),
                }
            }
        }
    }

    /// Registers `hook` to run at the start of every `step`, after the hooks registered
    /// before it. A hook registered by a hook runs from the next step on.
    pub fn register_step_pre_hook(
        &mut self,
        hook: impl FnMut(&mut Optimizer) + Send + 'static,
    ) -> HookId {
        let id = HookId(self.next_hook);
        self.next_hook += 1;
        self.pre_hooks
            .push((id, Some(std::sync::Mutex::new(Box::new(hook)))));
        id
    }

    /// Registers `hook` to run at the end of every successful `step`, after the hooks
    /// registered before it.
    pub fn register_step_post_hook(
        &mut self,
        hook: impl FnMut(&mut Optimizer) + Send + 'static,
    ) -> HookId {
        let id = HookId(self.next_hook);
        self.next_hook += 1;
        self.post_hooks
            .push((id, Some(std::sync::Mutex::new(Box::new(hook)))));
        id
    }

    /// Removes a hook; returns whether it was registered. It works from inside a hook too,
    /// the hook itself included (as a PyTorch handle's `remove()` does): a removed hook
    /// never runs again, not even later in the same step.
    pub fn remove_hook(&mut self, id: HookId) -> bool {
        let before = self.pre_hooks.len() + self.post_hooks.len();
        self.pre_hooks.retain(|(h, _)| *h != id);
        self.post_hooks.retain(|(h, _)| *h != id);
        before != self.pre_hooks.len() + self.post_hooks.len()
    }

    /// The number of updates the parameter has received (0 before its first).
    pub fn param_step<T: Float>(&self, handle: &Param<T>) -> Result<u64> {
        self.info(handle)?;
        Ok(self.state[handle.index].as_ref().map_or(0, |s| s.step))
    }

    /// The parameter's state slot `name` (a view of its buffer), or `None` before its first
    /// update.
    pub fn state_buffer<T: Float>(&self, handle: &Param<T>, name: &str) -> Result<Option<&[T]>> {
        let info = self.info(handle)?;
        let slot = self.element_slot(name)?;
        if self.state[handle.index].is_none() {
            return Ok(None);
        }
        let store = self.groups[info.group].store::<T>();
        Ok(Some(
            &store.slots[slot].as_slice()[info.offset..info.offset + info.len],
        ))
    }

    /// Position among the element slots (the store's slot buffers) of slot `name`.
    fn element_slot(&self, name: &str) -> Result<usize> {
        let p = &self.engine.program;
        p.element_slots()
            .position(|s| p.slots[s].name == name)
            .ok_or_else(|| Error::UnknownSlot {
                name: name.to_string(),
            })
    }

    fn is_scalar_slot(&self, n: usize) -> bool {
        self.engine.program.slots[n].kind == SlotKind::Scalar
    }

    /// The value of scalar slot `n` a parameter of group `g` with scalar state `own` reads:
    /// its own, or the group's for a group slot.
    fn scalar_state(&self, g: usize, own: &[f64], n: usize) -> f64 {
        match self.engine.program.slots[n].kind {
            SlotKind::Group => self.groups[g].scalars[n],
            SlotKind::Optimizer => self.shared[n],
            _ => own[n],
        }
    }
}

/// Read access to every parameter of one dtype (see [`Optimizer::split`]).
pub struct Params<'a, T> {
    id: u64,
    info: &'a [ParamInfo],
    params: Vec<&'a [T]>,
}

impl<'a, T: Float> Params<'a, T> {
    /// The parameter's values.
    pub fn get(&self, handle: &Param<T>) -> Result<&'a [T]> {
        let info = lookup(self.id, self.info, handle)?;
        Ok(&self.params[info.group][info.offset..info.offset + info.len])
    }

    /// The parameter as an ndarray view of its shape.
    pub fn view(&self, handle: &Param<T>) -> Result<ArrayViewD<'a, T>> {
        let shape = IxDyn(&lookup(self.id, self.info, handle)?.shape);
        Ok(ArrayViewD::from_shape(shape, self.get(handle)?).expect("length matches shape"))
    }
}

/// Write access to every gradient of one dtype (see [`Optimizer::split`]).
pub struct Grads<'a, T> {
    id: u64,
    info: &'a [ParamInfo],
    has_grad: &'a mut [bool],
    grads: Vec<&'a mut [T]>,
}

impl<T: Float> Grads<'_, T> {
    /// The gradient for writing or accumulating into (zero if the parameter had none).
    pub fn get_mut(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
        let info = lookup(self.id, self.info, handle)?;
        let grad = &mut self.grads[info.group][info.offset..info.offset + info.len];
        if !std::mem::replace(&mut self.has_grad[handle.index], true) {
            grad.fill(T::ZERO);
        }
        Ok(grad)
    }

    /// The gradient as a writable ndarray view of the parameter's shape.
    pub fn view_mut(&mut self, handle: &Param<T>) -> Result<ArrayViewMutD<'_, T>> {
        let shape = IxDyn(&lookup(self.id, self.info, handle)?.shape.clone());
        Ok(ArrayViewMutD::from_shape(shape, self.get_mut(handle)?).expect("length matches shape"))
    }
}

fn lookup<'a, T: Float>(
    id: u64,
    info: &'a [ParamInfo],
    handle: &Param<T>,
) -> Result<&'a ParamInfo> {
    match info.get(handle.index) {
        Some(i) if handle.optimizer == id && i.dtype == T::DTYPE => Ok(i),
        _ => Err(Error::UnknownParam {
            what: format!("{handle:?} (from another optimizer)"),
        }),
    }
}

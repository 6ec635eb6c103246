//! The optimizer runtime, with `torch.optim`'s semantics: parameter groups with per-group
//! hyperparameters, per-parameter state created at a parameter's first update, parameters
//! without a gradient skipped, `zero_grad`, `step`, step with a closure, hooks, and
//! `state_dict` / `load_state_dict`.
//!
//! The optimizer owns its parameters and gradients in flat, aligned buffers per
//! (group, dtype); a typed [`Param`] handle gives a slice or ndarray view of each. One step
//! runs one parallel region per dtype over the segments of every group: neighbouring
//! parameters with a gradient and the same per-step scalars form one segment. For buffers the caller owns, use [`crate::Stepper`].

mod access;
mod accumulate;
mod clip;
mod precision;
mod scaler;
pub(crate) mod state_dict;
mod step;
pub(crate) mod store;

pub use crate::engine::{PoolKind, GRAIN};
pub use access::{Grads, Param, Params};
pub use accumulate::{AccumulationState, GradAccumulation};
pub use precision::Precision;
pub use scaler::{GradScaler, ScalerState};
pub use state_dict::{GroupEntry, LoadReport, StateDict, StateEntry, TensorData};

use crate::engine::{Engine, Settings};
use crate::ir::SlotKind;
use crate::segment::{Elems, ElemsRef};
use crate::{passes, DType, Element, Error, Executor, Graph, Jit, Layout, Program, Result};
use ndarray::{ArrayBase, Data, Dimension};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{AnyBuf, ALIGN};

/// What the optimizer knows of a parameter.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Unique name (the key of `state_dict` matching).
    pub name: String,
    /// Its group.
    pub group: usize,
    /// Its dtype (its gradient's too).
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its store in its group.
    store: usize,
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

/// The buffers of one (group, layout): the parameters of a group whose streams are stored
/// alike.
pub(crate) struct FlatStore {
    /// The storage of every stream (param, grad, each element slot), resolved to the
    /// program's streams.
    layout: Layout,
    /// The seed of its stochastic rounding (see [`Precision::seed`]).
    seed: u64,
    params: AnyBuf,
    grads: AnyBuf,
    /// One per element slot, allocated at the store's first step or state load.
    slots: Vec<AnyBuf>,
    /// Elements in use, padding included.
    len: usize,
}

impl FlatStore {
    fn new(layout: Layout, seed: u64) -> Self {
        // Empty: a few bytes each (alignment and stagger), which an allocator always has.
        let empty = |stream: usize| {
            AnyBuf::zeros(layout.dtype(stream as u32), 0, stream, false).expect("a few bytes")
        };
        FlatStore {
            params: empty(0),
            grads: empty(1),
            slots: Vec::new(),
            len: 0,
            layout,
            seed,
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
                .map(|k| AnyBuf::zeros(self.layout.dtype(2 + k as u32), self.len, 2 + k, huge))
                .collect::<Result<_>>()?;
        }
        Ok(())
    }

    /// Every stream, for the engine: the parameters, the gradients and the element slots
    /// (none before they exist).
    pub(crate) fn streams(&mut self) -> Streams<'_> {
        let state = self.slots.iter_mut().map(AnyBuf::elems).collect();
        (self.params.elems(), self.grads.elems_ref(), state)
    }

    /// Where a parameter of `len` elements added now would end (its start is `self.len`):
    /// the next start aligned in every stream. `None` when that overflows.
    fn end_after(&self, len: usize) -> Option<usize> {
        let size = self.layout.min_size();
        len.checked_add(ALIGN / size)
            .and_then(|_| self.len.checked_add(crate::engine::padded(len, size)))
    }

    /// Grows every stream to `len` elements (new ones zero), all or none: on failure the
    /// streams grown so far shrink back (which never allocates) and the error is returned.
    fn grow(&mut self, len: usize, huge: bool) -> Result<()> {
        let old = self.len;
        let streams = [&mut self.params, &mut self.grads]
            .into_iter()
            .chain(self.slots.iter_mut());
        let mut grown: Vec<&mut AnyBuf> = Vec::new();
        for buf in streams {
            if let Err(e) = buf.resize(len, huge) {
                for done in grown {
                    done.resize(old, huge).expect("shrinking never allocates");
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
pub(crate) type Streams<'a> = (Elems<'a>, ElemsRef<'a>, Vec<Elems<'a>>);

/// A parameter group: hyperparameter values and its stores.
pub(crate) struct Group {
    hypers: Vec<f64>,
    /// Per hyperparameter: the value a scheduler first saw (PyTorch's `initial_lr`), once
    /// one has (see [`Optimizer::initial_hyper`]).
    initial: Vec<Option<f64>>,
    /// Per slot: the group state's value (meaningful for group slots only).
    scalars: Vec<f64>,
    params: Vec<usize>,
    /// One per layout its parameters have, in the order they first appeared.
    stores: Vec<FlatStore>,
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
    /// How parameters added from now on are stored.
    precision: Precision,
    /// Steps applied so far: with the seed, the key of stochastic rounding's generator.
    applied: u64,
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
            precision: Precision::default(),
            applied: 0,
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
            initial: vec![None; hypers.len()],
            hypers,
            scalars: self.slot_inits.clone(),
            params: Vec::new(),
            stores: Vec::new(),
        });
        Ok(self.groups.len() - 1)
    }

    /// Sets how parameters added from now on are stored (see [`Precision`]); parameters
    /// already added keep theirs.
    pub fn with_precision(mut self, precision: Precision) -> Optimizer {
        self.precision = precision;
        self
    }

    /// Like [`Optimizer::with_precision`], on an optimizer in use.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Adds a parameter to `group`, copying `values` into the optimizer's flat storage; its
    /// gradient is stored in its dtype `T`, its element state as the optimizer's
    /// [`Precision`] says.
    ///
    /// Fails on an unknown group or a name already used, and when the precision does not fit
    /// the parameter (see [`Precision`]); then nothing changed.
    pub fn add_param<T: Element, S: Data<Elem = T>, D: Dimension>(
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
        let layout = self.precision.layout(T::DTYPE, &self.engine.program)?;
        let seed = self.precision.seed;
        let len = values.len();
        let huge = self.huge_pages;
        let stores = &mut self.groups[group].stores;
        let store = match stores
            .iter()
            .position(|s| s.layout == layout && s.seed == seed)
        {
            Some(k) => k,
            None => {
                stores.push(FlatStore::new(layout, seed));
                stores.len() - 1
            }
        };
        let flat = &mut stores[store];
        let offset = flat.len;
        let too_big = || Error::OutOfMemory {
            what: "parameter storage",
            bytes: usize::MAX,
        };
        // Rounded up to whole aligned blocks. All streams grow, or none and nothing else
        // changes (a new store stays, empty).
        let end = flat.end_after(len).ok_or_else(too_big)?;
        flat.grow(end, huge)?;
        let params = flat
            .params
            .typed_mut::<T>()
            .expect("the store's params are T");
        for (dst, src) in params[offset..offset + len].iter_mut().zip(values.iter()) {
            *dst = *src;
        }
        let index = self.params.len();
        self.names.insert(name.to_string(), self.params.len());
        self.params.push(ParamInfo {
            name: name.to_string(),
            group,
            dtype: T::DTYPE,
            shape: values.shape().to_vec(),
            store,
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

    /// The store of parameter `i`.
    pub(crate) fn store_of(&self, i: usize) -> &FlatStore {
        let info = &self.params[i];
        &self.groups[info.group].stores[info.store]
    }

    /// The store of parameter `i`, writable.
    pub(crate) fn store_of_mut(&mut self, i: usize) -> &mut FlatStore {
        let info = &self.params[i];
        &mut self.groups[info.group].stores[info.store]
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

    /// The initial value of hyperparameter `name` in `group`, as schedulers see it: its value
    /// when a scheduler first asked, recorded then (PyTorch's `group.setdefault("initial_lr",
    /// group["lr"])`), so that a second scheduler built after a first one changed the value
    /// starts from the same base, and [`crate::schedule::Scheduler::sequential`] can go back
    /// to it. Kept in the state dict ([`GroupEntry::initial`]).
    pub fn initial_hyper(&mut self, group: usize, name: &str) -> Result<f64> {
        self.check_group(group)?;
        let n = self.hyper_index(name)?;
        let g = &mut self.groups[group];
        Ok(*g.initial[n].get_or_insert(g.hypers[n]))
    }

    /// Sets hyperparameter `name` in every group.
    pub fn set_hyper_all(&mut self, name: &str, value: f64) -> Result<()> {
        let n = self.hyper_index(name)?;
        for g in &mut self.groups {
            g.hypers[n] = value;
        }
        Ok(())
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

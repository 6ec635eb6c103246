//! [`OptjitOptimizer`]: any optjit optimizer as a `candle_nn::Optimizer`, stepping each
//! `Var`'s CPU storage in place.

use crate::config::{Clip, Config};
use crate::storage::{self, CandleFloat};
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use half::{bf16, f16};
use optjit::schedule::Hypers;
use optjit::{ParamRef, ParamState, Stepper};

/// One var: its name, its group and its optimizer state (in the var's dtype).
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) var: Var,
    pub(crate) group: usize,
    pub(crate) state: State,
}

/// A var's state, in the var's dtype.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    F32(ParamState<f32>),
    F64(ParamState<f64>),
    BF16(ParamState<bf16>),
    F16(ParamState<f16>),
}

/// The element types whose state an [`Entry`] holds.
pub(crate) trait Stored: CandleFloat {
    /// The state, if it is of this type.
    fn state_mut(state: &mut State) -> Option<&mut ParamState<Self>>;
    /// Wraps a state of this type.
    fn wrap(state: ParamState<Self>) -> State;
}

macro_rules! stored {
    ($t:ty, $variant:ident) => {
        impl Stored for $t {
            fn state_mut(state: &mut State) -> Option<&mut ParamState<Self>> {
                match state {
                    State::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn wrap(state: ParamState<Self>) -> State {
                State::$variant(state)
            }
        }
    };
}

stored!(f32, F32);
stored!(f64, F64);
stored!(bf16, BF16);
stored!(f16, F16);

impl State {
    /// Fresh state for a var of `len` elements of `dtype` (one the adapter steps).
    pub(crate) fn fresh(stepper: &Stepper, dtype: DType, len: usize) -> Result<State> {
        Ok(match dtype {
            DType::F64 => State::F64(stepper.init_state(len)?),
            DType::BF16 => State::BF16(stepper.init_state(len)?),
            DType::F16 => State::F16(stepper.init_state(len)?),
            _ => State::F32(stepper.init_state(len)?),
        })
    }
}

/// Any optjit optimizer over candle `Var`s: the built-ins, PyTorch's by constructor
/// arguments, or `.opt` text; with parameter groups by name, optjit's schedulers (it
/// implements [`Hypers`]), gradient clipping and state dicts keyed by the vars' names.
///
/// Each step updates the vars' CPU storage in place through candle's in-place custom ops:
/// no parameter, gradient or state is copied, and the vars of one group and dtype are
/// stepped by one engine call (see [`crate::MAX_NEST`]). The state lives in optjit's
/// buffers, in each var's dtype (f32, f64, bf16 or f16).
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, ParamsAdamW, VarMap};
/// use optjit_candle::{Config, OptjitOptimizer};
///
/// let varmap = VarMap::new();
/// let w = varmap.get(2, "w", candle_nn::Init::Const(1.0), DType::F32, &Device::Cpu)?;
/// let params = ParamsAdamW { lr: 0.1, weight_decay: 0.0, ..Default::default() };
/// let mut opt = OptjitOptimizer::from_varmap(&varmap, Config::adamw(&params)?)?;
/// let loss = w.sqr()?.sum_all()?;
/// opt.backward_step(&loss)?;
/// // AdamW's first step moves each element by lr against its gradient's sign.
/// let moved = w.to_vec1::<f32>()?;
/// assert!(moved.iter().all(|x| (x - 0.9).abs() < 1e-6));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OptjitOptimizer {
    pub(crate) entries: Vec<Entry>,
    /// One per group: group 0 the config's, then one per [`crate::ParamGroup`].
    pub(crate) groups: Vec<Stepper>,
    clip: Option<Clip>,
    last_norm: Option<f64>,
}

impl OptjitOptimizer {
    /// The vars of `varmap`, named as there and taken in the order of their names.
    pub fn from_varmap(varmap: &candle_nn::VarMap, config: Config) -> Result<OptjitOptimizer> {
        let mut named: Vec<(String, Var)> = {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        OptjitOptimizer::new_named(named, config)
    }

    /// Named vars, in the order given (that of the gradient norm's sum when clipping).
    pub fn new_named(vars: Vec<(String, Var)>, config: Config) -> Result<OptjitOptimizer> {
        config.check()?;
        let graph = match config.clip {
            Some(_) => optjit::optim::accumulate(&config.graph)?,
            None => config.graph.clone(),
        };
        let mut groups = Vec::with_capacity(1 + config.groups.len());
        for own in std::iter::once(&[][..]).chain(config.groups.iter().map(|g| &g.hypers[..])) {
            let mut stepper = Stepper::new(&graph)?;
            for (name, value) in config.hypers.iter().chain(own) {
                stepper.set_hyper(name, *value)?;
            }
            groups.push(stepper);
        }
        if groups[0].hyper("lr").is_err() {
            return Err(Error::NoLearningRate {
                optimizer: graph.name().to_string(),
            });
        }
        check_vars(&vars)?;
        let mut entries = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let group = config.group_of(&name);
            let state = State::fresh(&groups[group], var.dtype(), var.elem_count())?;
            entries.push(Entry {
                name,
                var,
                group,
                state,
            });
        }
        check_one_call(&graph, &entries)?;
        Ok(OptjitOptimizer {
            entries,
            groups,
            clip: config.clip,
            last_norm: None,
        })
    }

    /// The vars' names, in their order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The group of the var named `name`.
    pub fn group_of(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.group)
    }

    /// The total gradient norm the last clipped step saw (before clipping), if clipping.
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_norm
    }

    /// The number of updates the var named `name` has received.
    pub fn steps(&self, name: &str) -> Option<u64> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        Some(match &e.state {
            State::F32(s) => s.step,
            State::F64(s) => s.step,
            State::BF16(s) => s.step,
            State::F16(s) => s.step,
        })
    }

    /// One step of every var that has a gradient in `grads` (the others keep their values
    /// and state, as in PyTorch). Returns whether the step was applied (`false` when the
    /// optimizer's skip condition held, see [`optjit::Graph::skip`]).
    ///
    /// Everything is checked before any var changes: a gradient on another device, of
    /// another dtype or shape, or sharing a var's memory is an error and nothing is stepped.
    /// Non-contiguous gradients (e.g. candle's broadcast gradient of a sum) are made
    /// contiguous first (a copy of the gradient, never of the var). The groups and dtypes are
    /// stepped one after another (on one thread with a stack deep enough for the largest,
    /// started before anything changes when a group has more than [`crate::MAX_NEST`] vars);
    /// only an internal error of the engine (a failed JIT compile) could stop a later one
    /// after an earlier one stepped.
    ///
    /// A graph with a skip condition or a reduction over all parameters is refused when built
    /// over vars that need more than one call ([`Error::SpansCalls`]), so a step is never
    /// skipped or reduced group by group; [`Config::clip_grad_norm`] spans all gradients.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<bool> {
        let mut work: Vec<(usize, Tensor)> = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            let Some(g) = grads.get(e.var.as_tensor()) else {
                continue;
            };
            work.push((i, checked_grad(e, g)?));
        }
        check_aliases(&self.entries, &work)?;
        if let Some(clip) = self.clip {
            let grads: Vec<&Tensor> = work.iter().map(|(_, g)| g).collect();
            let total = crate::clip::grad_norm(&grads, clip.norm_type)?;
            let factor = crate::clip::torch_clip_factor(clip.max_norm, total);
            for stepper in &mut self.groups {
                stepper.set_hyper(optjit::optim::GRAD_SCALE, factor)?;
            }
            self.last_norm = Some(total);
        }
        // One engine call per group and dtype, on a stack deep enough for the largest.
        let mut buckets: Vec<Bucket<'_>> = Vec::new();
        for group in 0..self.groups.len() {
            for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
                let picked: Vec<&(usize, Tensor)> = work
                    .iter()
                    .filter(|(i, _)| {
                        let e = &self.entries[*i];
                        e.group == group && e.var.dtype() == dtype
                    })
                    .collect();
                if !picked.is_empty() {
                    buckets.push(Bucket {
                        group,
                        dtype,
                        picked,
                    });
                }
            }
        }
        let depth = buckets.iter().map(|b| b.picked.len()).max().unwrap_or(0);
        storage::deep_enough(depth, || {
            let mut applied = true;
            for b in &buckets {
                applied &= match b.dtype {
                    DType::F64 => self.step_bucket::<f64>(b.group, &b.picked)?,
                    DType::BF16 => self.step_bucket::<bf16>(b.group, &b.picked)?,
                    DType::F16 => self.step_bucket::<f16>(b.group, &b.picked)?,
                    _ => self.step_bucket::<f32>(b.group, &b.picked)?,
                };
            }
            Ok(applied)
        })
    }

    /// Steps the vars `picked` (indices into the entries, with their gradients), all of
    /// group `group` and element type `T`, with one engine call.
    fn step_bucket<T: Stored>(
        &mut self,
        group: usize,
        picked: &[&(usize, Tensor)],
    ) -> Result<bool> {
        let vars: Vec<Tensor> = picked
            .iter()
            .map(|(i, _)| self.entries[*i].var.as_tensor().clone())
            .collect();
        let pairs: Vec<(&Tensor, &Tensor)> =
            vars.iter().zip(picked).map(|(v, (_, g))| (v, g)).collect();
        let stepper = &self.groups[group];
        let mut states: Vec<&mut ParamState<T>> = Vec::with_capacity(picked.len());
        let mut next = picked.iter().map(|(i, _)| *i).peekable();
        for (i, e) in self.entries.iter_mut().enumerate() {
            if next.peek() == Some(&i) {
                next.next();
                // The var's dtype is T, hence its state's (so made, so loaded).
                states.push(T::state_mut(&mut e.state).ok_or(Error::Internal(
                    "a var's state has another dtype than the var",
                ))?);
            }
        }
        let outcome = storage::with_slices::<T, _, _>(&pairs, |params, grads| {
            let mut refs: Vec<ParamRef<'_, T, T>> = params
                .iter_mut()
                .zip(grads)
                .zip(states)
                .map(|((param, grad), state)| ParamRef { param, grad, state })
                .collect();
            stepper.step_many(&mut refs)
        })?;
        match outcome {
            Some(applied) => Ok(applied?),
            None => Ok(true),
        }
    }
}

/// The vars of one engine call: a group's vars of one dtype, with their gradients (indices
/// into the entries).
struct Bucket<'a> {
    group: usize,
    dtype: DType,
    picked: Vec<&'a (usize, Tensor)>,
}

/// Refuses a graph whose step must see every var at once (a skip condition, a reduction over
/// all parameters) when its vars step in more than one engine call (see [`Error::SpansCalls`]).
/// The fused clipping of [`Config::clip_grad_norm`] is not such a reduction: the adapter
/// computes its norm over every gradient before the calls.
fn check_one_call(graph: &optjit::Graph, entries: &[Entry]) -> Result<()> {
    let what = if graph.skip().is_some() {
        "a skip condition"
    } else if graph
        .nodes()
        .iter()
        .any(|n| matches!(n, optjit::ir::Node::Reduce(_, optjit::ir::Scope::Global, _)))
    {
        "a reduction over all parameters"
    } else {
        return Ok(());
    };
    let mut calls: Vec<(usize, DType)> = entries.iter().map(|e| (e.group, e.var.dtype())).collect();
    calls.sort_by_key(|&(g, d)| (g, d.as_str()));
    calls.dedup();
    if calls.len() > 1 {
        return Err(Error::SpansCalls {
            optimizer: graph.name().to_string(),
            what,
            calls: calls.len(),
        });
    }
    Ok(())
}

/// Checks every var: on the CPU, contiguous, of a dtype the engine steps; no two the same
/// var (id or memory) or the same name.
fn check_vars(vars: &[(String, Var)]) -> Result<()> {
    let mut names = std::collections::HashMap::new();
    let mut ids = std::collections::HashMap::new();
    let mut ranges = Vec::with_capacity(vars.len());
    for (i, (name, var)) in vars.iter().enumerate() {
        if !var.device().is_cpu() {
            return Err(Error::NotCpu {
                what: "the var",
                name: name.clone(),
                device: format!("{:?}", var.device().location()),
            });
        }
        if !storage::supported(var.dtype()) {
            return Err(Error::UnsupportedDType {
                name: name.clone(),
                dtype: var.dtype(),
            });
        }
        if !var.is_contiguous() {
            return Err(Error::NotContiguous { name: name.clone() });
        }
        if names.insert(name.as_str(), i).is_some() {
            return Err(Error::DuplicateName { name: name.clone() });
        }
        if let Some(first) = ids.insert(var.id(), i) {
            return Err(Error::DuplicateVar {
                first: vars[first].0.clone(),
                second: name.clone(),
            });
        }
        ranges.push((storage::address_range(var.as_tensor()), i));
    }
    ranges.sort_by_key(|(r, _)| r.start);
    for w in ranges.windows(2) {
        if storage::overlap(&w[0].0, &w[1].0) {
            return Err(Error::DuplicateVar {
                first: vars[w[0].1.min(w[1].1)].0.clone(),
                second: vars[w[0].1.max(w[1].1)].0.clone(),
            });
        }
    }
    Ok(())
}

/// The gradient `g` of entry `e`, checked (CPU, dtype, shape) and contiguous.
fn checked_grad(e: &Entry, g: &Tensor) -> Result<Tensor> {
    if !g.device().is_cpu() {
        return Err(Error::NotCpu {
            what: "the gradient",
            name: e.name.clone(),
            device: format!("{:?}", g.device().location()),
        });
    }
    if g.dtype() != e.var.dtype() {
        return Err(Error::GradDTypeMismatch {
            name: e.name.clone(),
            var: e.var.dtype(),
            grad: g.dtype(),
        });
    }
    if g.dims() != e.var.dims() {
        return Err(Error::GradShapeMismatch {
            name: e.name.clone(),
            var: e.var.dims().to_vec(),
            grad: g.dims().to_vec(),
        });
    }
    Ok(match g.is_contiguous() {
        true => g.clone(),
        false => g.contiguous()?,
    })
}

/// Refuses gradients that share memory with a var being stepped (the nest of in-place ops
/// would read what it writes, or wait on its own lock).
fn check_aliases(entries: &[Entry], work: &[(usize, Tensor)]) -> Result<()> {
    let mut vars: Vec<(std::ops::Range<usize>, usize)> = work
        .iter()
        .map(|(i, _)| (storage::address_range(entries[*i].var.as_tensor()), *i))
        .filter(|(r, _)| !r.is_empty())
        .collect();
    vars.sort_by_key(|(r, _)| r.start);
    for (i, g) in work {
        let range = storage::address_range(g);
        // The last var starting before the gradient ends is the only candidate (vars do
        // not overlap one another, checked when they were added).
        let after = vars.partition_point(|(r, _)| r.start < range.end);
        if let Some((r, v)) = after.checked_sub(1).map(|k| &vars[k]) {
            if storage::overlap(r, &range) {
                return Err(Error::GradAliasesVar {
                    name: entries[*i].name.clone(),
                    var: entries[*v].name.clone(),
                });
            }
        }
    }
    Ok(())
}

impl candle_nn::Optimizer for OptjitOptimizer {
    type Config = Config;

    /// The vars named by their position (`"0"`, `"1"`, ...): state dicts then depend on the
    /// order of `vars`, and [`crate::ParamGroup`] patterns see those names. Prefer
    /// [`OptjitOptimizer::from_varmap`] (its names, in a fixed order).
    fn new(vars: Vec<Var>, config: Config) -> candle_core::Result<Self> {
        if config.has_groups() {
            // Position names would silently match no pattern.
            return Err(Error::InvalidOption {
                option: "parameter groups",
                reason:
                    "need the vars' names: build with OptjitOptimizer::from_varmap or new_named",
            }
            .into());
        }
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect();
        Ok(OptjitOptimizer::new_named(named, config)?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.try_step(grads)?;
        Ok(())
    }

    /// Group 0's `lr`.
    fn learning_rate(&self) -> f64 {
        self.groups[0].hyper("lr").unwrap_or(f64::NAN)
    }

    /// Sets `lr` in every group (use [`Hypers::set_hyper`] for one group).
    fn set_learning_rate(&mut self, lr: f64) {
        for stepper in &mut self.groups {
            // Every group has an lr: the graph has one (checked when built).
            let _ = stepper.set_hyper("lr", lr);
        }
    }
}

/// optjit's schedulers drive any hyperparameter of any group.
impl Hypers for OptjitOptimizer {
    fn num_groups(&self) -> usize {
        self.groups.len()
    }

    fn hyper(&self, group: usize, name: &str) -> optjit::Result<f64> {
        self.stepper(group)?.hyper(name)
    }

    fn set_hyper(&mut self, group: usize, name: &str, value: f64) -> optjit::Result<()> {
        self.stepper_mut(group)?.set_hyper(name, value)
    }

    fn initial_hyper(&mut self, group: usize, name: &str) -> optjit::Result<f64> {
        self.stepper_mut(group)?.initial_hyper(name)
    }
}

impl OptjitOptimizer {
    fn stepper(&self, group: usize) -> optjit::Result<&Stepper> {
        let count = self.groups.len();
        (self.groups.get(group)).ok_or(optjit::Error::UnknownGroup {
            index: group,
            count,
        })
    }

    fn stepper_mut(&mut self, group: usize) -> optjit::Result<&mut Stepper> {
        let count = self.groups.len();
        (self.groups.get_mut(group)).ok_or(optjit::Error::UnknownGroup {
            index: group,
            count,
        })
    }
}

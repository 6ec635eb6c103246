//! `optjit._optjit`, optjit's Python extension: a compiled optimizer (`Program`) that
//! steps a parameter group's torch tensors in place, with one engine call for the group and
//! the GIL released. `optjit/torch.py` builds the `torch.optim` classes on it.
//!
//! Parameters, gradients and state stay torch tensors (the state in the optimizer's
//! `self.state[p]`, in PyTorch's format: a 0-dimensional `step`, one tensor per slot), so
//! PyTorch's schedulers, `GradScaler`, clipping and checkpoints work on them unchanged.

mod tensor;

use optjit::ir::SlotKind;
use optjit::{optim, ErrorKind, ParamSlices, Stepper};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use tensor::{Owned, Scalar, Span, Torch};

/// An optjit error as the Python exception a user expects: `ValueError` for a bad definition
/// or bad input, `MemoryError` when memory ran out, `OSError` for a file, `RuntimeError`
/// otherwise.
fn py_err(e: optjit::Error) -> PyErr {
    match (e.kind(), &e) {
        (ErrorKind::UserMistake, _) => PyValueError::new_err(e.to_string()),
        (_, optjit::Error::OutOfMemory { .. }) => PyMemoryError::new_err(e.to_string()),
        (_, optjit::Error::Io { .. }) => PyOSError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A compiled optimizer: its hyperparameters (set at every step, never a recompile) and
/// state slots, and a step over torch tensors.
#[pyclass(module = "optjit._optjit")]
struct Program {
    stepper: Stepper,
}

/// One parameter's tensors in a step, checked.
struct Member<'py> {
    param: Span,
    grad: Span,
    step: Scalar,
    /// Per slot: its element buffer or its scalar.
    slots: Vec<SlotSpan>,
    /// What to add to `self.state` once the step is done.
    pending: Vec<Pending<'py>>,
}

/// State a step adds once it is done (so that a failed step adds nothing).
enum Pending<'py> {
    /// The state dict of a parameter stepped for the first time.
    State(Bound<'py, PyAny>, Bound<'py, PyDict>),
    /// The `step` of a state dict without one.
    Step(Bound<'py, PyDict>, Bound<'py, PyAny>),
}

/// One state slot's tensor, or the group's value of a group slot.
enum SlotSpan {
    Buffer(Span),
    Scalar(Scalar),
    Group(f64),
}

impl Program {
    fn new(graph: &optjit::Graph) -> PyResult<Program> {
        Ok(Program {
            stepper: Stepper::new(graph).map_err(py_err)?,
        })
    }

    /// The group slots' values a step reads: `given` (one per group slot, checked), or the
    /// slots' initial values when the program has none.
    fn group_values(&self, given: Option<Vec<f64>>) -> PyResult<Vec<f64>> {
        let inits: Vec<f64> = (self.stepper.program().slots.iter())
            .filter(|s| s.kind == SlotKind::Group)
            .map(|s| s.init)
            .collect();
        match given {
            None if inits.is_empty() => Ok(inits),
            None => Err(PyValueError::new_err(format!(
                "optimizer {:?} keeps state per param group: its step needs group_values",
                self.name()
            ))),
            Some(v) if v.len() != inits.len() => Err(PyValueError::new_err(format!(
                "{} group values for {} group slots",
                v.len(),
                inits.len()
            ))),
            Some(v) => Ok(v),
        }
    }

    /// A 0-dimensional tensor of `dtype` holding `value`.
    fn scalar<'py>(
        &self,
        py: Python<'py>,
        value: f64,
        dtype: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("dtype", dtype)?;
        py.import("torch")?
            .call_method("full", ((), value), Some(&kwargs))
    }

    /// The state of a parameter stepped for the first time: a `step` of 0 in `step_dtype`
    /// (if `keep_step`),
    /// each element slot a tensor like `param` (in `state_dtype` if given) at its initial
    /// value, each scalar slot a 0-dimensional tensor of `step_dtype`.
    fn fresh_state<'py>(
        &self,
        param: &Bound<'py, PyAny>,
        step_dtype: &Bound<'py, PyAny>,
        state_dtype: Option<&Bound<'py, PyAny>>,
        keep_step: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = param.py();
        let torch = py.import("torch")?;
        let state = PyDict::new(py);
        let scalar = |value: f64| self.scalar(py, value, step_dtype);
        if keep_step {
            state.set_item("step", scalar(0.0)?)?;
        }
        let large = large_plain(param, state_dtype)?;
        let mut element = 0;
        for slot in &self.stepper.program().slots {
            if slot.kind == SlotKind::Group {
                // Kept in the param group, not in a parameter's state.
                continue;
            }
            let value = match (slot.kind, large) {
                (SlotKind::Element, Some((addr, size))) => {
                    element += 1;
                    let dtype = match state_dtype {
                        Some(d) => d.clone(),
                        None => param.getattr("dtype")?,
                    };
                    staggered(param, addr, size, &dtype, element * STAGGER, slot.init)?
                }
                (SlotKind::Element, None) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("memory_format", torch.getattr("contiguous_format")?)?;
                    if let Some(dtype) = state_dtype {
                        kwargs.set_item("dtype", dtype)?;
                    }
                    torch.call_method("full_like", (param, slot.init), Some(&kwargs))?
                }
                _ => scalar(slot.init)?,
            };
            state.set_item(&slot.name, value)?;
        }
        Ok(state)
    }
}

/// Element state of a parameter of at least this many bytes is laid out at other offsets
/// within a page than the parameter's and each other's (see [`staggered`]); smaller state is
/// `torch.full_like` the parameter.
const STAGGER_FROM: usize = 256 * 1024;

/// Bytes between the page offsets of a parameter and of its first element slot, and between
/// consecutive slots: optjit's own store's stagger (25 cache lines).
const STAGGER: usize = 25 * 64;

/// A parameter's address and its state's element size when its state is worth staggering: a
/// plain CPU tensor (not a distributed one) of [`STAGGER_FROM`] bytes or more, of a dtype
/// optjit steps; `None` otherwise (the step checks and reports what is wrong with it).
fn large_plain(
    param: &Bound<'_, PyAny>,
    state_dtype: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<(usize, usize)>> {
    let torch = Torch::new(param.py())?;
    if !tensor::is_plain(param, &torch) {
        return Ok(None);
    }
    let Ok(span) = tensor::span(param, &torch, &String::new) else {
        return Ok(None);
    };
    let size = match state_dtype {
        Some(d) => match torch.dtype(d) {
            Some(d) => d.size(),
            None => return Ok(None),
        },
        None => span.dtype.size(),
    };
    Ok((span.len * size >= STAGGER_FROM).then_some((span.addr, size)))
}

/// A contiguous tensor shaped as `param`, of `dtype` (element size `size`) and filled with
/// `init`, whose first element sits `offset` bytes (mod 4096, rounded to a cache line) after
/// the parameter's page offset `param_addr`: a view into a buffer a page longer. Streams
/// that all start at one page offset make a step's loads and stores contend for the same
/// cache sets (a quarter slower on one thread, measured on an AVX2 EPYC); optjit's store
/// staggers its own streams the same way.
fn staggered<'py>(
    param: &Bound<'py, PyAny>,
    param_addr: usize,
    size: usize,
    dtype: &Bound<'py, PyAny>,
    offset: usize,
    init: f64,
) -> PyResult<Bound<'py, PyAny>> {
    const PAGE: usize = 4096;
    let py = param.py();
    let numel: usize = param.call_method0("numel")?.extract()?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", dtype)?;
    kwargs.set_item("device", "cpu")?;
    let flat =
        py.import("torch")?
            .call_method("empty", ((numel + PAGE / size,),), Some(&kwargs))?;
    let base: usize = flat.call_method0("data_ptr")?.extract()?;
    let target = (param_addr & !63).wrapping_add(offset) % PAGE;
    // Both multiples of 64 (torch's CPU allocator aligns to 64 bytes), so of `size`.
    let shift = (target + PAGE - base % PAGE) % PAGE;
    let view = flat
        .call_method1("narrow", (0, shift / size, numel))?
        .call_method1("view", (param.getattr("shape")?,))?;
    view.call_method1("fill_", (init,))?;
    Ok(view)
}

#[pymethods]
impl Program {
    /// The built-in for `torch.optim.<name>(params, **kwargs)`: `name` in lower case
    /// (`adam`, `sgd`, ...), `kwargs` a JSON object of PyTorch's keyword arguments.
    #[staticmethod]
    fn from_torch(name: &str, kwargs: &str) -> PyResult<Program> {
        let kwargs: serde_json::Value = serde_json::from_str(kwargs)
            .map_err(|e| PyValueError::new_err(format!("keyword arguments: {e}")))?;
        let Some(kwargs) = kwargs.as_object() else {
            return Err(PyValueError::new_err(
                "keyword arguments must be a JSON object",
            ));
        };
        Program::new(&optim::from_torch(name, kwargs).map_err(py_err)?)
    }

    /// The built-in for `optax.<name>(**kwargs)`, `kwargs` a JSON object of optax's keyword
    /// arguments (`learning_rate`, `b1`, ...).
    #[staticmethod]
    fn from_optax(name: &str, kwargs: &str) -> PyResult<Program> {
        let kwargs: serde_json::Value = serde_json::from_str(kwargs)
            .map_err(|e| PyValueError::new_err(format!("keyword arguments: {e}")))?;
        let Some(kwargs) = kwargs.as_object() else {
            return Err(PyValueError::new_err(
                "keyword arguments must be a JSON object",
            ));
        };
        Program::new(&optim::from_optax(name, kwargs).map_err(py_err)?)
    }

    /// A fresh state dict for `param`, as a step would create it (PyTorch's Adagrad makes
    /// its state in its constructor).
    #[pyo3(signature = (param, step_dtype, state_dtype=None, keep_step=true))]
    fn init_state<'py>(
        &self,
        param: &Bound<'py, PyAny>,
        step_dtype: &Bound<'py, PyAny>,
        state_dtype: Option<&Bound<'py, PyAny>>,
        keep_step: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.fresh_state(param, step_dtype, state_dtype, keep_step)
    }

    /// The built-in optimizer `name` (one of `optjit list`'s) at its default options.
    #[staticmethod]
    fn builtin(name: &str) -> PyResult<Program> {
        match optim::by_name(name) {
            Some(graph) => Program::new(&graph),
            None => Err(PyValueError::new_err(format!(
                "no built-in optimizer {name:?} (known: {})",
                optim::NAMES.join(", ")
            ))),
        }
    }

    /// `(name, initial value)` of each group slot (state kept once per param group, e.g.
    /// schedule-free's `k`), in slot order: what `step` takes as `group_values`.
    #[getter]
    fn group_slots(&self) -> Vec<(String, f64)> {
        let slots = self.stepper.program().slots.iter();
        slots
            .filter(|s| s.kind == SlotKind::Group)
            .map(|s| (s.name.clone(), s.init))
            .collect()
    }

    /// The group slots' values after an applied step of a group whose slots held
    /// `group_values` before it, with hyperparameters `hypers` (in `hypers` order). A group
    /// advances once per step whether or not its parameters have gradients, as the core's
    /// `Optimizer` and PyTorch-style reference implementations do.
    fn advance_group(&self, hypers: Vec<f64>, group_values: Vec<f64>) -> PyResult<Vec<f64>> {
        let program = self.stepper.program();
        if hypers.len() != program.hypers.len() {
            return Err(PyValueError::new_err(format!(
                "{} hyperparameter values for {} hyperparameters",
                hypers.len(),
                program.hypers.len()
            )));
        }
        let group_values = self.group_values(Some(group_values))?;
        if !program.phases.is_empty() {
            return Err(PyValueError::new_err(format!(
                "optimizer {:?} keeps state per group and reduces over parameters \
                 (sum, sumsq, ...): optjit.torch does not support both in one program yet",
                self.name()
            )));
        }
        let group_slots: Vec<usize> = (program.slots.iter().enumerate())
            .filter(|(_, s)| s.kind == SlotKind::Group)
            .map(|(n, _)| n)
            .collect();
        let varies = program.per_parameter();
        let updates = &program.prologue.state_updates;
        for &(slot, value) in updates {
            if !group_slots.contains(&(slot as usize)) {
                continue;
            }
            if varies[value as usize] {
                return Err(PyValueError::new_err(format!(
                    "group state {:?} of optimizer {:?} depends on a parameter's own values",
                    program.slots[slot as usize].name,
                    self.name()
                )));
            }
        }
        // Only values that do not vary between parameters feed the group's updates: any
        // parameter's step and scalar state give the same results (the slots' initial ones).
        let state = |n: usize| match group_slots.iter().position(|&g| g == n) {
            Some(k) => group_values[k],
            None => program.slots[n].init,
        };
        let mut values = Vec::new();
        program.eval_prologue(&hypers, 1, state, &mut values);
        let mut next = group_values.clone();
        for &(slot, value) in updates {
            if let Some(k) = group_slots.iter().position(|&n| n == slot as usize) {
                next[k] = values[value as usize];
            }
        }
        Ok(next)
    }

    /// An optimizer in optjit's text form.
    #[staticmethod]
    fn from_text(text: &str) -> PyResult<Program> {
        Program::new(&optjit::text::parse(text).map_err(py_err)?)
    }

    /// An optimizer from a `.opt` file.
    #[staticmethod]
    fn from_file(path: std::path::PathBuf) -> PyResult<Program> {
        Program::new(&optjit::text::parse_file(path).map_err(py_err)?)
    }

    /// The optimizer's name.
    #[getter]
    fn name(&self) -> String {
        self.stepper.program().name.clone()
    }

    /// `(name, default)` of each hyperparameter, in the order `step` takes their values.
    #[getter]
    fn hypers(&self) -> Vec<(String, f64)> {
        let hypers = &self.stepper.program().hypers;
        hypers.iter().map(|h| (h.name.clone(), h.default)).collect()
    }

    /// `(name, kind, initial value)` of each state slot; kind is `element` (a tensor like
    /// the parameter) or `scalar` (one number per parameter).
    #[getter]
    fn slots(&self) -> Vec<(String, &'static str, f64)> {
        let slots = &self.stepper.program().slots;
        let kind = |k: SlotKind| match k {
            SlotKind::Element => "element",
            SlotKind::Scalar => "scalar",
            SlotKind::Group => "group",
            SlotKind::Optimizer => "optimizer",
        };
        slots
            .iter()
            .map(|s| (s.name.clone(), kind(s.kind), s.init))
            .collect()
    }

    /// The compiled program, as optjit prints it.
    fn __str__(&self) -> String {
        self.stepper
            .program()
            .display(optjit::DType::F32)
            .to_string()
    }

    /// Steps the parameters in `params` that have a gradient, with hyperparameter values
    /// `hypers` (in the order of [`Program::hypers`]), on at most `threads` threads, in one
    /// engine call. Their state is `state[p]` (torch's `self.state`); a parameter without
    /// state gets a fresh one (see `fresh_state`), added to `state` once the step is done.
    /// With `keep_step` false the state keeps no `step` (as PyTorch's SGD): a state holding
    /// its slots counts as stepped. `group_values` are the group slots' values (see
    /// `group_slots`; needed when the program has any), read by every parameter; the step
    /// leaves them to the caller, who advances them with `advance_group` when it applied.
    ///
    /// Every tensor is checked before anything changes (dtype, device, layout, contiguity,
    /// lengths, memory shared between tensors): on error nothing changed. Returns whether
    /// the step was applied (`False` when the program's skip condition held).
    #[pyo3(signature = (params, state, hypers, threads, step_dtype, state_dtype=None, group=0, keep_step=true, group_values=None))]
    #[allow(clippy::too_many_arguments)]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        params: &Bound<'py, PyList>,
        state: &Bound<'py, PyDict>,
        hypers: Vec<f64>,
        threads: usize,
        step_dtype: &Bound<'py, PyAny>,
        state_dtype: Option<&Bound<'py, PyAny>>,
        group: usize,
        keep_step: bool,
        group_values: Option<Vec<f64>>,
    ) -> PyResult<bool> {
        // Keeps every tensor the spans point into alive until the step returns.
        let mut alive = Vec::new();
        let shared = Shared {
            state,
            step_dtype,
            state_dtype,
            keep_step,
        };
        let mut prepared =
            self.prepare(&shared, params, hypers, group, group_values, &mut alive)?;
        check_groups(std::slice::from_ref(&prepared))?;
        let applied = self.run(py, &mut prepared, threads)?;
        finish(state, vec![prepared])?;
        drop(alive);
        Ok(applied)
    }
}

/// What every group of a step shares: the optimizer's state dict and how new state is made.
struct Shared<'a, 'py> {
    state: &'a Bound<'py, PyDict>,
    step_dtype: &'a Bound<'py, PyAny>,
    state_dtype: Option<&'a Bound<'py, PyAny>>,
    keep_step: bool,
}

/// A group's step, its tensors gathered and checked, not yet run.
struct Prepared<'py> {
    group: usize,
    hypers: Vec<f64>,
    members: Vec<(usize, Member<'py>)>,
    /// Each member's step count and its scalar slots' values (`n_slots` per member).
    steps: Vec<u64>,
    scalars: Vec<f64>,
}

impl Program {
    /// Gathers and checks the tensors of group `group`'s step (see [`Program::step`]); the
    /// tensors its spans point into are pushed to `alive`, which must outlive the step.
    fn prepare<'py>(
        &self,
        shared: &Shared<'_, 'py>,
        params: &Bound<'py, PyList>,
        hypers: Vec<f64>,
        group: usize,
        group_values: Option<Vec<f64>>,
        alive: &mut Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Prepared<'py>> {
        let Shared {
            state,
            step_dtype,
            state_dtype,
            keep_step,
        } = *shared;
        let py = params.py();
        let names: Vec<String> = self.hypers().into_iter().map(|(n, _)| n).collect();
        if hypers.len() != names.len() {
            return Err(PyValueError::new_err(format!(
                "{} hyperparameter values for {} hyperparameters ({})",
                hypers.len(),
                names.len(),
                names.join(", ")
            )));
        }
        if let Some(bad) =
            (self.stepper.program().slots.iter()).find(|s| s.kind == SlotKind::Optimizer)
        {
            return Err(PyValueError::new_err(format!(
                "optimizer {:?} keeps state per optimizer ({:?}), which optjit.torch does not \
                 support yet",
                self.name(),
                bad.name
            )));
        }
        let group_values = self.group_values(group_values)?;
        let torch = Torch::new(py)?;
        let name = |i: usize| format!("parameter {i} of group {group}");
        let grad_attr = pyo3::intern!(py, "grad");
        // The state's keys: `step`, then each slot's name.
        let slot_names = self.stepper.program().slots.iter().map(|s| s.name.as_str());
        let keys: Vec<Bound<'py, PyString>> = std::iter::once("step")
            .chain(slot_names)
            .map(|k| PyString::intern(py, k))
            .collect();
        let mut members: Vec<(usize, Member<'py>)> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let grad = p.getattr(grad_attr)?;
            if grad.is_none() {
                continue;
            }
            let what = |w: &'static str| move || format!("{w} of {}", name(i));
            let local = tensor::local(&p, &torch)?;
            let param = tensor::span(&local, &torch, &|| name(i))?;
            let local_grad = tensor::local(&grad, &torch)?;
            let grad_span = tensor::span(&local_grad, &torch, &what("the gradient"))?;
            mixed_compute(&param, &grad_span, &|| {
                format!("the gradient of {}", name(i))
            })?;
            if grad_span.len != param.len {
                return Err(PyValueError::new_err(format!(
                    "the gradient of {} has {} elements, the parameter {}",
                    name(i),
                    grad_span.len,
                    param.len
                )));
            }
            alive.extend([local, local_grad]);
            let existing = state
                .get_item(&p)?
                .map(|s| s.cast_into::<PyDict>())
                .transpose();
            let existing = existing.map_err(|_| {
                PyValueError::new_err(format!("the state of {} is not a dict", name(i)))
            })?;
            // A state without `step` (PyTorch's SGD keeps none, nor does optjit's for a
            // program stepped with `keep_step=False`) counts as stepped once (its momentum is
            // initialized), unless it holds nothing but `None`s (PyTorch's SGD without
            // momentum keeps `momentum_buffer: None`): then it is fresh.
            let holds_nothing = |d: &Bound<'py, PyDict>| d.values().iter().all(|v| v.is_none());
            let (dict, fresh) = match existing {
                Some(d) if !holds_nothing(&d) => (d, false),
                _ => (
                    self.fresh_state(&p, step_dtype, state_dtype, keep_step)?,
                    true,
                ),
            };
            let mut pending = Vec::new();
            if fresh {
                pending.push(Pending::State(p.clone(), dict.clone()));
            }
            let temporary_step = match dict.contains(&keys[0])? {
                true => None,
                false => {
                    let step = self.scalar(py, if fresh { 0.0 } else { 1.0 }, step_dtype)?;
                    if keep_step {
                        pending.push(Pending::Step(dict.clone(), step.clone()));
                    }
                    Some(step)
                }
            };
            let lookup = |key: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyAny>>> {
                match &temporary_step {
                    Some(step) if key.is(&keys[0]) => Ok(Some(step.clone())),
                    _ => Ok(dict.get_item(key)?.filter(|v| !v.is_none())),
                }
            };
            let mut take = |key: &Bound<'py, PyString>| -> PyResult<Span> {
                let Some(t) = lookup(key)? else {
                    return Err(PyValueError::new_err(format!(
                        "the state of {} has no \"{key}\" (it was made by another optimizer?)",
                        name(i)
                    )));
                };
                let t = tensor::local(&t, &torch)?;
                let span = tensor::span(&t, &torch, &|| format!("state \"{key}\" of {}", name(i)))?;
                alive.push(t);
                Ok(span)
            };
            let step_span = take(&keys[0])?;
            let step = Scalar::new(step_span, &what("state \"step\""))?;
            let mut slots = Vec::new();
            let mut group_value = group_values.iter();
            for (slot, key) in self.stepper.program().slots.iter().zip(&keys[1..]) {
                if slot.kind == SlotKind::Group {
                    let value = group_value.next().copied().unwrap_or(slot.init);
                    slots.push(SlotSpan::Group(value));
                    continue;
                }
                let span = take(key)?;
                slots.push(match slot.kind {
                    SlotKind::Element if span.len != param.len => {
                        return Err(PyValueError::new_err(format!(
                            "state {:?} of {} has {} elements, the parameter {}",
                            slot.name,
                            name(i),
                            span.len,
                            param.len
                        )));
                    }
                    SlotKind::Element => {
                        mixed_compute(&param, &span, &|| {
                            format!("state {:?} of {}", slot.name, name(i))
                        })?;
                        SlotSpan::Buffer(span)
                    }
                    _ => SlotSpan::Scalar(Scalar::new(span, &|| {
                        format!("state {:?} of {}", slot.name, name(i))
                    })?),
                });
            }
            let member = Member {
                param,
                grad: grad_span,
                step,
                slots,
                pending,
            };
            members.push((i, member));
        }
        // Steps and scalar slots as numbers (checked: whole, not negative).
        let n_slots = self.stepper.program().slots.len();
        let mut steps = Vec::with_capacity(members.len());
        let mut scalars = Vec::with_capacity(members.len() * n_slots);
        for (i, m) in &members {
            // SAFETY: every span was checked by `span` (aligned, inside one live allocation);
            // the tensors are kept alive by `alive` and `members`; no slice of the step exists
            // yet, so reading cannot race with a write.
            let step = unsafe { m.step.get() };
            if !(step >= 0.0 && step.fract() == 0.0 && step < 2f64.powi(53)) {
                return Err(PyValueError::new_err(format!(
                    "state \"step\" of {} is {step}, not a step count",
                    name(*i)
                )));
            }
            steps.push(step as u64);
            for s in &m.slots {
                scalars.push(match s {
                    // SAFETY: as above.
                    SlotSpan::Scalar(s) => unsafe { s.get() },
                    SlotSpan::Group(v) => *v,
                    SlotSpan::Buffer(_) => 0.0,
                });
            }
        }
        Ok(Prepared {
            group,
            hypers,
            members,
            steps,
            scalars,
        })
    }

    /// Runs a prepared group's step (every group of the step passed [`check_groups`]) and
    /// writes its scalars back; returns whether it was applied.
    fn run(
        &mut self,
        py: Python<'_>,
        prepared: &mut Prepared<'_>,
        threads: usize,
    ) -> PyResult<bool> {
        let Prepared {
            hypers,
            members,
            steps,
            scalars,
            ..
        } = prepared;
        let n_slots = self.stepper.program().slots.len();
        let names: Vec<String> = self.hypers().into_iter().map(|(n, _)| n).collect();
        for (name, &value) in names.iter().zip(hypers.iter()) {
            self.stepper.set_hyper(name, value).map_err(py_err)?;
        }
        self.stepper.set_threads(threads);
        let stepper = &self.stepper;
        let applied = {
            let mut slices = Vec::with_capacity(members.len());
            let mut scalar_rest = scalars.as_mut_slice();
            for ((_, m), step) in members.iter().zip(steps.iter_mut()) {
                let (mine, tail) = std::mem::take(&mut scalar_rest).split_at_mut(n_slots);
                scalar_rest = tail;
                // SAFETY: every span was checked by `span` (aligned, in one live allocation)
                // and by `check_disjoint` (no written span overlaps another span); the
                // tensors stay alive in `alive` and `members` until after the step; each
                // span becomes one slice, dropped with `slices` before the scalars are
                // written back.
                let buffers = m.slots.iter().filter_map(|s| match s {
                    SlotSpan::Buffer(b) => Some(unsafe { tensor::elems(*b) }),
                    SlotSpan::Scalar(_) | SlotSpan::Group(_) => None,
                });
                slices.push(ParamSlices {
                    // SAFETY: as above.
                    param: unsafe { tensor::elems(m.param) },
                    // SAFETY: as above.
                    grad: unsafe { tensor::elems_ref(m.grad) },
                    buffers: buffers.collect(),
                    scalars: mine,
                    step,
                });
            }
            py.detach(|| stepper.step_slices(&mut slices))
                .map_err(py_err)?
        };
        if applied {
            let mut scalar_rest = scalars.as_slice();
            for ((_, m), &step) in members.iter().zip(steps.iter()) {
                let (mine, tail) = scalar_rest.split_at(n_slots);
                scalar_rest = tail;
                // SAFETY: the slices of the step are gone; the spans were checked as above
                // and the tensors are alive.
                unsafe { m.step.set(step as f64) };
                for (s, &value) in m.slots.iter().zip(mine) {
                    if let SlotSpan::Scalar(s) = s {
                        // SAFETY: as above.
                        unsafe { s.set(value) };
                    }
                }
            }
        }
        Ok(applied)
    }
}

/// Fails with `ValueError` naming `what` when `stream` (a gradient or state buffer) and its
/// parameter are computed in different precisions: a parameter's tensors are computed in f64
/// when all are float64, in f32 when none is (float32, bfloat16, float16).
fn mixed_compute(param: &Span, stream: &Span, what: &dyn Fn() -> String) -> PyResult<()> {
    let wide = |d: optjit::DType| d == optjit::DType::F64;
    if wide(param.dtype) == wide(stream.dtype) {
        return Ok(());
    }
    Err(PyValueError::new_err(format!(
        "{} is {} and its parameter {}: optjit steps a parameter's tensors in float64 when all \
         are float64, in float32 when none is",
        what(),
        torch_name(stream.dtype),
        torch_name(param.dtype)
    )))
}

/// PyTorch's name of a dtype.
fn torch_name(d: optjit::DType) -> &'static str {
    match d {
        optjit::DType::F64 => "float64",
        optjit::DType::BF16 => "bfloat16",
        optjit::DType::F16 => "float16",
        _ => "float32",
    }
}

/// Fails with `ValueError`, naming both, when a tensor any group's step writes shares memory
/// with another tensor of the step (in any group).
fn check_groups(prepared: &[Prepared<'_>]) -> PyResult<()> {
    let mut who = Vec::new();
    let mut owned = Vec::new();
    for p in prepared {
        for (i, m) in &p.members {
            let k = who.len();
            let mut add = |span: Span, written: bool, what: &'static str| {
                owned.push(Owned {
                    span,
                    written,
                    param: k,
                    what,
                })
            };
            add(m.param, true, "the parameter");
            add(m.grad, false, "its gradient");
            add(m.step.span(), true, "its state \"step\"");
            for s in &m.slots {
                match s {
                    SlotSpan::Buffer(b) => add(*b, true, "its state"),
                    SlotSpan::Scalar(s) => add(s.span(), true, "its scalar state"),
                    SlotSpan::Group(_) => {}
                }
            }
            who.push((*i, p.group));
        }
    }
    tensor::check_disjoint(&owned, &|k| {
        let (i, g) = who[k];
        format!("parameter {i} of group {g}")
    })
}

/// Adds the state the groups' steps made (new parameters' state dicts, missing `step`s).
fn finish<'py>(state: &Bound<'py, PyDict>, prepared: Vec<Prepared<'py>>) -> PyResult<()> {
    let members = prepared.into_iter().flat_map(|p| p.members);
    for pending in members.flat_map(|(_, m)| m.pending) {
        match pending {
            Pending::State(p, d) => state.set_item(p, d)?,
            Pending::Step(d, step) => d.set_item("step", step)?,
        }
    }
    Ok(())
}

/// One group of [`step_groups`]: its program, parameters, hyperparameter values, index and
/// group slots' values.
type GroupStep<'py> = (
    Bound<'py, Program>,
    Bound<'py, PyList>,
    Vec<f64>,
    usize,
    Option<Vec<f64>>,
);

/// One step of every group in `groups` (each as [`Program::step`] takes it): every group's
/// tensors are gathered and checked, and no tensor written by one group shares memory with
/// any other tensor of the step, before any group runs, so that bad input in any group
/// changes nothing in all of them. Returns, per group, whether its step was applied.
#[pyfunction]
#[pyo3(signature = (groups, state, threads, step_dtype, state_dtype=None, keep_step=true))]
fn step_groups<'py>(
    py: Python<'py>,
    groups: Vec<GroupStep<'py>>,
    state: &Bound<'py, PyDict>,
    threads: usize,
    step_dtype: &Bound<'py, PyAny>,
    state_dtype: Option<&Bound<'py, PyAny>>,
    keep_step: bool,
) -> PyResult<Vec<bool>> {
    // Keeps every tensor the spans point into alive until the step returns.
    let mut alive = Vec::new();
    let shared = Shared {
        state,
        step_dtype,
        state_dtype,
        keep_step,
    };
    // Every distinct program borrowed before anything changes (groups may share one).
    let mut programs: Vec<PyRefMut<'py, Program>> = Vec::new();
    let mut which = Vec::with_capacity(groups.len());
    for (k, (program, ..)) in groups.iter().enumerate() {
        match groups[..k].iter().position(|(p, ..)| p.is(program)) {
            Some(first) => which.push(which[first]),
            None => {
                which.push(programs.len());
                programs.push(program.try_borrow_mut()?);
            }
        }
    }
    let mut prepared = Vec::with_capacity(groups.len());
    for (&k, (_, params, hypers, group, values)) in which.iter().zip(&groups) {
        prepared.push(programs[k].prepare(
            &shared,
            params,
            hypers.clone(),
            *group,
            values.clone(),
            &mut alive,
        )?);
    }
    check_groups(&prepared)?;
    let mut applied = Vec::with_capacity(groups.len());
    for (&k, p) in which.iter().zip(&mut prepared) {
        applied.push(programs[k].run(py, p, threads)?);
    }
    finish(state, prepared)?;
    drop(alive);
    Ok(applied)
}

/// The extension module.
#[pymodule]
fn _optjit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Program>()?;
    m.add_function(wrap_pyfunction!(step_groups, m)?)?;
    Ok(())
}

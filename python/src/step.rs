//! A step of one or more param groups over torch tensors: every group's tensors gathered and
//! checked (dtypes, layouts, lengths, memory shared anywhere in the step) before any group
//! runs, then one engine call per group with the GIL released, then the scalars and new
//! state written back.

use crate::{py_err, tensor, Program};
use optjit::ir::SlotKind;
use optjit::ParamSlices;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use tensor::{Owned, Scalar, Span, Torch};

/// One parameter's tensors in a step, checked.
pub(crate) struct Member<'py> {
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

/// What every group of a step shares: the optimizer's state dict and how new state is made.
struct Shared<'a, 'py> {
    /// torch's objects the checks compare with, looked up once per step.
    torch: Torch<'py>,
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
            ref torch,
            state,
            step_dtype,
            state_dtype,
            keep_step,
        } = *shared;
        let py = params.py();
        let defs = &self.stepper.program().hypers;
        if hypers.len() != defs.len() {
            let names: Vec<&str> = defs.iter().map(|h| h.name.as_str()).collect();
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
            let local = tensor::local(&p, torch)?;
            let param = tensor::span(&local, torch, &|| name(i))?;
            let local_grad = tensor::local(&grad, torch)?;
            let grad_span = tensor::span(&local_grad, torch, &what("the gradient"))?;
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
                let t = tensor::local(&t, torch)?;
                let span = tensor::span(&t, torch, &|| format!("state \"{key}\" of {}", name(i)))?;
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
        let names: Vec<String> = (self.stepper.program().hypers.iter())
            .map(|h| h.name.clone())
            .collect();
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
                // and, by `step_groups` (the only caller) before any group ran, by
                // `check_groups` (no written span of any group overlaps another span of the
                // step); the tensors stay alive in `step_groups`' `alive` and in `members`
                // until after the step; each span becomes one slice, dropped with `slices`
                // before the scalars are written back and before the next group runs.
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
pub(crate) fn step_groups<'py>(
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
        torch: Torch::new(py)?,
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

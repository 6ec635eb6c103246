//! `optjit._optjit`, optjit's Python extension: a compiled optimizer (`Program`) and
//! `step_groups`, which steps the param groups' torch tensors in place, every group checked
//! before any runs, one engine call per group with the GIL released (`step`). `state`
//! makes new parameters' state; `tensor` holds the raw-pointer code. `optjit/torch.py`
//! builds the `torch.optim` classes on it.
//!
//! Parameters, gradients and state stay torch tensors (the state in the optimizer's
//! `self.state[p]`, in PyTorch's format: a 0-dimensional `step`, one tensor per slot), so
//! PyTorch's schedulers, `GradScaler`, clipping and checkpoints work on them unchanged.

mod state;
mod step;
mod tensor;

use optjit::ir::SlotKind;
use optjit::{optim, ErrorKind, Stepper};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tensor::Torch;

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
}

#[pymethods]
impl Program {
    /// The built-in for `torch.optim.<name>(params, **kwargs)`: `name` in lower case
    /// (`adam`, `sgd`, ...), `kwargs` a JSON object of PyTorch's keyword arguments.
    #[staticmethod]
    fn from_torch(name: &str, kwargs: &str) -> PyResult<Program> {
        let kwargs = json_object(kwargs)?;
        Program::new(&optim::from_torch(name, &kwargs).map_err(py_err)?)
    }

    /// The built-in for `optax.<name>(**kwargs)`, `kwargs` a JSON object of optax's keyword
    /// arguments (`learning_rate`, `b1`, ...).
    #[staticmethod]
    fn from_optax(name: &str, kwargs: &str) -> PyResult<Program> {
        let kwargs = json_object(kwargs)?;
        Program::new(&optim::from_optax(name, &kwargs).map_err(py_err)?)
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
        slf: &Bound<'py, Self>,
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
        let one = (slf.clone(), params.clone(), hypers, group, group_values);
        let applied = step::step_groups(
            slf.py(),
            vec![one],
            state,
            threads,
            step_dtype,
            state_dtype,
            keep_step,
        )?;
        Ok(applied[0])
    }
}

/// Keyword arguments passed as JSON text: an object, or a `ValueError`.
fn json_object(kwargs: &str) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(kwargs) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(PyValueError::new_err(
            "keyword arguments must be a JSON object",
        )),
        Err(e) => Err(PyValueError::new_err(format!("keyword arguments: {e}"))),
    }
}

/// The extension module.
#[pymodule]
fn _optjit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Program>()?;
    m.add_function(wrap_pyfunction!(step::step_groups, m)?)?;
    Ok(())
}

//! The state a step creates for a parameter stepped for the first time, as PyTorch keeps it:
//! a 0-dimensional `step`, one tensor per element slot (laid out away from the parameter's
//! page offset when large), one 0-dimensional tensor per scalar slot.

use crate::{tensor, Program, Torch};
use optjit::ir::SlotKind;
use pyo3::prelude::*;
use pyo3::types::PyDict;

impl Program {
    /// A 0-dimensional tensor of `dtype` holding `value`.
    pub(crate) fn scalar<'py>(
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
    pub(crate) fn fresh_state<'py>(
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

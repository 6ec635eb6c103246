//! Torch tensors seen as slices: the extension's only `unsafe` code.
//!
//! [`span`] reads what a tensor says of its memory through its Python API (dtype, device,
//! layout, contiguity, data pointer, element count) and checks it; [`check_disjoint`] checks
//! that no memory a step writes is also read or written through another tensor. Only then do
//! [`elems`], [`elems_ref`] and [`Scalar`] turn spans into slices, for the duration of one
//! step, while the caller holds a reference to every tensor.
//!
//! The contract with the caller is the one every PyTorch operator has: no other thread
//! frees, resizes or re-points (`.data = ...`, `set_`) these tensors while the step runs.

use optjit::{DType, Elems, ElemsRef};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::ops::Range;

/// The torch objects a step compares tensors with, looked up once per step.
pub(crate) struct Torch<'py> {
    dtypes: [(Bound<'py, PyAny>, DType); 4],
    strided: Bound<'py, PyAny>,
    /// `torch.Tensor` and `torch.nn.Parameter`: tensors whose memory is their own.
    plain: [Bound<'py, PyType>; 2],
}

impl<'py> Torch<'py> {
    /// Looks the objects up in the imported `torch` module.
    pub(crate) fn new(py: Python<'py>) -> PyResult<Torch<'py>> {
        let torch = py.import("torch")?;
        let dtype = |name: &str, d: DType| torch.getattr(name).map(|o| (o, d));
        Ok(Torch {
            dtypes: [
                dtype("float32", DType::F32)?,
                dtype("float64", DType::F64)?,
                dtype("bfloat16", DType::BF16)?,
                dtype("float16", DType::F16)?,
            ],
            strided: torch.getattr("strided")?,
            plain: [
                torch.getattr("Tensor")?.cast_into::<PyType>()?,
                torch
                    .getattr("nn")?
                    .getattr("Parameter")?
                    .cast_into::<PyType>()?,
            ],
        })
    }

    /// The optjit dtype of a torch dtype object, if optjit steps it.
    pub(crate) fn dtype(&self, object: &Bound<'py, PyAny>) -> Option<DType> {
        self.dtypes
            .iter()
            .find(|(o, _)| o.is(object))
            .map(|&(_, d)| d)
    }
}

/// A tensor's memory, checked by [`span`]: `len` contiguous elements of `dtype` at `addr`,
/// aligned to the element's size (`addr` is not read when `len` is 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
}

impl Span {
    /// The bytes it covers.
    fn bytes(&self) -> Range<usize> {
        self.addr..self.addr + self.len * self.dtype.size()
    }
}

/// Whether `t` is a `torch.Tensor` or `torch.nn.Parameter` (not a subclass such as a
/// distributed tensor).
pub(crate) fn is_plain(t: &Bound<'_, PyAny>, torch: &Torch<'_>) -> bool {
    let ty = t.get_type();
    torch.plain.iter().any(|p| ty.is(p))
}

/// The tensor itself, or the local shard of a distributed tensor (FSDP2's `DTensor`).
pub(crate) fn local<'py>(t: &Bound<'py, PyAny>, torch: &Torch<'py>) -> PyResult<Bound<'py, PyAny>> {
    if is_plain(t, torch) {
        return Ok(t.clone());
    }
    if t.hasattr("to_local")? {
        return t.call_method0("to_local");
    }
    Ok(t.clone())
}

/// Checks that `t` is a strided, contiguous CPU tensor of a dtype optjit stores, and returns
/// its memory; `what` names it in errors (`parameter 3`, `state 'exp_avg' of parameter 3`).
pub(crate) fn span(
    t: &Bound<'_, PyAny>,
    torch: &Torch<'_>,
    what: &dyn Fn() -> String,
) -> PyResult<Span> {
    let dtype_object = t.getattr(pyo3::intern!(t.py(), "dtype")).map_err(|_| {
        PyTypeError::new_err(format!(
            "{} is not a tensor (it is a {})",
            what(),
            type_name(t)
        ))
    })?;
    let Some(dtype) = torch.dtype(&dtype_object) else {
        return Err(PyTypeError::new_err(format!(
            "{} has dtype {dtype_object}; optjit steps float32, float64, bfloat16 and float16 tensors",
            what()
        )));
    };
    if !t
        .getattr(pyo3::intern!(t.py(), "layout"))?
        .is(&torch.strided)
    {
        return Err(PyTypeError::new_err(format!(
            "{} is not a dense (strided) tensor",
            what()
        )));
    }
    if !t
        .getattr(pyo3::intern!(t.py(), "is_cpu"))?
        .extract::<bool>()?
    {
        let device = t.getattr("device")?;
        return Err(PyValueError::new_err(format!(
            "{} is on {device}; optjit steps CPU tensors",
            what()
        )));
    }
    let contiguous: bool = t
        .call_method0(pyo3::intern!(t.py(), "is_contiguous"))?
        .extract()?;
    if !contiguous {
        return Err(PyValueError::new_err(format!(
            "{} is not contiguous (call .contiguous() on it first)",
            what()
        )));
    }
    let len: usize = t.call_method0(pyo3::intern!(t.py(), "numel"))?.extract()?;
    let addr: usize = t
        .call_method0(pyo3::intern!(t.py(), "data_ptr"))?
        .extract()?;
    let bytes = len.checked_mul(dtype.size());
    let in_range = bytes.is_some_and(|b| {
        addr.checked_add(b)
            .is_some_and(|end| end <= isize::MAX as usize)
    });
    if len > 0 && (addr == 0 || !addr.is_multiple_of(dtype.size()) || !in_range) {
        return Err(PyValueError::new_err(format!(
            "{} has an unusable data pointer {addr:#x} for {len} elements of {}",
            what(),
            dtype.name()
        )));
    }
    Ok(Span { addr, len, dtype })
}

/// The name of `t`'s Python type, for messages.
fn type_name(t: &Bound<'_, PyAny>) -> String {
    t.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// One span of a step and who owns it: the parameter's index and a description.
pub(crate) struct Owned {
    pub(crate) span: Span,
    /// Whether the step writes it.
    pub(crate) written: bool,
    /// Index of the parameter whose tensor it is.
    pub(crate) param: usize,
    /// What it is (`the parameter`, `its gradient`, `state 'exp_avg'`).
    pub(crate) what: &'static str,
}

/// Fails with `ValueError`, naming both, when a written span overlaps any other span.
/// `name(i)` names parameter `i`.
pub(crate) fn check_disjoint(spans: &[Owned], name: &dyn Fn(usize) -> String) -> PyResult<()> {
    let mut order: Vec<&Owned> = spans.iter().filter(|o| o.span.len > 0).collect();
    order.sort_unstable_by_key(|o| o.span.addr);
    // The previous span reaching furthest, and the previous written one.
    let mut any: Option<&Owned> = None;
    let mut written: Option<&Owned> = None;
    for o in order {
        let start = o.span.addr;
        let clash = match o.written {
            true => any.filter(|p| p.span.bytes().end > start),
            false => written.filter(|p| p.span.bytes().end > start),
        };
        if let Some(p) = clash {
            return Err(PyValueError::new_err(format!(
                "{} of {} overlaps {} of {} in memory; optjit cannot update tensors that share memory",
                o.what,
                name(o.param),
                p.what,
                name(p.param)
            )));
        }
        let end = o.span.bytes().end;
        if any.is_none_or(|p| p.span.bytes().end < end) {
            any = Some(o);
        }
        if o.written && written.is_none_or(|p| p.span.bytes().end < end) {
            written = Some(o);
        }
    }
    Ok(())
}

/// The elements of `span`, writable.
///
/// # Safety
/// `span` came from [`span`] on a tensor the caller holds a reference to for `'a`, no other
/// thread touches that tensor's memory for `'a`, and no other live slice overlaps it
/// ([`check_disjoint`] passed over every span of the step, with this one written).
pub(crate) unsafe fn elems<'a>(span: Span) -> Elems<'a> {
    macro_rules! slice {
        ($t:ty) => {{
            let ptr = match span.len {
                0 => std::ptr::NonNull::<$t>::dangling().as_ptr(),
                _ => span.addr as *mut $t,
            };
            // SAFETY: `span` checked non-null, aligned, `len` elements inside one allocation
            // (the tensor's storage) that the caller keeps alive and unaliased for `'a`.
            Elems::from(unsafe { std::slice::from_raw_parts_mut(ptr, span.len) })
        }};
    }
    match span.dtype {
        DType::F32 => slice!(f32),
        DType::F64 => slice!(f64),
        DType::BF16 => slice!(half::bf16),
        DType::F16 => slice!(half::f16),
    }
}

/// The elements of `span`, read only.
///
/// # Safety
/// As [`elems`], except that other read-only slices may overlap it.
pub(crate) unsafe fn elems_ref<'a>(span: Span) -> ElemsRef<'a> {
    macro_rules! slice {
        ($t:ty) => {{
            let ptr = match span.len {
                0 => std::ptr::NonNull::<$t>::dangling().as_ptr(),
                _ => span.addr as *const $t,
            };
            // SAFETY: as in `elems`; no writable slice overlaps it (`check_disjoint`).
            ElemsRef::from(unsafe { std::slice::from_raw_parts(ptr, span.len) })
        }};
    }
    match span.dtype {
        DType::F32 => slice!(f32),
        DType::F64 => slice!(f64),
        DType::BF16 => slice!(half::bf16),
        DType::F16 => slice!(half::f16),
    }
}

/// A one-element tensor holding a number that the step reads and writes (a step count or a
/// scalar slot, which torch keeps as 0-dimensional tensors, in float32 or float64 until a
/// `load_state_dict` casts scalar slots to the parameter's dtype).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar(Span);

impl Scalar {
    /// `span` as a scalar: one element; `what` names it in errors.
    pub(crate) fn new(span: Span, what: &dyn Fn() -> String) -> PyResult<Scalar> {
        if span.len != 1 {
            return Err(PyValueError::new_err(format!(
                "{} must be a one-element tensor (it has {} elements)",
                what(),
                span.len
            )));
        }
        Ok(Scalar(span))
    }

    /// Its value.
    ///
    /// # Safety
    /// As [`elems_ref`]: the tensor is alive and no writable slice overlaps it.
    pub(crate) unsafe fn get(self) -> f64 {
        // SAFETY: checked by `Scalar::new` and `span` (one aligned element); the caller's
        // contract keeps it alive and unwritten meanwhile.
        unsafe {
            match self.0.dtype {
                DType::F64 => *(self.0.addr as *const f64),
                DType::F32 => f64::from(*(self.0.addr as *const f32)),
                DType::BF16 => f64::from(*(self.0.addr as *const half::bf16)),
                DType::F16 => f64::from(*(self.0.addr as *const half::f16)),
            }
        }
    }

    /// Stores `value`, rounded to the tensor's dtype as PyTorch's `.to()` rounds (through
    /// f32 for bfloat16 and float16).
    ///
    /// # Safety
    /// As [`elems`]: the tensor is alive and no other live slice overlaps it.
    pub(crate) unsafe fn set(self, value: f64) {
        // SAFETY: as in `get`, and no other reference to this element is live.
        unsafe {
            let narrow = value as f32;
            match self.0.dtype {
                DType::F64 => *(self.0.addr as *mut f64) = value,
                DType::F32 => *(self.0.addr as *mut f32) = narrow,
                DType::BF16 => *(self.0.addr as *mut half::bf16) = half::bf16::from_f32(narrow),
                DType::F16 => *(self.0.addr as *mut half::f16) = half::f16::from_f32(narrow),
            }
        }
    }

    /// Its memory.
    pub(crate) fn span(self) -> Span {
        self.0
    }
}

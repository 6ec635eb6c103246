//! Reaching candle's CPU storage of many vars at once, without `unsafe` and without copies.
//!
//! candle hands out `&mut CpuStorage` only inside an in-place custom op, for the duration of
//! its `cpu_fwd`. To give the engine every parameter of a step in one call, the ops nest:
//! the op of var 1 (which also reads its gradient, candle's second operand) runs the op of
//! var 2 from inside its `cpu_fwd`, and so on; the innermost calls the engine with every
//! slice borrowed. Each level holds one storage lock, so a var given twice would deadlock:
//! the optimizer refuses duplicates when it is built, and gradients that share a var's
//! memory before each step. Past [`MAX_NEST`] vars the nest runs on a thread of its own
//! with a stack sized for it.

use crate::{Error, Result};
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor};
use half::{bf16, f16};
use std::cell::Cell;

/// The most vars whose in-place ops nest on the caller's thread. A level of the nest takes
/// about 5 KiB of stack in a debug build (candle's dispatch and this adapter's frames), so 64
/// levels take about 400 KiB of the 2 MiB a spawned thread has by default (`tests/nest.rs`
/// runs them in 1 MiB). More vars nest on a thread of their own whose stack is sized for
/// them ([`STACK_PER_LEVEL`] each): still one engine call for all.
pub const MAX_NEST: usize = 64;

/// The stack a thread nesting more than [`MAX_NEST`] vars gets per var (about three times
/// what a debug build uses), besides [`STACK_BASE`] for the engine call at the bottom.
pub const STACK_PER_LEVEL: usize = 16 << 10;

/// The stack of a nesting thread besides its levels: the engine call and its first JIT
/// compile.
pub const STACK_BASE: usize = 2 << 20;

/// The element types the adapter steps: candle's float dtypes that the engine stores.
pub trait CandleFloat: optjit::Element + candle_core::WithDType {
    /// The elements of `storage`, when it holds this type.
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    /// The elements of `storage`, mutably, when it holds this type.
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! candle_float {
    ($t:ty, $variant:ident) => {
        impl CandleFloat for $t {
            fn slice(storage: &CpuStorage) -> Option<&[Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

candle_float!(f32, F32);
candle_float!(f64, F64);
candle_float!(bf16, BF16);
candle_float!(f16, F16);

/// Whether the adapter steps vars of `dtype`.
pub(crate) fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
}

/// The range of `storage` that `layout` covers, if it is one contiguous run.
fn contiguous_range(layout: &Layout) -> Option<std::ops::Range<usize>> {
    let (start, end) = layout.contiguous_offsets()?;
    Some(start..end)
}

/// The address range of a CPU tensor's elements (for alias checks; empty for no element or
/// a tensor not on the CPU).
pub(crate) fn address_range(t: &Tensor) -> std::ops::Range<usize> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return 0..0;
    };
    let Some(range) = contiguous_range(layout) else {
        // Strided: the whole storage, conservatively.
        let (ptr, len, size) = raw(cpu);
        return ptr..ptr + len * size;
    };
    let (ptr, _, size) = raw(cpu);
    ptr + range.start * size..ptr + range.end * size
}

/// The address, length and element size of a storage's buffer.
fn raw(cpu: &CpuStorage) -> (usize, usize, usize) {
    fn of<T>(v: &[T]) -> (usize, usize, usize) {
        (v.as_ptr() as usize, v.len(), std::mem::size_of::<T>())
    }
    match cpu {
        CpuStorage::F32(v) => of(v),
        CpuStorage::F64(v) => of(v),
        CpuStorage::BF16(v) => of(v),
        CpuStorage::F16(v) => of(v),
        // Not stepped: no range the checks need.
        _ => (0, 0, 0),
    }
}

/// Whether two address ranges share a byte (empty ranges share none).
pub(crate) fn overlap(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The state a nest of in-place ops shares: the engine call to make at the bottom, its
/// result, and the first failure on the way down.
struct Nest<F, R> {
    call: Cell<Option<F>>,
    result: Cell<Option<R>>,
    failure: Cell<Option<&'static str>>,
}

/// One level of the nest: the in-place op of one var, reading its gradient.
struct Level<'n, 's, T, F, R> {
    /// The vars and gradients still to borrow.
    rest: &'n [(&'n Tensor, &'n Tensor)],
    /// The slices borrowed by the levels above.
    params: Cell<Option<Vec<&'s mut [T]>>>,
    grads: Cell<Option<Vec<&'s [T]>>>,
    nest: &'n Nest<F, R>,
}

impl<T, F, R> Level<'_, '_, T, F, R>
where
    T: CandleFloat,
    F: FnOnce(&mut [&mut [T]], &[&[T]]) -> R,
{
    fn fail(&self, reason: &'static str) -> candle_core::Result<()> {
        if self.nest.failure.get().is_none() {
            self.nest.failure.set(Some(reason));
        }
        Err(candle_core::Error::msg(
            "optjit-candle: a var's storage changed",
        ))
    }
}

impl<T, F, R> InplaceOp2 for Level<'_, '_, T, F, R>
where
    T: CandleFloat,
    F: FnOnce(&mut [&mut [T]], &[&[T]]) -> R,
{
    fn name(&self) -> &'static str {
        "optjit-step"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        // Checked before the nest began; only a storage changed since gets here.
        let (Some(p_range), Some(g_range)) = (
            contiguous_range(param_layout),
            contiguous_range(grad_layout),
        ) else {
            return self.fail("a var or gradient is no longer contiguous");
        };
        let (Some(p), Some(g)) = (T::slice_mut(param), T::slice(grad)) else {
            return self.fail("a var or gradient changed dtype");
        };
        let (Some(p), Some(g)) = (p.get_mut(p_range), g.get(g_range)) else {
            return self.fail("a layout lies outside its storage");
        };
        let (Some(mut params), Some(mut grads)) = (self.params.take(), self.grads.take()) else {
            return self.fail("a level ran twice");
        };
        params.push(p);
        grads.push(g);
        match self.rest.split_first() {
            None => {
                let call = self.nest.call.take();
                if let Some(call) = call {
                    self.nest.result.set(Some(call(&mut params, &grads)));
                }
                Ok(())
            }
            Some(((var, grad), rest)) => {
                let level = Level {
                    rest,
                    params: Cell::new(Some(params)),
                    grads: Cell::new(Some(grads)),
                    nest: self.nest,
                };
                var.inplace_op2(grad, &level)
            }
        }
    }
}

/// Runs `f` on this thread when a nest of `depth` in-place ops fits its stack (at most
/// [`MAX_NEST`]), else on a scoped thread with [`STACK_BASE`] + [`STACK_PER_LEVEL`] per level of
/// stack. A step starts that thread once, before it changes anything, so that failing to
/// start it ([`Error::Thread`]) leaves every var as it was.
pub(crate) fn deep_enough<R, F>(depth: usize, f: F) -> Result<R>
where
    F: FnOnce() -> Result<R> + Send,
    R: Send,
{
    if depth <= MAX_NEST {
        return f();
    }
    let stack = STACK_PER_LEVEL
        .checked_mul(depth)
        .and_then(|s| s.checked_add(STACK_BASE))
        .ok_or(Error::InvalidOption {
            option: "the number of vars",
            reason: "is too large for one step's nest of in-place ops",
        })?;
    std::thread::scope(|scope| {
        let nesting = std::thread::Builder::new()
            .name("optjit-candle-step".into())
            .stack_size(stack)
            .spawn_scoped(scope, f)
            .map_err(Error::Thread)?;
        nesting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `call` with the elements of every var of `pairs` borrowed mutably from candle's
/// storage (in order) and those of their gradients shared, nesting one in-place op per pair:
/// on a stack [`deep_enough`] for `pairs.len()` levels.
///
/// The caller has checked that every var and gradient is a contiguous CPU tensor of `T`, no
/// var appears twice and no gradient shares a var's memory. Returns `None` for no pair.
pub(crate) fn with_slices<T, F, R>(pairs: &[(&Tensor, &Tensor)], call: F) -> Result<Option<R>>
where
    T: CandleFloat,
    F: FnOnce(&mut [&mut [T]], &[&[T]]) -> R,
{
    let Some(((var, grad), rest)) = pairs.split_first() else {
        return Ok(None);
    };
    let nest = Nest {
        call: Cell::new(Some(call)),
        result: Cell::new(None),
        failure: Cell::new(None),
    };
    let top: Level<'_, '_, T, F, R> = Level {
        rest,
        params: Cell::new(Some(Vec::with_capacity(pairs.len()))),
        grads: Cell::new(Some(Vec::with_capacity(pairs.len()))),
        nest: &nest,
    };
    let outcome = var.inplace_op2(grad, &top);
    if let Some(reason) = nest.failure.take() {
        return Err(Error::Internal(reason));
    }
    outcome?;
    Ok(nest.result.take())
}

//! Access to what the optimizer stores: typed [`Param`] handles, each parameter's values and
//! gradient (as slices or ndarray views), all of one dtype at once for a forward and backward
//! pass ([`Optimizer::split`]), `zero_grad`, and each parameter's step count and state.

use super::{Optimizer, ParamInfo};
use crate::segment::ElemsRef;
use crate::{Element, Error, Float, Result};
use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};
use std::borrow::Cow;
use std::marker::PhantomData;

/// A typed handle to a parameter of one [`Optimizer`].
pub struct Param<T> {
    pub(super) optimizer: u64,
    pub(super) index: usize,
    pub(super) _dtype: PhantomData<fn() -> T>,
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

impl Optimizer {
    /// The handle of parameter number `index` (in the order parameters were added), if it
    /// exists and has dtype `T`.
    pub fn handle<T: Element>(&self, index: usize) -> Option<Param<T>> {
        let info = self.params.get(index)?;
        (info.dtype == T::DTYPE).then_some(Param {
            optimizer: self.id,
            index,
            _dtype: PhantomData,
        })
    }

    pub(super) fn info<T: Element>(&self, handle: &Param<T>) -> Result<&ParamInfo> {
        match self.params.get(handle.index) {
            Some(info) if handle.optimizer == self.id && info.dtype == T::DTYPE => Ok(info),
            _ => Err(Error::UnknownParam {
                what: format!("{handle:?} (from another optimizer)"),
            }),
        }
    }

    /// The parameter's values.
    pub fn param<T: Element>(&self, handle: &Param<T>) -> Result<&[T]> {
        let info = self.info(handle)?;
        let params = self.store_of(handle.index).params.typed::<T>();
        Ok(&params.expect("a handle's params are T")[info.offset..info.offset + info.len])
    }

    /// The parameter's values, writable (e.g. to initialise them).
    pub fn param_mut<T: Element>(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
        let range = self.range(self.info(handle)?);
        let params = self.store_of_mut(handle.index).params.typed_mut::<T>();
        Ok(&mut params.expect("a handle's params are T")[range])
    }

    fn range(&self, info: &ParamInfo) -> std::ops::Range<usize> {
        info.offset..info.offset + info.len
    }

    /// The parameter as an ndarray view of its shape.
    pub fn param_view<T: Element>(&self, handle: &Param<T>) -> Result<ArrayViewD<'_, T>> {
        let shape = IxDyn(&self.info(handle)?.shape);
        Ok(ArrayViewD::from_shape(shape, self.param(handle)?).expect("length matches shape"))
    }

    /// The gradient, or `None` when the parameter has none (it will be skipped by `step`).
    pub fn grad<T: Element>(&self, handle: &Param<T>) -> Result<Option<&[T]>> {
        self.info(handle)?;
        if !self.has_grad[handle.index] {
            return Ok(None);
        }
        Ok(Some(self.grad_slice(handle.index)))
    }

    /// Parameter `i`'s gradient buffer, whatever it holds; `T` must be its dtype.
    pub(super) fn grad_slice<T: Element>(&self, i: usize) -> &[T] {
        let grads = self.store_of(i).grads.typed::<T>();
        &grads.expect("T is the gradient's dtype")[self.range(&self.params[i])]
    }

    /// Parameter `i`'s gradient buffer, whatever it holds, in its compute type `T`: the
    /// buffer itself when stored as `T`, else a widened copy.
    pub(super) fn grad_compute<T: Float>(&self, i: usize) -> Cow<'_, [T]> {
        let range = self.range(&self.params[i]);
        let grads = self.store_of(i).grads.elems_ref().slice(range);
        match grads.as_compute::<T>() {
            Some(native) => Cow::Borrowed(native),
            None => Cow::Owned((0..grads.len()).map(|k| grads.get(k)).collect()),
        }
    }

    /// Applies `f` to every element of parameter `i`'s gradient buffer in its compute type
    /// `T`, rounding each result to the storage dtype (to nearest even).
    pub(super) fn map_grad<T: Float>(&mut self, i: usize, f: impl Fn(T) -> T) {
        let range = self.range(&self.params[i]);
        let mut grads = self.store_of_mut(i).grads.elems();
        for k in range {
            let g = grads.get::<T>(k);
            grads.set(k, f(g), None);
        }
    }

    /// [`Optimizer::grad_slice`] for writing.
    pub(super) fn grad_slice_mut<T: Element>(&mut self, i: usize) -> &mut [T] {
        let range = self.range(&self.params[i]);
        let grads = self.store_of_mut(i).grads.typed_mut::<T>();
        &mut grads.expect("T is the gradient's dtype")[range]
    }

    /// The gradient for writing or accumulating into; a parameter without a gradient gets a
    /// zero one first, as PyTorch's autograd creates it.
    pub fn grad_mut<T: Element>(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
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
    pub fn grad_view_mut<T: Element>(&mut self, handle: &Param<T>) -> Result<ArrayViewMutD<'_, T>> {
        let shape = IxDyn(&self.info(handle)?.shape.clone());
        Ok(ArrayViewMutD::from_shape(shape, self.grad_mut(handle)?).expect("length matches shape"))
    }

    /// Sets the gradient to `grad` (same length as the parameter).
    pub fn set_grad<T: Element>(&mut self, handle: &Param<T>, grad: &[T]) -> Result<()> {
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
    pub fn split<T: Element>(&mut self) -> (Params<'_, T>, Grads<'_, T>) {
        let mut params = Vec::with_capacity(self.groups.len());
        let mut grads = Vec::with_capacity(self.groups.len());
        for g in &mut self.groups {
            let (mut ps, mut gs) = (Vec::new(), Vec::new());
            for store in &mut g.stores {
                ps.push(store.params.typed::<T>().unwrap_or_default());
                gs.push(store.grads.typed_mut::<T>().unwrap_or_default());
            }
            params.push(ps);
            grads.push(gs);
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
                self.groups[info.group].stores[info.store]
                    .grads
                    .fill_zero(range);
            }
        }
    }

    /// The number of updates the parameter has received (0 before its first).
    pub fn param_step<T: Element>(&self, handle: &Param<T>) -> Result<u64> {
        self.info(handle)?;
        Ok(self.state[handle.index].as_ref().map_or(0, |s| s.step))
    }

    /// The parameter's state slot `name` (a view of its buffer), or `None` before its first
    /// update. Fails with [`Error::DTypeMismatch`] when the slot is not stored as `T` (see
    /// [`Optimizer::state_elems`] for any dtype).
    pub fn state_buffer<T: Element>(&self, handle: &Param<T>, name: &str) -> Result<Option<&[T]>> {
        self.info(handle)?;
        let slot = self.element_slot(name)?;
        let actual = self.store_of(handle.index).layout.dtype(2 + slot as u32);
        if actual != T::DTYPE {
            return Err(Error::DTypeMismatch {
                expected: T::DTYPE,
                actual,
            });
        }
        let elems = self.state_elems(handle, name)?;
        Ok(elems.map(|e| e.as_compute::<T>().expect("the slot is stored as T")))
    }

    /// The parameter's state slot `name` in its storage dtype, or `None` before its first
    /// update.
    pub fn state_elems<T: Element>(
        &self,
        handle: &Param<T>,
        name: &str,
    ) -> Result<Option<ElemsRef<'_>>> {
        let info = self.info(handle)?;
        let slot = self.element_slot(name)?;
        if self.state[handle.index].is_none() {
            return Ok(None);
        }
        let store = self.store_of(handle.index);
        Ok(Some(store.slots[slot].elems_ref().slice(self.range(info))))
    }

    /// Position among the element slots (the store's slot buffers) of slot `name`.
    pub(super) fn element_slot(&self, name: &str) -> Result<usize> {
        let p = &self.engine.program;
        p.element_slots()
            .position(|s| p.slots[s].name == name)
            .ok_or_else(|| Error::UnknownSlot {
                name: name.to_string(),
            })
    }
}

/// Read access to every parameter of one dtype (see [`Optimizer::split`]).
pub struct Params<'a, T> {
    id: u64,
    info: &'a [ParamInfo],
    /// Per group, per store: the store's parameters if stored as `T`, else empty.
    params: Vec<Vec<&'a [T]>>,
}

impl<'a, T: Element> Params<'a, T> {
    /// The parameter's values.
    pub fn get(&self, handle: &Param<T>) -> Result<&'a [T]> {
        let info = lookup(self.id, self.info, handle)?;
        Ok(&self.params[info.group][info.store][info.offset..info.offset + info.len])
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
    /// Per group, per store: the store's gradients if stored as `T`, else empty.
    grads: Vec<Vec<&'a mut [T]>>,
}

impl<T: Element> Grads<'_, T> {
    /// The gradient for writing or accumulating into (zero if the parameter had none).
    pub fn get_mut(&mut self, handle: &Param<T>) -> Result<&mut [T]> {
        let info = lookup(self.id, self.info, handle)?;
        let grad = &mut self.grads[info.group][info.store][info.offset..info.offset + info.len];
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

fn lookup<'a, T: Element>(
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

//! Checkpoints: the optimizer's state as candle tensors keyed by the vars' names, ready for
//! `candle_core::safetensors::save` beside `VarMap::save`.
//!
//! Keys (a var's name may contain dots; keys are never split, only looked up):
//! - `state.{name}.step`: the var's update count, an i64 scalar;
//! - `state.{name}.{slot}`: each per-element slot (`exp_avg`, ...) in the var's shape and
//!   dtype; each per-parameter scalar slot an f64 scalar;
//! - `param_groups.{g}.{hyper}`: each hyperparameter of each group, an f64 scalar.

use crate::optimizer::{Entry, OptjitOptimizer, State, Stored};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use optjit::{ParamState, SlotValue, Stepper};
use std::collections::{HashMap, HashSet};
use std::path::Path;

impl OptjitOptimizer {
    /// The optimizer's state and hyperparameters as named tensors (see the module doc of
    /// `state_dict` for the keys); [`OptjitOptimizer::load_state_dict`] restores them.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (g, stepper) in self.groups.iter().enumerate() {
            for h in &stepper.program().hypers {
                let value = stepper.hyper(&h.name)?;
                out.insert(format!("param_groups.{g}.{}", h.name), scalar(value)?);
            }
        }
        for e in &self.entries {
            let stepper = &self.groups[e.group];
            match &e.state {
                State::F32(s) => put(&mut out, stepper, e, s)?,
                State::F64(s) => put(&mut out, stepper, e, s)?,
                State::BF16(s) => put(&mut out, stepper, e, s)?,
                State::F16(s) => put(&mut out, stepper, e, s)?,
            }
        }
        Ok(out)
    }

    /// Restores a [`OptjitOptimizer::state_dict`]: every key must be there and fit (shape,
    /// dtype), and no other key may be, or [`Error::StateDict`] is returned and nothing
    /// changed.
    pub fn load_state_dict(&mut self, dict: &HashMap<String, Tensor>) -> Result<()> {
        let mut used = HashSet::new();
        let mut take = |key: String| -> Result<&Tensor> {
            let t = dict.get(&key).ok_or_else(|| Error::StateDict {
                key: key.clone(),
                reason: "missing".into(),
            })?;
            used.insert(key);
            Ok(t)
        };
        let mut hypers = Vec::new();
        for (g, stepper) in self.groups.iter().enumerate() {
            for h in &stepper.program().hypers {
                let key = format!("param_groups.{g}.{}", h.name);
                let value = read_scalar(take(key.clone())?, &key)?;
                hypers.push((g, h.name.clone(), value));
            }
        }
        let mut states = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let stepper = &self.groups[e.group];
            states.push(match e.var.dtype() {
                DType::F64 => get::<f64>(&mut take, stepper, e)?,
                DType::BF16 => get::<bf16>(&mut take, stepper, e)?,
                DType::F16 => get::<f16>(&mut take, stepper, e)?,
                _ => get::<f32>(&mut take, stepper, e)?,
            });
        }
        if let Some(extra) = dict.keys().filter(|k| !used.contains(*k)).min() {
            return Err(Error::StateDict {
                key: extra.clone(),
                reason: "no var, slot or hyperparameter of this optimizer has this key".into(),
            });
        }
        // Everything checked: commit.
        for (g, name, value) in hypers {
            self.groups[g].set_hyper(&name, value)?;
        }
        for (e, state) in self.entries.iter_mut().zip(states) {
            e.state = state;
        }
        Ok(())
    }

    /// Saves [`OptjitOptimizer::state_dict`] as a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(candle_core::safetensors::save(&self.state_dict()?, path)?)
    }

    /// Loads a file written by [`OptjitOptimizer::save`] (see
    /// [`OptjitOptimizer::load_state_dict`]).
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let dict = candle_core::safetensors::load(path, &Device::Cpu)?;
        self.load_state_dict(&dict)
    }
}

/// An f64 scalar tensor.
fn scalar(value: f64) -> Result<Tensor> {
    Ok(Tensor::new(value, &Device::Cpu)?)
}

/// The value of an f64 scalar tensor.
fn read_scalar(t: &Tensor, key: &str) -> Result<f64> {
    if t.dtype() != DType::F64 || t.rank() != 0 {
        return Err(Error::StateDict {
            key: key.to_string(),
            reason: format!(
                "an f64 scalar expected, found {:?} {:?}",
                t.dtype(),
                t.dims()
            ),
        });
    }
    Ok(t.to_scalar::<f64>()?)
}

/// Writes entry `e`'s state `s` into `out`.
fn put<T: Stored>(
    out: &mut HashMap<String, Tensor>,
    stepper: &Stepper,
    e: &Entry,
    s: &ParamState<T>,
) -> Result<()> {
    let step = i64::try_from(s.step).map_err(|_| Error::Internal("a step count past i64"))?;
    let name = &e.name;
    out.insert(
        format!("state.{name}.step"),
        Tensor::new(step, &Device::Cpu)?,
    );
    for (def, value) in stepper.program().slots.iter().zip(&s.slots) {
        let key = format!("state.{name}.{}", def.name);
        let t = match value {
            SlotValue::Buffer(b) => Tensor::from_slice(b, e.var.shape(), &Device::Cpu)?,
            SlotValue::Scalar(v) => scalar(*v)?,
        };
        out.insert(key, t);
    }
    Ok(())
}

/// Entry `e`'s state read from the tensors `take` finds, checked against a fresh state.
fn get<'d, T: Stored>(
    take: &mut impl FnMut(String) -> Result<&'d Tensor>,
    stepper: &Stepper,
    e: &Entry,
) -> Result<State> {
    let name = &e.name;
    let key = format!("state.{name}.step");
    let t = take(key.clone())?;
    if t.dtype() != DType::I64 || t.rank() != 0 {
        return Err(Error::StateDict {
            key,
            reason: format!(
                "an i64 scalar expected, found {:?} {:?}",
                t.dtype(),
                t.dims()
            ),
        });
    }
    let step = u64::try_from(t.to_scalar::<i64>()?).map_err(|_| Error::StateDict {
        key: key.clone(),
        reason: "a negative step count".into(),
    })?;
    let mut state = stepper.init_state::<T>(e.var.elem_count())?;
    state.step = step;
    for (def, value) in stepper.program().slots.iter().zip(&mut state.slots) {
        let key = format!("state.{name}.{}", def.name);
        let t = take(key.clone())?;
        match value {
            SlotValue::Buffer(b) => {
                if t.dtype() != e.var.dtype() || t.dims() != e.var.dims() {
                    return Err(Error::StateDict {
                        key,
                        reason: format!(
                            "{:?} {:?} expected (the var's), found {:?} {:?}",
                            e.var.dtype(),
                            e.var.dims(),
                            t.dtype(),
                            t.dims()
                        ),
                    });
                }
                copy_into(b, t)?;
            }
            SlotValue::Scalar(v) => *v = read_scalar(t, &key)?,
        }
    }
    Ok(T::wrap(state))
}

/// Copies the elements of `t` (checked: `b`'s length, the buffer's dtype) into `b`, the
/// buffer `init_state` reserved fallibly: loading a state allocates nothing sized by the file
/// beyond what the file itself holds. A tensor from a safetensors file is a contiguous CPU
/// tensor; any other is read through a contiguous copy.
fn copy_into<T: Stored>(b: &mut [T], t: &Tensor) -> Result<()> {
    let t = match t.is_contiguous() && t.device().is_cpu() {
        true => t.clone(),
        false => t.to_device(&Device::Cpu)?.contiguous()?,
    };
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Internal(
            "a tensor moved to the CPU is not on the CPU",
        ));
    };
    let (start, end) = layout.contiguous_offsets().ok_or(Error::Internal(
        "a contiguous tensor has no contiguous offsets",
    ))?;
    let from = T::slice(cpu)
        .and_then(|v| v.get(start..end))
        .filter(|v| v.len() == b.len())
        .ok_or(Error::Internal(
            "a checked state tensor does not fit its buffer",
        ))?;
    b.copy_from_slice(from);
    Ok(())
}

//! The global gradient norm of a step, as `torch.nn.utils.clip_grad_norm_` computes it, over
//! candle gradients: each gradient's part with the core's reductions
//! ([`optjit::ir::reduce`], the order the fused clip and `optjit::Optimizer::grad_norm` use),
//! then the parts combined in f64 in the vars' order.
//!
//! The core offers the norm over the gradients an `optjit::Optimizer` owns only, so the short
//! loop over slices is here; the clip factor is applied by the step itself (the graph reads
//! `grad * grad_scale`, see [`optjit::optim::accumulate`]): the gradients are never written.

use crate::storage::CandleFloat;
use crate::{Error, Result};
use candle_core::{CpuStorage, Storage, Tensor};
use optjit::ir::reduce::{block_partial, combine_all, reduce, BLOCK};
use optjit::ir::ReduceOp;
use optjit::Element;

/// The reduction of a norm type: 1, 2 and ∞ (checked by the config).
fn reduction(norm_type: f64) -> ReduceOp {
    match norm_type {
        1.0 => ReduceOp::Sum,
        f64::INFINITY => ReduceOp::MaxAbs,
        _ => ReduceOp::SumSquares,
    }
}

/// The `norm_type` norm of `grads` (contiguous CPU tensors of the dtypes the adapter steps) as
/// one vector; 0 for no gradient.
pub(crate) fn grad_norm(grads: &[&Tensor], norm_type: f64) -> Result<f64> {
    let op = reduction(norm_type);
    let mut parts = Vec::with_capacity(grads.len());
    for g in grads {
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(Error::Internal("a gradient left the CPU after its check"));
        };
        let range = layout.contiguous_offsets().ok_or(Error::Internal(
            "a gradient is not contiguous after its check",
        ))?;
        let range = range.0..range.1;
        let part = match cpu {
            CpuStorage::F32(v) => part(op, slice(v, range)?),
            CpuStorage::F64(v) => part(op, slice(v, range)?),
            CpuStorage::BF16(v) => part_widened(op, slice(v, range)?),
            CpuStorage::F16(v) => part_widened(op, slice(v, range)?),
            _ => return Err(Error::Internal("a gradient of a dtype the adapter refuses")),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return Ok(0.0);
    }
    let total = combine_all(op, parts);
    let total = match op {
        ReduceOp::SumSquares => total.sqrt(),
        _ => total,
    };
    // A sum of nothing but zeros is -0 (the sums' identity): a norm is +0 there.
    Ok(if total == 0.0 { 0.0 } else { total })
}

fn slice<T: CandleFloat>(v: &[T], range: std::ops::Range<usize>) -> Result<&[T]> {
    v.get(range).ok_or(Error::Internal(
        "a gradient's layout lies outside its storage",
    ))
}

/// One gradient's part of the norm, computing in its own type.
fn part<T: optjit::Float>(op: ReduceOp, g: &[T]) -> f64 {
    match op {
        // The sum of magnitudes: |g| in T, then the sum's order, as the core's clip.
        ReduceOp::Sum => {
            let mut abs = Vec::with_capacity(g.len().min(BLOCK));
            let partials = g.chunks(BLOCK).map(|block| {
                abs.clear();
                abs.extend(block.iter().map(|x| x.abs()));
                block_partial(ReduceOp::Sum, &abs)
            });
            combine_all(ReduceOp::Sum, partials.collect::<Vec<_>>())
        }
        _ => reduce(op, g),
    }
}

/// [`part`] of a bf16 or f16 gradient, widened to f32 block by block (the engine computes
/// in f32 for those).
fn part_widened<T: Element>(op: ReduceOp, g: &[T]) -> f64 {
    let mut wide: Vec<f32> = Vec::with_capacity(g.len().min(BLOCK));
    let partials = g.chunks(BLOCK).map(|block| {
        wide.clear();
        wide.extend(block.iter().map(|x| x.to_f64() as f32));
        if op == ReduceOp::Sum {
            wide.iter_mut().for_each(|x| *x = x.abs());
        }
        block_partial(op, &wide)
    });
    combine_all(op, partials.collect::<Vec<_>>())
}

/// What PyTorch's `clip_grad_norm_` multiplies every gradient by, `min(max_norm / (total +
/// 1e-6), 1)`, with `torch.clamp`'s NaN (a NaN total gives NaN). The core's definition is
/// crate-private; this is the same expression.
pub(crate) fn torch_clip_factor(max_norm: f64, total: f64) -> f64 {
    let coef = max_norm / (total + 1e-6);
    if coef.is_nan() {
        coef
    } else {
        coef.min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn norms_of_one_two_and_inf() {
        let a = Tensor::new(&[3.0f32, -4.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[12.0f32]], &Device::Cpu).unwrap();
        assert_eq!(grad_norm(&[&a, &b], 2.0).unwrap(), 13.0);
        assert_eq!(grad_norm(&[&a, &b], 1.0).unwrap(), 19.0);
        assert_eq!(grad_norm(&[&a, &b], f64::INFINITY).unwrap(), 12.0);
        assert_eq!(grad_norm(&[], 2.0).unwrap(), 0.0);
        let h = a.to_dtype(candle_core::DType::BF16).unwrap();
        assert_eq!(grad_norm(&[&h], 2.0).unwrap(), 5.0);
    }

    #[test]
    fn the_factor_is_torchs() {
        assert_eq!(torch_clip_factor(1.0, 0.0), 1.0);
        assert_eq!(torch_clip_factor(1.0, 4.0 - 1e-6), 0.25);
        assert!(torch_clip_factor(1.0, f64::NAN).is_nan());
        assert_eq!(torch_clip_factor(1.0, f64::INFINITY), 0.0);
    }
}

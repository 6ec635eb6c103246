//! Gradient clipping on an optimizer's gradients in place, with PyTorch's
//! `clip_grad_norm_`/`clip_grad_value_` semantics. The norms of types 1, 2 and ∞ are the
//! reductions a fused clip ([`crate::optim::clip_grad_norm`]) runs, in the same order, so
//! clipping here and then stepping gives the bits of the fused program.

use super::Optimizer;
use crate::ir::reduce::{block_partial, combine_all, BLOCK};
use crate::ir::ReduceOp;
use crate::{DType, Error, Float, Result};

impl Optimizer {
    /// The `norm_type` norm of the gradients of every parameter that has one, as if they
    /// were one vector (what `torch.nn.utils.clip_grad_norm_` returns): for 1, 2 and
    /// `f64::INFINITY` the reductions of [`crate::ir::reduce`] (per parameter, then over the
    /// parameters in the order they were added, in f64); for `-inf` the smallest magnitude;
    /// for 0 the number of parameters with a non-zero gradient element (PyTorch's total of
    /// per-tensor counts); for any other `p`, `(Σ |g|^p)^(1/p)` in f64.
    pub fn grad_norm(&self, norm_type: f64) -> Result<f64> {
        if norm_type.is_nan() {
            return Err(Error::InvalidOption {
                option: "norm_type",
                reason: "must be a number (inf and -inf included)",
            });
        }
        let mut values = Vec::new();
        for i in (0..self.params.len()).filter(|&i| self.has_grad[i]) {
            values.push(match self.params[i].dtype {
                DType::F32 => self.param_norm_part::<f32>(i, norm_type),
                DType::F64 => self.param_norm_part::<f64>(i, norm_type),
                d @ (DType::BF16 | DType::F16) => d.no_half_params(),
            });
        }
        // No gradient at all: 0, as PyTorch.
        if values.is_empty() {
            return Ok(0.0);
        }
        let total = match crate::optim::clip::reduction(norm_type) {
            Some(op) => {
                let total = combine_all(op, values);
                match op {
                    ReduceOp::SumSquares => total.sqrt(),
                    _ => total,
                }
            }
            None if norm_type == f64::NEG_INFINITY => {
                values.into_iter().fold(f64::INFINITY, f64::min)
            }
            None if norm_type == 0.0 => values.into_iter().filter(|&v| v != 0.0).count() as f64,
            None => values.into_iter().sum::<f64>().powf(1.0 / norm_type),
        };
        // A sum of nothing but zeros is -0 (the sums' identity): a norm is +0 there.
        Ok(if total == 0.0 { 0.0 } else { total })
    }

    /// Parameter `i`'s part of the norm (see [`Optimizer::grad_norm`]).
    fn param_norm_part<T: Float>(&self, i: usize, norm_type: f64) -> f64 {
        let grads = self.grad_slice::<T>(i);
        match crate::optim::clip::reduction(norm_type) {
            // The sum of magnitudes: |g| in T, then the sum's order, as the fused clip.
            Some(ReduceOp::Sum) => {
                let mut abs = Vec::with_capacity(grads.len().min(BLOCK));
                let partials = grads.chunks(BLOCK).map(|block| {
                    abs.clear();
                    abs.extend(block.iter().map(|g| g.abs()));
                    block_partial(ReduceOp::Sum, &abs)
                });
                combine_all(ReduceOp::Sum, partials.collect::<Vec<_>>())
            }
            Some(op) => crate::ir::reduce::reduce(op, grads),
            None if norm_type == f64::NEG_INFINITY => grads
                .iter()
                .map(|g| g.abs().to_f64())
                .fold(f64::INFINITY, f64::min),
            None if norm_type == 0.0 => f64::from(u8::from(grads.iter().any(|g| *g != T::ZERO))),
            None => grads.iter().map(|g| g.abs().to_f64().powf(norm_type)).sum(),
        }
    }

    /// `torch.nn.utils.clip_grad_norm_` over every parameter with a gradient: computes their
    /// total norm ([`Optimizer::grad_norm`]), then multiplies every gradient by
    /// `min(max_norm / (total + 1e-6), 1)` (computed in f64, rounded once to the gradient's
    /// dtype; also when it is 1). Returns the total norm.
    ///
    /// With `error_if_nonfinite`, a NaN or infinite total norm is [`Error::NonFiniteNorm`]
    /// and no gradient changes; without, the gradients are scaled by the resulting
    /// coefficient (0 for an infinite norm, NaN for a NaN one), as PyTorch does.
    ///
    /// ```
    /// use optjit::{optim::Sgd, Optimizer};
    /// use ndarray::array;
    ///
    /// let mut opt = Optimizer::new(&Sgd::default().graph()?)?;
    /// let g = opt.add_param_group(&[])?;
    /// let w = opt.add_param(g, "w", &array![0.0f32, 0.0])?;
    /// opt.set_grad(&w, &[3.0, 4.0])?;
    /// assert_eq!(opt.clip_grad_norm(1.0, 2.0, false)?, 5.0);
    /// let clipped = opt.grad(&w)?.unwrap();
    /// assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6);
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn clip_grad_norm(
        &mut self,
        max_norm: f64,
        norm_type: f64,
        error_if_nonfinite: bool,
    ) -> Result<f64> {
        let total = self.grad_norm(norm_type)?;
        if error_if_nonfinite && !total.is_finite() {
            return Err(Error::NonFiniteNorm { norm_type, total });
        }
        let coef = crate::transform::torch_clip_factor(max_norm, total);
        self.scale_grads::<f32>(|g| g * f32::from_f64(coef));
        self.scale_grads::<f64>(|g| g * coef);
        Ok(total)
    }

    /// `torch.nn.utils.clip_grad_value_`: every gradient element `g` becomes
    /// `min(max(g, -clip_value), clip_value)`, as `torch.clamp` (NaN stays NaN, `-0` stays
    /// `-0`; a negative `clip_value` makes every element `clip_value`, a NaN one NaN).
    pub fn clip_grad_value(&mut self, clip_value: f64) {
        fn clamp<T: Float>(g: T, v: T) -> T {
            use crate::ir::{eval_op, Op};
            let low = eval_op(Op::Max, g, -v, -v);
            eval_op(Op::Min, low, v, v)
        }
        self.scale_grads::<f32>(|g| clamp(g, f32::from_f64(clip_value)));
        self.scale_grads::<f64>(|g| clamp(g, clip_value));
    }

    /// Applies `f` to every gradient element of every parameter of dtype `T` that has one.
    pub(super) fn scale_grads<T: Float>(&mut self, f: impl Fn(T) -> T) {
        for i in 0..self.params.len() {
            if self.has_grad[i] && self.params[i].dtype == T::DTYPE {
                for g in self.grad_slice_mut::<T>(i) {
                    *g = f(*g);
                }
            }
        }
    }
}

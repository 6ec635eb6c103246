//! Optimizers composed from gradient transformations, as in optax: a chain starts from the
//! gradient as its *updates*, each transform rewrites them (keeping its own named state), and
//! the chain ends by adding the updates to the parameter — one graph, compiled into one fused
//! program like any other.
//!
//! ```
//! use optjit::optim::{common::builder, Adam};
//! use optjit::passes::compile;
//! use optjit::transform::{add_decayed_weights, chain, scale_by_adam, scale_by_lr};
//!
//! // torch.optim.Adam, as a chain: L2 penalty, Adam's scaling, the learning rate.
//! let b = builder("adam");
//! let lr = b.hyper("lr", 1e-3);
//! let (b1, b2) = (b.hyper("b1", 0.9), b.hyper("b2", 0.999));
//! let eps = b.hyper("eps", 1e-8);
//! let weight_decay = b.hyper("weight_decay", 0.0);
//! chain(&b, &[
//!     &add_decayed_weights(weight_decay),
//!     &scale_by_adam(b1, b2, eps),
//!     &scale_by_lr(lr),
//! ])?;
//! // The same program as the built-in, instruction for instruction.
//! assert_eq!(compile(&b.finish()?)?, compile(&Adam::default().graph()?)?);
//! # Ok::<(), optjit::Error>(())
//! ```
//!
//! The transforms follow `torch.optim`'s formulas (a chain equal to a built-in compiles to
//! the built-in's program, which matches PyTorch's numbers); where optax's transform of the
//! same name differs, its doc says how. A scalar factor (the learning rate, Adam's bias
//! correction) and Adam's denominator stay pending in [`Updates`] until a transform needs the
//! value or the chain ends, so that they are applied in the built-ins' order: `θ − (lr / (1 −
//! β₁ᵗ)) · m / d`, the step size one prologue scalar.
//!
//! A transform is anything implementing [`Transform`], closures included:
//! `&|b: &Builder, s: Chained| ...`.

pub mod common;

use crate::ir::{ReduceOp, Scope};
use crate::{Builder, Expr, Result};
use common::{bias_correction, l2_penalty, lerp};

/// The updates a chain carries: `±(f₁·f₂·… / (1 − βᵗ)) · value / denominator`, with the
/// scalar factors, the bias correction, the denominator and the sign applied only when the
/// value is needed (see [`Updates::value`]).
#[derive(Clone, Debug)]
pub struct Updates<'b> {
    value: Expr<'b>,
    factors: Vec<Expr<'b>>,
    bias: Option<Expr<'b>>,
    denominator: Option<AdamDenominator<'b>>,
    negated: bool,
}

/// Adam's `√v / √(1 − β₂ᵗ) + ε`, built when the updates are.
#[derive(Clone, Copy, Debug)]
struct AdamDenominator<'b> {
    v: Expr<'b>,
    b2: Expr<'b>,
    eps: Expr<'b>,
}

impl<'b> Updates<'b> {
    /// Updates equal to `value`.
    pub fn new(value: Expr<'b>) -> Updates<'b> {
        Updates {
            value,
            factors: Vec::new(),
            bias: None,
            denominator: None,
            negated: false,
        }
    }

    /// The magnitude `(f₁·f₂·… / (1 − βᵗ)) · value / denominator`, and whether it is
    /// negated: built scale first, then denominator, then the products.
    fn magnitude(&self, b: &'b Builder) -> (Expr<'b>, bool) {
        let product = self.factors.iter().copied().reduce(|a, f| a * f);
        let scale = match (product, self.bias) {
            (Some(p), Some(beta)) => Some(p / bias_correction(b, beta)),
            (None, Some(beta)) => Some(1.0 / bias_correction(b, beta)),
            (p, None) => p,
        };
        let denominator = self
            .denominator
            .map(|d| d.v.sqrt() / bias_correction(b, d.b2).sqrt() + d.eps);
        let mut x = self.value;
        if let Some(s) = scale {
            x = s * x;
        }
        if let Some(d) = denominator {
            x = x / d;
        }
        (x, self.negated)
    }

    /// The updates as one value (what a transform that reads them sees).
    pub fn value(&self, b: &'b Builder) -> Expr<'b> {
        match self.magnitude(b) {
            (x, true) => -x,
            (x, false) => x,
        }
    }

    /// The updates times the per-step scalar `factor`, kept pending.
    pub fn scaled(mut self, factor: Expr<'b>) -> Updates<'b> {
        self.factors.push(factor);
        self
    }

    /// The updates negated, kept pending.
    pub fn negated(mut self) -> Updates<'b> {
        self.negated = !self.negated;
        self
    }
}

/// What flows through a chain: the parameter as the update will see it (decoupled weight
/// decay rewrites it) and the updates to add to it.
#[derive(Clone, Debug)]
pub struct Chained<'b> {
    /// The parameter.
    pub param: Expr<'b>,
    /// The updates.
    pub updates: Updates<'b>,
}

/// A gradient transformation: rewrites the updates (and possibly the parameter), declaring
/// through the builder the hyperparameter-free state it keeps.
pub trait Transform<'b> {
    /// Applies the transform.
    fn apply(&self, b: &'b Builder, chained: Chained<'b>) -> Result<Chained<'b>>;
}

impl<'b, F> Transform<'b> for F
where
    F: Fn(&'b Builder, Chained<'b>) -> Result<Chained<'b>>,
{
    fn apply(&self, b: &'b Builder, chained: Chained<'b>) -> Result<Chained<'b>> {
        self(b, chained)
    }
}

/// Runs `transforms` in order from the gradient and sets the new parameter to the parameter
/// plus the updates (`θ − x` when the updates are a negated `x`, as after
/// [`scale_by_lr`]).
pub fn chain<'b>(b: &'b Builder, transforms: &[&dyn Transform<'b>]) -> Result<()> {
    let mut chained = Chained {
        param: b.param(),
        updates: Updates::new(b.grad()),
    };
    for t in transforms {
        chained = t.apply(b, chained)?;
    }
    let param = match chained.updates.magnitude(b) {
        (x, true) => chained.param - x,
        (x, false) => chained.param + x,
    };
    b.set_param(param);
    Ok(())
}

/// A transform from a function of the parameter and the updates' value: the updates become
/// `f(b, param, u)`.
pub fn map_updates<'b>(
    f: impl Fn(&'b Builder, Expr<'b>, Expr<'b>) -> Expr<'b>,
) -> impl Fn(&'b Builder, Chained<'b>) -> Result<Chained<'b>> {
    move |b, c: Chained<'b>| {
        let value = f(b, c.param, c.updates.value(b));
        Ok(Chained {
            param: c.param,
            updates: Updates::new(value),
        })
    }
}

/// `u + λ·θ`, skipped where `λ = 0` (`torch.optim`'s L2 penalty, see
/// [`common::l2_penalty`]; optax's `add_decayed_weights` adds `0·θ` too).
pub fn add_decayed_weights<'b>(weight_decay: Expr<'b>) -> impl Transform<'b> {
    map_updates(move |b, param, u| l2_penalty(b, u, weight_decay, param))
}

/// Decoupled weight decay as `torch.optim.AdamW` applies it: `θ ← θ · (1 − lr · λ)` before
/// the update (optax's AdamW adds `λ·θ` to the updates before the learning rate instead).
pub fn decay_weights<'b>(lr: Expr<'b>, weight_decay: Expr<'b>) -> impl Transform<'b> {
    move |_: &'b Builder, c: Chained<'b>| {
        Ok(Chained {
            param: c.param * (1.0 - lr * weight_decay),
            updates: c.updates,
        })
    }
}

/// Multiplies the updates by `−lr` (kept pending: see [`Updates`]).
pub fn scale_by_lr<'b>(lr: Expr<'b>) -> impl Transform<'b> {
    move |_: &'b Builder, c: Chained<'b>| {
        Ok(Chained {
            param: c.param,
            updates: c.updates.scaled(lr).negated(),
        })
    }
}

/// Multiplies the updates by the per-step scalar `factor` (kept pending).
pub fn scale<'b>(factor: Expr<'b>) -> impl Transform<'b> {
    move |_: &'b Builder, c: Chained<'b>| {
        Ok(Chained {
            param: c.param,
            updates: c.updates.scaled(factor),
        })
    }
}

/// `sign(u)` (optjit's `sign`: ±0 and NaN kept), as signSGD and Lion use it.
pub fn scale_by_sign<'b>() -> impl Transform<'b> {
    map_updates(|_, _, u| u.sign())
}

/// Clamps each update to `[−max_delta, max_delta]` (`torch.clamp`, optax's `clip`).
pub fn clip<'b>(max_delta: Expr<'b>) -> impl Transform<'b> {
    map_updates(move |_, _, u| u.max(-max_delta).min(max_delta))
}

/// Scales the updates by `min(max_norm / (‖u‖ + 10⁻⁶), 1)`, `‖u‖` the 2-norm of every
/// parameter's updates as one vector: PyTorch's `clip_grad_norm_` (a global reduction; see
/// [`crate::optim::clip_grad_norm`], which it equals bit for bit as the chain's first
/// transform).
pub fn clip_grad_norm<'b>(max_norm: Expr<'b>) -> impl Transform<'b> {
    map_updates(move |_, _, u| {
        u * torch_clip_factor(max_norm, global_norm(u, ReduceOp::SumSquares))
    })
}

/// optax's `clip_by_global_norm`: the updates unchanged while `‖u‖ < max_norm`, else scaled
/// by `max_norm / ‖u‖` (see [`crate::optim::clip_by_global_norm`]; no `10⁻⁶`, unlike
/// [`clip_grad_norm`]).
pub fn clip_by_global_norm<'b>(max_norm: Expr<'b>) -> impl Transform<'b> {
    map_updates(move |b: &'b Builder, _, u| u * optax_clip_factor(b, u, max_norm))
}

/// The norm of `u` over every parameter of the step as one vector, from the reduction `op`
/// computes: the 1-norm (`Sum` of `|u|`), the 2-norm (`SumSquares`, then `√`) or the ∞-norm
/// (`MaxAbs`).
pub(crate) fn global_norm(u: Expr<'_>, op: ReduceOp) -> Expr<'_> {
    match op {
        ReduceOp::Sum => u.abs().sum(Scope::Global),
        ReduceOp::SumSquares => u.sum_squares(Scope::Global).sqrt(),
        ReduceOp::MaxAbs => u.max_abs(Scope::Global),
        // Not a norm: the reduction itself, so that every op has a meaning here.
        ReduceOp::NonFinite => u.non_finite(Scope::Global),
    }
}

/// What PyTorch's `clip_grad_norm_` multiplies every gradient by, `min(max_norm / (total +
/// 10⁻⁶), 1)`: the one definition of that factor, in the graph ([`Expr`]) and on the host
/// (`f64`, [`crate::Optimizer::clip_grad_norm`]), which therefore agree bit for bit.
pub(crate) fn torch_clip_factor<S: ClipArith>(max_norm: S, total: S) -> S {
    (max_norm / (total + 1e-6)).op_min(1.0)
}

/// optax's `clip_by_global_norm` factor for updates `u`: 1 while `‖u‖ < max_norm`, else
/// `max_norm / ‖u‖`.
pub(crate) fn optax_clip_factor<'b>(b: &'b Builder, u: Expr<'b>, max_norm: Expr<'b>) -> Expr<'b> {
    let norm = global_norm(u, ReduceOp::SumSquares);
    b.select(norm.lt(max_norm), 1.0, max_norm / norm)
}

/// The arithmetic [`torch_clip_factor`] is written in: graph expressions, or `f64` with the
/// ops' semantics of [`crate::ir::eval_op`].
pub(crate) trait ClipArith:
    Copy + std::ops::Add<f64, Output = Self> + std::ops::Div<Output = Self>
{
    /// [`crate::ir::Op::Min`].
    fn op_min(self, other: f64) -> Self;
}

impl ClipArith for f64 {
    fn op_min(self, other: f64) -> f64 {
        crate::ir::eval_op(crate::ir::Op::Min, self, other, other)
    }
}

impl ClipArith for Expr<'_> {
    fn op_min(self, other: f64) -> Self {
        self.min(other)
    }
}

/// LAMB's trust ratio, per parameter tensor: the updates times `‖θ‖ / ‖u‖`, or 1 where
/// either norm is 0 (optax's `scale_by_trust_ratio`).
pub fn scale_by_trust_ratio<'b>() -> impl Transform<'b> {
    map_updates(|b: &'b Builder, param, u| {
        let param_norm = param.sum_squares(Scope::Param).sqrt();
        let update_norm = u.sum_squares(Scope::Param).sqrt();
        let degenerate = param_norm.eq(0.0) + update_norm.eq(0.0);
        u * b.select(degenerate, 1.0, param_norm / update_norm)
    })
}

/// Adam's scaling, as `torch.optim.Adam` computes it: `m ← m + (1 − β₁)(u − m)`, `v ← β₂v +
/// (1 − β₂)u²`, updates `(m / (1 − β₁ᵗ)) / (√v / √(1 − β₂ᵗ) + ε)` (bias corrections and ε
/// pending, see [`Updates`]). State `exp_avg` and `exp_avg_sq` (and `max_exp_avg_sq` with
/// AMSGrad), renamed with [`ScaleByAdam::named`]. optax's `scale_by_adam` divides the moments
/// by their bias corrections first and has an `eps_root`.
pub fn scale_by_adam<'b>(b1: Expr<'b>, b2: Expr<'b>, eps: Expr<'b>) -> ScaleByAdam<'b> {
    ScaleByAdam {
        b1,
        b2,
        eps,
        amsgrad: false,
        names: ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"].map(String::from),
    }
}

/// See [`scale_by_adam`].
#[derive(Clone, Debug)]
pub struct ScaleByAdam<'b> {
    b1: Expr<'b>,
    b2: Expr<'b>,
    eps: Expr<'b>,
    amsgrad: bool,
    names: [String; 3],
}

impl ScaleByAdam<'_> {
    /// With AMSGrad: the maximum of past second moments.
    pub fn amsgrad(mut self) -> Self {
        self.amsgrad = true;
        self
    }

    /// Its state under these names (first moment, second moment, maximum second moment),
    /// e.g. `["mu", "nu", "nu_max"]`, so that two of them can share a chain.
    pub fn named(mut self, names: [&str; 3]) -> Self {
        self.names = names.map(String::from);
        self
    }
}

impl<'b> Transform<'b> for ScaleByAdam<'b> {
    fn apply(&self, b: &'b Builder, c: Chained<'b>) -> Result<Chained<'b>> {
        let [m_name, v_name, max_name] = &self.names;
        let g = c.updates.value(b);
        let m = lerp(b.state(m_name, 0.0), g, 1.0 - self.b1);
        let v = self.b2 * b.state(v_name, 0.0) + (1.0 - self.b2) * g * g;
        b.set_state(m_name, m)?;
        b.set_state(v_name, v)?;
        let v = if self.amsgrad {
            let v_max = b.state(max_name, 0.0).max(v);
            b.set_state(max_name, v_max)?;
            v_max
        } else {
            v
        };
        let mut updates = Updates::new(m);
        updates.bias = Some(self.b1);
        updates.denominator = Some(AdamDenominator {
            v,
            b2: self.b2,
            eps: self.eps,
        });
        Ok(Chained {
            param: c.param,
            updates,
        })
    }
}

/// Momentum as `torch.optim.SGD` keeps it: `buf ← u` at the first step, then `buf ← μ·buf +
/// (1 − dampening)·u`; the updates become `buf`, or `u + μ·buf` with Nesterov. State
/// `momentum_buffer` (renamed with [`Trace::named`]). Without dampening (optax's `trace`)
/// the buffer is `μ·buf + u`, which optax starts from zero: the same first value.
pub fn trace(momentum: Expr<'_>) -> Trace<'_> {
    Trace {
        momentum,
        dampening: None,
        nesterov: false,
        name: "momentum_buffer".to_string(),
    }
}

/// See [`trace`].
#[derive(Clone, Debug)]
pub struct Trace<'b> {
    momentum: Expr<'b>,
    dampening: Option<Expr<'b>>,
    nesterov: bool,
    name: String,
}

impl<'b> Trace<'b> {
    /// With PyTorch's `dampening`.
    pub fn dampening(mut self, dampening: Expr<'b>) -> Self {
        self.dampening = Some(dampening);
        self
    }

    /// With Nesterov momentum.
    pub fn nesterov(mut self) -> Self {
        self.nesterov = true;
        self
    }

    /// Its state under this name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

impl<'b> Transform<'b> for Trace<'b> {
    fn apply(&self, b: &'b Builder, c: Chained<'b>) -> Result<Chained<'b>> {
        let g = c.updates.value(b);
        let buf = b.state(&self.name, 0.0);
        let first = b.step().eq(1.0);
        let next = match self.dampening {
            Some(d) => self.momentum * buf + (1.0 - d) * g,
            None => self.momentum * buf + g,
        };
        let buf = b.select(first, g, next);
        b.set_state(&self.name, buf)?;
        let value = match self.nesterov {
            true => g + self.momentum * buf,
            false => buf,
        };
        Ok(Chained {
            param: c.param,
            updates: Updates::new(value),
        })
    }
}

//! Helpers shared by the transforms, the built-ins of [`crate::optim`] (which re-exports
//! them as `optim::common`) and custom optimizers, named after the quantities of the papers:
//! moving averages, bias corrections, PyTorch's `lerp` and weight decay, its `sign`.

use crate::ir::GraphFlags;
use crate::{Builder, Expr};

/// `start + weight · (end − start)`: PyTorch's `lerp_` for weights below 0.5, which is how
/// Adam's first moment `m ← β₁m + (1 − β₁)g` is computed there.
pub fn lerp<'b>(start: Expr<'b>, end: Expr<'b>, weight: Expr<'b>) -> Expr<'b> {
    start + weight * (end - start)
}

/// PyTorch's `lerp(start, end, weight)` for a per-step scalar `weight`, with both of its
/// formulas: `start + w·(end − start)` where `|w| < 0.5`, else `end − (end − start)·(1 − w)`,
/// chosen at run time (so `w` may be a hyperparameter or a running quantity). With `w = 1`
/// the result is `end` itself. The test and `1 − w` are prologue values (f64, `1 − w` rounded
/// once), where PyTorch computes both on `w` rounded to the element type; the two can differ
/// in the last bit of `1 − w`, or in the formula for a `w` within an ulp of 0.5.
pub fn lerp_torch<'b>(
    b: &'b Builder,
    start: Expr<'b>,
    end: Expr<'b>,
    weight: Expr<'b>,
) -> Expr<'b> {
    let small = weight.abs().lt(0.5);
    let near_start = start + weight * (end - start);
    let near_end = end - (end - start) * (1.0 - weight);
    b.select(small, near_start, near_end)
}

/// `β·avg + (1 − β)·x`, an exponential moving average in PyTorch's order
/// (`avg.mul_(β).add_(x, alpha=1 − β)`).
pub fn ema<'b>(avg: Expr<'b>, x: Expr<'b>, beta: Expr<'b>) -> Expr<'b> {
    beta * avg + (1.0 - beta) * x
}

/// `β·avg + ((1 − β)·x)·x`, a moving average of squares in PyTorch's order
/// (`avg.mul_(β).addcmul_(x, x, value=1 − β)`).
pub fn ema_sq<'b>(avg: Expr<'b>, x: Expr<'b>, beta: Expr<'b>) -> Expr<'b> {
    beta * avg + (1.0 - beta) * x * x
}

/// `1 − βᵗ`, the bias correction of an exponential moving average after `t` steps.
pub fn bias_correction<'b>(b: &'b Builder, beta: Expr<'b>) -> Expr<'b> {
    1.0 - beta.pow(b.step())
}

/// The gradient, negated when maximizing.
pub fn signed_grad(b: &Builder, maximize: bool) -> Expr<'_> {
    if maximize {
        -b.grad()
    } else {
        b.grad()
    }
}

/// `g + λ·θ`, PyTorch's L2 penalty, skipped when `λ = 0` as PyTorch skips it (a run-time
/// choice: `λ` stays a hyperparameter). Adding `0·θ` instead would turn an infinite θ into NaN
/// and a `-0` gradient into `+0`.
pub fn l2_penalty<'b>(
    b: &'b Builder,
    g: Expr<'b>,
    weight_decay: Expr<'b>,
    param: Expr<'b>,
) -> Expr<'b> {
    b.select(weight_decay.ne(0.0), g + weight_decay * param, g)
}

/// The value of `slot`, or `init` at the parameter's first step: PyTorch state whose initial
/// value is a hyperparameter (Rprop's `step_size` and ASGD's `eta` start at `lr`, Adagrad's
/// `sum` at `initial_accumulator_value`). The hyperparameter's value at the first step counts,
/// as PyTorch reads it when it creates the state.
pub fn initialized<'b>(b: &'b Builder, slot: Expr<'b>, init: Expr<'b>) -> Expr<'b> {
    b.select(b.step().eq(1.0), init, slot)
}

/// `(x > 0) − (x < 0)`: `torch.sign` as PyTorch's CPU kernels compute it, 0 for ±0 and for
/// NaN (optjit's own `sign` keeps ±0 and NaN).
pub fn torch_sign(x: Expr<'_>) -> Expr<'_> {
    x.gt(0.0) - x.lt(0.0)
}

/// The builder of a built-in: divisions by per-step scalars become products with their
/// reciprocals (see [`GraphFlags::reciprocal`]), one division fewer per element wherever a
/// bias correction divides; every built-in stays within PyTorch's conformance tolerances.
pub fn builder(name: &str) -> Builder {
    let b = Builder::new(name);
    b.set_flags(GraphFlags {
        reciprocal: true,
        ..GraphFlags::default()
    });
    b
}

/// The parameter and gradient after PyTorch's weight decay: decoupled (`θ ← θ·(1 − lr·λ)`,
/// the AdamW form) or as an L2 penalty on the gradient (see [`l2_penalty`]).
pub fn weight_decay<'b>(
    b: &'b Builder,
    (param, grad): (Expr<'b>, Expr<'b>),
    lr: Expr<'b>,
    weight_decay: Expr<'b>,
    decoupled: bool,
) -> (Expr<'b>, Expr<'b>) {
    if decoupled {
        (param * (1.0 - lr * weight_decay), grad)
    } else {
        (param, l2_penalty(b, grad, weight_decay, param))
    }
}

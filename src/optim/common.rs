//! Helpers shared by the built-ins, named after the quantities of the papers.

use crate::{Builder, Expr};

/// `start + weight · (end − start)`: PyTorch's `lerp_` for weights below 0.5, which is how
/// Adam's first moment `m ← β₁m + (1 − β₁)g` is computed there.
pub fn lerp<'b>(start: Expr<'b>, end: Expr<'b>, weight: Expr<'b>) -> Expr<'b> {
    start + weight * (end - start)
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

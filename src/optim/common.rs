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

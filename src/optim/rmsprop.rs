//! RMSprop, plain or centered, with momentum, weight decay and maximize.

use super::common::{builder, ema_sq, l2_penalty, lerp, signed_grad};
use crate::{Graph, Result};

/// RMSprop as `torch.optim.RMSprop` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                   if weight_decay ≠ 0
/// v ← α · v + (1 − α) · g · g
/// if centered:
///     ḡ ← ḡ + (1 − α) · (g − ḡ)
///     d ← √(v − ḡ · ḡ) + ε
/// else:
///     d ← √v + ε
/// if momentum > 0:
///     b ← momentum · b + g / d
///     θ ← θ − lr · b
/// else:
///     θ ← θ − lr · g / d
/// ```
///
/// Hyperparameters: `lr`, `alpha`, `eps`, `weight_decay` and, with momentum, `momentum`.
/// State: `square_avg` (`v`), `grad_avg` (`ḡ`) when centered, `momentum_buffer` (`b`) when
/// `momentum > 0`: like PyTorch, which keeps no buffer without momentum, that test is made
/// when the graph is built. `centered` chooses the graph; `ḡ` uses PyTorch's `lerp` formula
/// for weights below 0.5 (`1 − α < 0.5`).
///
/// ```
/// use optjit::{optim::Rmsprop, Stepper};
///
/// let rmsprop = Stepper::new(&Rmsprop::default().graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = rmsprop.init_state(2).unwrap();
/// rmsprop.step(&mut param, &grad, &mut state).unwrap();
/// // First step: v = (1 − α)·g², so every element moves by lr / √(1 − α) = 0.1.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 0.9).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rmsprop {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant of the moving averages (default 0.99).
    pub alpha: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Momentum factor; 0 means no momentum buffer.
    pub momentum: f64,
    /// Normalize by an estimate of the gradient's variance instead of its second moment.
    pub centered: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Rmsprop {
    fn default() -> Self {
        Rmsprop {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl Rmsprop {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let with_momentum = self.momentum > 0.0;
        let name = match (self.centered, with_momentum) {
            (false, false) => "rmsprop",
            (true, false) => "rmsprop_centered",
            (false, true) => "rmsprop_momentum",
            (true, true) => "rmsprop_centered_momentum",
        };
        let b = builder(name);
        let lr = b.hyper("lr", self.lr);
        let alpha = b.hyper("alpha", self.alpha);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);
        let momentum = with_momentum.then(|| b.hyper("momentum", self.momentum));

        let param = b.param();
        let g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        let v = ema_sq(b.state("square_avg", 0.0), g, alpha);
        b.set_state("square_avg", v)?;
        let denom = if self.centered {
            let g_avg = lerp(b.state("grad_avg", 0.0), g, 1.0 - alpha);
            b.set_state("grad_avg", g_avg)?;
            (v - g_avg * g_avg).sqrt() + eps
        } else {
            v.sqrt() + eps
        };
        if let Some(momentum) = momentum {
            let buf = momentum * b.state("momentum_buffer", 0.0) + g / denom;
            b.set_state("momentum_buffer", buf)?;
            b.set_param(param - lr * buf);
        } else {
            b.set_param(param - lr * g / denom);
        }
        b.finish()
    }
}

//! RAdam: Adam with a rectified adaptive learning rate, with L2 or decoupled weight decay
//! (RAdamW) and maximize.

use super::common::{bias_correction, builder, ema_sq, lerp, signed_grad, weight_decay};
use crate::{Graph, Result};

/// RAdam as `torch.optim.RAdam` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                 (if weight_decay ≠ 0)
/// θ ← θ · (1 − lr · weight_decay)          (decoupled_weight_decay: instead)
/// m ← m + (1 − β₁) · (g − m)
/// v ← β₂ · v + (1 − β₂) · g · g
/// ρ∞ ← 2 / (1 − β₂) − 1
/// ρₜ ← ρ∞ − 2t · β₂ᵗ / (1 − β₂ᵗ)
/// if ρₜ > 5:
///     r ← √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))
///     θ ← θ − m / (1 − β₁ᵗ) · lr · (1 / (√v + ε)) · √(1 − β₂ᵗ) · r
/// else:
///     θ ← θ − m / (1 − β₁ᵗ) · lr
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (PyTorch's `betas`), `eps`, `weight_decay`. State:
/// `exp_avg` (`m`), `exp_avg_sq` (`v`). `ρₜ`, `r` and the bias corrections are per-step
/// scalars (f64); the test `ρₜ > 5` is made at run time, and the element products are
/// evaluated left to right as PyTorch does, including its `x / tensor` as
/// `tensor.reciprocal() · x`.
///
/// ```
/// use optjit::{optim::RAdam, Stepper};
///
/// let radam = Stepper::new(&RAdam { lr: 0.1, ..RAdam::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = radam.init_state(2).unwrap();
/// radam.step(&mut param, &grad, &mut state).unwrap();
/// // Until ρₜ > 5 (the first 5 steps with β₂ = 0.999), RAdam is SGD with momentum:
/// // θ ← θ − lr · m̂, and at the first step m̂ = g.
/// assert!((param[0] - 0.95).abs() < 1e-12 && (param[1] + 0.8).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RAdam {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay, an L2 penalty or decoupled (default 0).
    pub weight_decay: f64,
    /// Decay the weights as AdamW does instead of adding an L2 penalty (RAdamW).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        RAdam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl RAdam {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder(if self.decoupled_weight_decay {
            "radamw"
        } else {
            "radam"
        });
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let lambda = b.hyper("weight_decay", self.weight_decay);

        let (param, g) = weight_decay(
            &b,
            (b.param(), signed_grad(&b, self.maximize)),
            lr,
            lambda,
            self.decoupled_weight_decay,
        );
        let m = lerp(b.state("exp_avg", 0.0), g, 1.0 - b1);
        let v = ema_sq(b.state("exp_avg_sq", 0.0), g, b2);
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_sq", v)?;

        let t = b.step();
        let bc2 = bias_correction(&b, b2);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.pow(t) / bc2;
        let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .pow(0.5);
        let momentum_step = m / bias_correction(&b, b1) * lr;
        let adaptive_lr = 1.0 / (v.sqrt() + eps) * bc2.pow(0.5);
        let rectified = momentum_step * adaptive_lr * rect;
        let update = b.select(rho_t.gt(5.0), rectified, momentum_step);
        b.set_param(param - update);
        b.finish()
    }
}

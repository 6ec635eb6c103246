//! NAdam: Adam with Nesterov momentum and a momentum schedule, with L2 or decoupled weight
//! decay (NAdamW) and maximize.

use super::common::{bias_correction, builder, ema_sq, lerp, signed_grad, weight_decay};
use crate::{Graph, Result};

/// NAdam as `torch.optim.NAdam` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                 (if weight_decay ≠ 0)
/// θ ← θ · (1 − lr · weight_decay)          (decoupled_weight_decay: instead)
/// μₜ   ← β₁ · (1 − ½ · 0.96^(t · momentum_decay))
/// μₜ₊₁ ← β₁ · (1 − ½ · 0.96^((t + 1) · momentum_decay))
/// π ← π · μₜ                               (π = μ₁ ⋯ μₜ, per parameter)
/// m ← m + (1 − β₁) · (g − m)
/// v ← β₂ · v + (1 − β₂) · g · g
/// d ← √(v / (1 − β₂ᵗ)) + ε
/// θ ← θ − (lr · (1 − μₜ) / (1 − π)) · g / d
/// θ ← θ − (lr · μₜ₊₁ / (1 − π · μₜ₊₁)) · m / d
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (PyTorch's `betas`), `eps`, `weight_decay`,
/// `momentum_decay`. State: `mu_product` (`π`, a per-parameter scalar), `exp_avg` (`m`),
/// `exp_avg_sq` (`v`). `π` and every step size are computed in f64 in the prologue; PyTorch
/// keeps `mu_product` in the default dtype (f32 in an f32 program), so f32 results can differ
/// from PyTorch's in the last bits.
///
/// ```
/// use optjit::{optim::NAdam, SlotValue, Stepper};
///
/// let nadam = Stepper::new(&NAdam::default().graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = nadam.init_state(2).unwrap();
/// nadam.step(&mut param, &grad, &mut state).unwrap();
/// // At the first step g / d = sign(g) and m = (1 − β₁)·g: every element moves by lr, plus
/// // the Nesterov look-ahead along m.
/// let mu = |t: f64| 0.9 * (1.0 - 0.5 * 0.96f64.powf(t * 4e-3));
/// let moved = 2e-3 * (1.0 + 0.1 * mu(2.0) / (1.0 - mu(1.0) * mu(2.0)));
/// assert!((param[0] - (1.0 - moved)).abs() < 1e-9 && (param[1] + 1.0 - moved).abs() < 1e-9);
/// assert_eq!(state.slots[0], SlotValue::Scalar(mu(1.0)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NAdam {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Decay rates of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay, an L2 penalty or decoupled (default 0).
    pub weight_decay: f64,
    /// Momentum schedule's decay ψ (default 4e-3).
    pub momentum_decay: f64,
    /// Decay the weights as AdamW does instead of adding an L2 penalty (NAdamW).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        NAdam {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl NAdam {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder(if self.decoupled_weight_decay {
            "nadamw"
        } else {
            "nadam"
        });
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let lambda = b.hyper("weight_decay", self.weight_decay);
        let momentum_decay = b.hyper("momentum_decay", self.momentum_decay);

        let (param, g) = weight_decay(
            &b,
            (b.param(), signed_grad(&b, self.maximize)),
            lr,
            lambda,
            self.decoupled_weight_decay,
        );
        let t = b.step();
        let mu = b1 * (1.0 - 0.5 * b.constant(0.96).pow(t * momentum_decay));
        let mu_next = b1 * (1.0 - 0.5 * b.constant(0.96).pow((t + 1.0) * momentum_decay));
        let mu_product = b.scalar_state("mu_product", 1.0) * mu;
        b.set_state("mu_product", mu_product)?;

        let m = lerp(b.state("exp_avg", 0.0), g, 1.0 - b1);
        let v = ema_sq(b.state("exp_avg_sq", 0.0), g, b2);
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_sq", v)?;
        let denom = (v / bias_correction(&b, b2)).sqrt() + eps;
        let grad_step = lr * (1.0 - mu) / (1.0 - mu_product);
        let avg_step = lr * mu_next / (1.0 - mu_product * mu_next);
        b.set_param(param - grad_step * g / denom - avg_step * m / denom);
        b.finish()
    }
}

//! Adamax: Adam with the infinity norm, with weight decay and maximize.

use super::common::{bias_correction, builder, l2_penalty, lerp, signed_grad};
use crate::{Graph, Result};

/// Adamax as `torch.optim.Adamax` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                   if weight_decay ≠ 0
/// m ← m + (1 − β₁) · (g − m)
/// u ← max(β₂ · u, |g| + ε)
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / u
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (PyTorch's `betas`), `eps`, `weight_decay`. State:
/// `exp_avg` (`m`) and `exp_inf` (`u`). The maximum propagates NaN, as `torch.maximum`.
///
/// ```
/// use optjit::{optim::Adamax, Stepper};
///
/// let adamax = Stepper::new(&Adamax { lr: 0.1, ..Adamax::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f32, -1.0], vec![0.5, -2.0]);
/// let mut state = adamax.init_state(2).unwrap();
/// adamax.step(&mut param, &grad, &mut state).unwrap();
/// // The first step moves every element by lr against its gradient's sign.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 0.9).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adamax {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Decay rates of the first moment and of the infinity norm (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to `|g|` (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Adamax {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("adamax");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let param = b.param();
        let g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        let m = lerp(b.state("exp_avg", 0.0), g, 1.0 - b1);
        let u = (b2 * b.state("exp_inf", 0.0)).max(g.abs() + eps);
        b.set_state("exp_avg", m)?;
        b.set_state("exp_inf", u)?;
        let clr = lr / bias_correction(&b, b1);
        b.set_param(param - clr * m / u);
        b.finish()
    }
}

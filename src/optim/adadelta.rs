//! Adadelta, with weight decay and maximize.

use super::common::{builder, ema_sq, l2_penalty, signed_grad};
use crate::{Graph, Result};

/// Adadelta as `torch.optim.Adadelta` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                   if weight_decay ≠ 0
/// v ← ρ · v + (1 − ρ) · g · g
/// Δ ← √(u + ε) / √(v + ε) · g
/// u ← ρ · u + (1 − ρ) · Δ · Δ
/// θ ← θ − lr · Δ
/// ```
///
/// Hyperparameters: `lr`, `rho`, `eps`, `weight_decay`. State: `square_avg` (`v`) and
/// `acc_delta` (`u`, the moving average of squared updates).
///
/// ```
/// use optjit::{optim::Adadelta, Stepper};
///
/// let adadelta = Stepper::new(&Adadelta::default().graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64], vec![1.0]);
/// let mut state = adadelta.init_state(1).unwrap();
/// adadelta.step(&mut param, &grad, &mut state).unwrap();
/// // First step: Δ = √ε / √(0.1 + ε) · 1, about 0.00316.
/// assert!((param[0] - (1.0 - (1e-6f64 / (0.1 + 1e-6)).sqrt())).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adadelta {
    /// Scale of the update (default 1.0).
    pub lr: f64,
    /// Decay rate of the moving averages (default 0.9).
    pub rho: f64,
    /// Added inside both square roots (default 1e-6).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Adadelta {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Adadelta {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("adadelta");
        let lr = b.hyper("lr", self.lr);
        let rho = b.hyper("rho", self.rho);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let param = b.param();
        let g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        let v = ema_sq(b.state("square_avg", 0.0), g, rho);
        let u = b.state("acc_delta", 0.0);
        let delta = (u + eps).sqrt() / (v + eps).sqrt() * g;
        b.set_state("square_avg", v)?;
        b.set_state("acc_delta", ema_sq(u, delta, rho))?;
        b.set_param(param - lr * delta);
        b.finish()
    }
}

//! Adan: adaptive Nesterov momentum, with a moving average of gradient differences.

use super::common::{bias_correction, builder, ema, ema_sq, initialized, signed_grad};
use crate::{Graph, Result};

/// Adan as `adan.Adan` of sail-sg/Adan (its single-tensor path, `_single_tensor_adan`).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g₋ ← g at step 1, else the previous step's g
/// d ← g − g₋
/// m ← β₁ · m + (1 − β₁) · g
/// n ← β₂ · n + (1 − β₂) · d
/// u ← β₂ · d + g
/// v ← β₃ · v + ((1 − β₃) · u) · u
/// denom ← √v / √(1 − β₃ᵗ) + ε
/// θ ← θ · (1 − lr · weight_decay)                                       if no_prox
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / denom − (lr · β₂ / (1 − β₂ᵗ)) · n / denom
/// θ ← θ / (1 + lr · weight_decay)                          otherwise (proximal decay)
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2`, `b3` (the reference's `betas`), `eps`,
/// `weight_decay`. State: `exp_avg` (`m`), `exp_avg_diff` (`n`), `exp_avg_sq` (`v`) and
/// `pre_grad` (`g₋`). `no_prox` and `maximize` (optjit's addition) are choices of graph.
///
/// The reference's β's are the paper's `1 − β`'s, and each of its three moving averages
/// gets its own bias correction, as here. It keeps `neg_pre_grad = 0 − g₋` instead of `g₋` and
/// forms `d` as `neg_pre_grad + g`: the same bits as `g − g₋`, except that a `−0` gradient
/// after a `+0` one gives `d = +0` there and `−0` here. It counts steps per parameter group,
/// where optjit counts them per parameter (the same when every parameter has a gradient at
/// every step). Its global gradient clipping (`max_grad_norm`, off by default) is not part of
/// the graph: clip the gradients before the step.
///
/// `weight_decay` defaults to 0.02, the value the reference's README recommends and its
/// training scripts use; the reference's constructor defaults to 0.
///
/// Reference: X. Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
/// Optimizing Deep Models" (arXiv:2208.06677, 2022); implementation `adan.py` of sail-sg/Adan
/// at 2c65bea (file last changed in f0b1b81, August 2023).
///
/// ```
/// use optjit::{optim::Adan, Stepper};
///
/// let adan = Adan { lr: 0.1, weight_decay: 0.0, ..Adan::default() };
/// let adan = Stepper::new(&adan.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = adan.init_state(2).unwrap();
/// adan.step(&mut param, &grad, &mut state).unwrap();
/// // The first difference is 0, so the first step is Adam's: lr against the gradient's sign.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 0.9).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adan {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the gradient's, the difference's and the squared update's moving
    /// averages (default (0.98, 0.92, 0.99)).
    pub betas: (f64, f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 0.02).
    pub weight_decay: f64,
    /// Decay the weights by multiplying before the update instead of dividing after it.
    pub no_prox: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Adan {
    fn default() -> Self {
        Adan {
            lr: 1e-3,
            betas: (0.98, 0.92, 0.99),
            eps: 1e-8,
            weight_decay: 0.02,
            no_prox: false,
            maximize: false,
        }
    }
}

impl Adan {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder(if self.no_prox { "adan_no_prox" } else { "adan" });
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let b3 = b.hyper("b3", self.betas.2);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let g = signed_grad(&b, self.maximize);
        let m = b.state("exp_avg", 0.0);
        let n = b.state("exp_avg_diff", 0.0);
        let v = b.state("exp_avg_sq", 0.0);
        let pre_grad = initialized(&b, b.state("pre_grad", 0.0), g);
        let d = g - pre_grad;
        let m = ema(m, g, b1);
        let n = ema(n, d, b2);
        let u = b2 * d + g;
        let v = ema_sq(v, u, b3);
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_diff", n)?;
        b.set_state("exp_avg_sq", v)?;
        b.set_state("pre_grad", g)?;

        let denom = v.sqrt() / bias_correction(&b, b3).sqrt() + eps;
        let step_size = lr / bias_correction(&b, b1);
        let step_size_diff = lr * b2 / bias_correction(&b, b2);
        let update = |param| param - step_size * m / denom - step_size_diff * n / denom;
        let param = b.param();
        b.set_param(if self.no_prox {
            update(param * (1.0 - lr * weight_decay))
        } else {
            update(param) / (1.0 + lr * weight_decay)
        });
        b.finish()
    }
}

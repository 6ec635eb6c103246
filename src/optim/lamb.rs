//! LAMB: Adam's direction, rescaled per tensor by the ratio of the parameter's norm to the
//! direction's norm (a per-parameter reduction).

use super::common::{bias_correction, builder, ema};
use crate::ir::Scope;
use crate::{Graph, Result};

/// LAMB as `optax.lamb` defines it.
///
/// ```text
/// m ← β₁ · m + (1 − β₁) · g
/// v ← β₂ · v + (1 − β₂) · g²
/// u ← (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ) + eps_root) + eps) + weight_decay · θ
/// r ← ‖θ‖ / ‖u‖ per tensor, or 1 where either norm is 0
/// θ ← θ − lr · (u · r)
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2`, `eps`, `eps_root`, `weight_decay`. State: `exp_avg`
/// (`m`, optax's `mu`) and `exp_avg_sq` (`v`, `nu`). The norms are per parameter tensor, also
/// where parameters share a flat buffer: `‖θ‖` and `‖u‖` are reductions of [`Scope::Param`],
/// computed in a pass over the elements before the update. To exclude parameters from the
/// adaptation (optax's `mask`), put them in a group of a plain Adam-like optimizer.
///
/// Reference: Y. You et al., "Large Batch Optimization for Deep Learning: Training BERT in
/// 76 minutes", ICLR 2020 (arXiv:1904.00962), Algorithm 2; implementation `optax.lamb` in
/// optax 0.2.8 (checked against its recorded trajectories, `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::Lamb, Stepper};
///
/// let lamb = Stepper::new(&Lamb { lr: 0.1, ..Lamb::default() }.graph()?)?;
/// let (mut param, grad) = (vec![3.0f64, 4.0], vec![1.0, 1.0]);
/// let mut state = lamb.init_state(2)?;
/// lamb.step(&mut param, &grad, &mut state)?;
/// // The first direction is (1, 1) (up to eps), so the step is lr · ‖θ‖ / ‖u‖ = 0.1 · 5 / √2.
/// let moved = 0.1 * 5.0 / 2f64.sqrt();
/// assert!((param[0] - (3.0 - moved)).abs() < 1e-6 && (param[1] - (4.0 - moved)).abs() < 1e-6);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lamb {
    /// Learning rate (optax has no default; 1e-3 here).
    pub lr: f64,
    /// Decay rates of the moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-6).
    pub eps: f64,
    /// Added under the square root (default 0).
    pub eps_root: f64,
    /// Weight decay added to the direction before the trust ratio (default 0).
    pub weight_decay: f64,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-6,
            eps_root: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl Lamb {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("lamb");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let eps_root = b.hyper("eps_root", self.eps_root);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let g = b.grad();
        let m = ema(b.state("exp_avg", 0.0), g, b1);
        // optax's order: (1 − β₂) · g² + β₂ · v.
        let v = b2 * b.state("exp_avg_sq", 0.0) + (1.0 - b2) * (g * g);
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_sq", v)?;
        let m_hat = m / bias_correction(&b, b1);
        let v_hat = v / bias_correction(&b, b2);
        let u = m_hat / ((v_hat + eps_root).sqrt() + eps) + weight_decay * b.param();
        let param_norm = b.param().sum_squares(Scope::Param).sqrt();
        let update_norm = u.sum_squares(Scope::Param).sqrt();
        let degenerate = param_norm.eq(0.0) + update_norm.eq(0.0);
        let ratio = b.select(degenerate, 1.0, param_norm / update_norm);
        b.set_param(b.param() - lr * (u * ratio));
        b.finish()
    }
}

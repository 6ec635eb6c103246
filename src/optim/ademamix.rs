//! AdEMAMix: Adam whose numerator mixes the usual (fast) moving average of gradients with a
//! slow one, `α` times a moving average of decay `β₃` close to 1, not bias-corrected.

use super::common::{bias_correction, builder, l2_penalty};
use crate::{Graph, Result};

/// AdEMAMix as `optax.contrib.ademamix` defines it.
///
/// ```text
/// m₁ ← (1 − β₁) · g + β₁ · m₁
/// m₂ ← (1 − β₃) · g + β₃ · m₂
/// ν ← (1 − β₂) · g² + β₂ · ν
/// u ← (m₁ / (1 − β₁ᵗ) + α · m₂) / (√(ν / (1 − β₂ᵗ) + eps_root) + eps)
/// u ← u + weight_decay · θ                  (if weight_decay ≠ 0)
/// θ ← θ − lr · u
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2`, `b3`, `alpha`, `eps`, `eps_root`, `weight_decay`.
/// State: `exp_avg_fast` (`m₁`, optax's `m1`), `exp_avg_slow` (`m₂`, `m2`) and `exp_avg_sq`
/// (`ν`, `nu`), the names of the authors' PyTorch implementation. The slow average is not
/// bias-corrected, by design. The weight decay is skipped at `weight_decay = 0` (a run-time
/// choice, as PyTorch skips it); optax's `add_decayed_weights` adds `0·θ`, which differs only
/// for a non-finite θ or a `−0` update.
///
/// Schedules: optax takes a schedule (a function of its `count_m2`, which is `t − 1` at step
/// `t`) for `b3` and `alpha`; here they are hyperparameters, so a schedule is the caller
/// setting them before each step (`Optimizer::set_hyper`) to the schedule's value at
/// `t − 1`. The paper's warm-ups of `α` and `β₃` are not built in.
///
/// Reference: M. Pagliardini, P. Ablin and D. Grangier, "The AdEMAMix Optimizer: Better,
/// Faster, Older", 2024 (arXiv:2409.03137); implementation `optax.contrib.ademamix` in optax
/// 0.2.8 (checked against its recorded trajectories, `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::AdEMAMix, Stepper};
///
/// let graph = AdEMAMix { lr: 0.1, alpha: 0.0, ..AdEMAMix::default() }.graph()?;
/// let ademamix = Stepper::new(&graph)?;
/// let (mut param, grad) = (vec![1.0f64, 1.0], vec![0.5, -2.0]);
/// let mut state = ademamix.init_state(2)?;
/// ademamix.step(&mut param, &grad, &mut state)?;
/// // Without the slow average, the first step is Adam's: lr against the gradient's sign.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] - 1.1).abs() < 1e-6);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdEMAMix {
    /// Learning rate (optax has no default; 1e-3 here).
    pub lr: f64,
    /// Decay rates of the fast average, the second moment and the slow average (default
    /// (0.9, 0.999, 0.9999)).
    pub betas: (f64, f64, f64),
    /// Weight of the slow average (default 5; optax's `scale_by_ademamix` defaults to 6).
    pub alpha: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Added under the square root (default 0).
    pub eps_root: f64,
    /// Weight decay added to the direction, scaled by `lr` with it (default 0).
    pub weight_decay: f64,
}

impl Default for AdEMAMix {
    fn default() -> Self {
        AdEMAMix {
            lr: 1e-3,
            betas: (0.9, 0.999, 0.9999),
            alpha: 5.0,
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl AdEMAMix {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("ademamix");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let b3 = b.hyper("b3", self.betas.2);
        let alpha = b.hyper("alpha", self.alpha);
        let eps = b.hyper("eps", self.eps);
        let eps_root = b.hyper("eps_root", self.eps_root);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let g = b.grad();
        let m1 = (1.0 - b1) * g + b1 * b.state("exp_avg_fast", 0.0);
        let m2 = (1.0 - b3) * g + b3 * b.state("exp_avg_slow", 0.0);
        let nu = (1.0 - b2) * (g * g) + b2 * b.state("exp_avg_sq", 0.0);
        b.set_state("exp_avg_fast", m1)?;
        b.set_state("exp_avg_slow", m2)?;
        b.set_state("exp_avg_sq", nu)?;
        let m1_hat = m1 / bias_correction(&b, b1);
        let nu_hat = nu / bias_correction(&b, b2);
        let u = (m1_hat + alpha * m2) / ((nu_hat + eps_root).sqrt() + eps);
        let u = l2_penalty(&b, u, weight_decay, b.param());
        b.set_param(b.param() - lr * u);
        b.finish()
    }
}

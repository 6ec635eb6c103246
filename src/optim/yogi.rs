//! Yogi: Adam whose second moment moves towards g² by a fixed fraction of g², in the
//! direction of the sign of the difference, instead of by an exponential moving average.

use super::common::{bias_correction, builder};
use crate::{Graph, Result};

/// Yogi as `optax.yogi` defines it.
///
/// ```text
/// m ← (1 − β₁) · g + β₁ · m
/// v ← v − (1 − β₂) · sign(v − g²) · g²
/// θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + eps)
/// ```
///
/// with `m` and `v` starting at `initial_accumulator_value` (1e-6), not 0. Hyperparameters:
/// `lr`, `b1`, `b2`, `eps`. State: `exp_avg` (`m`, optax's `mu`) and `exp_avg_sq` (`v`,
/// `nu`). optax divides by the bias corrections `1 − βᵗ`, which the paper's Algorithm 2
/// does not have.
///
/// The last line is computed as `θ − (lr / (1 − β₁ᵗ)) · (m / (√(v / (1 − β₂ᵗ)) + eps))`,
/// the step size one per-step scalar as in [`Adam`](super::Adam), where optax first divides
/// `m` by `1 − β₁ᵗ` per element: the two can differ in the last bit. optax's order keeps
/// one more vector live across the sign, and its x86-64 loop spilled (`tests/codegen.rs`).
///
/// Reference: M. Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018;
/// implementation `optax.yogi` (`scale_by_yogi`) in optax 0.2.8 (checked against its recorded
/// trajectories, `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::Yogi, Stepper};
///
/// let yogi = Stepper::new(&Yogi { lr: 0.1, ..Yogi::default() }.graph()?)?;
/// let (mut param, grad) = (vec![1.0f64, 1.0], vec![2.0, -2.0]);
/// let mut state = yogi.init_state(2)?;
/// yogi.step(&mut param, &grad, &mut state)?;
/// // v starts below g², so it grows by (1 − β₂) · g²: v = 1e-6 + 0.001 · 4.
/// let v = state.buffer(1).expect("exp_avg_sq, per element");
/// assert!((v[0] - (1e-6 + 0.004)).abs() < 1e-15);
/// // The first step is about lr against the gradient's sign.
/// assert!((param[0] - 0.9).abs() < 0.01 && (param[1] - 1.1).abs() < 0.01);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yogi {
    /// Learning rate (optax has no default; 1e-3 here).
    pub lr: f64,
    /// Decay rates of the first moment and of the second moment's steps (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-3).
    pub eps: f64,
    /// The moments' first value (default 1e-6; optax's `scale_by_yogi` argument, not
    /// `optax.yogi`'s).
    pub initial_accumulator_value: f64,
}

impl Default for Yogi {
    fn default() -> Self {
        Yogi {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-3,
            initial_accumulator_value: 1e-6,
        }
    }
}

impl Yogi {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("yogi");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);

        let g = b.grad();
        let init = self.initial_accumulator_value;
        let m = (1.0 - b1) * g + b1 * b.state("exp_avg", init);
        let v = b.state("exp_avg_sq", init);
        let g2 = g * g;
        let v = v - (1.0 - b2) * (v - g2).sign() * g2;
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_sq", v)?;
        let step_size = lr / bias_correction(&b, b1);
        let v_hat = v / bias_correction(&b, b2);
        b.set_param(b.param() - step_size * (m / (v_hat.sqrt() + eps)));
        b.finish()
    }
}

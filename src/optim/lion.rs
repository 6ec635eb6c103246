//! Lion: a step of fixed size lr along the sign of an interpolated momentum.

use super::common::{builder, ema, signed_grad, torch_sign};
use crate::{Graph, Result};

/// Lion (EvoLved Sign Momentum) as `lion_pytorch.Lion`.
///
/// ```text
/// g ← −∇ if maximize else ∇
/// θ ← θ · (1 − lr · weight_decay)
/// c ← β₁ · m + (1 − β₁) · g
/// θ ← θ − lr · sign(c)            sign(c) = (c > 0) − (c < 0), as torch.sign
/// m ← β₂ · m + (1 − β₂) · g
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (the reference's `betas`), `weight_decay`. State:
/// `exp_avg` (`m`). The decay is decoupled and always applied, as in the reference (a factor
/// of exactly 1 when `weight_decay = 0`). `sign` is torch's: 0 for ±0 and for NaN, so a NaN
/// momentum leaves the parameter where it is, as in the reference. `maximize` is optjit's
/// addition (the reference has none).
///
/// Reference: X. Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023
/// (arXiv:2302.06675), Program 1; implementation `lion_pytorch/lion_pytorch.py`
/// (`update_fn`) of lucidrains/lion-pytorch at 6a74fdc (November 2024). That version's
/// `decoupled_weight_decay=True` divides `weight_decay` by the initial lr: pass
/// `weight_decay / lr` here for the same effect.
///
/// ```
/// use optjit::{optim::Lion, Stepper};
///
/// let lion = Stepper::new(&Lion { lr: 0.1, ..Lion::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0, 3.0], vec![0.5, -2.0, 0.0]);
/// let mut state = lion.init_state(3).unwrap();
/// lion.step(&mut param, &grad, &mut state).unwrap();
/// // Every element moves by exactly lr against its gradient's sign; a zero gradient, not at all.
/// assert_eq!(param, vec![0.9, -0.9, 3.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lion {
    /// Learning rate (default 1e-4).
    pub lr: f64,
    /// Interpolation factor of the update and decay rate of the momentum (default
    /// (0.9, 0.99)).
    pub betas: (f64, f64),
    /// Decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Lion {
    fn default() -> Self {
        Lion {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Lion {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("lion");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let g = signed_grad(&b, self.maximize);
        let m = b.state("exp_avg", 0.0);
        let param = b.param() * (1.0 - lr * weight_decay);
        b.set_param(param - lr * torch_sign(ema(m, g, b1)));
        b.set_state("exp_avg", ema(m, g, b2))?;
        b.finish()
    }
}

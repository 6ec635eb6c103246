//! LARS: SGD with momentum whose step is scaled per tensor by the ratio of the parameter's
//! norm to the (weight-decayed) gradient's norm (a per-parameter reduction).

use super::common::builder;
use crate::ir::Scope;
use crate::{Graph, Result};

/// LARS as `optax.lars` defines it.
///
/// ```text
/// u ← g + weight_decay · θ
/// r ← trust_coefficient · ‖θ‖ / (‖u‖ + eps) per tensor, or 1 where either norm is 0
/// u ← −lr · (u · r)
/// t ← u + momentum · t                      (optax's `trace`)
/// θ ← θ + (u + momentum · t if nesterov else t)
/// ```
///
/// Hyperparameters: `lr`, `weight_decay`, `trust_coefficient`, `eps`, `momentum`. State:
/// `trace` (optax's name). The norms are per parameter tensor ([`Scope::Param`]), also where
/// parameters share a flat buffer. Exclusion from decay or adaptation (optax's masks): put
/// those parameters in a group of another optimizer.
///
/// Reference: Y. You, I. Gitman and B. Ginsburg, "Large Batch Training of Convolutional
/// Networks", 2017 (arXiv:1708.03888); implementation `optax.lars` in optax 0.2.8 (checked
/// against its recorded trajectories, `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::Lars, Stepper};
///
/// let lars = Stepper::new(&Lars { lr: 1.0, trust_coefficient: 0.5, ..Lars::default() }.graph()?)?;
/// let (mut param, grad) = (vec![3.0f64, 4.0], vec![0.0, 2.0]);
/// let mut state = lars.init_state(2)?;
/// lars.step(&mut param, &grad, &mut state)?;
/// // r = 0.5 · 5 / 2 = 1.25: the first step moves by lr · r · g.
/// assert_eq!(param, vec![3.0, 4.0 - 1.25 * 2.0]);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lars {
    /// Learning rate (optax has no default; 0.1 here).
    pub lr: f64,
    /// Weight decay added to the gradient before the trust ratio (default 0).
    pub weight_decay: f64,
    /// Scale of the trust ratio (default 0.001).
    pub trust_coefficient: f64,
    /// Added to the update's norm (default 0).
    pub eps: f64,
    /// Momentum of the trace (default 0.9).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for Lars {
    fn default() -> Self {
        Lars {
            lr: 0.1,
            weight_decay: 0.0,
            trust_coefficient: 0.001,
            eps: 0.0,
            momentum: 0.9,
            nesterov: false,
        }
    }
}

impl Lars {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder(if self.nesterov {
            "lars_nesterov"
        } else {
            "lars"
        });
        let lr = b.hyper("lr", self.lr);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);
        let trust_coefficient = b.hyper("trust_coefficient", self.trust_coefficient);
        let eps = b.hyper("eps", self.eps);
        let momentum = b.hyper("momentum", self.momentum);

        let u = b.grad() + weight_decay * b.param();
        let param_norm = b.param().sum_squares(Scope::Param).sqrt();
        let update_norm = u.sum_squares(Scope::Param).sqrt();
        let degenerate = param_norm.eq(0.0) + update_norm.eq(0.0);
        let ratio = b.select(
            degenerate,
            1.0,
            trust_coefficient * param_norm / (update_norm + eps),
        );
        let u = -lr * (u * ratio);
        let trace = u + momentum * b.state("trace", 0.0);
        b.set_state("trace", trace)?;
        let update = if self.nesterov {
            u + momentum * trace
        } else {
            trace
        };
        b.set_param(b.param() + update);
        b.finish()
    }
}

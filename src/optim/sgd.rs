//! Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

use super::common::{builder, l2_penalty, signed_grad};
use crate::{Error, Graph, Result};

/// SGD as `torch.optim.SGD`.
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                     if weight_decay ≠ 0
/// if momentum ≠ 0:
///     b ← g                                       at step 1
///     b ← momentum · b + (1 − dampening) · g      later
///     g ← g + momentum · b  if nesterov  else  b
/// θ ← θ − lr · g
/// ```
///
/// `lr`, `weight_decay` and, with momentum, `momentum` and `dampening` are hyperparameters.
/// Whether there is momentum at all (a `momentum_buffer` slot) is decided by `momentum ≠ 0`
/// when the graph is built, as PyTorch keeps no buffer without it. The weight-decay test is
/// made at run time, so `weight_decay` can be scheduled like any hyperparameter.
///
/// ```
/// use optjit::{optim::Sgd, Stepper};
///
/// let sgd = Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() };
/// let stepper = Stepper::new(&sgd.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, 2.0], vec![1.0, -1.0]);
/// let mut state = stepper.init_state(2).unwrap();
/// stepper.step(&mut param, &grad, &mut state).unwrap();
/// assert_eq!(param, vec![0.9, 2.1]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate (PyTorch default 1e-3).
    pub lr: f64,
    /// Momentum factor; 0 means no momentum buffer.
    pub momentum: f64,
    /// Dampening of the momentum's gradient term.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

impl Sgd {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::InvalidOption {
                option: "nesterov",
                reason: "Nesterov momentum requires a momentum and zero dampening",
            });
        }
        let b = builder(if self.nesterov { "sgd_nesterov" } else { "sgd" });
        let lr = b.hyper("lr", self.lr);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);
        // Every hyperparameter is declared before any value, so the graph prints with all
        // of them in the text form's header (see `text::print`).
        let momentum = (self.momentum != 0.0).then(|| {
            let momentum = b.hyper("momentum", self.momentum);
            (momentum, b.hyper("dampening", self.dampening))
        });
        let param = b.param();
        let mut g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        if let Some((momentum, dampening)) = momentum {
            let buf = b.state("momentum_buffer", 0.0);
            let first = b.step().eq(1.0);
            let buf = b.select(first, g, momentum * buf + (1.0 - dampening) * g);
            b.set_state("momentum_buffer", buf)?;
            g = if self.nesterov {
                g + momentum * buf
            } else {
                buf
            };
        }
        b.set_param(param - lr * g);
        b.finish()
    }
}

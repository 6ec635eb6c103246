//! Adam and AdamW, with AMSGrad, L2 or decoupled weight decay, and maximize.

use super::common::{bias_correction, builder, lerp, signed_grad, weight_decay};
use crate::{Graph, Result};

/// Adam as `torch.optim.Adam` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                 (Adam: L2 penalty, if weight_decay ≠ 0)
/// θ ← θ · (1 − lr · weight_decay)          (AdamW: decoupled decay, instead)
/// m ← m + (1 − β₁) · (g − m)
/// v ← β₂ · v + (1 − β₂) · g · g
/// v̂ ← max(v̂, v) if amsgrad else v
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v̂ / √(1 − β₂ᵗ) + ε)
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (PyTorch's `betas`), `eps`, `weight_decay`. State:
/// `exp_avg`, `exp_avg_sq`, and `max_exp_avg_sq` with AMSGrad. Bias corrections and the step
/// size are computed per step in f64, as PyTorch computes them in Python floats. The first
/// moment uses PyTorch's `lerp` formula for weights below 0.5 (`1 − β₁ < 0.5`); for β₁ ≤ 0.5
/// PyTorch switches to `g − (g − m)·β₁`, which can differ in the last bit.
///
/// ```
/// use optjit::{optim::Adam, Stepper};
///
/// let adam = Stepper::new(&Adam { lr: 0.1, ..Adam::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f32, -1.0], vec![0.5, -2.0]);
/// let mut state = adam.init_state(2).unwrap();
/// adam.step(&mut param, &grad, &mut state).unwrap();
/// // The first Adam step moves every element by lr against its gradient's sign.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 0.9).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad).
    pub amsgrad: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl Adam {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        adam_graph(self, false)
    }
}

/// AdamW as `torch.optim.AdamW`: Adam with decoupled weight decay (default 1e-2).
///
/// The fields and the algorithm are [`Adam`]'s, with `θ ← θ · (1 − lr · weight_decay)`
/// applied before the update instead of the L2 penalty.
///
/// ```
/// use optjit::{optim::AdamW, Stepper};
///
/// let adamw = Stepper::new(&AdamW::default().graph().unwrap()).unwrap();
/// assert_eq!(adamw.hyper("weight_decay").unwrap(), 1e-2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the first and second moments (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 1e-2).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad).
    pub amsgrad: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            weight_decay: 1e-2,
            ..AdamW::from(Adam::default())
        }
    }
}

impl From<Adam> for AdamW {
    fn from(a: Adam) -> Self {
        AdamW {
            lr: a.lr,
            betas: a.betas,
            eps: a.eps,
            weight_decay: a.weight_decay,
            amsgrad: a.amsgrad,
            maximize: a.maximize,
        }
    }
}

impl AdamW {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let adam = Adam {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
        };
        adam_graph(&adam, true)
    }
}

fn adam_graph(o: &Adam, decoupled: bool) -> Result<Graph> {
    let name = match (decoupled, o.amsgrad) {
        (false, false) => "adam",
        (false, true) => "adam_amsgrad",
        (true, false) => "adamw",
        (true, true) => "adamw_amsgrad",
    };
    let b = builder(name);
    let lr = b.hyper("lr", o.lr);
    let b1 = b.hyper("b1", o.betas.0);
    let b2 = b.hyper("b2", o.betas.1);
    let eps = b.hyper("eps", o.eps);
    let lambda = b.hyper("weight_decay", o.weight_decay);

    let (param, g) = weight_decay(
        &b,
        (b.param(), signed_grad(&b, o.maximize)),
        lr,
        lambda,
        decoupled,
    );
    let m = lerp(b.state("exp_avg", 0.0), g, 1.0 - b1);
    let v = b2 * b.state("exp_avg_sq", 0.0) + (1.0 - b2) * g * g;
    b.set_state("exp_avg", m)?;
    b.set_state("exp_avg_sq", v)?;
    let v = if o.amsgrad {
        let v_max = b.state("max_exp_avg_sq", 0.0).max(v);
        b.set_state("max_exp_avg_sq", v_max)?;
        v_max
    } else {
        v
    };
    let step_size = lr / bias_correction(&b, b1);
    let denom = v.sqrt() / bias_correction(&b, b2).sqrt() + eps;
    b.set_param(param - step_size * m / denom);
    b.finish()
}

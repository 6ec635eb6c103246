//! NovoGrad: a first moment of gradients normalised per layer by a running average of the
//! layer's squared gradient norm (a per-parameter reduction into per-parameter scalar state).

use super::common::builder;
use crate::ir::Scope;
use crate::{Graph, Result};

/// NovoGrad as `optax.novograd` defines it.
///
/// ```text
/// n ← ‖g‖² per tensor
/// ν ← n at the first step, else (1 − β₂) · n + β₂ · ν        (one scalar per tensor)
/// a ← g / (√(ν + eps_root) + eps) + weight_decay · θ
/// m ← a at the first step, else β₁ · m + a
/// θ ← θ − lr · m
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2`, `eps`, `eps_root`, `weight_decay`. State: `exp_avg`
/// (`m`, optax's `mu`) per element and `nu` (`ν`) per parameter, kept in f64 (optax keeps it
/// in the parameter's dtype). `‖g‖` is a reduction of [`Scope::Param`]: per tensor, also where
/// tensors share a flat buffer.
///
/// Reference: B. Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
/// Moments for Training of Deep Networks", 2019 (arXiv:1905.11286); implementation
/// `optax.novograd` in optax 0.2.8 (checked against its recorded trajectories,
/// `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::NovoGrad, Stepper};
///
/// let novograd = Stepper::new(&NovoGrad { lr: 0.1, eps: 0.0, ..NovoGrad::default() }.graph()?)?;
/// let (mut param, grad) = (vec![1.0f64, 1.0], vec![3.0, 4.0]);
/// let mut state = novograd.init_state(2)?;
/// novograd.step(&mut param, &grad, &mut state)?;
/// // The first step moves along g / ‖g‖ = (0.6, 0.8), by lr.
/// assert!((param[0] - 0.94).abs() < 1e-12 && (param[1] - 0.92).abs() < 1e-12);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NovoGrad {
    /// Learning rate (optax has no default; 1e-3 here).
    pub lr: f64,
    /// Decay rates of the first moment and of the squared norm (default (0.9, 0.25)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-6).
    pub eps: f64,
    /// Added under the square root (default 0).
    pub eps_root: f64,
    /// Weight decay added to the normalised gradient (default 0).
    pub weight_decay: f64,
}

impl Default for NovoGrad {
    fn default() -> Self {
        NovoGrad {
            lr: 1e-3,
            betas: (0.9, 0.25),
            eps: 1e-6,
            eps_root: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl NovoGrad {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("novograd");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let eps_root = b.hyper("eps_root", self.eps_root);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let g = b.grad();
        let first = b.step().eq(1.0);
        let norm = g.sum_squares(Scope::Param).sqrt();
        let n = norm * norm;
        let nu = b.select(first, n, (1.0 - b2) * n + b2 * b.scalar_state("nu", 0.0));
        b.set_state("nu", nu)?;
        let a = g / ((nu + eps_root).sqrt() + eps) + weight_decay * b.param();
        let m = b.select(first, a, b1 * b.state("exp_avg", 0.0) + a);
        b.set_state("exp_avg", m)?;
        b.set_param(b.param() - lr * m);
        b.finish()
    }
}

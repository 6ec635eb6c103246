//! signSGD: gradient descent on the signs of the gradient's elements only.

use super::common::builder;
use crate::{Graph, Result};

/// signSGD as `optax.sign_sgd` defines it: `optax.chain(scale_by_sign(),
/// scale_by_learning_rate(lr))`, no momentum and no state.
///
/// ```text
/// θ ← θ − lr · sign(g)
/// ```
///
/// Hyperparameter: `lr`. `sign` is `jnp.sign`'s: ±1, and ±0 and NaN unchanged (optjit's
/// [`Op::Sign`](crate::ir::Op::Sign)), so a zero gradient leaves its element where it is and
/// a NaN gradient makes it NaN.
///
/// Reference: J. Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
/// Problems", ICML 2018 (arXiv:1802.04434); implementation `optax.sign_sgd` in optax 0.2.8
/// (checked against its recorded trajectories, `tests/optax.rs`).
///
/// ```
/// use optjit::{optim::SignSgd, Stepper};
///
/// let sign_sgd = Stepper::new(&SignSgd { lr: 0.5 }.graph()?)?;
/// let (mut param, grad) = (vec![1.0f32, 1.0, 1.0], vec![-3.0, 0.0, 1e-30]);
/// let mut state = sign_sgd.init_state(3)?;
/// sign_sgd.step(&mut param, &grad, &mut state)?;
/// assert_eq!(param, vec![1.5, 1.0, 0.5]);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignSgd {
    /// Learning rate (optax has no default; 1e-3 here).
    pub lr: f64,
}

impl Default for SignSgd {
    fn default() -> Self {
        SignSgd { lr: 1e-3 }
    }
}

impl SignSgd {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("sign_sgd");
        let lr = b.hyper("lr", self.lr);
        b.set_param(b.param() - lr * b.grad().sign());
        b.finish()
    }
}

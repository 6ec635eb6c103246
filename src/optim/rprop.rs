//! Rprop: per-element step sizes adapted to the sign agreement of successive gradients.

use super::common::{builder, initialized, signed_grad, torch_sign};
use crate::{Graph, Result};

/// Rprop as `torch.optim.Rprop` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// s ← sign(g · p)
/// s ← etaplus where s > 0;  then etaminus where s < 0;  then 1 where s = 0
/// Δ ← clamp(Δ · s, step_size_min, step_size_max)       (Δ = lr before the first step)
/// g ← 0 where s = etaminus
/// θ ← θ − sign(g) · Δ
/// p ← g
/// ```
///
/// Hyperparameters: `lr`, `etaminus`, `etaplus` (PyTorch's `etas`), `step_size_min`,
/// `step_size_max` (PyTorch's `step_sizes`). State: `prev` (`p`, the last gradient kept) and
/// `step_size` (`Δ`, which starts at the value `lr` has at the parameter's first step). The
/// three replacements are made in PyTorch's order, so unusual etas (`etaplus < 0`,
/// `etaminus = 1`) behave as there. `sign` is torch's: 0 for ±0 and for NaN, so a NaN
/// gradient leaves its element and its step size unchanged, as PyTorch's CPU kernels do.
///
/// ```
/// use optjit::{optim::Rprop, Stepper};
///
/// let rprop = Stepper::new(&Rprop { lr: 0.1, ..Rprop::default() }.graph().unwrap()).unwrap();
/// let mut param = vec![1.0f64, -1.0];
/// let mut state = rprop.init_state(2).unwrap();
/// rprop.step(&mut param, &[0.5, -2.0], &mut state).unwrap();
/// // The first step moves every element by lr against its gradient's sign.
/// assert_eq!(param, vec![0.9, -0.9]);
/// // The gradient keeps its sign in element 0 (the step grows by etaplus = 1.2), flips in
/// // element 1 (the step shrinks by etaminus = 0.5 and the element stays put).
/// rprop.step(&mut param, &[0.5, 2.0], &mut state).unwrap();
/// assert!((param[0] - (0.9 - 0.12)).abs() < 1e-12 && param[1] == -0.9);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rprop {
    /// Learning rate: the initial step size (default 1e-2).
    pub lr: f64,
    /// Step-size factors when the gradient's sign flips and when it holds (default
    /// (0.5, 1.2)).
    pub etas: (f64, f64),
    /// Bounds of the step size (default (1e-6, 50)).
    pub step_sizes: (f64, f64),
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Rprop {
            lr: 1e-2,
            etas: (0.5, 1.2),
            step_sizes: (1e-6, 50.0),
            maximize: false,
        }
    }
}

impl Rprop {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("rprop");
        let lr = b.hyper("lr", self.lr);
        let etaminus = b.hyper("etaminus", self.etas.0);
        let etaplus = b.hyper("etaplus", self.etas.1);
        let step_size_min = b.hyper("step_size_min", self.step_sizes.0);
        let step_size_max = b.hyper("step_size_max", self.step_sizes.1);

        let g = signed_grad(&b, self.maximize);
        let prev = b.state("prev", 0.0);
        let step_size = initialized(&b, b.state("step_size", self.lr), lr);
        let s = torch_sign(g * prev);
        let s = b.select(s.gt(0.0), etaplus, s);
        let s = b.select(s.lt(0.0), etaminus, s);
        let s = b.select(s.eq(0.0), 1.0, s);
        let step_size = (step_size * s).max(step_size_min).min(step_size_max);
        let g = b.select(s.eq(etaminus), 0.0, g);
        b.set_param(b.param() - torch_sign(g) * step_size);
        b.set_state("prev", g)?;
        b.set_state("step_size", step_size)?;
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stepper;

    #[test]
    fn the_step_size_starts_at_the_lr_of_the_first_step() {
        let mut rprop = Stepper::new(&Rprop::default().graph().unwrap()).unwrap();
        rprop.set_hyper("lr", 0.25).unwrap();
        let mut param = vec![1.0f64];
        let mut state = rprop.init_state(1).unwrap();
        rprop.step(&mut param, &[1.0], &mut state).unwrap();
        assert_eq!(param, [0.75]);
        // PyTorch reads lr only when it creates the state.
        rprop.set_hyper("lr", 100.0).unwrap();
        rprop.step(&mut param, &[1.0], &mut state).unwrap();
        assert_eq!(state.buffer(1).unwrap(), [0.25 * 1.2]);
    }

    #[test]
    fn a_nan_gradient_leaves_the_element_and_its_step_size_alone() {
        let rprop = Stepper::new(&Rprop::default().graph().unwrap()).unwrap();
        let mut param = vec![1.0f32];
        let mut state = rprop.init_state(1).unwrap();
        rprop.step(&mut param, &[1.0], &mut state).unwrap();
        let (before, step_size) = (param[0], state.buffer(1).unwrap()[0]);
        rprop.step(&mut param, &[f32::NAN], &mut state).unwrap();
        assert_eq!(param[0], before);
        assert_eq!(state.buffer(1).unwrap()[0], step_size);
        assert!(
            state.buffer(0).unwrap()[0].is_nan(),
            "prev keeps the NaN, as in PyTorch"
        );
    }
}

//! Adagrad, with learning-rate decay, an initial accumulator value, weight decay and maximize.

use super::common::{builder, initialized, l2_penalty, signed_grad};
use crate::{Graph, Result};

/// Adagrad as `torch.optim.Adagrad` (single-tensor algorithm, dense gradients).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                   if weight_decay ≠ 0
/// s ← initial_accumulator_value              before the first step
/// s ← s + g · g
/// θ ← θ − (lr / (1 + (t − 1) · lr_decay)) · g / (√s + ε)
/// ```
///
/// Hyperparameters: `lr`, `lr_decay`, `weight_decay`, `initial_accumulator_value`, `eps`.
/// State: `sum` (`s`). The accumulator starts at the value `initial_accumulator_value` has at
/// the parameter's first step, as PyTorch reads it when it creates the state; the slot's
/// init value is the option's, so a fresh state looks like PyTorch's.
///
/// ```
/// use optjit::{optim::Adagrad, Stepper};
///
/// let adagrad = Stepper::new(&Adagrad { lr: 0.1, ..Adagrad::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = adagrad.init_state(2).unwrap();
/// adagrad.step(&mut param, &grad, &mut state).unwrap();
/// // First step: s = g², so every element moves by lr against its gradient's sign.
/// assert!((param[0] - 0.9).abs() < 1e-9 && (param[1] + 0.9).abs() < 1e-9);
/// assert_eq!(state.buffer(0).unwrap(), &[0.25, 4.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adagrad {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Decay of the learning rate with the step count (default 0).
    pub lr_decay: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Initial value of the sum of squared gradients (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default 1e-10).
    pub eps: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl Adagrad {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("adagrad");
        let lr = b.hyper("lr", self.lr);
        let lr_decay = b.hyper("lr_decay", self.lr_decay);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);
        let initial = b.hyper("initial_accumulator_value", self.initial_accumulator_value);
        let eps = b.hyper("eps", self.eps);

        let param = b.param();
        let g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        let sum = b.state("sum", self.initial_accumulator_value);
        let sum = initialized(&b, sum, initial) + g * g;
        b.set_state("sum", sum)?;
        let clr = lr / (1.0 + (b.step() - 1.0) * lr_decay);
        b.set_param(param - clr * g / (sum.sqrt() + eps));
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stepper;

    #[test]
    fn the_sum_starts_at_the_initial_value_of_the_first_step() {
        let adagrad = Adagrad {
            initial_accumulator_value: 1.0,
            ..Adagrad::default()
        };
        let mut adagrad = Stepper::new(&adagrad.graph().unwrap()).unwrap();
        let mut state = adagrad.init_state::<f64>(1).unwrap();
        assert_eq!(
            state.buffer(0).unwrap(),
            [1.0],
            "a fresh state looks like PyTorch's"
        );
        adagrad.set_hyper("initial_accumulator_value", 3.0).unwrap();
        adagrad.step(&mut [0.0], &[1.0], &mut state).unwrap();
        assert_eq!(state.buffer(0).unwrap(), [4.0]);
        adagrad
            .set_hyper("initial_accumulator_value", 100.0)
            .unwrap();
        adagrad.step(&mut [0.0], &[1.0], &mut state).unwrap();
        assert_eq!(state.buffer(0).unwrap(), [5.0]);
    }
}

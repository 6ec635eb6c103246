//! Averaged SGD, with its decaying step size, weight decay and maximize.

use super::common::{builder, initialized, l2_penalty, signed_grad};
use crate::{Graph, Result};

/// ASGD as `torch.optim.ASGD` (single-tensor algorithm).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + weight_decay · θ                   if weight_decay ≠ 0
/// θ ← θ · (1 − λ · η) − η · g
/// a ← θ if μ = 1 else a + (θ − a) · μ
/// η ← lr / (1 + λ · lr · t)^α                 (for the next step)
/// μ ← 1 / max(1, t − t0)                      (for the next step)
/// ```
///
/// Hyperparameters: `lr`, `lambd` (λ), `alpha` (α), `t0`, `weight_decay`. State: `eta` (η,
/// starting at `lr`) and `mu` (μ, starting at 1), per-parameter scalars updated in the
/// prologue, and `ax` (`a`, the running average of the parameter, which the optimizer returns
/// in the state only). Each step uses the η and μ computed by the previous one, as PyTorch
/// does; at the first step η is the value `lr` has then. PyTorch keeps `eta` and `mu` in the
/// default dtype (f32 in an f32 program), optjit in f64.
///
/// ```
/// use optjit::{optim::Asgd, SlotValue, Stepper};
///
/// let asgd = Stepper::new(&Asgd { lr: 0.1, ..Asgd::default() }.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = asgd.init_state(2).unwrap();
/// asgd.step(&mut param, &grad, &mut state).unwrap();
/// // The first step is SGD with lr, after the decay θ · (1 − λ·lr).
/// let decay = 1.0 - 1e-4 * 0.1;
/// assert_eq!(param, vec![decay - 0.1 * 0.5, -decay + 0.1 * 2.0]);
/// // Before t0 steps the average is the parameter itself.
/// assert_eq!(state.buffer(2).unwrap(), &param[..]);
/// assert_eq!(state.slots[1], SlotValue::Scalar(1.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Asgd {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Decay term λ (default 1e-4).
    pub lambd: f64,
    /// Power α of the step size's decay (default 0.75).
    pub alpha: f64,
    /// Step at which averaging starts (default 1e6).
    pub t0: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for Asgd {
    fn default() -> Self {
        Asgd {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Asgd {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("asgd");
        let lr = b.hyper("lr", self.lr);
        let lambd = b.hyper("lambd", self.lambd);
        let alpha = b.hyper("alpha", self.alpha);
        let t0 = b.hyper("t0", self.t0);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let param = b.param();
        let g = l2_penalty(&b, signed_grad(&b, self.maximize), weight_decay, param);
        let eta = initialized(&b, b.scalar_state("eta", self.lr), lr);
        let mu = b.scalar_state("mu", 1.0);
        let param = param * (1.0 - lambd * eta) - eta * g;
        let ax = b.state("ax", 0.0);
        let ax = b.select(mu.ne(1.0), ax + (param - ax) * mu, param);
        b.set_param(param);
        b.set_state("ax", ax)?;

        let t = b.step();
        b.set_state("eta", lr / (1.0 + lambd * lr * t).pow(alpha))?;
        b.set_state("mu", 1.0 / (t - t0).max(1.0))?;
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SlotValue, Stepper};

    #[test]
    fn eta_starts_at_the_lr_of_the_first_step_then_decays() {
        let mut asgd = Stepper::new(&Asgd::default().graph().unwrap()).unwrap();
        asgd.set_hyper("lr", 0.5).unwrap();
        asgd.set_hyper("lambd", 0.0).unwrap();
        let mut param = vec![1.0f64];
        let mut state = asgd.init_state(1).unwrap();
        asgd.step(&mut param, &[1.0], &mut state).unwrap();
        assert_eq!(param, [0.5]);
        asgd.set_hyper("lambd", 1.0).unwrap();
        asgd.step(&mut param, &[0.0], &mut state).unwrap();
        // The second step used η from the first (λ = 0: η = lr) and set the next one.
        assert_eq!(param, [0.5 * (1.0 - 0.5)]);
        let eta = 0.5 / (1.0f64 + 0.5 * 2.0).powf(0.75);
        assert_eq!(state.slots[0], SlotValue::Scalar(eta));
    }
}

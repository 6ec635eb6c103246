//! Schedule-free AdamW: no learning-rate schedule, an online average of the iterates instead,
//! with the parameter holding the interpolation `y` during training and the average `x` for
//! evaluation.

use super::common::{builder, ema, ema_sq, initialized, l2_penalty, lerp_torch, signed_grad};
use crate::{Builder, Expr, Graph, Result};

/// Schedule-free AdamW as `schedulefree.AdamWScheduleFree` (its `foreach=False` path; the
/// default `foreach` path performs the same operations).
///
/// The paper's three sequences: `z` (the base optimizer's iterates), `x` (their weighted
/// average, the point to evaluate) and `y = (1 − β₁)·z + β₁·x` (where gradients are taken).
/// During training the parameter holds `y`; `x` is never stored but recovered from `y` and
/// `z` by [`eval_graph`](Self::eval_graph).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// z ← θ at the parameter's first step                (θ holds y)
/// t ← k + 1                                          (k: the group's steps so far)
/// lr ← lr · (t / warmup_steps if k < warmup_steps else 1)
/// lr_max ← max(lr, lr_max)                           (starts at −1)
/// w ← tʳ · lr_maxᵖ                                   (p = weight_lr_power)
/// weight_sum ← weight_sum + w                        (starts at 0)
/// c ← w / weight_sum, or 0 if weight_sum = 0
/// v ← β₂ · v + ((1 − β₂) · g) · g
/// denom ← √(v / (1 − β₂ᵗ)) + ε
/// ĝ ← g / denom                                      (inner_momentum μ = 0)
/// m ← μ · m + (1 − μ) · g,  ĝ ← (m / (1 − μᵗ)) / denom   (μ ≠ 0)
/// ĝ ← ĝ + weight_decay · θ                           if weight_decay ≠ 0 (decay at y)
/// θ ← lerp(θ, z, c) + (lr · (β₁ · (1 − c) − 1)) · ĝ
/// z ← z − lr · ĝ
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (the reference's `betas`), `eps`, `weight_decay`,
/// `warmup_steps`, `r`, `weight_lr_power`, and `inner_momentum` when it is not 0. State:
/// `z` and `exp_avg_sq` (`v`) per element, `exp_avg` (`m`) with inner momentum, and the
/// group state `k`, `lr_max` and `weight_sum` ([`crate::ir::SlotKind::Group`]), as the
/// reference keeps them in its param groups. `lerp` is PyTorch's, with its two
/// formulas, chosen by `|c| < 0.5` (so `c = 1` gives `z` exactly). Whether there is inner momentum
/// (an `exp_avg` slot) is decided by `inner_momentum ≠ 0` when the graph is built, as the
/// reference allocates no buffer without it; `maximize` is optjit's addition.
///
/// Like the reference, the [`Optimizer`](crate::Optimizer) advances `k`, `lr_max` and
/// `weight_sum` once per group at every `step()`, whether or not a parameter has a gradient;
/// a parameter stepping for the first time at the group's step `k` uses that `k`. A
/// [`Stepper`](crate::Stepper) has no groups: each `ParamState` carries its own copy, which
/// advances with that parameter's steps (the same values when every parameter steps every
/// time).
///
/// # Train and eval
///
/// The reference's `optimizer.eval()` moves every parameter from `y` to `x`, its `train()`
/// back to `y`. [`eval_graph`](Self::eval_graph) and [`train_graph`](Self::train_graph) are
/// those swaps: graphs with the same state slots that only rewrite the parameter, leaving the
/// state unchanged. [`Optimizer::with_modes`](crate::Optimizer::with_modes) attaches them, so
/// that `optimizer.eval()` / `.train()` run them once per mode change without counting a
/// step, and `step()` is refused in eval mode, as the reference does. A caller of
/// [`Stepper`](crate::Stepper) runs the swaps itself and restores `ParamState::step`
/// afterwards, since `Stepper` counts every call.
///
/// Reference: A. Defazio et al., "The Road Less Scheduled", NeurIPS 2024 (arXiv:2405.15682);
/// implementation `schedulefree/adamw_schedulefree.py` of facebookresearch/schedule_free at
/// 70785b5 (package version 1.4.1; file last changed in 43e5c2d, May 2026, which added
/// `inner_momentum`).
///
/// ```
/// use optjit::{optim::ScheduleFreeAdamW, Stepper};
///
/// let sf = ScheduleFreeAdamW { lr: 0.1, ..ScheduleFreeAdamW::default() };
/// let stepper = Stepper::new(&sf.graph().unwrap()).unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = stepper.init_state(2).unwrap();
/// stepper.step(&mut param, &grad, &mut state).unwrap();
/// // At the first step c = 1, so y, z and x all take one normalized step of size lr.
/// assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 0.9).abs() < 1e-6);
/// assert_eq!(state.buffer(0).unwrap(), &param[..]); // slot 0 is `z`
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleFreeAdamW {
    /// Learning rate (default 0.0025).
    pub lr: f64,
    /// `β₁` interpolates `y` between `z` and `x`; `β₂` is the second moment's decay rate
    /// (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty, computed at `y` (default 0).
    pub weight_decay: f64,
    /// Steps of linear learning-rate warmup (default 0).
    pub warmup_steps: f64,
    /// Power of the step in the averaging weights (default 0).
    pub r: f64,
    /// Power of the largest learning rate so far in the averaging weights (default 2).
    pub weight_lr_power: f64,
    /// Decay rate of a moving average of the gradient used in place of the gradient; 0 means
    /// none and no buffer (default 0).
    pub inner_momentum: f64,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for ScheduleFreeAdamW {
    fn default() -> Self {
        ScheduleFreeAdamW {
            lr: 0.0025,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0.0,
            r: 0.0,
            weight_lr_power: 2.0,
            inner_momentum: 0.0,
            maximize: false,
        }
    }
}

/// The state slots, declared in the same order by the step and the swap graphs so that one
/// `ParamState` serves all three.
struct Slots<'b> {
    z: Expr<'b>,
    exp_avg_sq: Expr<'b>,
    exp_avg: Option<Expr<'b>>,
    k: Expr<'b>,
    lr_max: Expr<'b>,
    weight_sum: Expr<'b>,
}

impl<'b> Slots<'b> {
    fn declare(b: &'b Builder, inner_momentum: bool) -> Slots<'b> {
        Slots {
            z: b.state("z", 0.0),
            exp_avg_sq: b.state("exp_avg_sq", 0.0),
            exp_avg: inner_momentum.then(|| b.state("exp_avg", 0.0)),
            k: b.group_state("k", 0.0),
            lr_max: b.group_state("lr_max", -1.0),
            weight_sum: b.group_state("weight_sum", 0.0),
        }
    }

    /// Sets every slot to its value before the step (the swaps change no state).
    fn keep(&self, b: &Builder) -> Result<()> {
        b.set_state("z", self.z)?;
        b.set_state("exp_avg_sq", self.exp_avg_sq)?;
        if let Some(exp_avg) = self.exp_avg {
            b.set_state("exp_avg", exp_avg)?;
        }
        b.set_state("k", self.k)?;
        b.set_state("lr_max", self.lr_max)?;
        b.set_state("weight_sum", self.weight_sum)
    }
}

impl ScheduleFreeAdamW {
    /// The training step's graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("schedule_free_adamw");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);
        let warmup_steps = b.hyper("warmup_steps", self.warmup_steps);
        let r = b.hyper("r", self.r);
        let weight_lr_power = b.hyper("weight_lr_power", self.weight_lr_power);
        let slots = Slots::declare(&b, self.inner_momentum != 0.0);

        // The reference's group scalars: its step count `k` (so far), `lr_max`, `weight_sum`.
        let k = slots.k;
        let t = k + 1.0;
        let warming_up = k.lt(warmup_steps);
        let lr = lr * b.select(warming_up, t / warmup_steps, 1.0);
        let lr_max = lr.max(slots.lr_max);
        let weight = t.pow(r) * lr_max.pow(weight_lr_power);
        let weight_sum = slots.weight_sum + weight;
        let ckp1 = b.select(weight_sum.eq(0.0), 0.0, weight / weight_sum);
        b.set_state("k", t)?;
        b.set_state("lr_max", lr_max)?;
        b.set_state("weight_sum", weight_sum)?;

        let g = signed_grad(&b, self.maximize);
        let y = b.param();
        let z = initialized(&b, slots.z, y);
        let v = ema_sq(slots.exp_avg_sq, g, b2);
        b.set_state("exp_avg_sq", v)?;
        let denom = (v / (1.0 - b2.pow(t))).sqrt() + eps;
        let g_hat = match slots.exp_avg {
            Some(m) => {
                let mu = b.hyper("inner_momentum", self.inner_momentum);
                let m = ema(m, g, mu);
                b.set_state("exp_avg", m)?;
                m / (1.0 - mu.pow(t)) / denom
            }
            None => g / denom,
        };
        let g_hat = l2_penalty(&b, g_hat, weight_decay, y);
        let y = lerp_torch(&b, y, z, ckp1) + (lr * (b1 * (1.0 - ckp1) - 1.0)) * g_hat;
        b.set_param(y);
        b.set_state("z", z - lr * g_hat)?;
        b.finish()
    }

    /// The graph of `optimizer.eval()`: the parameter goes from `y` to
    /// `x = lerp(y, z, 1 − 1/β₁)`; the state is unchanged.
    ///
    /// `step` must be the number of training steps the parameter has received plus one (as
    /// in a training step): a parameter never stepped (`step = 1`, no `z` yet) is left as it
    /// is, as the reference skips parameters without state.
    pub fn eval_graph(&self) -> Result<Graph> {
        self.swap_graph("schedule_free_adamw_eval", |b1| 1.0 - 1.0 / b1)
    }

    /// The graph of `optimizer.train()`: the parameter goes from `x` back to
    /// `y = lerp(x, z, 1 − β₁)`; the state is unchanged. `step` is as for
    /// [`eval_graph`](Self::eval_graph).
    pub fn train_graph(&self) -> Result<Graph> {
        self.swap_graph("schedule_free_adamw_train", |b1| 1.0 - b1)
    }

    fn swap_graph(&self, name: &str, weight: fn(Expr<'_>) -> Expr<'_>) -> Result<Graph> {
        let b = builder(name);
        let b1 = b.hyper("b1", self.betas.0);
        let slots = Slots::declare(&b, self.inner_momentum != 0.0);
        slots.keep(&b)?;
        let param = b.param();
        let moved = lerp_torch(&b, param, slots.z, weight(b1));
        b.set_param(b.select(b.step().eq(1.0), param, moved));
        b.finish()
    }
}

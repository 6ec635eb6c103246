//! AdaBelief: Adam whose denominator tracks the variance of the gradient around its moving
//! average (the "belief"), with decoupled decay, AMSGrad and RAdam's rectification.

use super::common::{bias_correction, builder, ema, ema_sq, l2_penalty, signed_grad};
use crate::{Graph, Result};

/// AdaBelief as `adabelief_pytorch.AdaBelief`, version 0.2.1 (the 0.2.x defaults).
///
/// ```text
/// g ← −∇ if maximize else ∇
/// θ ← θ · (1 − lr · weight_decay)          weight_decouple, not fixed_decay
/// θ ← θ · (1 − weight_decay)               weight_decouple and fixed_decay
/// g ← g + weight_decay · θ                 not weight_decouple, if weight_decay ≠ 0
/// m ← β₁ · m + (1 − β₁) · g
/// s ← β₂ · s + ((1 − β₂) · (g − m)) · (g − m) + ε
/// ŝ ← max(ŝ, s) if amsgrad else s
/// without rectify:
///     θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√ŝ / √(1 − β₂ᵗ) + ε)
/// with rectify (RAdam):
///     ρ∞ ← 2 / (1 − β₂) − 1,   ρ ← ρ∞ − 2t · β₂ᵗ / (1 − β₂ᵗ)
///     if ρ ≥ 5:
///         r ← √((1 − β₂ᵗ) · (ρ − 4) / (ρ∞ − 4) · (ρ − 2) / ρ · ρ∞ / (ρ∞ − 2)) / (1 − β₁ᵗ)
///         θ ← θ − (r · lr) · m / (√s + ε)
///     else, if degenerated_to_sgd:
///         θ ← θ − (lr / (1 − β₁ᵗ)) · m       (computed as (1 / (1 − β₁ᵗ)) · lr)
/// ```
///
/// Hyperparameters: `lr`, `b1`, `b2` (the reference's `betas`), `eps`, `weight_decay`.
/// State: `exp_avg` (`m`), `exp_avg_var` (`s`), and `max_exp_avg_var` (`ŝ`) with AMSGrad.
/// `weight_decouple`, `fixed_decay`, `amsgrad`, `rectify`, `degenerated_to_sgd` and
/// `maximize` (optjit's addition) are choices of graph; whether `ρ ≥ 5` is decided at every
/// step, and the decay is applied even when `weight_decay = 0` (a factor of exactly 1), as
/// in the reference.
///
/// Quirks of the reference, kept: `s` is stored with `ε` already added (`add_` in place), so
/// `ε` accumulates in the state and appears twice in the denominator; with `rectify`, the
/// rectified step uses `s`, not `ŝ`, so AMSGrad then only maintains `max_exp_avg_var`.
/// Version 0.2.1 caches `ρ` and `r` per group in a ring of 10 entries keyed by the step; they
/// are recomputed here, which is the same unless the betas change during training. Unlike
/// the reference, the L2 penalty does not write into the caller's gradient.
///
/// Reference: J. Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
/// Observed Gradients", NeurIPS 2020 (arXiv:2010.07468); implementation
/// `pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py` of
/// juntang-zhuang/Adabelief-Optimizer at 2855178 (August 2022). The rectification is
/// L. Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
///
/// ```
/// use optjit::{optim::AdaBelief, Stepper};
///
/// let adabelief = Stepper::new(&AdaBelief { lr: 0.1, ..AdaBelief::default() }.graph().unwrap())
///     .unwrap();
/// let (mut param, grad) = (vec![1.0f64, -1.0], vec![0.5, -2.0]);
/// let mut state = adabelief.init_state(2).unwrap();
/// adabelief.step(&mut param, &grad, &mut state).unwrap();
/// // Rectified: the first steps (ρ < 5) are SGD steps with the bias-corrected momentum.
/// assert!((param[0] - 0.95).abs() < 1e-12 && (param[1] + 0.8).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaBelief {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the gradient's moving average and of its variance (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the variance and to the denominator (default 1e-16).
    pub eps: f64,
    /// Weight decay, decoupled or an L2 penalty (default 0).
    pub weight_decay: f64,
    /// Use the maximum of past variances (AMSGrad).
    pub amsgrad: bool,
    /// Decoupled weight decay, as AdamW (default true); an L2 penalty otherwise.
    pub weight_decouple: bool,
    /// With decoupled decay, multiply by `1 − weight_decay` instead of
    /// `1 − lr · weight_decay` (default false).
    pub fixed_decay: bool,
    /// RAdam's rectification of the adaptive step (default true).
    pub rectify: bool,
    /// With rectification, take SGD steps while the variance is intractable (`ρ < 5`)
    /// instead of leaving the parameter unchanged (default true).
    pub degenerated_to_sgd: bool,
    /// Maximize the objective.
    pub maximize: bool,
}

impl Default for AdaBelief {
    fn default() -> Self {
        AdaBelief {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-16,
            weight_decay: 0.0,
            amsgrad: false,
            weight_decouple: true,
            fixed_decay: false,
            rectify: true,
            degenerated_to_sgd: true,
            maximize: false,
        }
    }
}

impl AdaBelief {
    /// The optimizer graph; the option values become the hyperparameters' defaults.
    pub fn graph(&self) -> Result<Graph> {
        let b = builder("adabelief");
        let lr = b.hyper("lr", self.lr);
        let b1 = b.hyper("b1", self.betas.0);
        let b2 = b.hyper("b2", self.betas.1);
        let eps = b.hyper("eps", self.eps);
        let weight_decay = b.hyper("weight_decay", self.weight_decay);

        let mut param = b.param();
        let mut g = signed_grad(&b, self.maximize);
        if !self.weight_decouple {
            g = l2_penalty(&b, g, weight_decay, param);
        } else if self.fixed_decay {
            param = param * (1.0 - weight_decay);
        } else {
            param = param * (1.0 - lr * weight_decay);
        }
        let m = ema(b.state("exp_avg", 0.0), g, b1);
        let s = ema_sq(b.state("exp_avg_var", 0.0), g - m, b2) + eps;
        b.set_state("exp_avg", m)?;
        b.set_state("exp_avg_var", s)?;
        let s_hat = if self.amsgrad {
            let s_max = b.state("max_exp_avg_var", 0.0).max(s);
            b.set_state("max_exp_avg_var", s_max)?;
            s_max
        } else {
            s
        };

        let bias_correction1 = bias_correction(&b, b1);
        let bias_correction2 = bias_correction(&b, b2);
        b.set_param(if self.rectify {
            let t = b.step();
            let beta2_t = b2.pow(t);
            let rho_inf = 2.0 / (1.0 - b2) - 1.0;
            let rho = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t);
            let r = ((1.0 - beta2_t) * (rho - 4.0) / (rho_inf - 4.0) * (rho - 2.0) / rho * rho_inf
                / (rho_inf - 2.0))
                .sqrt()
                / bias_correction1;
            let adaptive = param - (r * lr) * m / (s.sqrt() + eps);
            let fallback = if self.degenerated_to_sgd {
                param - ((1.0 / bias_correction1) * lr) * m
            } else {
                param
            };
            b.select(rho.ge(5.0), adaptive, fallback)
        } else {
            let denom = s_hat.sqrt() / bias_correction2.sqrt() + eps;
            param - (lr / bias_correction1) * m / denom
        });
        b.finish()
    }
}

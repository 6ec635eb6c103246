//! The configurations of `torch.optim.lr_scheduler`'s recursive and lambda schedulers
//! ([`StepLR`], [`LinearLR`], [`CosineAnnealingLR`], ...) and [`Factor`], the lambdas of
//! [`LambdaLR`] and [`MultiplicativeLR`]; each builds a [`Scheduler`] with
//! `.build(&mut opt)` (on `lr`) or `.build_on(&mut opt, "b1")`.

use super::lr::{Rule, Scheduler};
use super::Hypers;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A multiplicative factor as a function of the epoch, for [`LambdaLR`] and
/// [`MultiplicativeLR`]: a Rust closure, or an expression of `epoch` in the text form's
/// syntax ([`Factor::expr`]), so that a command line can give one.
#[derive(Clone)]
pub struct Factor(Arc<dyn Fn(i64) -> f64 + Send + Sync>);

impl Factor {
    /// A factor computed by `f`.
    pub fn new(f: impl Fn(i64) -> f64 + Send + Sync + 'static) -> Factor {
        Factor(Arc::new(f))
    }

    /// A factor given as an expression of `epoch` in the text form's syntax (see
    /// [`crate::text`]): `0.95 ^ epoch`, `1 / (1 + 0.1 * epoch)`, `select(epoch < 50, 0.99,
    /// 0.9)`. Evaluated in f64 as the prologue evaluates scalars. Python's `a ** b` is
    /// `a ^ b` here, `x if c else y` is `select(c, x, y)`.
    ///
    /// ```
    /// use optjit::schedule::Factor;
    ///
    /// let f = Factor::expr("select(epoch < 2, 1, 0.5 ^ (epoch - 1))")?;
    /// assert_eq!((0..4).map(|e| f.at(e)).collect::<Vec<_>>(), [1.0, 1.0, 0.5, 0.25]);
    /// # Ok::<(), optjit::Error>(())
    /// ```
    ///
    /// Fails with [`Error::Text`] when the expression does not parse or is not a per-step
    /// scalar (its position is within the expression, on line 1).
    pub fn expr(source: &str) -> Result<Factor> {
        let expr = super::ScalarExpr::parse(source, &[("epoch", 0.0)])?;
        Ok(Factor::new(move |epoch| expr.at(&[epoch as f64], 1)))
    }

    /// The factor at `epoch`.
    pub fn at(&self, epoch: i64) -> f64 {
        (self.0)(epoch)
    }
}

impl std::fmt::Debug for Factor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Factor(..)")
    }
}

/// One factor for every group, or one per group.
pub(super) fn per_group(factors: &[Factor], groups: usize) -> Result<Vec<Factor>> {
    match factors.len() {
        1 => Ok(vec![factors[0].clone(); groups]),
        n if n == groups => Ok(factors.to_vec()),
        _ => Err(Error::InvalidOption {
            option: "lr_lambda",
            reason: "give one factor, or one per parameter group",
        }),
    }
}

/// Checks `value` (named `option`) against `ok`.
pub(super) fn check(ok: bool, option: &'static str, reason: &'static str) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(Error::InvalidOption { option, reason }),
    }
}

/// `build` (on `lr`) and `build_on` (any hyperparameter) for a configuration whose `rule`
/// gives its rule for a number of groups.
macro_rules! builds {
    ($config:ident) => {
        impl $config {
            /// The scheduler on `lr`, built as PyTorch's constructor does (a first step).
            pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
                self.build_on(opt, "lr")
            }

            /// The scheduler on hyperparameter `hyper`.
            pub fn build_on(self, opt: &mut dyn Hypers, hyper: &str) -> Result<Scheduler> {
                let rule = self.rule(opt.num_groups())?;
                Scheduler::single(opt, hyper, rule)
            }
        }
    };
}

/// `base · λ(epoch)` (PyTorch's `LambdaLR`): one factor, or one per group.
#[derive(Clone, Debug)]
pub struct LambdaLR {
    /// `lr_lambda`.
    pub lr_lambda: Vec<Factor>,
}

impl LambdaLR {
    fn rule(self, groups: usize) -> Result<Rule> {
        Ok(Rule::Lambda(per_group(&self.lr_lambda, groups)?))
    }
}
builds!(LambdaLR);

/// `value · λ(epoch)` each step after the first (PyTorch's `MultiplicativeLR`).
#[derive(Clone, Debug)]
pub struct MultiplicativeLR {
    /// `lr_lambda`.
    pub lr_lambda: Vec<Factor>,
}

impl MultiplicativeLR {
    fn rule(self, groups: usize) -> Result<Rule> {
        Ok(Rule::Multiplicative(per_group(&self.lr_lambda, groups)?))
    }
}
builds!(MultiplicativeLR);

/// `value · γ` every `step_size` epochs (PyTorch's `StepLR`).
#[derive(Clone, Copy, Debug)]
pub struct StepLR {
    /// `step_size` (> 0).
    pub step_size: i64,
    /// `gamma`.
    pub gamma: f64,
}

impl StepLR {
    fn rule(self, _: usize) -> Result<Rule> {
        check(self.step_size > 0, "step_size", "must be positive")?;
        Ok(Rule::Step {
            step_size: self.step_size,
            gamma: self.gamma,
        })
    }
}
builds!(StepLR);

/// `value · γ^k` at an epoch listed `k` times in `milestones` (PyTorch's `MultiStepLR`).
#[derive(Clone, Debug)]
pub struct MultiStepLR {
    /// `milestones`.
    pub milestones: Vec<i64>,
    /// `gamma`.
    pub gamma: f64,
}

impl MultiStepLR {
    fn rule(self, _: usize) -> Result<Rule> {
        let mut milestones = BTreeMap::new();
        for m in self.milestones {
            *milestones.entry(m).or_insert(0) += 1;
        }
        Ok(Rule::MultiStep {
            milestones,
            gamma: self.gamma,
        })
    }
}
builds!(MultiStepLR);

/// `base · factor` until `total_iters`, then `base` (PyTorch's `ConstantLR`).
#[derive(Clone, Copy, Debug)]
pub struct ConstantLR {
    /// `factor`, in [0, 1].
    pub factor: f64,
    /// `total_iters`.
    pub total_iters: i64,
}

impl ConstantLR {
    fn rule(self, _: usize) -> Result<Rule> {
        check(
            (0.0..=1.0).contains(&self.factor),
            "factor",
            "must be in [0, 1]",
        )?;
        Ok(Rule::Constant {
            factor: self.factor,
            total_iters: self.total_iters,
        })
    }
}
builds!(ConstantLR);

/// A factor going linearly from `start_factor` to `end_factor` over `total_iters` epochs
/// (PyTorch's `LinearLR`, a warmup).
#[derive(Clone, Copy, Debug)]
pub struct LinearLR {
    /// `start_factor`, in (0, 1].
    pub start_factor: f64,
    /// `end_factor`, in [0, 1].
    pub end_factor: f64,
    /// `total_iters` (> 0).
    pub total_iters: i64,
}

impl LinearLR {
    fn rule(self, _: usize) -> Result<Rule> {
        let start = self.start_factor;
        check(
            start > 0.0 && start <= 1.0,
            "start_factor",
            "must be in (0, 1]",
        )?;
        let end = self.end_factor;
        check(
            (0.0..=1.0).contains(&end),
            "end_factor",
            "must be in [0, 1]",
        )?;
        check(self.total_iters > 0, "total_iters", "must be positive")?;
        Ok(Rule::Linear {
            start,
            end,
            total_iters: self.total_iters,
        })
    }
}
builds!(LinearLR);

/// `value · γ` every epoch (PyTorch's `ExponentialLR`).
#[derive(Clone, Copy, Debug)]
pub struct ExponentialLR {
    /// `gamma`.
    pub gamma: f64,
}

impl ExponentialLR {
    fn rule(self, _: usize) -> Result<Rule> {
        Ok(Rule::Exponential { gamma: self.gamma })
    }
}
builds!(ExponentialLR);

/// `base · (1 − epoch / total_iters)^power` (PyTorch's `PolynomialLR`, recursively).
#[derive(Clone, Copy, Debug)]
pub struct PolynomialLR {
    /// `total_iters` (> 0).
    pub total_iters: i64,
    /// `power`.
    pub power: f64,
}

impl PolynomialLR {
    fn rule(self, _: usize) -> Result<Rule> {
        check(self.total_iters > 0, "total_iters", "must be positive")?;
        Ok(Rule::Polynomial {
            total_iters: self.total_iters,
            power: self.power,
        })
    }
}
builds!(PolynomialLR);

/// Cosine annealing from the base value to `eta_min` over `t_max` epochs, then back up with
/// period `2 t_max` (PyTorch's `CosineAnnealingLR`, recursively).
#[derive(Clone, Copy, Debug)]
pub struct CosineAnnealingLR {
    /// `T_max` (> 0).
    pub t_max: i64,
    /// `eta_min`.
    pub eta_min: f64,
}

impl CosineAnnealingLR {
    fn rule(self, _: usize) -> Result<Rule> {
        check(self.t_max > 0, "T_max", "must be positive")?;
        Ok(Rule::CosineAnnealing {
            t_max: self.t_max,
            eta_min: self.eta_min,
        })
    }
}
builds!(CosineAnnealingLR);

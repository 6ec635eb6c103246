//! The closed-form schedulers of `torch.optim.lr_scheduler` that cycle or anneal towards a
//! target ([`CosineAnnealingWarmRestarts`], [`CyclicLR`], [`OneCycleLR`](super::OneCycleLR)) and
//! `torch.optim.swa_utils.SWALR` ([`SWALR`]), with PyTorch's arithmetic expression by
//! expression (`a ** b` is `powf`, `math.floor` is `floor`, an int over an int is an f64
//! division), so that their values are PyTorch's bit for bit.

use super::configs::check;
use super::configs::Factor;
use super::lr::{Rule, Scheduler};
use super::Hypers;
use crate::{Error, Result};
use std::f64::consts::PI;

/// PyTorch's `_format_param`: one value for every group, or one per group.
pub(super) fn per_group(values: &[f64], groups: usize, option: &'static str) -> Result<Vec<f64>> {
    match values.len() {
        1 => Ok(vec![values[0]; groups]),
        n if n == groups => Ok(values.to_vec()),
        _ => Err(Error::InvalidOption {
            option,
            reason: "give one value, or one per parameter group",
        }),
    }
}

/// How [`OneCycleLR`](super::OneCycleLR) and [`SWALR`] go from one value to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// Cosine annealing (PyTorch's `"cos"`).
    Cos,
    /// Linear annealing (PyTorch's `"linear"`).
    Linear,
}

/// Cosine annealing with warm restarts (SGDR): `eta_min + (base − eta_min)(1 + cos(π
/// T_cur / T_i)) / 2`, where `T_cur` counts the epochs since the last restart and `T_i`, the
/// length of the current period, starts at `t_0` and is multiplied by `t_mult` at each
/// restart (PyTorch's `CosineAnnealingWarmRestarts`, stepped without explicit epochs).
#[derive(Clone, Copy, Debug)]
pub struct CosineAnnealingWarmRestarts {
    /// `T_0` (> 0): the first period.
    pub t_0: i64,
    /// `T_mult` (≥ 1): the factor of each period over the previous one.
    pub t_mult: i64,
    /// `eta_min`.
    pub eta_min: f64,
}

/// [`CosineAnnealingWarmRestarts`]' rule.
#[derive(Clone, Copy, Debug)]
pub(super) struct WarmRestarts {
    t_0: i64,
    t_mult: i64,
    eta_min: f64,
}

impl WarmRestarts {
    /// The value at `epoch`: PyTorch's incremental `T_cur`, `T_i` (`T_cur += 1`; at `T_i`,
    /// `T_cur %= T_i` and `T_i *= T_mult`) replayed from epoch 0.
    pub(super) fn value(&self, base: f64, epoch: i64) -> f64 {
        let (t_cur, t_i) = match self.t_mult {
            1 => (epoch.rem_euclid(self.t_0), self.t_0),
            _ => {
                let (mut t_cur, mut t_i) = (epoch.max(0), self.t_0);
                while t_cur >= t_i {
                    t_cur -= t_i;
                    t_i = t_i.saturating_mul(self.t_mult);
                }
                (t_cur, t_i)
            }
        };
        let eta_min = self.eta_min;
        eta_min + (base - eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
    }
}

impl CosineAnnealingWarmRestarts {
    /// The scheduler on `lr`, built as PyTorch's constructor does (a first step).
    pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
        self.build_on(opt, "lr")
    }

    /// The scheduler on hyperparameter `hyper`.
    pub fn build_on(self, opt: &mut dyn Hypers, hyper: &str) -> Result<Scheduler> {
        check(self.t_0 > 0, "T_0", "must be positive")?;
        check(self.t_mult >= 1, "T_mult", "must be at least 1")?;
        let rule = Rule::WarmRestarts(WarmRestarts {
            t_0: self.t_0,
            t_mult: self.t_mult,
            eta_min: self.eta_min,
        });
        Scheduler::single_cycling(opt, hyper, rule, None)
    }
}

/// Stochastic weight averaging's learning rate (`torch.optim.swa_utils.SWALR`): from the
/// group's value to `swa_lr` over `anneal_epochs` epochs, then constant. Each step inverts
/// the previous step's interpolation to recover the value it started from (PyTorch's
/// `_get_initial_lr`) and interpolates again, `swa_lr · α + value · (1 − α)`, with `α =
/// t` (linear) or `(1 − cos(π t)) / 2` (cos), `t = min(1, epoch / max(1, anneal_epochs))`.
///
/// PyTorch counts its steps with `_step_count - 1`, which is the epoch except inside a
/// `SequentialLR`; optjit uses the epoch.
#[derive(Clone, Debug)]
pub struct SWALR {
    /// `swa_lr`: one value, or one per group.
    pub swa_lr: Vec<f64>,
    /// `anneal_epochs` (≥ 0).
    pub anneal_epochs: i64,
    /// `anneal_strategy`.
    pub anneal_strategy: Anneal,
}

/// [`SWALR`]'s rule.
#[derive(Clone, Debug)]
pub(super) struct Swa {
    swa_lr: Vec<f64>,
    anneal_epochs: i64,
    anneal: Anneal,
}

impl Swa {
    /// PyTorch's `anneal_func(t)`.
    fn alpha(&self, t: f64) -> f64 {
        match self.anneal {
            Anneal::Linear => t,
            Anneal::Cos => (1.0 - (PI * t).cos()) / 2.0,
        }
    }

    /// PyTorch's `get_lr()` for group `g` whose current value is `lr`.
    pub(super) fn value(&self, g: usize, lr: f64, epoch: i64) -> f64 {
        let swa_lr = self.swa_lr[g];
        let step = match self.anneal_epochs {
            0 => epoch.max(1),
            _ => epoch,
        };
        let span = self.anneal_epochs.max(1) as f64;
        let prev_alpha = self.alpha(((step - 1) as f64 / span).clamp(0.0, 1.0));
        let prev_lr = match prev_alpha == 1.0 {
            true => swa_lr,
            false => (lr - prev_alpha * swa_lr) / (1.0 - prev_alpha),
        };
        let alpha = self.alpha((step as f64 / span).clamp(0.0, 1.0));
        swa_lr * alpha + prev_lr * (1.0 - alpha)
    }
}

impl SWALR {
    /// The scheduler on `lr`, built as PyTorch's constructor does (a first step).
    pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
        self.build_on(opt, "lr")
    }

    /// The scheduler on hyperparameter `hyper`.
    pub fn build_on(self, opt: &mut dyn Hypers, hyper: &str) -> Result<Scheduler> {
        check(
            self.anneal_epochs >= 0,
            "anneal_epochs",
            "must be at least 0",
        )?;
        let rule = Rule::Swa(Swa {
            swa_lr: per_group(&self.swa_lr, opt.num_groups(), "swa_lr")?,
            anneal_epochs: self.anneal_epochs,
            anneal: self.anneal_strategy,
        });
        Scheduler::single_cycling(opt, hyper, rule, None)
    }
}

/// [`CyclicLR`]'s built-in scaling policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CyclicMode {
    /// A constant amplitude (scale 1, per cycle).
    Triangular,
    /// The amplitude halved every cycle (`1 / 2^(cycle − 1)`).
    Triangular2,
    /// The amplitude scaled by `gamma^iteration`.
    ExpRange,
}

/// What a custom scaling function of [`CyclicLR`] is evaluated at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleMode {
    /// The cycle number, from 1.
    Cycle,
    /// The iteration (the scheduler's epoch).
    Iterations,
}

/// The cyclical learning rate policy (CLR; PyTorch's `CyclicLR`): each cycle goes up from
/// `base_lr` to `max_lr` over `step_size_up` steps and back down over `step_size_down`,
/// the amplitude scaled by `mode` (or `scale_fn`). With `cycle_momentum`, the momentum
/// hyperparameter `momentum_hyper` (`momentum` for SGD, `b1` for Adam) goes the other way,
/// from `max_momentum` to `base_momentum`. The constructor sets `lr` to `base_lr` (and the
/// momentum to `max_momentum`). Values follow PyTorch's form: the position in the cycle is
/// `1 + k / total − floor(1 + k / total)`.
///
/// ```
/// use optjit::{optim::Sgd, schedule::CyclicLR, Optimizer};
///
/// let mut opt = Optimizer::new(&Sgd::default().graph()?)?;
/// opt.add_param_group(&[("lr", 0.1)])?;
/// let mut sched = CyclicLR {
///     step_size_up: 2,
///     cycle_momentum: false,
///     ..CyclicLR::new(0.0, 1.0)
/// }
/// .build(&mut opt)?;
/// let mut lrs = vec![opt.hyper(0, "lr")?];
/// for _ in 0..5 {
///     sched.step(&mut opt)?;
///     lrs.push(opt.hyper(0, "lr")?);
/// }
/// assert_eq!(lrs, [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CyclicLR {
    /// `base_lr`: one value, or one per group.
    pub base_lr: Vec<f64>,
    /// `max_lr`: one value, or one per group.
    pub max_lr: Vec<f64>,
    /// `step_size_up` (> 0).
    pub step_size_up: i64,
    /// `step_size_down` (≥ 0; `None`: `step_size_up`).
    pub step_size_down: Option<i64>,
    /// `mode` (ignored with `scale_fn`).
    pub mode: CyclicMode,
    /// `gamma`, of [`CyclicMode::ExpRange`].
    pub gamma: f64,
    /// `scale_fn`: a custom scaling policy (in [0, 1]), replacing `mode`.
    pub scale_fn: Option<Factor>,
    /// `scale_mode`, of `scale_fn` (the built-in modes have their own).
    pub scale_mode: ScaleMode,
    /// `cycle_momentum`.
    pub cycle_momentum: bool,
    /// `base_momentum`: one value, or one per group.
    pub base_momentum: Vec<f64>,
    /// `max_momentum`: one value, or one per group.
    pub max_momentum: Vec<f64>,
    /// The hyperparameter cycled as momentum: `momentum` (SGD), `b1` (Adam's first beta).
    pub momentum_hyper: String,
}

impl CyclicLR {
    /// `CyclicLR(opt, base_lr, max_lr)` with PyTorch's defaults: `step_size_up = 2000`,
    /// triangular, `gamma = 1`, momentum cycled between 0.8 and 0.9 on `momentum`.
    pub fn new(base_lr: f64, max_lr: f64) -> CyclicLR {
        CyclicLR {
            base_lr: vec![base_lr],
            max_lr: vec![max_lr],
            step_size_up: 2000,
            step_size_down: None,
            mode: CyclicMode::Triangular,
            gamma: 1.0,
            scale_fn: None,
            scale_mode: ScaleMode::Cycle,
            cycle_momentum: true,
            base_momentum: vec![0.8],
            max_momentum: vec![0.9],
            momentum_hyper: "momentum".into(),
        }
    }

    /// The scheduler on `lr`, built as PyTorch's constructor does.
    pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
        let groups = opt.num_groups();
        check(self.step_size_up > 0, "step_size_up", "must be positive")?;
        let down = self.step_size_down.unwrap_or(self.step_size_up);
        check(down >= 0, "step_size_down", "must be at least 0")?;
        let base = per_group(&self.base_lr, groups, "base_lr")?;
        let max = per_group(&self.max_lr, groups, "max_lr")?;
        let momentum = match self.cycle_momentum {
            true => Some((
                per_group(&self.base_momentum, groups, "base_momentum")?,
                per_group(&self.max_momentum, groups, "max_momentum")?,
            )),
            false => None,
        };
        // Both hyperparameters exist before anything is set.
        for g in 0..groups {
            opt.hyper(g, "lr")?;
            if momentum.is_some() {
                opt.hyper(g, &self.momentum_hyper)?;
            }
        }
        for g in 0..groups {
            opt.set_hyper(g, "lr", base[g])?;
            if let Some((_, max_m)) = &momentum {
                opt.set_hyper(g, &self.momentum_hyper, max_m[g])?;
            }
        }
        let (up, down) = (self.step_size_up as f64, down as f64);
        let total_size = up + down;
        let (scale, scale_cycle) = match (self.scale_fn, self.mode) {
            (Some(f), _) => (Scale::Custom(f), self.scale_mode == ScaleMode::Cycle),
            (None, CyclicMode::Triangular) => (Scale::Triangular, true),
            (None, CyclicMode::Triangular2) => (Scale::Triangular2, true),
            (None, CyclicMode::ExpRange) => (Scale::ExpRange(self.gamma), false),
        };
        let rule = Rule::Cyclic(Box::new(Cyclic {
            base,
            max,
            total_size,
            step_ratio: up / total_size,
            scale,
            scale_cycle,
            momentum,
        }));
        let hyper = self.cycle_momentum.then_some(self.momentum_hyper.as_str());
        Scheduler::single_cycling(opt, "lr", rule, hyper)
    }
}

/// [`CyclicLR`]'s scaling function.
#[derive(Clone, Debug)]
enum Scale {
    Triangular,
    Triangular2,
    ExpRange(f64),
    Custom(Factor),
}

/// [`CyclicLR`]'s rule.
#[derive(Clone, Debug)]
pub(super) struct Cyclic {
    base: Vec<f64>,
    max: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    scale: Scale,
    /// Whether the scale is a function of the cycle (else of the iteration).
    scale_cycle: bool,
    /// `(base_momentum, max_momentum)` per group, when cycled.
    momentum: Option<(Vec<f64>, Vec<f64>)>,
}

impl Cyclic {
    /// PyTorch's `scale_factor` and `scale_fn(cycle or last_epoch)` at `epoch`.
    fn position(&self, epoch: i64) -> (f64, f64) {
        let cycle = (1.0 + epoch as f64 / self.total_size).floor();
        let x = 1.0 + epoch as f64 / self.total_size - cycle;
        let scale_factor = match x <= self.step_ratio {
            true => x / self.step_ratio,
            false => (x - 1.0) / (self.step_ratio - 1.0),
        };
        let at = match self.scale_cycle {
            true => cycle,
            false => epoch as f64,
        };
        let scale = match &self.scale {
            Scale::Triangular => 1.0,
            Scale::Triangular2 => 1.0 / 2f64.powf(at - 1.0),
            Scale::ExpRange(gamma) => gamma.powf(at),
            Scale::Custom(f) => f.at(at as i64),
        };
        (scale_factor, scale)
    }

    /// Group `g`'s learning rate at `epoch`.
    pub(super) fn lr(&self, g: usize, epoch: i64) -> f64 {
        let (scale_factor, scale) = self.position(epoch);
        let base_height = (self.max[g] - self.base[g]) * scale_factor;
        self.base[g] + base_height * scale
    }

    /// Group `g`'s momentum at `epoch`, when cycled.
    pub(super) fn momentum(&self, g: usize, epoch: i64) -> Option<f64> {
        let (base, max) = self.momentum.as_ref()?;
        let (scale_factor, scale) = self.position(epoch);
        let base_height = (max[g] - base[g]) * scale_factor;
        Some(max[g] - base_height * scale)
    }
}

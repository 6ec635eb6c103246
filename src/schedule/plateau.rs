//! PyTorch's `ReduceLROnPlateau` ([`ReduceLROnPlateau`]): the learning rate reduced when a
//! metric stops improving. It steps on the metric: [`Scheduler::step_with_metric`].

use super::cyclic::per_group;
use super::lr::{Scheduler, SchedulerState};
use super::Hypers;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// Whether the metric should go down or up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlateauMode {
    /// A loss: improving means decreasing (PyTorch's `"min"`).
    Min,
    /// An accuracy: improving means increasing (PyTorch's `"max"`).
    Max,
}

/// How much better than the best a metric must be to count as an improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Relatively: below `best · (1 − threshold)` (min) or above `best · (threshold + 1)`.
    Rel,
    /// Absolutely: below `best − threshold` (min) or above `best + threshold`.
    Abs,
}

/// Reduces the learning rate by `factor` when the metric has not improved (by `threshold`)
/// for more than `patience` steps, then waits `cooldown` steps (bad steps in cooldown do not
/// count); never below `min_lr`, and not at all when the reduction would be at most `eps`
/// (PyTorch's `ReduceLROnPlateau`). Built without a first step; each step gives the metric:
///
/// ```
/// use optjit::{optim::Sgd, schedule::ReduceLROnPlateau, Optimizer};
///
/// let mut opt = Optimizer::new(&Sgd::default().graph()?)?;
/// opt.add_param_group(&[("lr", 0.1)])?;
/// let mut sched = ReduceLROnPlateau { patience: 1, ..Default::default() }.build(&mut opt)?;
/// for loss in [1.0, 0.5, 0.6, 0.7] {
///     sched.step_with_metric(loss, &mut opt)?;
/// }
/// assert_eq!(opt.hyper(0, "lr")?, 0.1 * 0.1);
/// assert!(sched.step(&mut opt).is_err(), "plain step needs the metric");
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReduceLROnPlateau {
    /// `mode`.
    pub mode: PlateauMode,
    /// `factor` (< 1): the new value is `value · factor`.
    pub factor: f64,
    /// `patience`: bad steps tolerated.
    pub patience: u64,
    /// `threshold`.
    pub threshold: f64,
    /// `threshold_mode`.
    pub threshold_mode: ThresholdMode,
    /// `cooldown`: steps after a reduction during which bad steps are not counted.
    pub cooldown: u64,
    /// `min_lr`: one value, or one per group.
    pub min_lr: Vec<f64>,
    /// `eps`: a reduction of at most `eps` is not made.
    pub eps: f64,
}

/// PyTorch's defaults: min, `factor = 0.1`, `patience = 10`, `threshold = 1e-4` relative,
/// no cooldown, `min_lr = 0`, `eps = 1e-8`.
impl Default for ReduceLROnPlateau {
    fn default() -> ReduceLROnPlateau {
        ReduceLROnPlateau {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: vec![0.0],
            eps: 1e-8,
        }
    }
}

impl ReduceLROnPlateau {
    /// The scheduler on `lr` (PyTorch's constructor changes no value).
    pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
        self.build_on(opt, "lr")
    }

    /// The scheduler on hyperparameter `hyper`.
    pub fn build_on(self, opt: &mut dyn Hypers, hyper: &str) -> Result<Scheduler> {
        if self.factor >= 1.0 || self.factor.is_nan() {
            return Err(Error::InvalidOption {
                option: "factor",
                reason: "must be below 1",
            });
        }
        let min_lrs = per_group(&self.min_lr, opt.num_groups(), "min_lr")?;
        let last = (0..opt.num_groups())
            .map(|g| opt.hyper(g, hyper))
            .collect::<Result<Vec<f64>>>()?;
        let best = self.worse();
        Ok(Scheduler::plateau(Plateau {
            config: self,
            hyper: hyper.to_string(),
            min_lrs,
            last_epoch: 0,
            last,
            best,
            num_bad_epochs: 0,
            cooldown_counter: 0,
        }))
    }

    /// PyTorch's `mode_worse`.
    fn worse(&self) -> f64 {
        match self.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    /// PyTorch's `_is_better(a, best)`.
    fn is_better(&self, a: f64, best: f64) -> bool {
        let t = self.threshold;
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }
}

/// A built [`ReduceLROnPlateau`] and its state.
#[derive(Clone, Debug)]
pub(super) struct Plateau {
    config: ReduceLROnPlateau,
    hyper: String,
    min_lrs: Vec<f64>,
    last_epoch: i64,
    last: Vec<f64>,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
}

impl Plateau {
    pub(super) fn hyper(&self) -> &str {
        &self.hyper
    }

    pub(super) fn last_epoch(&self) -> i64 {
        self.last_epoch
    }

    pub(super) fn last(&self) -> &[f64] {
        &self.last
    }

    /// PyTorch's `recursive_undo` inside a sequence.
    pub(super) fn undo(&mut self) {
        self.last_epoch -= 1;
    }

    /// PyTorch's `step(metrics)`.
    pub(super) fn step(&mut self, metric: f64, opt: &mut dyn Hypers) -> Result<()> {
        let groups = self.min_lrs.len();
        // Every group's new value first, so that an error changes nothing.
        let mut new = Vec::with_capacity(groups);
        for g in 0..groups {
            new.push(opt.hyper(g, &self.hyper)?);
        }
        self.last_epoch += 1;
        if self.config.is_better(metric, self.best) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.config.patience {
            for (old, &min_lr) in new.iter_mut().zip(&self.min_lrs) {
                let reduced = *old * self.config.factor;
                // Python's max(reduced, min_lr): the first unless the second is greater.
                let value = if min_lr > reduced { min_lr } else { reduced };
                if *old - value > self.config.eps {
                    *old = value;
                }
            }
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        for (g, &v) in new.iter().enumerate() {
            opt.set_hyper(g, &self.hyper, v)?;
        }
        self.last = new;
        Ok(())
    }

    pub(super) fn state_dict(&self) -> SchedulerState {
        let extra = BTreeMap::from([
            ("best".to_string(), self.best),
            ("cooldown_counter".to_string(), self.cooldown_counter as f64),
            ("num_bad_epochs".to_string(), self.num_bad_epochs as f64),
        ]);
        SchedulerState {
            kind: "ReduceLROnPlateau".into(),
            hyper: self.hyper.clone(),
            last_epoch: self.last_epoch,
            step_count: 0,
            base: Vec::new(),
            last: self.last.clone(),
            schedulers: Vec::new(),
            momentum: Vec::new(),
            extra,
        }
    }

    /// Restores `state`, already checked to have the keys of [`Plateau::state_dict`].
    pub(super) fn restore(&mut self, state: &SchedulerState) {
        let count = |key: &str| state.extra.get(key).map_or(0, |&v| v as u64);
        self.last_epoch = state.last_epoch;
        self.last = state.last.clone();
        self.best = state.extra.get("best").copied().unwrap_or(self.best);
        self.num_bad_epochs = count("num_bad_epochs");
        self.cooldown_counter = count("cooldown_counter");
    }
}

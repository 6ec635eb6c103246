//! The schedulers of `torch.optim.lr_scheduler`, with PyTorch's arithmetic: a [`Scheduler`]
//! is one rule (built from its configuration: [`StepLR`](super::StepLR), ...) or a
//! composition ([`Scheduler::chained`], [`Scheduler::sequential`]).

use super::configs::Factor;
use super::Hypers;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::f64::consts::PI;

/// What one scheduler computes at each step.
#[derive(Clone, Debug)]
pub(super) enum Rule {
    Lambda(Vec<Factor>),
    Multiplicative(Vec<Factor>),
    Step {
        step_size: i64,
        gamma: f64,
    },
    MultiStep {
        milestones: BTreeMap<i64, i32>,
        gamma: f64,
    },
    Constant {
        factor: f64,
        total_iters: i64,
    },
    Linear {
        start: f64,
        end: f64,
        total_iters: i64,
    },
    Exponential {
        gamma: f64,
    },
    Polynomial {
        total_iters: i64,
        power: f64,
    },
    CosineAnnealing {
        t_max: i64,
        eta_min: f64,
    },
    WarmRestarts(super::cyclic::WarmRestarts),
    Swa(super::cyclic::Swa),
    Cyclic(Box<super::cyclic::Cyclic>),
    OneCycle(Box<super::onecycle::OneCycle>),
}

impl Rule {
    /// PyTorch's class name.
    fn name(&self) -> &'static str {
        match self {
            Rule::Lambda(_) => "LambdaLR",
            Rule::Multiplicative(_) => "MultiplicativeLR",
            Rule::Step { .. } => "StepLR",
            Rule::MultiStep { .. } => "MultiStepLR",
            Rule::Constant { .. } => "ConstantLR",
            Rule::Linear { .. } => "LinearLR",
            Rule::Exponential { .. } => "ExponentialLR",
            Rule::Polynomial { .. } => "PolynomialLR",
            Rule::CosineAnnealing { .. } => "CosineAnnealingLR",
            Rule::WarmRestarts(_) => "CosineAnnealingWarmRestarts",
            Rule::Swa(_) => "SWALR",
            Rule::Cyclic(_) => "CyclicLR",
            Rule::OneCycle(_) => "OneCycleLR",
        }
    }

    /// PyTorch's `get_lr()` for group `g`, whose current value is `lr` and base value
    /// `base`, at `epoch` (the scheduler's `last_epoch`, already advanced); `initial` during
    /// the step a constructor performs; `first` when this is the scheduler's first `step()`.
    fn value(&self, g: usize, lr: f64, base: f64, epoch: i64, initial: bool, first: bool) -> f64 {
        let e = epoch as f64;
        match self {
            Rule::Lambda(f) => base * f[g].at(epoch),
            Rule::Multiplicative(f) => match initial {
                true => lr,
                false => lr * f[g].at(epoch),
            },
            Rule::Step { step_size, gamma } => match epoch == 0 || epoch % step_size != 0 {
                true => lr,
                false => lr * gamma,
            },
            Rule::MultiStep { milestones, gamma } => match milestones.get(&epoch) {
                None => lr,
                Some(&count) => lr * gamma.powf(f64::from(count)),
            },
            Rule::Constant {
                factor,
                total_iters,
            } => match epoch {
                0 => lr * factor,
                e if e != *total_iters => lr,
                _ => lr * (1.0 / factor),
            },
            Rule::Linear {
                start,
                end,
                total_iters,
            } => {
                if epoch == 0 {
                    lr * start
                } else if initial || epoch > *total_iters {
                    lr
                } else {
                    let total = *total_iters as f64;
                    lr * (1.0 + (end - start) / (total * start + (e - 1.0) * (end - start)))
                }
            }
            Rule::Exponential { gamma } => match initial {
                true => lr,
                false => lr * gamma,
            },
            Rule::Polynomial { total_iters, power } => {
                if initial || epoch > *total_iters {
                    return lr;
                }
                let total = *total_iters as f64;
                lr * ((1.0 - e / total) / (1.0 - (e - 1.0) / total)).powf(*power)
            }
            Rule::CosineAnnealing { t_max, eta_min } => {
                let t = *t_max as f64;
                if initial {
                    lr
                } else if first && epoch > 0 {
                    eta_min + (base - eta_min) * (1.0 + (e * PI / t).cos()) / 2.0
                } else if (epoch - 1 - t_max).rem_euclid(2 * t_max) == 0 {
                    lr + (base - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (lr - eta_min)
                        + eta_min
                }
            }
            Rule::WarmRestarts(w) => w.value(base, epoch),
            Rule::Swa(s) => s.value(g, lr, epoch),
            Rule::Cyclic(c) => c.lr(g, epoch),
            Rule::OneCycle(o) => o.lr(g, epoch),
        }
    }

    /// The cycled momentum of group `g` at `epoch`, for the rules that cycle one.
    fn momentum(&self, g: usize, epoch: i64) -> Option<f64> {
        match self {
            Rule::Cyclic(c) => c.momentum(g, epoch),
            Rule::OneCycle(o) => o.momentum(g, epoch),
            _ => None,
        }
    }

    /// Whether a step to `epoch` is allowed (OneCycleLR's last is `total_steps`).
    fn check_epoch(&self, epoch: i64) -> Result<()> {
        match self {
            Rule::OneCycle(o) => o.check_epoch(epoch),
            _ => Ok(()),
        }
    }

    /// PyTorch's `_get_closed_form_lr()` where the class has one (`None`: it uses
    /// [`Rule::value`]), for a jump to `epoch` ([`Scheduler::sequential`]'s restarts).
    fn closed_form(&self, base: f64, epoch: i64) -> Option<f64> {
        let e = epoch as f64;
        Some(match self {
            // Closed forms already, or per group (see `value`).
            Rule::Lambda(_)
            | Rule::Multiplicative(_)
            | Rule::Swa(_)
            | Rule::Cyclic(_)
            | Rule::OneCycle(_) => return None,
            Rule::WarmRestarts(w) => w.value(base, epoch),
            Rule::Step { step_size, gamma } => {
                base * gamma.powf((epoch.div_euclid(*step_size)) as f64)
            }
            Rule::MultiStep { milestones, gamma } => {
                let passed: i32 = milestones.range(..=epoch).map(|(_, &c)| c).sum();
                base * gamma.powf(f64::from(passed))
            }
            Rule::Constant {
                factor,
                total_iters,
            } => base * (factor + f64::from(u8::from(epoch >= *total_iters)) * (1.0 - factor)),
            Rule::Linear {
                start,
                end,
                total_iters,
            } => {
                let total = *total_iters as f64;
                base * (start + (end - start) * (*total_iters).min(epoch) as f64 / total)
            }
            Rule::Exponential { gamma } => base * gamma.powf(e),
            Rule::Polynomial { total_iters, power } => {
                let total = *total_iters as f64;
                base * (1.0 - (*total_iters).min(epoch) as f64 / total).powf(*power)
            }
            Rule::CosineAnnealing { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (PI * e / *t_max as f64).cos()) / 2.0
            }
        })
    }
}

/// A scheduler with one rule.
#[derive(Clone, Debug)]
struct Single {
    rule: Rule,
    hyper: String,
    /// Per group: the hyperparameter's initial value (PyTorch's `base_lrs`).
    base: Vec<f64>,
    last_epoch: i64,
    step_count: u64,
    last: Vec<f64>,
    /// The momentum hyperparameter the rule cycles (CyclicLR, OneCycleLR), if any.
    momentum: Option<String>,
    /// The momentum values it last set, per group.
    last_momentum: Vec<f64>,
}

impl Single {
    /// `step()`: one epoch on (`initial`: the constructor's).
    fn step(&mut self, opt: &mut dyn Hypers, initial: bool) -> Result<()> {
        self.rule.check_epoch(self.last_epoch + 1)?;
        self.step_count += 1;
        self.last_epoch += 1;
        let first = self.step_count == 1;
        let (epoch, base, rule) = (self.last_epoch, &self.base, &self.rule);
        let value = |g: usize, lr: f64| rule.value(g, lr, base[g], epoch, initial, first);
        self.last = update(opt, &self.hyper, base.len(), value)?;
        self.cycle_momentum(opt)
    }

    /// Sets the cycled momentum at `last_epoch`, for the rules that cycle one.
    fn cycle_momentum(&mut self, opt: &mut dyn Hypers) -> Result<()> {
        if let Some(hyper) = &self.momentum {
            let (epoch, rule) = (self.last_epoch, &self.rule);
            let value = |g: usize, m: f64| rule.momentum(g, epoch).unwrap_or(m);
            self.last_momentum = update(opt, hyper, self.base.len(), value)?;
        }
        Ok(())
    }

    /// `_update_lr(epoch)`: a jump to `epoch`, by the closed form where the rule has one.
    fn jump(&mut self, opt: &mut dyn Hypers, epoch: i64) -> Result<()> {
        self.last_epoch = epoch;
        let (base, rule) = (&self.base, &self.rule);
        let value = |g: usize, lr: f64| {
            let closed = rule.closed_form(base[g], epoch);
            closed.unwrap_or_else(|| rule.value(g, lr, base[g], epoch, false, false))
        };
        self.last = update(opt, &self.hyper, base.len(), value)?;
        self.cycle_momentum(opt)
    }
}

/// Every group's new value of `hyper` from `value(group, current)`, set on `opt` (all
/// computed before any is set); returns them.
fn update(
    opt: &mut dyn Hypers,
    hyper: &str,
    groups: usize,
    value: impl Fn(usize, f64) -> f64,
) -> Result<Vec<f64>> {
    let mut new = Vec::with_capacity(groups);
    for g in 0..groups {
        new.push(value(g, opt.hyper(g, hyper)?));
    }
    for (g, &v) in new.iter().enumerate() {
        opt.set_hyper(g, hyper, v)?;
    }
    Ok(new)
}

/// A scheduler: one rule ([`StepLR`](super::StepLR), [`CyclicLR`](super::CyclicLR), ...
/// `.build(&mut opt)`), PyTorch's `ReduceLROnPlateau` ([`Scheduler::step_with_metric`]), or a
/// composition of schedulers on the same optimizer.
#[derive(Clone, Debug)]
pub struct Scheduler {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Single(Single),
    /// PyTorch's `ChainedScheduler`: every scheduler steps, in order.
    Chained {
        schedulers: Vec<Scheduler>,
        last: Vec<f64>,
    },
    /// PyTorch's `SequentialLR`.
    Sequential {
        schedulers: Vec<Scheduler>,
        milestones: Vec<i64>,
        last_epoch: i64,
        last: Vec<f64>,
    },
    /// PyTorch's `ReduceLROnPlateau`: steps on a metric.
    Plateau(Box<super::plateau::Plateau>),
}

impl Scheduler {
    /// A `ReduceLROnPlateau` scheduler.
    pub(super) fn plateau(plateau: super::plateau::Plateau) -> Scheduler {
        Scheduler {
            kind: Kind::Plateau(Box::new(plateau)),
        }
    }

    /// A scheduler of `rule` on hyperparameter `hyper`, with PyTorch's construction: each
    /// group's base value is the hyperparameter's initial value ([`Hypers::initial_hyper`]),
    /// then a first step at epoch 0.
    pub(super) fn single(opt: &mut dyn Hypers, hyper: &str, rule: Rule) -> Result<Scheduler> {
        Scheduler::single_cycling(opt, hyper, rule, None)
    }

    /// [`Scheduler::single`] whose rule also cycles the hyperparameter `momentum`.
    pub(super) fn single_cycling(
        opt: &mut dyn Hypers,
        hyper: &str,
        rule: Rule,
        momentum: Option<&str>,
    ) -> Result<Scheduler> {
        let groups = opt.num_groups();
        let base = (0..groups)
            .map(|g| opt.initial_hyper(g, hyper))
            .collect::<Result<Vec<f64>>>()?;
        let mut single = Single {
            rule,
            hyper: hyper.to_string(),
            base,
            last_epoch: -1,
            step_count: 0,
            last: Vec::new(),
            momentum: momentum.map(str::to_string),
            last_momentum: Vec::new(),
        };
        single.step(opt, true)?;
        Ok(Scheduler {
            kind: Kind::Single(single),
        })
    }

    /// PyTorch's `ChainedScheduler(schedulers)`: each step steps every scheduler in order
    /// (their factors compound). `opt` gives the last values.
    pub fn chained(opt: &dyn Hypers, schedulers: Vec<Scheduler>) -> Result<Scheduler> {
        let Some(last_one) = schedulers.last() else {
            return Err(Error::InvalidOption {
                option: "schedulers",
                reason: "a chain needs at least one scheduler",
            });
        };
        let last = current(opt, last_one.hyper())?;
        Ok(Scheduler {
            kind: Kind::Chained { schedulers, last },
        })
    }

    /// PyTorch's `SequentialLR(opt, schedulers, milestones)`: `schedulers[i]` runs from epoch
    /// `milestones[i - 1]`, restarted there at its epoch 0 (its base value, not where the
    /// previous one left off). As PyTorch's constructor: every group's value goes back to
    /// its initial one, every scheduler's first step is undone and the first scheduler's
    /// is run again.
    pub fn sequential(
        opt: &mut dyn Hypers,
        mut schedulers: Vec<Scheduler>,
        milestones: &[i64],
    ) -> Result<Scheduler> {
        if schedulers.is_empty() || milestones.len() + 1 != schedulers.len() {
            return Err(Error::InvalidOption {
                option: "milestones",
                reason: "give one scheduler more than milestones, at least one",
            });
        }
        let hyper = schedulers[0].hyper().to_string();
        for g in 0..opt.num_groups() {
            let initial = opt.initial_hyper(g, &hyper)?;
            opt.set_hyper(g, &hyper, initial)?;
        }
        for s in &mut schedulers {
            s.undo();
        }
        let first = schedulers[0].first_single()?;
        first.step_count = 0;
        first.step(opt, true)?;
        let last = schedulers[0].get_last_lr().to_vec();
        Ok(Scheduler {
            kind: Kind::Sequential {
                schedulers,
                milestones: milestones.to_vec(),
                last_epoch: 0,
                last,
            },
        })
    }

    /// The hyperparameter it drives (a composition: its last scheduler's).
    pub fn hyper(&self) -> &str {
        match &self.kind {
            Kind::Single(s) => &s.hyper,
            Kind::Plateau(p) => p.hyper(),
            Kind::Chained { schedulers, .. } | Kind::Sequential { schedulers, .. } => {
                schedulers.last().map_or("lr", |s| s.hyper())
            }
        }
    }

    /// PyTorch's `last_epoch`: the number of `step()` calls since construction.
    pub fn last_epoch(&self) -> i64 {
        match &self.kind {
            Kind::Single(s) => s.last_epoch,
            Kind::Plateau(p) => p.last_epoch(),
            Kind::Chained { schedulers, .. } => schedulers.last().map_or(0, |s| s.last_epoch()),
            Kind::Sequential { last_epoch, .. } => *last_epoch,
        }
    }

    /// PyTorch's `get_last_lr()`: the values this scheduler last set, per group.
    pub fn get_last_lr(&self) -> &[f64] {
        match &self.kind {
            Kind::Single(s) => &s.last,
            Kind::Plateau(p) => p.last(),
            Kind::Chained { last, .. } | Kind::Sequential { last, .. } => last,
        }
    }

    /// PyTorch's `scheduler.step()`, after `optimizer.step()`: the values for the next
    /// optimizer step.
    ///
    /// Fails with [`Error::Unsupported`] for `ReduceLROnPlateau` (and a composition holding
    /// one), which steps on a metric: [`Scheduler::step_with_metric`]. `OneCycleLR` fails
    /// with [`Error::InvalidOption`] past its `total_steps`. Nothing changed on error.
    pub fn step(&mut self, opt: &mut dyn Hypers) -> Result<()> {
        match &mut self.kind {
            Kind::Single(s) => s.step(opt, false),
            Kind::Plateau(_) => Err(Error::Unsupported {
                what: "step() on ReduceLROnPlateau, which steps on a metric: call step_with_metric",
            }),
            Kind::Chained { schedulers, last } => {
                for s in schedulers.iter_mut() {
                    s.step(opt)?;
                }
                let hyper = schedulers.last().map_or("lr", |s| s.hyper());
                *last = current(opt, hyper)?;
                Ok(())
            }
            Kind::Sequential {
                schedulers,
                milestones,
                last_epoch,
                last,
            } => {
                *last_epoch += 1;
                let idx = milestones.partition_point(|&m| m <= *last_epoch);
                let s = &mut schedulers[idx];
                if idx > 0 && milestones[idx - 1] == *last_epoch {
                    s.jump(opt, 0)?;
                } else {
                    s.step(opt)?;
                }
                *last = s.get_last_lr().to_vec();
                Ok(())
            }
        }
    }

    /// PyTorch's `ReduceLROnPlateau.step(metrics)`: `metric` is the quantity watched (a
    /// validation loss, say). Fails with [`Error::Unsupported`] on any other scheduler
    /// (they step with [`Scheduler::step`]).
    pub fn step_with_metric(&mut self, metric: f64, opt: &mut dyn Hypers) -> Result<()> {
        match &mut self.kind {
            Kind::Plateau(p) => p.step(metric, opt),
            _ => Err(Error::Unsupported {
                what: "step_with_metric on a scheduler other than ReduceLROnPlateau: call step",
            }),
        }
    }

    /// PyTorch's `_update_lr(epoch)` on a scheduler inside a sequence.
    fn jump(&mut self, opt: &mut dyn Hypers, epoch: i64) -> Result<()> {
        match &mut self.kind {
            Kind::Single(s) => s.jump(opt, epoch),
            _ => Err(Error::Unsupported {
                what: "a composed scheduler inside SequentialLR",
            }),
        }
    }

    /// Undoes the constructor's step count (PyTorch's `recursive_undo`).
    fn undo(&mut self) {
        match &mut self.kind {
            Kind::Single(s) => s.last_epoch -= 1,
            Kind::Plateau(p) => p.undo(),
            Kind::Chained { schedulers, .. } | Kind::Sequential { schedulers, .. } => {
                schedulers.iter_mut().for_each(Scheduler::undo)
            }
        }
    }

    fn first_single(&mut self) -> Result<&mut Single> {
        match &mut self.kind {
            Kind::Single(s) => Ok(s),
            _ => Err(Error::Unsupported {
                what: "a composed scheduler first in SequentialLR",
            }),
        }
    }

    /// Its state, for a checkpoint (see [`Scheduler::load_state_dict`]).
    pub fn state_dict(&self) -> SchedulerState {
        match &self.kind {
            Kind::Single(s) => SchedulerState {
                kind: s.rule.name().to_string(),
                hyper: s.hyper.clone(),
                last_epoch: s.last_epoch,
                step_count: s.step_count,
                base: s.base.clone(),
                last: s.last.clone(),
                schedulers: Vec::new(),
                momentum: s.last_momentum.clone(),
                extra: BTreeMap::new(),
            },
            Kind::Plateau(p) => p.state_dict(),
            Kind::Chained { last, .. } => self.composite_state("ChainedScheduler", 0, last),
            Kind::Sequential {
                last_epoch, last, ..
            } => self.composite_state("SequentialLR", *last_epoch, last),
        }
    }

    /// Restores `state` (from [`Scheduler::state_dict`] of a scheduler built the same way)
    /// and sets `opt`'s values to the ones it last set, so that the run goes on exactly as
    /// if uninterrupted, whatever the scheduler's construction changed meanwhile. Checked
    /// first (kind, hyperparameter, number of groups and of schedulers): on error nothing
    /// changed.
    pub fn load_state_dict(&mut self, state: &SchedulerState, opt: &mut dyn Hypers) -> Result<()> {
        self.check_state(state, opt.num_groups())?;
        self.restore(state);
        for (g, &v) in state.last.iter().enumerate() {
            opt.set_hyper(g, &state.hyper, v)?;
        }
        if let Kind::Single(Single {
            momentum: Some(hyper),
            ..
        }) = &self.kind
        {
            for (g, &v) in state.momentum.iter().enumerate() {
                opt.set_hyper(g, hyper, v)?;
            }
        }
        Ok(())
    }

    /// The sub-schedulers of a composition (none for one rule).
    fn children(&self) -> &[Scheduler] {
        match &self.kind {
            Kind::Single(_) | Kind::Plateau(_) => &[],
            Kind::Chained { schedulers, .. } | Kind::Sequential { schedulers, .. } => schedulers,
        }
    }

    /// The state of a composition (`kind` its PyTorch class) whose last values are `last`.
    fn composite_state(&self, kind: &str, last_epoch: i64, last: &[f64]) -> SchedulerState {
        SchedulerState {
            kind: kind.into(),
            hyper: self.hyper().to_string(),
            last_epoch,
            step_count: 0,
            base: Vec::new(),
            last: last.to_vec(),
            schedulers: self.children().iter().map(Scheduler::state_dict).collect(),
            momentum: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    fn check_state(&self, state: &SchedulerState, groups: usize) -> Result<()> {
        let mine = self.state_dict();
        let fits = mine.kind == state.kind
            && mine.hyper == state.hyper
            && state.last.len() == groups
            && (state.base.len() == mine.base.len())
            && state.momentum.len() == mine.momentum.len()
            && state.extra.keys().eq(mine.extra.keys())
            && mine.schedulers.len() == state.schedulers.len();
        if !fits {
            return Err(Error::InvalidStateDict {
                reason: format!(
                    "a {} state for a {} scheduler of `{}` over {groups} groups",
                    state.kind, mine.kind, mine.hyper
                ),
            });
        }
        for (s, child) in self.children().iter().zip(&state.schedulers) {
            s.check_state(child, groups)?;
        }
        Ok(())
    }

    fn restore(&mut self, state: &SchedulerState) {
        match &mut self.kind {
            Kind::Single(s) => {
                s.last_epoch = state.last_epoch;
                s.step_count = state.step_count;
                s.base = state.base.clone();
                s.last = state.last.clone();
                s.last_momentum = state.momentum.clone();
            }
            Kind::Plateau(p) => p.restore(state),
            Kind::Chained { schedulers, last } => {
                *last = state.last.clone();
                restore_all(schedulers, state);
            }
            Kind::Sequential {
                schedulers,
                last_epoch,
                last,
                ..
            } => {
                *last_epoch = state.last_epoch;
                *last = state.last.clone();
                restore_all(schedulers, state);
            }
        }
    }
}

/// Restores each of `schedulers` from its part of the composition's `state`.
fn restore_all(schedulers: &mut [Scheduler], state: &SchedulerState) {
    for (s, child) in schedulers.iter_mut().zip(&state.schedulers) {
        s.restore(child);
    }
}

/// Every group's current value of `hyper`.
fn current(opt: &dyn Hypers, hyper: &str) -> Result<Vec<f64>> {
    (0..opt.num_groups()).map(|g| opt.hyper(g, hyper)).collect()
}

/// A scheduler's state: PyTorch's `last_epoch`, `_step_count`, `base_lrs` and `_last_lr`,
/// and its sub-schedulers' for a composition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    /// PyTorch's class name.
    pub kind: String,
    /// The hyperparameter it drives.
    pub hyper: String,
    /// `last_epoch`.
    pub last_epoch: i64,
    /// `_step_count`.
    pub step_count: u64,
    /// `base_lrs`, per group.
    pub base: Vec<f64>,
    /// `_last_lr`, per group.
    pub last: Vec<f64>,
    /// The sub-schedulers of a composition.
    pub schedulers: Vec<SchedulerState>,
    /// The momentum values last set, per group, by a scheduler that cycles momentum
    /// (`CyclicLR`, `OneCycleLR`); empty otherwise (and then absent from JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub momentum: Vec<f64>,
    /// A scheduler's other state by name (`ReduceLROnPlateau`'s `best`, `num_bad_epochs`,
    /// `cooldown_counter`); in JSON, non-finite values are strings (`"inf"`, `"-inf"`,
    /// `"nan"`) as in an optimizer's state dict.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::runtime::state_dict::exact_f64"
    )]
    pub extra: BTreeMap<String, f64>,
}

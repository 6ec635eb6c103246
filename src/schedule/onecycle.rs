//! PyTorch's `OneCycleLR` ([`OneCycleLR`]): up from `max_lr / div_factor` to `max_lr`, then
//! down to a minimum far below, in two phases (or three), with PyTorch's arithmetic.

use super::configs::check;
use super::cyclic::{per_group, Anneal};
use super::lr::{Rule, Scheduler};
use super::Hypers;
use crate::{Error, Result};
use std::f64::consts::PI;

/// The 1cycle policy (PyTorch's `OneCycleLR`): the learning rate anneals from `initial =
/// max_lr / div_factor` up to `max_lr` over the first `pct_start` of `total_steps`, then down
/// to `initial / final_div_factor` (with `three_phase`: back to `initial` symmetrically, then
/// down to the minimum); with `cycle_momentum`, the momentum hyperparameter `momentum_hyper`
/// (`momentum` for SGD, `b1` for Adam) goes the other way between `max_momentum` and
/// `base_momentum`.
///
/// As PyTorch: the cosine is `end + (start − end) / 2 · (cos(π pct) + 1)` (so the first
/// value is `0.0040000000000000036` for `max_lr = 0.1`, not `0.004`), and `total_steps`
/// calls of `step()` are allowed (the last extrapolates the last phase one step beyond its
/// end); one more fails with [`Error::InvalidOption`] and changes nothing.
///
/// PyTorch also overwrites the groups' `initial_lr` with `max_lr / div_factor`; optjit keeps
/// the recorded initial value ([`Hypers::initial_hyper`]), which only a scheduler built
/// later on the same optimizer would read.
///
/// ```
/// use optjit::{optim::Sgd, schedule::OneCycleLR, Optimizer};
///
/// let mut opt = Optimizer::new(&Sgd { momentum: 0.9, ..Sgd::default() }.graph()?)?;
/// opt.add_param_group(&[("lr", 0.1)])?;
/// let mut sched = OneCycleLR::new(0.1, 100).build(&mut opt)?;
/// assert_eq!(opt.hyper(0, "lr")?, 0.0040000000000000036);
/// assert_eq!(opt.hyper(0, "momentum")?, 0.95);
/// for _ in 0..100 {
///     sched.step(&mut opt)?;
/// }
/// assert!(sched.step(&mut opt).is_err(), "past total_steps");
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct OneCycleLR {
    /// `max_lr`: one value, or one per group.
    pub max_lr: Vec<f64>,
    /// `total_steps` (> 0); `None`: `epochs · steps_per_epoch`.
    pub total_steps: Option<i64>,
    /// `epochs` (> 0), when `total_steps` is `None`.
    pub epochs: Option<i64>,
    /// `steps_per_epoch` (> 0), when `total_steps` is `None`.
    pub steps_per_epoch: Option<i64>,
    /// `pct_start`, in [0, 1].
    pub pct_start: f64,
    /// `anneal_strategy`.
    pub anneal_strategy: Anneal,
    /// `cycle_momentum`.
    pub cycle_momentum: bool,
    /// `base_momentum`: one value, or one per group.
    pub base_momentum: Vec<f64>,
    /// `max_momentum`: one value, or one per group.
    pub max_momentum: Vec<f64>,
    /// `div_factor`.
    pub div_factor: f64,
    /// `final_div_factor`.
    pub final_div_factor: f64,
    /// `three_phase`.
    pub three_phase: bool,
    /// The hyperparameter cycled as momentum: `momentum` (SGD), `b1` (Adam's first beta).
    pub momentum_hyper: String,
}

impl OneCycleLR {
    /// `OneCycleLR(opt, max_lr, total_steps)` with PyTorch's defaults: `pct_start = 0.3`,
    /// cos, momentum cycled between 0.85 and 0.95 on `momentum`, `div_factor = 25`,
    /// `final_div_factor = 1e4`, two phases.
    pub fn new(max_lr: f64, total_steps: i64) -> OneCycleLR {
        OneCycleLR {
            max_lr: vec![max_lr],
            total_steps: Some(total_steps),
            epochs: None,
            steps_per_epoch: None,
            pct_start: 0.3,
            anneal_strategy: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: vec![0.85],
            max_momentum: vec![0.95],
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            momentum_hyper: "momentum".into(),
        }
    }

    /// The scheduler on `lr`, built as PyTorch's constructor does (a first step).
    pub fn build(self, opt: &mut dyn Hypers) -> Result<Scheduler> {
        let total_steps = self.total_steps()?;
        let pct = self.pct_start;
        check((0.0..=1.0).contains(&pct), "pct_start", "must be in [0, 1]")?;
        let groups = opt.num_groups();
        let max = per_group(&self.max_lr, groups, "max_lr")?;
        let initial: Vec<f64> = max.iter().map(|m| m / self.div_factor).collect();
        let min = initial.iter().map(|i| i / self.final_div_factor).collect();
        let momentum = match self.cycle_momentum {
            true => Some([
                per_group(&self.base_momentum, groups, "base_momentum")?,
                per_group(&self.max_momentum, groups, "max_momentum")?,
            ]),
            false => None,
        };
        let total = total_steps as f64;
        use Point::{Base, Initial, Max, Min};
        let phases = match self.three_phase {
            true => vec![
                (pct * total - 1.0, [Initial, Max], [Max, Base]),
                (2.0 * pct * total - 2.0, [Max, Initial], [Base, Max]),
                ((total_steps - 1) as f64, [Initial, Min], [Max, Max]),
            ],
            false => vec![
                (pct * total - 1.0, [Initial, Max], [Max, Base]),
                ((total_steps - 1) as f64, [Max, Min], [Base, Max]),
            ],
        };
        if let Some([_, max_m]) = &momentum {
            for g in 0..groups {
                opt.hyper(g, "lr")?;
                opt.hyper(g, &self.momentum_hyper)?;
            }
            for (g, &m) in max_m.iter().enumerate() {
                opt.set_hyper(g, &self.momentum_hyper, m)?;
            }
        }
        let rule = Rule::OneCycle(Box::new(OneCycle {
            lr: [initial, max, min],
            momentum,
            phases,
            total_steps,
            anneal: self.anneal_strategy,
        }));
        let hyper = self.cycle_momentum.then_some(self.momentum_hyper.as_str());
        Scheduler::single_cycling(opt, "lr", rule, hyper)
    }

    /// `total_steps`, given or `epochs · steps_per_epoch`.
    fn total_steps(&self) -> Result<i64> {
        if let Some(total) = self.total_steps {
            check(total > 0, "total_steps", "must be positive")?;
            return Ok(total);
        }
        let (Some(epochs), Some(per_epoch)) = (self.epochs, self.steps_per_epoch) else {
            return Err(Error::InvalidOption {
                option: "total_steps",
                reason: "give total_steps, or epochs and steps_per_epoch",
            });
        };
        check(epochs > 0, "epochs", "must be positive")?;
        check(per_epoch > 0, "steps_per_epoch", "must be positive")?;
        epochs.checked_mul(per_epoch).ok_or(Error::InvalidOption {
            option: "steps_per_epoch",
            reason: "epochs · steps_per_epoch overflows",
        })
    }
}

/// The values a phase goes between (PyTorch's group keys).
#[derive(Clone, Copy, Debug)]
enum Point {
    /// `initial_lr`.
    Initial,
    /// `max_lr`.
    Max,
    /// `min_lr`.
    Min,
    /// `base_momentum` (of the momenta, `Max` is `max_momentum`).
    Base,
}

/// [`OneCycleLR`]'s rule.
#[derive(Clone, Debug)]
pub(super) struct OneCycle {
    /// `initial_lr`, `max_lr`, `min_lr` per group.
    lr: [Vec<f64>; 3],
    /// `base_momentum`, `max_momentum` per group, when cycled.
    momentum: Option<[Vec<f64>; 2]>,
    /// Per phase: `end_step`, the lr's start and end, the momentum's start and end.
    phases: Vec<(f64, [Point; 2], [Point; 2])>,
    total_steps: i64,
    anneal: Anneal,
}

impl OneCycle {
    /// PyTorch's `_anneal_func(start, end, pct)`.
    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.anneal {
            Anneal::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        }
    }

    /// The phase of `epoch` and `pct`, its position in it.
    fn phase(&self, epoch: i64) -> (usize, f64) {
        let mut start_step = 0.0;
        let last = self.phases.len() - 1;
        for (i, &(end_step, _, _)) in self.phases.iter().enumerate() {
            if epoch as f64 <= end_step || i == last {
                return (i, (epoch as f64 - start_step) / (end_step - start_step));
            }
            start_step = end_step;
        }
        (last, 1.0)
    }

    /// Group `g`'s learning rate at `epoch`.
    pub(super) fn lr(&self, g: usize, epoch: i64) -> f64 {
        let (i, pct) = self.phase(epoch);
        let [start, end] = self.phases[i].1.map(|p| self.lr_at(p, g));
        self.anneal(start, end, pct)
    }

    fn lr_at(&self, point: Point, g: usize) -> f64 {
        match point {
            Point::Initial => self.lr[0][g],
            Point::Max => self.lr[1][g],
            Point::Min | Point::Base => self.lr[2][g],
        }
    }

    /// Group `g`'s momentum at `epoch`, when cycled.
    pub(super) fn momentum(&self, g: usize, epoch: i64) -> Option<f64> {
        let [base, max] = self.momentum.as_ref()?;
        let (i, pct) = self.phase(epoch);
        let [start, end] = self.phases[i].2.map(|p| match p {
            Point::Base => base[g],
            _ => max[g],
        });
        Some(self.anneal(start, end, pct))
    }

    /// PyTorch allows epochs up to `total_steps`.
    pub(super) fn check_epoch(&self, epoch: i64) -> Result<()> {
        check(
            epoch <= self.total_steps,
            "total_steps",
            "OneCycleLR stepped more than total_steps times",
        )
    }
}

//! Schedules of hyperparameters over the steps of training, of two kinds, neither of which
//! ever recompiles:
//!
//! - host-side schedulers with `torch.optim.lr_scheduler`'s semantics and names
//!   ([`Scheduler`], built from [`StepLR`], [`CosineAnnealingLR`], [`CyclicLR`],
//!   [`OneCycleLR`], [`ReduceLROnPlateau`], [`SWALR`], ...), which set any hyperparameter of
//!   any group between steps (`ReduceLROnPlateau` steps on a metric:
//!   [`Scheduler::step_with_metric`]);
//! - [`graph`]: optax's schedules as expressions of the step, compiled into the prologue
//!   (they follow each parameter's own step count and cost nothing per element).
//!
//! A scheduler drives `lr` by default and any other hyperparameter with `build_on` (`b1`,
//! `weight_decay`, ...), through [`Hypers`], the interface [`crate::Optimizer`] and
//! [`crate::Stepper`] share (a Stepper is one group). As in PyTorch, building a scheduler
//! performs its first step (the value the first optimizer step uses), and then
//! `optimizer.step()` is followed by `scheduler.step()`:
//!
//! ```
//! use optjit::{optim::Sgd, schedule::StepLR, Optimizer};
//!
//! let mut opt = Optimizer::new(&Sgd::default().graph()?)?;
//! opt.add_param_group(&[("lr", 0.1)])?;
//! let mut sched = StepLR { step_size: 2, gamma: 0.5 }.build(&mut opt)?;
//! let mut lrs = vec![opt.hyper(0, "lr")?];
//! for _ in 0..4 {
//!     // opt.step()? with gradients, then:
//!     sched.step(&mut opt)?;
//!     lrs.push(opt.hyper(0, "lr")?);
//! }
//! assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05, 0.025]);
//! assert_eq!(sched.last_epoch(), 4);
//! # Ok::<(), optjit::Error>(())
//! ```
//!
//! The values are PyTorch's bit for bit where PyTorch's own arithmetic is followed: the
//! recursive schedulers (`StepLR`, `ExponentialLR`, `CosineAnnealingLR`, ...) multiply the
//! current value by a per-step factor exactly as PyTorch does, so they accumulate the same
//! rounding; `optjit conformance` and `cargo test` check every recorded PyTorch sequence.

mod configs;
mod cyclic;
mod expr;
pub mod graph;
mod lr;
mod onecycle;
mod plateau;

pub use configs::{
    ConstantLR, CosineAnnealingLR, ExponentialLR, Factor, LambdaLR, LinearLR, MultiStepLR,
    MultiplicativeLR, PolynomialLR, StepLR,
};
pub use cyclic::{Anneal, CosineAnnealingWarmRestarts, CyclicLR, CyclicMode, ScaleMode, SWALR};
pub use expr::ScalarExpr;
pub use lr::{Scheduler, SchedulerState};
pub use onecycle::OneCycleLR;
pub use plateau::{PlateauMode, ReduceLROnPlateau, ThresholdMode};

use crate::{Optimizer, Result, Stepper};

/// The hyperparameters of an optimizer's groups, as schedulers read and set them.
pub trait Hypers {
    /// Number of parameter groups.
    fn num_groups(&self) -> usize;
    /// The current value of hyperparameter `name` in `group`.
    fn hyper(&self, group: usize, name: &str) -> Result<f64>;
    /// Sets hyperparameter `name` of `group` (never recompiles).
    fn set_hyper(&mut self, group: usize, name: &str, value: f64) -> Result<()>;
    /// The value of `name` in `group` when a scheduler first asked (recorded then): PyTorch's
    /// `initial_lr`.
    fn initial_hyper(&mut self, group: usize, name: &str) -> Result<f64>;
}

impl Hypers for Optimizer {
    fn num_groups(&self) -> usize {
        Optimizer::num_groups(self)
    }

    fn hyper(&self, group: usize, name: &str) -> Result<f64> {
        Optimizer::hyper(self, group, name)
    }

    fn set_hyper(&mut self, group: usize, name: &str, value: f64) -> Result<()> {
        Optimizer::set_hyper(self, group, name, value)
    }

    fn initial_hyper(&mut self, group: usize, name: &str) -> Result<f64> {
        Optimizer::initial_hyper(self, group, name)
    }
}

/// A Stepper is one group: group 0.
impl Hypers for Stepper {
    fn num_groups(&self) -> usize {
        1
    }

    fn hyper(&self, group: usize, name: &str) -> Result<f64> {
        only_group(group)?;
        Stepper::hyper(self, name)
    }

    fn set_hyper(&mut self, group: usize, name: &str, value: f64) -> Result<()> {
        only_group(group)?;
        Stepper::set_hyper(self, name, value)
    }

    fn initial_hyper(&mut self, group: usize, name: &str) -> Result<f64> {
        only_group(group)?;
        Stepper::initial_hyper(self, name)
    }
}

/// A Stepper's only group is 0.
fn only_group(group: usize) -> Result<()> {
    match group {
        0 => Ok(()),
        _ => Err(crate::Error::UnknownGroup {
            index: group,
            count: 1,
        }),
    }
}

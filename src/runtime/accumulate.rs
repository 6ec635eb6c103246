//! Gradient accumulation over micro-batches: [`GradAccumulation`] counts the micro-batches
//! whose gradients went into the optimizer's gradient buffers (summed there by the caller,
//! as PyTorch's autograd sums `.grad`), and every `every` of them runs the step with the
//! gradients averaged (or summed) in registers, then clears them.

use super::Optimizer;
use crate::optim::GRAD_SCALE;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Steps an optimizer once every `every` micro-batches, on their gradients' mean or sum
/// (optax's `MultiSteps`; PyTorch's accumulate-then-step loop).
///
/// ```
/// use optjit::optim::{accumulate, Sgd};
/// use optjit::runtime::GradAccumulation;
/// use optjit::Optimizer;
/// use ndarray::array;
///
/// let mut opt = Optimizer::new(&accumulate(&Sgd { lr: 1.0, ..Sgd::default() }.graph()?)?)?;
/// let g = opt.add_param_group(&[])?;
/// let w = opt.add_param(g, "w", &array![0.0f32])?;
/// let mut acc = GradAccumulation::new(2, true)?;
/// for grad in [1.0f32, 3.0] {
///     opt.grad_mut(&w)?[0] += grad; // backward of one micro-batch
///     acc.micro_step(&mut opt)?;
/// }
/// assert_eq!(opt.param(&w)?, &[-2.0]); // one step on the mean gradient, 2
/// assert_eq!(opt.grad(&w)?, None); // cleared for the next window
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// A micro-batch without data is not one: call [`GradAccumulation::micro_step`] only after a
/// backward pass. A parameter that no micro-batch of a window reached has no gradient and is
/// skipped by the step, as always; one reached by some of them gets the sum of those, divided
/// by the window's micro-batch count. [`GradAccumulation::flush`] steps on a window cut short
/// (the end of an epoch), averaging over the micro-batches it had. A checkpoint goes in the
/// optimizer's ([`crate::runtime::StateDict::put`]); one taken inside a window also needs
/// the gradients accumulated so far ([`Optimizer::grad`]), which a state dict does not hold
/// (nor does PyTorch's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradAccumulation {
    every: u64,
    mean: bool,
    count: u64,
}

/// A [`GradAccumulation`]'s state, for a checkpoint taken inside a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccumulationState {
    /// Micro-batches per step.
    pub every: u64,
    /// Mean (else sum).
    pub mean: bool,
    /// Micro-batches accumulated since the last step.
    pub count: u64,
}

impl GradAccumulation {
    /// A step every `every` (≥ 1) micro-batches, on the mean of their gradients (`mean`) or
    /// their sum.
    pub fn new(every: u64, mean: bool) -> Result<GradAccumulation> {
        if every == 0 {
            return Err(Error::InvalidOption {
                option: "every",
                reason: "at least one micro-batch per step",
            });
        }
        Ok(GradAccumulation {
            every,
            mean,
            count: 0,
        })
    }

    /// Micro-batches accumulated since the last step.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Records one micro-batch (its gradients already added to the optimizer's); at the
    /// window's last one, steps and clears the gradients. Returns `Some(applied)` when it
    /// stepped (`applied` as [`Optimizer::step`] returns it), `None` otherwise.
    ///
    /// Fails with [`Error::UnknownHyper`] (nothing changed, the micro-batch not counted) when
    /// the optimizer's program has no [`GRAD_SCALE`] (see [`crate::optim::accumulate`]).
    pub fn micro_step(&mut self, opt: &mut Optimizer) -> Result<Option<bool>> {
        opt.program()
            .hyper_index(GRAD_SCALE)
            .ok_or_else(|| Error::UnknownHyper {
                name: GRAD_SCALE.to_string(),
            })?;
        self.count += 1;
        if self.count < self.every {
            return Ok(None);
        }
        self.apply(opt).map(Some)
    }

    /// Steps on the micro-batches accumulated so far, if any (a window cut short); returns
    /// `Some(applied)` when it stepped.
    pub fn flush(&mut self, opt: &mut Optimizer) -> Result<Option<bool>> {
        match self.count {
            0 => Ok(None),
            _ => self.apply(opt).map(Some),
        }
    }

    /// The step of a window of `count` micro-batches. On error the window stays as it was
    /// (gradients and count), so that the step can be retried.
    fn apply(&mut self, opt: &mut Optimizer) -> Result<bool> {
        let scale = match self.mean {
            true => 1.0 / self.count as f64,
            false => 1.0,
        };
        opt.set_hyper_all(GRAD_SCALE, scale)?;
        let applied = opt.step()?;
        opt.zero_grad();
        self.count = 0;
        Ok(applied)
    }

    /// Its state (see [`AccumulationState`]).
    pub fn state_dict(&self) -> AccumulationState {
        AccumulationState {
            every: self.every,
            mean: self.mean,
            count: self.count,
        }
    }

    /// Restores `state`; fails with [`Error::InvalidStateDict`] (nothing changed) when it
    /// has no micro-batch per step or a count past its window.
    pub fn load_state_dict(&mut self, state: &AccumulationState) -> Result<()> {
        if state.every == 0 || state.count >= state.every {
            return Err(Error::InvalidStateDict {
                reason: format!(
                    "an accumulation of {} micro-batches at count {}",
                    state.every, state.count
                ),
            });
        }
        (self.every, self.mean, self.count) = (state.every, state.mean, state.count);
        Ok(())
    }
}

//! The many-small-tensors run of the suite: thousands of tensors (neighbours merged into
//! one segment, or each with its own prologue) against one tensor of the same size, timed in
//! alternation.

use super::suite::{middle, optimizer, timed};
use crate::{Executor, Graph, Jit, Optimizer, Result};
use std::time::Duration;

/// Rounds of [`alternated`]: each gives every optimizer `min_time / ROUNDS`.
pub(super) const ROUNDS: usize = 7;

/// One layout of the many-small-tensors run, built and warmed up.
pub(super) struct Layout {
    /// [`super::suite::Record::steps`]: `shared`, `staggered`, or `None` for the one big tensor.
    pub(super) steps: Option<&'static str>,
    /// Number of tensors.
    pub(super) tensors: usize,
    pub(super) opt: Optimizer,
}

impl Layout {
    /// `10000 tensors shared`, `one tensor`: for the progress bar.
    pub(super) fn label(&self) -> String {
        match self.steps {
            Some(steps) => format!("{} tensors {steps}", self.tensors),
            None => "one tensor".to_string(),
        }
    }
}

/// `count` tensors of `each` elements in two layouts, and one tensor of the same total, each
/// stepped once (the warm-up):
///
/// - `shared`: all tensors at the same step, so neighbours merge into one segment;
/// - `staggered`: every other tensor one step ahead. For optimizers whose per-step scalars
///   depend on the step (the bias corrections of Adam and AdamW) neighbours then differ and
///   none merge: the kernel really gets one segment per tensor, each with its own prologue.
///   The others (SGD-momentum after its first step, Lion, RMSprop) merge anyway;
/// - one tensor of `count * each` elements.
pub(super) fn many_small(
    graph: &Graph,
    jit: &Jit,
    threads: usize,
    count: usize,
    each: usize,
) -> Result<Vec<Layout>> {
    let shared = optimizer(graph, (Executor::Jit, jit), threads, count, each)?;
    let mut staggered = optimizer(graph, (Executor::Jit, jit), threads, count, each)?;
    let handles: Vec<crate::Param<f32>> = opt_handles(&staggered);
    let grad: Vec<f32> = staggered.grad(&handles[0])?.expect("set").to_vec();
    staggered.zero_grad();
    for h in handles.iter().step_by(2) {
        staggered.set_grad(h, &grad)?;
    }
    staggered.step()?;
    for h in &handles {
        staggered.set_grad(h, &grad)?;
    }
    let one = optimizer(graph, (Executor::Jit, jit), threads, 1, count * each)?;
    let mut layouts = vec![
        Layout {
            steps: Some("shared"),
            tensors: count,
            opt: shared,
        },
        Layout {
            steps: Some("staggered"),
            tensors: count,
            opt: staggered,
        },
        Layout {
            steps: None,
            tensors: 1,
            opt: one,
        },
    ];
    for layout in &mut layouts {
        layout.opt.step()?;
    }
    Ok(layouts)
}

/// The median step time of each of `steps`, measured in alternation so that all see the
/// same moments of a noisy machine: [`ROUNDS`] rounds, each timing every one for
/// `min_time / ROUNDS` and at least 3 calls (no warm-up: the caller did it), in an order
/// rotated every round (a b c, b c a, c a b, …); the median over rounds of each one's
/// median. `before(round, i)` runs before each timing.
pub(super) fn alternated(
    min_time: Duration,
    steps: &mut [impl FnMut() -> Result<()>],
    mut before: impl FnMut(usize, usize),
) -> Result<Vec<Duration>> {
    let share = min_time / ROUNDS as u32;
    let mut medians = vec![Vec::new(); steps.len()];
    for round in 0..ROUNDS {
        for k in 0..steps.len() {
            let i = (round + k) % steps.len();
            before(round, i);
            medians[i].push(timed(share, 3, &mut steps[i])?);
        }
    }
    Ok(medians.into_iter().map(middle).collect())
}

/// Handles to the f32 parameters `optimizer` added, in order.
pub(super) fn opt_handles(opt: &Optimizer) -> Vec<crate::Param<f32>> {
    (0..opt.params_info().len())
        .map(|i| opt.handle(i).expect("an f32 parameter"))
        .collect()
}

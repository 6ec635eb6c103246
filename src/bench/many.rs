//! The many-small-tensors run of the suite: thousands of tensors (neighbours merged into
//! one segment, or each with its own prologue) against one tensor of the same size, timed in
//! alternation.

use super::suite::{gradient, middle, optimizer, timed, Storage};
use crate::{DType, Element, Executor, Graph, Jit, Optimizer, Result};
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
    (count, each): (usize, usize),
    storage: Storage,
) -> Result<Vec<Layout>> {
    let on = (Executor::Jit, jit);
    let shared = optimizer(graph, on, threads, (count, each), storage)?;
    let mut staggered = optimizer(graph, on, threads, (count, each), storage)?;
    staggered.zero_grad();
    set_grads(&mut staggered, storage.param, 2)?;
    staggered.step()?;
    set_grads(&mut staggered, storage.param, 1)?;
    let one = optimizer(graph, on, threads, (1, count * each), storage)?;
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

/// Sets the gradient of every `every`-th parameter of `opt` (all of dtype `param`) to the
/// benchmark's.
fn set_grads(opt: &mut Optimizer, param: DType, every: usize) -> Result<()> {
    fn set<T: Element>(opt: &mut Optimizer, every: usize) -> Result<()> {
        for i in (0..opt.params_info().len()).step_by(every) {
            let h = opt
                .handle::<T>(i)
                .expect("a parameter of the benchmark's dtype");
            let grad: Vec<T> = (0..opt.param(&h)?.len())
                .map(|k| T::from_f64(gradient(k)))
                .collect();
            opt.set_grad(&h, &grad)?;
        }
        Ok(())
    }
    match param {
        DType::F32 => set::<f32>(opt, every),
        DType::F64 => set::<f64>(opt, every),
        DType::BF16 => set::<half::bf16>(opt, every),
        DType::F16 => set::<half::f16>(opt, every),
    }
}

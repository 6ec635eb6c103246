//! The engine that [`crate::Optimizer`] and [`crate::Stepper`] are façades over: a compiled
//! program with its kernel cache, run over a list of parameters (the *members* of a step)
//! whose buffers lie in sets of streams of any dtype.
//!
//! A run is: checks → each phase (the prologue up to it, scalar blocks, one parallel region
//! per dtype, the reductions combined per parameter and globally) → the rest of the prologue
//! (parameters with the same inputs share one run of it, and equal scalar blocks are one
//! block) → the skip condition → the last stage, one parallel region per dtype, in which
//! neighbouring parameters of one set with the same block form one segment → commit. Phases
//! write nothing; when the skip condition holds nothing is committed, anywhere. The façades
//! own where parameters, gradients and state live, and what a commit stores.

mod exec;
mod plan;
mod pool;
mod sets;

pub(crate) use exec::default_threads;
pub use exec::GRAIN;
use exec::{Runner, StageKernels};
pub use pool::PoolKind;
use pool::Threads;
pub(crate) use sets::{Buffers, Sets, StreamSets};

use crate::ir::reduce::combine_all;
use crate::ir::Scope;
use crate::program::{Phase, Program};
use crate::{Error, Jit, Kernel, Layout, Result};
use plan::GroupStep;
#[cfg(test)]
pub(crate) use plan::Plan;
use sets::{Job, Run};
use std::sync::Arc;

/// Which executor runs a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Executor {
    /// Cranelift-compiled kernel (the default).
    #[default]
    Jit,
    /// The reference interpreter, element by element.
    Reference,
    /// One op at a time over whole arrays (ndarray), like an unfused framework.
    Eager,
    /// One op at a time over cache-sized blocks, in loops rustc vectorizes: the fastest
    /// executor without code generation, for platforms where JIT code cannot run.
    Chunked,
}

/// Bytes every flat-store stream and every cut between threads is aligned to.
pub(crate) const ALIGN: usize = 64;

/// Elements per [`ALIGN`] bytes of `layout`'s narrowest stream: a run of them starts aligned
/// in every stream of sets whose starts are.
pub(crate) fn align_of(layout: &Layout) -> usize {
    ALIGN / layout.min_size()
}

/// `n` elements of `size` bytes, rounded up to a whole number of aligned blocks: where the
/// next parameter of a flat store starts.
pub(crate) fn padded(n: usize, size: usize) -> usize {
    let per_block = ALIGN / size;
    n.div_ceil(per_block) * per_block
}

/// How a run executes: which executor, which JIT, how many threads on which pool.
#[derive(Clone)]
pub(crate) struct Settings {
    /// What runs the stages.
    pub(crate) executor: Executor,
    /// The JIT that compiles them; `None`: the process-wide one.
    pub(crate) jit: Option<Jit>,
    /// At most how many threads, on which pool.
    pub(crate) threads: Threads,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            executor: Executor::Jit,
            jit: None,
            threads: exec::default_threads(),
        }
    }
}

/// One parameter of a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Member {
    /// The façade's name for it, given back to its commit.
    pub(crate) id: usize,
    /// Its entry in the run's list of stream sets (one per dtype).
    pub(crate) entry: usize,
    /// Its set of buffers in that entry.
    pub(crate) set: usize,
    /// Where it starts in its set's buffers.
    pub(crate) offset: usize,
    /// Its length in elements.
    pub(crate) len: usize,
    /// Its group (the hyperparameters it reads).
    pub(crate) group: usize,
    /// Updates it has received.
    pub(crate) step: u64,
    /// Whether its element state is yet to be set to the slots' initial values.
    pub(crate) fresh: bool,
}

/// What a run reads besides the buffers: its members, in the order global reductions
/// combine them, and their scalar inputs.
pub(crate) struct Work<'w> {
    /// The parameters the run updates.
    pub(crate) members: Vec<Member>,
    /// Per member, the value of every slot it reads (`slots` each; meaningful for scalar and
    /// group slots); empty when the program has none of those.
    pub(crate) scalars: Vec<f64>,
    /// The program's number of slots.
    pub(crate) slots: usize,
    /// Per group, the program's hyperparameter values.
    pub(crate) hypers: Vec<&'w [f64]>,
    /// Per group, its group state (every slot, meaningful for group slots), when group state
    /// lives in the groups: then the run computes it once per group, members or not, and a
    /// skip condition that reads only group-wide values is checked in every group. `None`
    /// when each member carries its copy of group state (the Stepper), or when the program
    /// computes nothing per group (see [`Engine::reads_groups`]).
    pub(crate) groups: Option<Vec<&'w [f64]>>,
    /// The optimizer state (every slot, meaningful for optimizer slots), read with
    /// [`Work::groups`].
    pub(crate) optimizer: &'w [f64],
}

/// Stores the step of the member with [`Member::id`] `id` and its new scalar state
/// `(slot, value)`; see [`Engine::run`].
pub(crate) type Commit<'c> = dyn FnMut(usize, &[(usize, f64)]) + 'c;

/// Per member of a run, a list of values.
type PerMember = Vec<Vec<f64>>;

impl Work<'_> {
    /// Member `i`'s slot values (empty if the program reads none).
    fn scalars(&self, i: usize) -> &[f64] {
        self.scalars
            .get(i * self.slots..(i + 1) * self.slots)
            .unwrap_or(&[])
    }
}

/// What a run did.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The skip condition held: nothing was written or committed.
    Skipped,
    /// Every member was updated and committed; the new shared state for the façade to store.
    Applied(Shared),
}

/// The new values of shared state after a step, `(slot, value)`: per group of
/// [`Work::groups`] its group state, and the optimizer state (the same in every group).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Shared {
    pub(crate) groups: Vec<Vec<(usize, f64)>>,
    pub(crate) optimizer: Vec<(usize, f64)>,
}

/// A compiled program, its kernels and what a run of it needs worked out once.
pub(crate) struct Engine {
    /// The program it runs.
    pub(crate) program: Arc<Program>,
    kernels: StageKernels,
    group_step: GroupStep,
    /// Initial value of every element slot, in stream order.
    element_inits: Vec<f64>,
}

impl Engine {
    /// The engine of `program` (its kernels compiled at their first use).
    pub(crate) fn new(program: Program) -> Engine {
        let element_inits = program
            .element_slots()
            .map(|s| program.slots[s].init)
            .collect();
        Engine {
            kernels: StageKernels::new(&program),
            group_step: GroupStep::of(&program),
            element_inits,
            program: Arc::new(program),
        }
    }

    /// Whether a step computes something once per group (group or optimizer state, or a
    /// skip condition that reads only group-wide values): then [`Work::groups`] is needed.
    pub(crate) fn reads_groups(&self) -> bool {
        self.group_step.end > 0
    }

    /// Forgets the kernels compiled so far (the JIT changed).
    pub(crate) fn reset_kernels(&mut self) {
        self.kernels = StageKernels::new(&self.program);
    }

    /// The JIT kernel of stage `k` (phases in order, then the last) for `layout`.
    pub(crate) fn kernel(&self, settings: &Settings, k: usize, layout: &Layout) -> Result<Kernel> {
        self.kernels
            .get(settings.jit.as_ref(), &self.program, k, layout)
    }

    /// What runs stage `k` on `layout`: its kernel for the JIT executor, else the executor.
    fn runner_kernel(
        &self,
        settings: &Settings,
        k: usize,
        layout: &Layout,
    ) -> Result<Option<Kernel>> {
        match settings.executor {
            Executor::Jit => self.kernel(settings, k, layout).map(Some),
            _ => Ok(None),
        }
    }

    /// Runs the program over `work`'s members, whose buffers are in `sets` (one entry per
    /// dtype, [`Member::entry`]); `commit(id, updates)` stores a member's step and its new
    /// scalar state `(slot, value)` once its dtype's last stage has run.
    ///
    /// The façade has checked the buffers (lengths, state shapes, aliasing) and allocated
    /// every member's element state (even for a step that then skips). Here: a member at
    /// step `u64::MAX` is an error before anything happens, and so is optimizer state to
    /// which the groups give different values ([`Error::GroupsDisagree`]); an error after
    /// that is an internal bug or the environment (a kernel that cannot be compiled, found
    /// before the last stage writes). The only write before the last stage fills new
    /// members' element state with its initial values, which nothing reads before their
    /// first committed step.
    pub(crate) fn run(
        &self,
        settings: &Settings,
        work: &Work<'_>,
        sets: &mut [&mut dyn StreamSets],
        commit: &mut Commit<'_>,
    ) -> Result<Outcome> {
        if work.members.iter().any(|m| m.step == u64::MAX) {
            return Err(Error::StepOverflow);
        }
        for (d, set) in sets.iter_mut().enumerate() {
            let fresh = work.members.iter().filter(|m| m.entry == d && m.fresh);
            let ranges: Vec<(usize, usize, usize)> =
                fresh.map(|m| (m.set, m.offset, m.len)).collect();
            if !ranges.is_empty() {
                set.fill(&ranges, &self.element_inits);
            }
        }
        let (reduced, values) = self.run_phases(settings, work, sets)?;
        let layouts: Vec<Layout> = sets.iter().map(|s| s.layout().clone()).collect();
        let plan = self.plan(work, &layouts, &reduced, values);
        let groups = match &work.groups {
            Some(groups) => self
                .group_step
                .updates(&self.program, work, groups, &reduced)?,
            None => Some(Shared::default()),
        };
        let Some(groups) = groups.filter(|_| !plan.skip) else {
            return Ok(Outcome::Skipped);
        };
        // Every kernel before the first write.
        let last = self.program.phases.len();
        let mut kernels = Vec::with_capacity(sets.len());
        for (d, layout) in layouts.iter().enumerate() {
            let used = work.members.iter().any(|m| m.entry == d);
            kernels.push(match used {
                true => self.runner_kernel(settings, last, layout)?,
                false => None,
            });
        }
        for (d, set) in sets.iter_mut().enumerate() {
            let runs = plan.runs(work, d, &layouts[d]);
            if runs.is_empty() {
                continue;
            }
            let runner = Runner::of(kernels[d].as_ref(), settings.executor, &self.program.stage);
            set.run(Job {
                runner,
                runs: &runs,
                blocks: &plan.blocks,
                n_scalars: plan.n_scalars,
                partials: &mut [],
                reductions: 0,
                threads: settings.threads,
            })?;
            let of_dtype = work.members.iter().zip(&plan.members);
            for (m, &(key, _)) in of_dtype.filter(|(m, _)| m.entry == d) {
                commit(m.id, plan.update(key));
            }
        }
        Ok(Outcome::Applied(groups))
    }

    /// Runs the phases: per member, the results of every reduction and its prologue values
    /// so far (both empty for a program without phases).
    fn run_phases(
        &self,
        settings: &Settings,
        work: &Work<'_>,
        sets: &mut [&mut dyn StreamSets],
    ) -> Result<(PerMember, PerMember)> {
        let program = &self.program;
        if program.phases.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let n = work.members.len();
        let mut reduced = vec![vec![0.0; program.reductions().count()]; n];
        let mut values = vec![Vec::new(); n];
        let all: Vec<usize> = (0..n).collect();
        let mut first = 0;
        for (k, phase) in program.phases.iter().enumerate() {
            for (i, values) in values.iter_mut().enumerate() {
                let end = phase.prologue_end as usize;
                self.prologue(work, i, end, &reduced[i], values);
            }
            let scalars = phase.kernel_scalars.iter();
            let blocks: Vec<f64> = values
                .iter()
                .flat_map(|v| scalars.clone().map(|&s| v[s as usize]))
                .collect();
            let count = phase.stage.reductions.len();
            let mut raw = vec![Vec::new(); n];
            for (d, set) in sets.iter_mut().enumerate() {
                // One run per member (a reduction per parameter never straddles two), in
                // storage order; its block is the member's.
                let mut runs: Vec<Run> = (work.members.iter().enumerate())
                    .filter(|(_, m)| m.entry == d)
                    .map(|(i, m)| Run {
                        set: m.set,
                        offset: m.offset,
                        len: m.len,
                        block: i,
                    })
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                runs.sort_by_key(|r| (r.set, r.offset));
                let mut partials: Vec<f64> = Vec::new();
                let len = runs.iter().map(|r| crate::segment::blocks(r.len) * count);
                partials.resize(len.sum(), 0.0);
                let kernel = self.runner_kernel(settings, k, set.layout())?;
                set.run(Job {
                    runner: Runner::of(kernel.as_ref(), settings.executor, &phase.stage),
                    runs: &runs,
                    blocks: &blocks,
                    n_scalars: phase.kernel_scalars.len(),
                    partials: &mut partials,
                    reductions: count,
                    threads: settings.threads,
                })?;
                let mut at = 0;
                for r in &runs {
                    let len = crate::segment::blocks(r.len) * count;
                    raw[r.block] = param_values(phase, &partials[at..at + len]);
                    at += len;
                }
            }
            record_results(phase, &all, &raw, &mut reduced, first);
            first += count;
        }
        Ok((reduced, values))
    }

    /// Member `i`'s prologue, continued in `values` up to instruction `end`.
    fn prologue(
        &self,
        work: &Work<'_>,
        i: usize,
        end: usize,
        reduced: &[f64],
        values: &mut Vec<f64>,
    ) {
        let m = &work.members[i];
        let scalars = work.scalars(i);
        let hypers = work.hypers[m.group];
        let state = |n: usize| scalars[n];
        (self.program).eval_prologue_until(end, hypers, m.step + 1, state, reduced, values);
    }
}

/// One parameter's value of each of `phase`'s reductions, before [`crate::ir::ReduceOp::
/// finish`], from its block partials (block-major, see [`crate::Segment::partials`]).
fn param_values(phase: &Phase, partials: &[f64]) -> Vec<f64> {
    let n = phase.stage.reductions.len();
    let reductions = phase.stage.reductions.iter().enumerate();
    reductions
        .map(|(r, (op, _))| combine_all(*op, partials.iter().skip(r).step_by(n).copied()))
        .collect()
}

/// Writes the results of `phase`'s reductions, numbered from `first`, into `reduced[i]` for
/// every member `i`, from `raw[i]` (its [`param_values`]): each member's own for a reduction
/// per parameter, all members' combined in their order for a global one.
fn record_results(
    phase: &Phase,
    members: &[usize],
    raw: &[Vec<f64>],
    reduced: &mut [Vec<f64>],
    first: usize,
) {
    let reductions = phase.stage.reductions.iter().zip(&phase.scopes);
    for (r, ((op, _), scope)) in reductions.enumerate() {
        let global = (*scope == Scope::Global)
            .then(|| op.finish(combine_all(*op, members.iter().map(|&i| raw[i][r]))));
        for &i in members {
            reduced[i][first + r] = global.unwrap_or_else(|| op.finish(raw[i][r]));
        }
    }
}

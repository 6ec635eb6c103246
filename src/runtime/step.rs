//! `step`: the update of every parameter that has a gradient, with hooks and the closure
//! form; and the mode swaps of `train()`/`eval()`. The engine runs them (one parallel region
//! per dtype covers the segments of every group); here the optimizer says which parameters
//! run, where their buffers are, and stores what the engine computed.

use super::{HookId, Optimizer, StateInfo, Streams};
use crate::engine::{Buffers, Engine, Member, Outcome, Sets, StreamSets, Work};
use crate::ir::SlotKind;
use crate::{round, DType, Error, Layout, Result};

/// A flat store's streams as the engine's buffers, with the generator key of its
/// stochastic rounding this step (its generator index starts at 0).
fn buffers<'s, 'a, T>(
    (param, grad, state): &'s mut Streams<'a>,
    key: [u32; 2],
) -> Buffers<'s, 'a, T> {
    Buffers {
        param: param.reborrow(),
        grad: *grad,
        state,
        noise: (key, 0),
        compute: std::marker::PhantomData,
    }
}

/// One entry's stores (their streams and generator keys) as the engine's sets of `layout`.
fn sets<'s, 'a, T>(layout: &Layout, list: &'s mut [(Streams<'a>, [u32; 2])]) -> Sets<'s, 'a, T> {
    Sets {
        layout: layout.clone(),
        list: list.iter_mut().map(|(s, key)| buffers(s, *key)).collect(),
    }
}

/// What distinguishes the generator keys of a group's stores (so that equal indices in two
/// stores draw different bits).
fn store_salt(group: usize, store: usize) -> u64 {
    ((group as u64) << 32 | store as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A program to run over the parameters: the optimizer's own step, or a mode swap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Updates the parameters with a gradient, and counts.
    Step,
    /// Runs the train (`true`) or eval graph over every parameter that has state; does not
    /// count.
    Swap(bool),
}

impl Pass {
    /// What tells apart the generator keys of the passes between two steps: a mode swap
    /// rounds with bits of its own, not those the next step draws.
    fn salt(self) -> u64 {
        match self {
            Pass::Step => 0,
            Pass::Swap(true) => 0x7261_696E << 32,
            Pass::Swap(false) => 0x6576_616C << 32,
        }
    }
}

impl Optimizer {
    /// Updates every parameter that has a gradient; parameters without one are skipped, their
    /// state and step count untouched. Returns whether the step was applied: `false` when
    /// the program's skip condition held (see [`crate::Graph::skip`]; e.g. an overflowed
    /// gradient under [`crate::optim::amp`]), and then no parameter, state or step count
    /// changed in any group. The hooks run either way.
    ///
    /// Everything is checked before the first buffer is written; on error nothing changed.
    /// Fails with [`Error::EvalMode`] between [`Optimizer::eval`] and [`Optimizer::train`].
    pub fn step(&mut self) -> Result<bool> {
        if !self.training {
            return Err(Error::EvalMode);
        }
        self.run_hooks(true);
        let applied = self.run_pass(Pass::Step)?;
        self.run_hooks(false);
        Ok(applied)
    }

    /// Runs `pass` over every group and dtype (see [`crate::engine`]). Returns whether it
    /// ran (`false`: the skip condition held, nothing changed).
    fn run_pass(&mut self, pass: Pass) -> Result<bool> {
        let (engine, hyper_map) = match (pass, &self.modes) {
            (Pass::Step, _) => (&self.engine, None),
            (Pass::Swap(train), Some(modes)) => {
                let (engine, hypers) = if train { &modes.train } else { &modes.eval };
                (engine, Some(hypers.as_slice()))
            }
            (Pass::Swap(_), None) => return Ok(true),
        };
        let (layouts, places) = self.entries();
        let (members, scalars) = self.members(engine, pass, &places);
        // State memory for every store that runs, before anything changes.
        let (slots, huge) = (self.engine.program.element_slots().count(), self.huge_pages);
        for m in &members {
            let info = &self.params[m.id];
            self.groups[info.group].stores[info.store].ensure_slots(slots, huge)?;
        }
        // A mode graph's hyperparameters are some of the optimizer's.
        let mapped: Vec<Vec<f64>> = match hyper_map {
            Some(map) => (self.groups.iter())
                .map(|g| map.iter().map(|&h| g.hypers[h]).collect())
                .collect(),
            None => Vec::new(),
        };
        let n = self.groups.len();
        let mut work = Work {
            members,
            scalars,
            slots: engine.program.slots.len(),
            hypers: Vec::with_capacity(n),
            groups: (pass == Pass::Step && engine.reads_groups()).then(|| Vec::with_capacity(n)),
            optimizer: &self.shared,
        };
        // Every store's streams, by entry (in the order `entries` numbered the sets).
        let mut streams: Vec<Vec<_>> = (0..layouts.len()).map(|_| Vec::new()).collect();
        let applied = self.applied;
        for (g, group) in self.groups.iter_mut().enumerate() {
            let super::Group {
                hypers,
                scalars,
                stores,
                ..
            } = group;
            work.hypers.push(mapped.get(g).unwrap_or(hypers));
            if let Some(groups) = &mut work.groups {
                groups.push(scalars);
            }
            for (k, store) in stores.iter_mut().enumerate() {
                let (entry, _) = places[g][k];
                let key = match store.layout.stochastic().is_empty() {
                    true => [0, 0],
                    false => round::step_key(store.seed ^ store_salt(g, k) ^ pass.salt(), applied),
                };
                streams[entry].push((store.streams(), key));
            }
        }
        let mut sets32: Vec<(usize, Sets<'_, '_, f32>)> = Vec::new();
        let mut sets64: Vec<(usize, Sets<'_, '_, f64>)> = Vec::new();
        for (entry, (layout, list)) in layouts.iter().zip(&mut streams).enumerate() {
            match layout.compute() {
                DType::F64 => sets64.push((entry, sets(layout, list))),
                _ => sets32.push((entry, sets(layout, list))),
            }
        }
        let mut ordered: Vec<(usize, &mut dyn StreamSets)> = Vec::with_capacity(layouts.len());
        ordered.extend(
            sets32
                .iter_mut()
                .map(|(e, s)| (*e, s as &mut dyn StreamSets)),
        );
        ordered.extend(
            sets64
                .iter_mut()
                .map(|(e, s)| (*e, s as &mut dyn StreamSets)),
        );
        ordered.sort_by_key(|(e, _)| *e);
        let mut sets: Vec<&mut dyn StreamSets> = ordered.into_iter().map(|(_, s)| s).collect();
        let (state, inits, program) = (&mut self.state, &self.slot_inits, &engine.program);
        let counts = u64::from(pass == Pass::Step);
        // A parameter's step and scalar state; group state lives in the group.
        let mut commit = |i: usize, updates: &[(usize, f64)]| {
            let state = state[i].get_or_insert_with(|| StateInfo {
                step: 0,
                scalars: inits.clone(),
            });
            state.step += counts;
            let own = |(slot, _): &&(usize, f64)| !program.slots[*slot].kind.is_shared();
            for &(slot, value) in updates.iter().filter(own) {
                state.scalars[slot] = value;
            }
        };
        let outcome = engine.run(&self.settings, &work, &mut sets, &mut commit)?;
        drop((work, sets));
        drop((sets32, sets64));
        match outcome {
            Outcome::Skipped => Ok(false),
            Outcome::Applied(shared) => {
                self.applied += u64::from(pass == Pass::Step);
                for (group, updates) in self.groups.iter_mut().zip(shared.groups) {
                    for (slot, value) in updates {
                        group.scalars[slot] = value;
                    }
                }
                for (slot, value) in shared.optimizer {
                    self.shared[slot] = value;
                }
                Ok(true)
            }
        }
    }

    /// The entries of a run's stream sets: one per distinct layout of the groups' stores, in
    /// the order they first appear; and for each group and store, its entry and its set
    /// number within the entry (sets numbered in group, then store order).
    pub(super) fn entries(&self) -> (Vec<Layout>, Vec<Vec<(usize, usize)>>) {
        let mut layouts: Vec<Layout> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let places = self
            .groups
            .iter()
            .map(|g| {
                g.stores
                    .iter()
                    .map(|store| {
                        let entry = match layouts.iter().position(|l| *l == store.layout) {
                            Some(e) => e,
                            None => {
                                layouts.push(store.layout.clone());
                                counts.push(0);
                                layouts.len() - 1
                            }
                        };
                        counts[entry] += 1;
                        (entry, counts[entry] - 1)
                    })
                    .collect()
            })
            .collect();
        (layouts, places)
    }

    /// The members of `pass` (run by `engine`), in the order parameters were added (a step:
    /// those with a gradient; a swap: those with state), each with its parameter index as
    /// id, and their scalar inputs; `places` as [`Optimizer::entries`] gives them.
    pub(super) fn members(
        &self,
        engine: &Engine,
        pass: Pass,
        places: &[Vec<(usize, usize)>],
    ) -> (Vec<Member>, Vec<f64>) {
        let slots = &engine.program.slots;
        let n_slots = slots.len();
        // Only element slots (most optimizers): nothing for the prologue to read.
        let reads = slots.iter().any(|s| s.kind != SlotKind::Element);
        let mut members = Vec::with_capacity(self.params.len());
        let mut scalars = Vec::with_capacity(usize::from(reads) * self.params.len() * n_slots);
        for (i, info) in self.params.iter().enumerate() {
            let selected = match pass {
                Pass::Step => self.has_grad[i],
                Pass::Swap(_) => self.state[i].is_some(),
            };
            if !selected {
                continue;
            }
            let (step, own) = match &self.state[i] {
                Some(s) => (s.step, s.scalars.as_slice()),
                None => (0, self.slot_inits.as_slice()),
            };
            let (entry, set) = places[info.group][info.store];
            members.push(Member {
                id: i,
                entry,
                set,
                offset: info.offset,
                len: info.len,
                group: info.group,
                step,
                fresh: self.state[i].is_none(),
            });
            if reads {
                scalars.extend((0..n_slots).map(|n| self.scalar_state(info.group, own, n)));
            }
        }
        (members, scalars)
    }

    /// Switches to evaluation mode, running the optimizer's eval graph (see
    /// [`Optimizer::with_modes`]) over every parameter with state. Does nothing if already in
    /// evaluation mode.
    pub fn eval(&mut self) -> Result<()> {
        self.switch_mode(false)
    }

    /// Switches back to training mode, running the train graph. Does nothing if already
    /// training.
    pub fn train(&mut self) -> Result<()> {
        self.switch_mode(true)
    }

    /// Whether the optimizer is in training mode (the default).
    pub fn is_training(&self) -> bool {
        self.training
    }

    fn switch_mode(&mut self, training: bool) -> Result<()> {
        if self.training == training {
            return Ok(());
        }
        self.run_pass(Pass::Swap(training))?;
        self.training = training;
        Ok(())
    }

    /// Calls `closure` (which recomputes the loss and the gradients, and may be called again
    /// by optimizers that need it), then steps; returns the loss.
    pub fn step_with_closure(
        &mut self,
        mut closure: impl FnMut(&mut Optimizer) -> Result<f64>,
    ) -> Result<f64> {
        let loss = closure(self)?;
        self.step()?;
        Ok(loss)
    }

    /// Runs the pre- or post-step hooks registered before this call, in order. Each is taken
    /// out of its list while it runs (it gets the optimizer) and put back after, unless it was
    /// removed meanwhile; a hook that panics is put back too, then the panic goes on to the
    /// caller, so one panic never loses another hook.
    fn run_hooks(&mut self, pre: bool) {
        fn list(opt: &mut Optimizer, pre: bool) -> &mut Vec<(HookId, Option<super::Hook>)> {
            match pre {
                true => &mut opt.pre_hooks,
                false => &mut opt.post_hooks,
            }
        }
        let ids: Vec<HookId> = list(self, pre).iter().map(|(id, _)| *id).collect();
        for id in ids {
            // Removed by an earlier hook of this pass: skipped.
            let Some(k) = list(self, pre).iter().position(|(h, _)| *h == id) else {
                continue;
            };
            let Some(mut hook) = list(self, pre)[k].1.take() else {
                continue; // running already (a hook that stepped the optimizer)
            };
            let call = hook
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(self)));
            // Back in its place, if it is still registered (it may have removed itself).
            if let Some(entry) = list(self, pre).iter_mut().find(|(h, _)| *h == id) {
                entry.1 = Some(hook);
            }
            if let Err(panic) = ran {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Plan;
    use crate::optim::{Adam, Lion, Sgd};
    use ndarray::Array1;

    /// An optimizer over ten neighbouring parameters where every other one skipped the second
    /// step, so that neighbours are one step apart (and none at its first); then the plan of
    /// the next step and its f32 segments.
    fn plan_one_step_apart(graph: &crate::Graph) -> (Plan, usize) {
        let mut opt = Optimizer::new(graph).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let handles: Vec<_> = (0..10)
            .map(|k| {
                let values = Array1::from_elem(20, 1.0f32);
                opt.add_param(g, &format!("p{k}"), &values).unwrap()
            })
            .collect();
        for h in &handles {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        opt.step().unwrap();
        opt.zero_grad();
        for h in handles.iter().step_by(2) {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        opt.step().unwrap();
        for h in &handles {
            opt.set_grad(h, &[0.5; 20]).unwrap();
        }
        let (layouts, places) = opt.entries();
        let (members, scalars) = opt.members(&opt.engine, Pass::Step, &places);
        assert_eq!(members.len(), 10);
        let work = Work {
            members,
            scalars,
            slots: opt.engine.program.slots.len(),
            hypers: vec![&opt.groups[g].hypers],
            groups: None,
            optimizer: &[],
        };
        let plan = opt.engine.plan(&work, &layouts, &[], Vec::new());
        let runs = plan.runs(&work, 0, &layouts[0]).len();
        (plan, runs)
    }

    #[test]
    fn parameters_at_different_steps_share_a_segment_when_their_scalars_agree() {
        let sgd = Sgd {
            momentum: 0.9,
            ..Sgd::default()
        };
        for graph in [sgd.graph().unwrap(), Lion::default().graph().unwrap()] {
            let (plan, runs) = plan_one_step_apart(&graph);
            assert_eq!(
                plan.members.iter().map(|m| m.0).max(),
                Some(1),
                "two (step, scalar state) keys"
            );
            assert_eq!(
                plan.blocks.len(),
                plan.n_scalars,
                "{}: one block",
                graph.name()
            );
            assert_eq!(runs, 1, "{}: one segment", graph.name());
        }
        // Adam's bias corrections differ from step to step: one segment per parameter.
        let (plan, runs) = plan_one_step_apart(&Adam::default().graph().unwrap());
        assert_eq!((plan.blocks.len() / plan.n_scalars, runs), (2, 10));
    }
}

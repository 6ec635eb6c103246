//! The compiled form of an optimizer: a scalar prologue (run on the host in f64, once per
//! parameter and step) and one fused stage over the elements — preceded, when the optimizer
//! reduces (a global gradient norm, a per-tensor trust ratio), by one [`Phase`] per level of
//! reductions: a pass over the elements that only reads and ends in reductions, whose results
//! the rest of the prologue reads.
//!
//! The stage reads each stream once and writes each written stream once per element. Streams
//! are numbered by the kernel contract: 0 = param, 1 = grad, then the element state slots in
//! slot order. The stage reads per-step scalars from a *scalar block* whose entries are the
//! prologue values listed in [`Prologue::kernel_scalars`], rounded to the compute type.

use crate::ir::{HyperDef, Literal, Op, ReduceOp, Scope, SlotDef, SlotKind};
use crate::DType;
use serde::{Deserialize, Serialize};

mod print;
mod verify;

pub use print::ProgramDisplay;
pub use verify::verify_program;

/// A compiled optimizer. Build one with [`crate::passes::compile`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// The optimizer's name.
    pub name: String,
    /// Hyperparameters, in definition order (the prologue refers to them by index).
    pub hypers: Vec<HyperDef>,
    /// State slots, in definition order.
    pub slots: Vec<SlotDef>,
    /// Scalar code, evaluated in f64 on the host.
    pub prologue: Prologue,
    /// The passes over the elements that come before [`Program::stage`], each ending in
    /// reductions; empty for an optimizer without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// The fused element loop that writes the new param and state (the last phase).
    pub stage: Stage,
}

/// A pass over the elements before the last: it reads streams, writes none, and ends in
/// reductions (see [`crate::ir::reduce`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The prologue instructions `insts[..prologue_end]` run before this phase (those after
    /// it read its reductions' results, or later ones').
    pub prologue_end: u32,
    /// The `$` values its stage reads, in scalar-block order.
    pub kernel_scalars: Vec<u32>,
    /// The scope of each of its stage's reductions, in their order.
    pub scopes: Vec<Scope>,
    /// Its element code; the reductions are [`Stage::reductions`].
    pub stage: Stage,
}

/// One prologue instruction; its result is the scalar `$N` with `N` its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarInst {
    /// A literal.
    Const(Literal),
    /// Hyperparameter number `n`.
    Hyper(u32),
    /// The parameter's step count (1-based, this update included).
    Step,
    /// The value of scalar state slot number `n` before this step.
    State(u32),
    /// `op` over earlier `$` values (first `op.arity()` entries).
    Apply(Op, [u32; 3]),
    /// The result of reduction number `n`: the phases' reductions numbered in phase order.
    Reduced(u32),
}

/// The scalar part of a program.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prologue {
    /// Instructions in order; each may use the results of earlier ones.
    pub insts: Vec<ScalarInst>,
    /// The `$` values the stage reads, in scalar-block order.
    pub kernel_scalars: Vec<u32>,
    /// New values of scalar state slots: `(slot index, $ value)`.
    pub state_updates: Vec<(u32, u32)>,
    /// The `$` value of the skip condition, if any: a step whose prologue gives it a value
    /// other than zero for any parameter changes nothing (see [`crate::Graph::skip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<u32>,
}

/// An operand of an element instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElemArg {
    /// Element `i` of stream `n`.
    Load(u32),
    /// Entry `n` of the scalar block.
    Scalar(u32),
    /// The result of body instruction `n`.
    Value(u32),
}

/// One element instruction; its result is `%N` with `N` its position in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ElemInst {
    /// The operation (never a scalar-only one).
    pub op: Op,
    /// Operands; only the first `op.arity()` are meaningful (see [`ElemInst::args`]).
    pub args: [ElemArg; 3],
}

impl ElemInst {
    /// `op` over `args` (`op.arity()` of them).
    ///
    /// # Panics
    ///
    /// If `args` does not hold exactly `op.arity()` operands (a bug in the caller: programs
    /// are built by the passes, and a deserialized one is checked by [`Stage::check`]).
    pub fn new(op: Op, args: &[ElemArg]) -> ElemInst {
        assert_eq!(args.len(), op.arity(), "operand count of {}", op.name());
        let mut all = [args[0]; 3];
        all[..args.len()].copy_from_slice(args);
        ElemInst { op, args: all }
    }

    /// The operands.
    pub fn args(&self) -> &[ElemArg] {
        &self.args[..self.op.arity()]
    }
}

/// The fused element loop of a program.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stage {
    /// Length of the scalar block.
    pub n_scalars: u32,
    /// Number of streams: param, grad and one per element slot.
    pub n_streams: u32,
    /// Instructions in order.
    pub body: Vec<ElemInst>,
    /// `(stream, value)`: the value written back to element `i` of the stream, after all
    /// loads of element `i`. Each stream at most once; never the grad.
    pub stores: Vec<(u32, ElemArg)>,
    /// Reductions of element values, each giving one partial per block of
    /// [`crate::ir::reduce::BLOCK`] elements of each segment (empty for the last phase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reductions: Vec<(ReduceOp, ElemArg)>,
}

impl Stage {
    /// The values the stage stores or reduces, stores first.
    pub fn results(&self) -> impl Iterator<Item = &ElemArg> + '_ {
        let stored = self.stores.iter().map(|(_, v)| v);
        stored.chain(self.reductions.iter().map(|(_, v)| v))
    }
}

/// The stream number of the parameter.
pub const PARAM_STREAM: u32 = 0;
/// The stream number of the gradient.
pub const GRAD_STREAM: u32 = 1;

impl Program {
    /// Indices (into [`Program::slots`]) of the element slots, in stream order from stream 2.
    pub fn element_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == SlotKind::Element)
            .map(|(i, _)| i)
    }

    /// The name of stream `n` (`param`, `grad`, a slot name, or `stream<n>` for a stream
    /// the program does not have).
    pub fn stream_name(&self, n: u32) -> String {
        match n {
            PARAM_STREAM => "param".to_string(),
            GRAD_STREAM => "grad".to_string(),
            _ => match self.element_slots().nth(n as usize - 2) {
                Some(slot) => self.slots[slot].name.clone(),
                None => format!("stream{n}"),
            },
        }
    }

    /// Index of the hyperparameter with this name.
    pub fn hyper_index(&self, name: &str) -> Option<usize> {
        self.hypers.iter().position(|h| h.name == name)
    }

    /// Evaluates the prologue in f64 into `values` (one per instruction).
    ///
    /// `hypers` are the hyperparameter values in definition order, `step` the 1-based count
    /// including this update, `scalar_state(n)` the current value of scalar slot `n`. For a
    /// program with phases, see [`Program::eval_prologue_until`].
    pub fn eval_prologue(
        &self,
        hypers: &[f64],
        step: u64,
        scalar_state: impl Fn(usize) -> f64,
        values: &mut Vec<f64>,
    ) {
        values.clear();
        let end = self.prologue.insts.len();
        self.eval_prologue_until(end, hypers, step, scalar_state, &[], values);
    }

    /// Continues the prologue in `values` (the results of its first `values.len()`
    /// instructions) up to instruction `end`: [`Phase::prologue_end`] before a phase, the
    /// whole prologue before the last stage. `reduced[n]` is reduction `n`'s result, read
    /// only after the phase that computes it.
    pub fn eval_prologue_until(
        &self,
        end: usize,
        hypers: &[f64],
        step: u64,
        scalar_state: impl Fn(usize) -> f64,
        reduced: &[f64],
        values: &mut Vec<f64>,
    ) {
        for inst in &self.prologue.insts[values.len()..end] {
            let v = match *inst {
                ScalarInst::Const(c) => c.value(),
                ScalarInst::Hyper(n) => hypers[n as usize],
                ScalarInst::Step => step as f64,
                ScalarInst::State(n) => scalar_state(n as usize),
                ScalarInst::Apply(op, args) => {
                    let arg = |k: usize| values[args[k.min(op.arity() - 1)] as usize];
                    crate::ir::eval_op(op, arg(0), arg(1), arg(2))
                }
                ScalarInst::Reduced(n) => reduced[n as usize],
            };
            values.push(v);
        }
    }

    /// The number of reductions over all phases, and each one's op and scope in order.
    pub fn reductions(&self) -> impl Iterator<Item = (ReduceOp, Scope)> + '_ {
        self.phases.iter().flat_map(|phase| {
            let ops = phase.stage.reductions.iter().map(|(op, _)| *op);
            ops.zip(phase.scopes.iter().copied())
        })
    }

    /// Appends what a prologue run gave (`values`, from [`Program::eval_prologue`]): the
    /// kernel scalars, rounded once to `T`, to `scalars`, and the new values of scalar state
    /// slots, `(slot, value)`, to `updates`.
    pub(crate) fn push_prologue_results<T: crate::Float>(
        &self,
        values: &[f64],
        scalars: &mut Vec<T>,
        updates: &mut Vec<(usize, f64)>,
    ) {
        let kernel = self.prologue.kernel_scalars.iter();
        scalars.extend(kernel.map(|&s| T::from_f64(values[s as usize])));
        let state = self.prologue.state_updates.iter();
        updates.extend(state.map(|&(slot, v)| (slot as usize, values[v as usize])));
    }

    /// Per prologue value: whether it can differ between the parameters of one group (it
    /// reads `step`, a parameter's own scalar state or a per-parameter reduction).
    pub fn per_parameter(&self) -> Vec<bool> {
        let scopes: Vec<Scope> = self.reductions().map(|(_, scope)| scope).collect();
        let mut varies: Vec<bool> = Vec::with_capacity(self.prologue.insts.len());
        for inst in &self.prologue.insts {
            let v = match *inst {
                ScalarInst::Const(_) | ScalarInst::Hyper(_) => false,
                ScalarInst::Step => true,
                ScalarInst::State(n) => !self.slots[n as usize].kind.is_shared(),
                ScalarInst::Apply(op, args) => {
                    args[..op.arity()].iter().any(|&a| varies[a as usize])
                }
                ScalarInst::Reduced(n) => scopes[n as usize] == Scope::Param,
            };
            varies.push(v);
        }
        varies
    }

    /// Whether a parameter's prologue results (`values`, the whole prologue) skip the step:
    /// its skip condition is not zero (NaN included, as `select` reads a condition).
    pub fn skips(&self, values: &[f64]) -> bool {
        self.prologue
            .skip
            .is_some_and(|s| values[s as usize] != 0.0)
    }

    /// Wraps the program for printing with element types of `dtype`.
    pub fn display(&self, dtype: DType) -> ProgramDisplay<'_> {
        ProgramDisplay {
            program: self,
            dtype,
        }
    }
}

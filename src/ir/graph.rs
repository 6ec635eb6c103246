//! The optimizer graph: a hash-consed arena of nodes over param, grad, state, hyperparameter,
//! step and constant symbols, with the new param and new state values as outputs.
//!
//! Nodes are only ever appended and their operands always precede them, so the arena order is
//! a topological order. Interning the same node twice returns the same id (CSE by
//! construction). Every node has a [`Rank`].

use super::{Op, ReduceOp, Scope};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Index of a node in its graph's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    /// Position in the arena.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An f64 literal, compared and hashed by its bits so that `-0.0` and `0.0` stay distinct.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Literal(u64);

impl Literal {
    /// The literal with this value.
    pub fn new(value: f64) -> Self {
        Literal(value.to_bits())
    }

    /// Its value.
    pub fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shortest round-trip form, exponent for very small or large magnitudes.
        write!(f, "{:?}", self.value())
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Whether a value is the same for every element of a step or varies per element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rank {
    /// Depends only on hyperparameters, step, scalar state and constants: computed once per
    /// step in f64 (the prologue).
    Scalar,
    /// Depends on a per-element stream (param, grad, element state).
    Element,
}

/// One node of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Node {
    /// A literal constant (scalar).
    Const(Literal),
    /// The parameter's current value (element).
    Param,
    /// The gradient (element).
    Grad,
    /// The 1-based count of updates this parameter has received, this one included (scalar).
    Step,
    /// Hyperparameter number `n` (scalar).
    Hyper(u32),
    /// The current value of state slot number `n` (element or scalar, by the slot's kind).
    State(u32),
    /// An operation; only the first `op.arity()` operands are meaningful (see [`Node::args`]).
    Apply(Op, [NodeId; 3]),
    /// A reduction of a per-element value over a parameter or over all of them: a per-step
    /// scalar, known only after a pass over the elements (see [`super::reduce`]).
    Reduce(ReduceOp, Scope, NodeId),
}

impl Node {
    /// `op` applied to `args`, which must have `op.arity()` entries.
    pub(crate) fn apply(op: Op, args: &[NodeId]) -> Node {
        assert_eq!(args.len(), op.arity(), "operand count of {}", op.name());
        let mut all = [args[0]; 3];
        all[..args.len()].copy_from_slice(args);
        Node::Apply(op, all)
    }

    /// The operands (empty for leaves).
    pub fn args(&self) -> &[NodeId] {
        match self {
            Node::Apply(op, args) => &args[..op.arity()],
            Node::Reduce(_, _, arg) => std::slice::from_ref(arg),
            _ => &[],
        }
    }

    /// The same node over other operands (as many as [`Node::args`] has); leaves unchanged.
    pub(crate) fn with_args(&self, args: &[NodeId]) -> Node {
        match *self {
            Node::Apply(op, _) => Node::apply(op, args),
            Node::Reduce(op, scope, _) => Node::Reduce(op, scope, args[0]),
            leaf => leaf,
        }
    }
}

/// A hyperparameter: a named runtime input with a default value. Equality compares the
/// default's bits, like [`Literal`] (so a NaN default equals itself and `-0.0 != 0.0`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HyperDef {
    /// Name (`lr`, `b1`, ...).
    pub name: String,
    /// Value used when the user sets none.
    pub default: f64,
}

/// The scope of a state slot: a buffer, one scalar per parameter, one per group, or one for
/// the whole optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotKind {
    /// One value per element, like Adam's `exp_avg`.
    Element,
    /// One f64 per parameter, carried from step to step and updated in the prologue.
    Scalar,
    /// One f64 per parameter group (schedule-free's `weight_sum`, kept in PyTorch's
    /// `param_groups`): in the [`crate::Optimizer`], every parameter of the group reads the
    /// same value, and it advances once per applied step, whether or not the group's
    /// parameters have gradients. A [`crate::Stepper`] has no groups: each `ParamState`
    /// keeps its own copy, which advances with that parameter's steps. Its new
    /// value may only read what is the same for the whole group: hyperparameters, group
    /// state, constants and global reductions (not `step`, a parameter's own state or a
    /// per-parameter reduction).
    Group,
    /// One f64 for the whole optimizer (a count of applied steps, a global estimate): every
    /// parameter of every group reads the same value, and it advances once per applied step.
    /// Its new value may read what [`SlotKind::Group`]'s may; when it reads something that
    /// differs between groups (a hyperparameter, group state), every group must still give
    /// it the same bits, else the step fails with [`crate::Error::GroupsDisagree`] and
    /// changes nothing. A [`crate::Stepper`] keeps a copy per `ParamState`, as for group
    /// state.
    Optimizer,
}

impl SlotKind {
    /// The words declaring a slot of this kind, in printed IR and in the text form.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            SlotKind::Element => "state",
            SlotKind::Scalar => "scalar state",
            SlotKind::Group => "group state",
            SlotKind::Optimizer => "optimizer state",
        }
    }

    /// Whether the slot holds a scalar (per parameter or per group), computed in the
    /// prologue.
    pub fn is_scalar(self) -> bool {
        self != SlotKind::Element
    }

    /// Whether one value serves many parameters (group and optimizer state): then its new
    /// value may not read anything that differs between the parameters of a group.
    pub fn is_shared(self) -> bool {
        matches!(self, SlotKind::Group | SlotKind::Optimizer)
    }
}

/// A named piece of per-parameter optimizer state. Equality compares the initial value's
/// bits, like [`Literal`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotDef {
    /// Name (`exp_avg`, `momentum_buffer`, ...).
    pub name: String,
    /// Value every element (or the scalar) starts with.
    pub init: f64,
    /// Buffer or scalar.
    pub kind: SlotKind,
}

impl PartialEq for HyperDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.default.to_bits() == other.default.to_bits()
    }
}

impl PartialEq for SlotDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.init.to_bits() == other.init.to_bits()
            && self.kind == other.kind
    }
}

/// Opt-in numerical rewrites of a graph. All are off for a graph built with
/// [`crate::Builder`] unless it sets them: the program then performs exactly the operations
/// written. The built-in optimizers set `reciprocal` (see each one's doc); clear it with
/// [`Graph::with_flags`] to get their formulas division for division. With any of them the JIT and the interpreters still agree
/// bit for bit (the rewrite happens in the program they all run); only the distance to the
/// written formula changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GraphFlags {
    /// `x / s` with `x` per element and `s` a per-step scalar becomes `x · (1/s)`, the
    /// reciprocal computed once per step in f64 and rounded once: one division fewer per
    /// element, at most about one more rounding (pass `recip`). The built-ins set it; their
    /// results stay well within the PyTorch conformance tolerances.
    pub reciprocal: bool,
    /// Per-element `a·b ± c` becomes a fused multiply-add (pass `contract`): fewer
    /// instructions and one rounding instead of two, so results move by about an ulp.
    pub fast_math: bool,
}

/// Fails with [`Error::InvalidName`] unless `name` is an identifier that is not a keyword of
/// the text form (so every graph can be written as text, and state dict keys stay parsable).
pub(crate) fn check_name(name: &str) -> Result<()> {
    if super::is_identifier(name) && !super::KEYWORDS.contains(&name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
        })
    }
}

/// An optimizer as a graph. Build one with [`crate::Builder`] (the only way outside the
/// crate, so every `Graph` a user holds is well formed).
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    name: String,
    hypers: Vec<HyperDef>,
    slots: Vec<SlotDef>,
    /// The names of `hypers` and `slots`, so a new name is checked in constant time.
    names: HashSet<String>,
    nodes: Vec<Node>,
    ranks: Vec<Rank>,
    index: HashMap<Node, NodeId>,
    /// New param first, then one per slot; empty until set.
    outputs: Vec<NodeId>,
    /// The scalar condition under which a step changes nothing (see [`Graph::skip`]).
    skip: Option<NodeId>,
    flags: GraphFlags,
}

impl Graph {
    /// An empty graph with this signature and no outputs yet.
    pub(crate) fn new(name: &str, hypers: Vec<HyperDef>, slots: Vec<SlotDef>) -> Result<Graph> {
        let mut graph = Graph {
            name: name.to_string(),
            hypers: Vec::new(),
            slots: Vec::new(),
            names: HashSet::new(),
            nodes: Vec::new(),
            ranks: Vec::new(),
            index: HashMap::new(),
            outputs: Vec::new(),
            skip: None,
            flags: GraphFlags::default(),
        };
        for h in hypers {
            graph.add_hyper(&h.name, h.default)?;
        }
        for s in slots {
            graph.add_slot(&s.name, s.init, s.kind)?;
        }
        Ok(graph)
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if matches!(name, "param" | "grad" | "step") {
            return Err(Error::ReservedName {
                name: name.to_string(),
            });
        }
        if self.names.contains(name) {
            return Err(Error::DuplicateName {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The condition under which a step is skipped, if the optimizer has one: a scalar that,
    /// when it is not zero for any parameter of a step, makes the whole step change nothing
    /// (no parameter, no state, no step count, in any group). Mixed-precision training skips
    /// the steps whose gradients overflowed this way (see [`crate::optim::amp`]).
    pub fn skip(&self) -> Option<NodeId> {
        self.skip
    }

    /// Every root of the graph: its outputs, then its skip condition.
    pub fn roots(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.outputs.iter().copied().chain(self.skip)
    }

    /// Sets the skip condition (see [`Graph::skip`]).
    ///
    /// Fails with [`Error::ScalarRequired`] for a per-element value: a step is skipped as a
    /// whole.
    pub(crate) fn set_skip(&mut self, condition: Option<NodeId>) -> Result<()> {
        if condition.is_some_and(|c| self.rank(c) == Rank::Element) {
            return Err(Error::ScalarRequired {
                what: "the condition to skip a step".to_string(),
            });
        }
        self.skip = condition;
        Ok(())
    }

    /// Declares a hyperparameter and returns its node.
    pub(crate) fn add_hyper(&mut self, name: &str, default: f64) -> Result<NodeId> {
        self.check_new_name(name)?;
        self.names.insert(name.to_string());
        self.hypers.push(HyperDef {
            name: name.to_string(),
            default,
        });
        self.intern(Node::Hyper(self.hypers.len() as u32 - 1))
    }

    /// Declares a state slot and returns the node of its current value.
    pub(crate) fn add_slot(&mut self, name: &str, init: f64, kind: SlotKind) -> Result<NodeId> {
        self.check_new_name(name)?;
        self.names.insert(name.to_string());
        self.slots.push(SlotDef {
            name: name.to_string(),
            init,
            kind,
        });
        self.intern(Node::State(self.slots.len() as u32 - 1))
    }

    /// An empty graph with the same name, hyperparameters and slots as `self`.
    pub(crate) fn empty_like(&self) -> Graph {
        Graph {
            name: self.name.clone(),
            hypers: self.hypers.clone(),
            slots: self.slots.clone(),
            names: self.names.clone(),
            nodes: Vec::new(),
            ranks: Vec::new(),
            index: HashMap::new(),
            outputs: Vec::new(),
            skip: None,
            flags: self.flags,
        }
    }

    /// The opt-in rewrites the pipeline applies to this graph.
    pub fn flags(&self) -> GraphFlags {
        self.flags
    }

    /// The graph with these rewrites (see [`GraphFlags`]), e.g. to run a built-in with
    /// `fast_math`.
    pub fn with_flags(mut self, flags: GraphFlags) -> Graph {
        self.set_flags(flags);
        self
    }

    pub(crate) fn set_flags(&mut self, flags: GraphFlags) {
        self.flags = flags;
    }

    /// The optimizer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hyperparameters, in definition order.
    pub fn hypers(&self) -> &[HyperDef] {
        &self.hypers
    }

    /// State slots, in definition order.
    pub fn slots(&self) -> &[SlotDef] {
        &self.slots
    }

    /// All nodes, in topological (arena) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Node {
        self.nodes[id.index()]
    }

    /// The rank of this node.
    pub fn rank(&self, id: NodeId) -> Rank {
        self.ranks[id.index()]
    }

    /// The new param followed by the new value of each slot, or empty before they are set.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Index of the hyperparameter with this name.
    pub fn hyper_index(&self, name: &str) -> Option<usize> {
        self.hypers.iter().position(|h| h.name == name)
    }

    /// Index of the state slot with this name.
    pub fn slot_index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Adds `node` (or finds it) and returns its id.
    ///
    /// Fails with [`Error::ScalarRequired`] when a scalar-only op gets a per-element operand;
    /// panics on operands or symbol indices that do not exist (a bug in the caller).
    pub(crate) fn intern(&mut self, node: Node) -> Result<NodeId> {
        if let Some(&id) = self.index.get(&node) {
            return Ok(id);
        }
        let rank = self.rank_of(&node)?;
        let id = NodeId(u32::try_from(self.nodes.len()).expect("graph has fewer than 2^32 nodes"));
        self.nodes.push(node);
        self.ranks.push(rank);
        self.index.insert(node, id);
        Ok(id)
    }

    /// Interns a literal.
    pub(crate) fn constant(&mut self, value: f64) -> NodeId {
        self.intern(Node::Const(Literal::new(value)))
            .expect("a literal is always a valid node")
    }

    fn rank_of(&self, node: &Node) -> Result<Rank> {
        Ok(match *node {
            Node::Const(_) | Node::Step => Rank::Scalar,
            Node::Param | Node::Grad => Rank::Element,
            Node::Hyper(n) => {
                assert!(
                    (n as usize) < self.hypers.len(),
                    "hyperparameter {n} exists"
                );
                Rank::Scalar
            }
            Node::State(n) => match self.slots[n as usize].kind {
                SlotKind::Element => Rank::Element,
                SlotKind::Scalar | SlotKind::Group | SlotKind::Optimizer => Rank::Scalar,
            },
            Node::Reduce(op, _, arg) => {
                assert!(arg.index() < self.nodes.len(), "operand {arg:?} exists");
                if self.ranks[arg.index()] != Rank::Element {
                    return Err(Error::ElementRequired {
                        what: format!("the operand of `{}`", op.name()),
                    });
                }
                Rank::Scalar
            }
            Node::Apply(op, _) => {
                let mut rank = Rank::Scalar;
                for arg in node.args() {
                    assert!(arg.index() < self.nodes.len(), "operand {arg:?} exists");
                    rank = rank.max(self.ranks[arg.index()]);
                }
                if op.scalar_only() && rank == Rank::Element {
                    return Err(Error::ScalarRequired {
                        what: format!("the operand of `{}`", op.name()),
                    });
                }
                rank
            }
        })
    }

    /// Per node: whether its value can differ between the parameters of one group (it reads
    /// an element, `step`, a parameter's scalar state or a per-parameter reduction).
    pub fn per_parameter(&self) -> Vec<bool> {
        let mut varies = Vec::with_capacity(self.nodes.len());
        self.extend_per_parameter(&mut varies);
        varies
    }

    /// [`Graph::per_parameter`] for the nodes added since `varies` was computed (nodes are
    /// only ever appended), so that a parser checking each assignment stays linear.
    pub(crate) fn extend_per_parameter(&self, varies: &mut Vec<bool>) {
        for node in &self.nodes[varies.len()..] {
            let own = match *node {
                Node::Param | Node::Grad | Node::Step => true,
                Node::State(n) => !self.slots[n as usize].kind.is_shared(),
                Node::Reduce(_, Scope::Param, _) => true,
                Node::Reduce(_, Scope::Global, _) => false,
                Node::Const(_) | Node::Hyper(_) | Node::Apply(..) => false,
            };
            let from_args = match node {
                Node::Reduce(..) => false,
                _ => node.args().iter().any(|a| varies[a.index()]),
            };
            varies.push(own || from_args);
        }
    }

    /// Sets the outputs: the new param, then the new value of each slot in slot order.
    ///
    /// Fails with [`Error::ScalarRequired`] when a scalar slot gets a per-element value, and
    /// [`Error::PerParameterValue`] when a group slot gets one that differs between the
    /// parameters of a group.
    pub(crate) fn set_outputs(&mut self, param: NodeId, slots: Vec<NodeId>) -> Result<()> {
        assert_eq!(slots.len(), self.slots.len(), "one output per slot");
        let mut varies = None;
        for (slot, &value) in self.slots.iter().zip(&slots) {
            if slot.kind.is_scalar() && self.rank(value) == Rank::Element {
                return Err(Error::ScalarRequired {
                    what: format!("the new value of {} `{}`", slot.kind.keyword(), slot.name),
                });
            }
            if slot.kind.is_shared() {
                let varies = varies.get_or_insert_with(|| self.per_parameter());
                if varies[value.index()] {
                    return Err(Error::PerParameterValue {
                        what: format!("the new value of {} `{}`", slot.kind.keyword(), slot.name),
                    });
                }
            }
        }
        self.outputs = std::iter::once(param).chain(slots).collect();
        Ok(())
    }
}

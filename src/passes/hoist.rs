//! `hoist`: lowers a graph to a [`Program`]. Scalar nodes become prologue instructions (run
//! once per step in f64); element nodes become the fused stage, reading the scalars it needs
//! from the scalar block.
//!
//! Reductions split the work into phases: a node's *phase* is the number of reductions on
//! its longest path from the leaves. Phase `p < P` (`P` the roots' last phase) is a pass
//! over the elements computing the reductions whose operands are of phase `p`; the last
//! stage writes the outputs. Each stage computes again what it needs (no value is carried
//! from one pass to the next in a hidden buffer). The prologue lists scalars by phase, so
//! that the ones a phase reads come before any result it produces. A graph without
//! reductions has one phase and lowers exactly as it always did.

use crate::ir::{Graph, Node, NodeId, Rank, SlotKind};
use crate::program::{
    ElemArg, ElemInst, Phase, Program, Prologue, ScalarInst, Stage, GRAD_STREAM, PARAM_STREAM,
};
use crate::Result;
use std::collections::HashMap;

/// Runs the pass.
pub fn run(graph: &Graph) -> Result<Program> {
    // Stream of each element slot: 2, 3, ... in slot order.
    let mut slot_stream = vec![None; graph.slots().len()];
    let mut next = 2u32;
    for (i, slot) in graph.slots().iter().enumerate() {
        if slot.kind == SlotKind::Element {
            slot_stream[i] = Some(next);
            next += 1;
        }
    }
    let n = graph.nodes().len();

    // Phases; the last one is that of the latest output.
    let mut phase = vec![0u32; n];
    for (i, node) in graph.nodes().iter().enumerate() {
        let operands = node.args().iter().map(|a| phase[a.index()]).max();
        phase[i] = operands.unwrap_or(0) + u32::from(matches!(node, Node::Reduce(..)));
    }
    let last = graph.roots().map(|o| phase[o.index()]).max().unwrap_or(0);
    // Reductions, numbered by (phase, position).
    let mut reductions: Vec<usize> = (0..n)
        .filter(|&i| matches!(graph.nodes()[i], Node::Reduce(..)))
        .collect();
    reductions.sort_by_key(|&i| phase[i]);
    let mut reduction_index = vec![u32::MAX; n];
    for (r, &i) in reductions.iter().enumerate() {
        reduction_index[i] = r as u32;
    }

    // The prologue: scalar nodes by phase, in node order within one.
    let mut prologue = Prologue::default();
    let mut scalar = vec![u32::MAX; n];
    let mut prologue_end = Vec::new();
    for p in 0..=last {
        for (i, node) in graph.nodes().iter().enumerate() {
            if graph.rank(NodeId(i as u32)) != Rank::Scalar || phase[i] != p {
                continue;
            }
            let inst = match *node {
                Node::Const(c) => ScalarInst::Const(c),
                Node::Step => ScalarInst::Step,
                Node::Hyper(n) => ScalarInst::Hyper(n),
                Node::State(n) => ScalarInst::State(n),
                Node::Apply(op, args) => ScalarInst::Apply(op, args.map(|a| scalar[a.index()])),
                Node::Reduce(..) => ScalarInst::Reduced(reduction_index[i]),
                Node::Param | Node::Grad => unreachable!("param and grad are per-element"),
            };
            scalar[i] = prologue.insts.len() as u32;
            prologue.insts.push(inst);
        }
        prologue_end.push(prologue.insts.len() as u32);
    }

    let lower = StageLowering {
        graph,
        slot_stream: &slot_stream,
        scalar: &scalar,
        n_streams: next,
    };
    // The phases before the last: their reductions, from the operands of phase `p`.
    let mut phases = Vec::new();
    for p in 0..last {
        let here: Vec<usize> = reductions
            .iter()
            .copied()
            .filter(|&i| phase[i] == p + 1)
            .collect();
        let roots: Vec<NodeId> = here.iter().map(|&i| graph.nodes()[i].args()[0]).collect();
        let (mut stage, kernel_scalars, values) = lower.stage(&roots);
        let mut scopes = Vec::new();
        for (&i, value) in here.iter().zip(values) {
            let Node::Reduce(op, scope, _) = graph.nodes()[i] else {
                unreachable!("reductions are reduce nodes")
            };
            stage.reductions.push((op, value));
            scopes.push(scope);
        }
        phases.push(Phase {
            prologue_end: prologue_end[p as usize],
            kernel_scalars,
            scopes,
            stage,
        });
    }

    // The last stage: the element outputs.
    let (param, slots) = graph.outputs().split_first().expect("outputs are set");
    let element_outputs: Vec<(u32, NodeId)> = std::iter::once((PARAM_STREAM, *param))
        .chain(
            slots
                .iter()
                .enumerate()
                .filter_map(|(s, out)| slot_stream[s].map(|stream| (stream, *out))),
        )
        .collect();
    let roots: Vec<NodeId> = element_outputs.iter().map(|&(_, o)| o).collect();
    let (mut stage, kernel_scalars, values) = lower.stage(&roots);
    for (&(stream, _), value) in element_outputs.iter().zip(values) {
        if value != ElemArg::Load(stream) {
            stage.stores.push((stream, value));
        }
    }
    prologue.kernel_scalars = kernel_scalars;
    for (s, out) in slots.iter().enumerate() {
        if slot_stream[s].is_none() {
            let value = scalar[out.index()];
            if prologue.insts[value as usize] != ScalarInst::State(s as u32) {
                prologue.state_updates.push((s as u32, value));
            }
        }
    }

    prologue.skip = graph.skip().map(|s| scalar[s.index()]);

    Ok(Program {
        name: graph.name().to_string(),
        hypers: graph.hypers().to_vec(),
        slots: graph.slots().to_vec(),
        prologue,
        phases,
        stage,
    })
}

/// Lowers the element code that some values need into one stage.
struct StageLowering<'a> {
    graph: &'a Graph,
    slot_stream: &'a [Option<u32>],
    /// Per scalar node: its `$` index.
    scalar: &'a [u32],
    n_streams: u32,
}

impl StageLowering<'_> {
    /// The stage computing `roots` (with no stores or reductions yet), its kernel scalars
    /// (`$` values in scalar-block order) and each root as an operand.
    fn stage(&self, roots: &[NodeId]) -> (Stage, Vec<u32>, Vec<ElemArg>) {
        let graph = self.graph;
        let n = graph.nodes().len();
        let is_element = |i: usize| graph.rank(NodeId(i as u32)) == Rank::Element;
        // The element nodes the roots need, not crossing reductions (scalars).
        let mut needed = vec![false; n];
        for root in roots {
            needed[root.index()] = is_element(root.index());
        }
        for i in (0..n).rev() {
            if needed[i] {
                for arg in graph.nodes()[i].args() {
                    if is_element(arg.index()) {
                        needed[arg.index()] = true;
                    }
                }
            }
        }
        let mut s = Scalars::default();
        let mut element = vec![ElemArg::Value(u32::MAX); n];
        let mut body = Vec::new();
        for (i, node) in graph.nodes().iter().enumerate() {
            if !needed[i] {
                continue;
            }
            element[i] = match *node {
                Node::Param => ElemArg::Load(PARAM_STREAM),
                Node::Grad => ElemArg::Load(GRAD_STREAM),
                Node::State(n) => {
                    ElemArg::Load(self.slot_stream[n as usize].expect("element slot"))
                }
                Node::Apply(op, _) => {
                    let args: Vec<ElemArg> = node
                        .args()
                        .iter()
                        .map(|&a| self.operand(a, &element, &mut s))
                        .collect();
                    body.push(ElemInst::new(op, &args));
                    ElemArg::Value(body.len() as u32 - 1)
                }
                Node::Const(_) | Node::Step | Node::Hyper(_) | Node::Reduce(..) => {
                    unreachable!("scalars")
                }
            };
        }
        let values = roots
            .iter()
            .map(|&r| self.operand(r, &element, &mut s))
            .collect();
        let stage = Stage {
            n_scalars: s.list.len() as u32,
            n_streams: self.n_streams,
            body,
            stores: Vec::new(),
            reductions: Vec::new(),
        };
        (stage, s.list, values)
    }

    /// Node `id` as an operand: an element value, or a scalar entering the block on first
    /// use.
    fn operand(&self, id: NodeId, element: &[ElemArg], s: &mut Scalars) -> ElemArg {
        match self.graph.rank(id) {
            Rank::Element => element[id.index()],
            Rank::Scalar => {
                let v = self.scalar[id.index()];
                let list = &mut s.list;
                let k = *s.block.entry(v).or_insert_with(|| {
                    list.push(v);
                    list.len() as u32 - 1
                });
                ElemArg::Scalar(k)
            }
        }
    }
}

/// A stage's scalar block: the `$` values it reads, in order of first use.
#[derive(Default)]
struct Scalars {
    list: Vec<u32>,
    block: HashMap<u32, u32>,
}

//! `hoist`: lowers a graph to a [`Program`]. Scalar nodes become prologue instructions (run
//! once per step in f64); element nodes become the fused stage, reading the scalars it needs
//! from the scalar block.

use crate::ir::{Graph, Node, NodeId, Rank, SlotKind};
use crate::program::{
    ElemArg, ElemInst, Program, Prologue, ScalarInst, Stage, GRAD_STREAM, PARAM_STREAM,
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

    let mut l = Lowering {
        prologue: Prologue::default(),
        block: HashMap::new(),
        scalar: vec![u32::MAX; graph.nodes().len()],
        element: vec![ElemArg::Value(u32::MAX); graph.nodes().len()],
    };
    let mut body = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        match graph.rank(NodeId(i as u32)) {
            Rank::Scalar => {
                let inst = match *node {
                    Node::Const(c) => ScalarInst::Const(c),
                    Node::Step => ScalarInst::Step,
                    Node::Hyper(n) => ScalarInst::Hyper(n),
                    Node::State(n) => ScalarInst::State(n),
                    Node::Apply(op, args) => {
                        ScalarInst::Apply(op, args.map(|a| l.scalar[a.index()]))
                    }
                    Node::Param | Node::Grad => unreachable!("param and grad are per-element"),
                };
                l.scalar[i] = l.prologue.insts.len() as u32;
                l.prologue.insts.push(inst);
            }
            Rank::Element => {
                l.element[i] = match *node {
                    Node::Param => ElemArg::Load(PARAM_STREAM),
                    Node::Grad => ElemArg::Load(GRAD_STREAM),
                    Node::State(n) => ElemArg::Load(slot_stream[n as usize].expect("element slot")),
                    Node::Apply(op, _) => {
                        let args: Vec<ElemArg> =
                            node.args().iter().map(|&a| l.operand(graph, a)).collect();
                        body.push(ElemInst::new(op, &args));
                        ElemArg::Value(body.len() as u32 - 1)
                    }
                    Node::Const(_) | Node::Step | Node::Hyper(_) => unreachable!("scalar leaves"),
                };
            }
        }
    }

    let mut stores = Vec::new();
    let (param, slots) = graph.outputs().split_first().expect("outputs are set");
    let value = l.operand(graph, *param);
    if value != ElemArg::Load(PARAM_STREAM) {
        stores.push((PARAM_STREAM, value));
    }
    for (n, out) in slots.iter().enumerate() {
        match slot_stream[n] {
            Some(stream) => {
                let value = l.operand(graph, *out);
                if value != ElemArg::Load(stream) {
                    stores.push((stream, value));
                }
            }
            None => {
                let value = l.scalar[out.index()];
                if l.prologue.insts[value as usize] != ScalarInst::State(n as u32) {
                    l.prologue.state_updates.push((n as u32, value));
                }
            }
        }
    }
    let prologue = l.prologue;

    Ok(Program {
        name: graph.name().to_string(),
        hypers: graph.hypers().to_vec(),
        slots: graph.slots().to_vec(),
        stage: Stage {
            n_scalars: prologue.kernel_scalars.len() as u32,
            n_streams: next,
            body,
            stores,
        },
        prologue,
    })
}

/// The lowering's running state: where each node went.
struct Lowering {
    prologue: Prologue,
    /// `$` value -> scalar block entry.
    block: HashMap<u32, u32>,
    /// Per node: its `$` index (scalar nodes).
    scalar: Vec<u32>,
    /// Per node: its operand form (element nodes).
    element: Vec<ElemArg>,
}

impl Lowering {
    /// Node `id` as an operand of an element instruction; scalars enter the scalar block on
    /// first use.
    fn operand(&mut self, graph: &Graph, id: NodeId) -> ElemArg {
        match graph.rank(id) {
            Rank::Element => self.element[id.index()],
            Rank::Scalar => {
                let s = self.scalar[id.index()];
                let list = &mut self.prologue.kernel_scalars;
                let k = *self.block.entry(s).or_insert_with(|| {
                    list.push(s);
                    list.len() as u32 - 1
                });
                ElemArg::Scalar(k)
            }
        }
    }
}

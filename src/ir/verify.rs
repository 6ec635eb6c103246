//! The graph verifier: checks the invariants every pass must keep. A failure is always an
//! optjit bug, reported as [`Error::Verify`] naming the pass that broke it.

use super::{Graph, Node, Rank, SlotKind};
use crate::{Error, Result};

/// Checks that operands precede their users, ranks are consistent, scalar-only ops have
/// scalar operands, symbols exist, and there is one output per slot plus the param.
pub fn verify_graph(graph: &Graph, pass: &'static str) -> Result<()> {
    let fail = |message: String| Err(Error::Verify { pass, message });
    for (i, node) in graph.nodes().iter().enumerate() {
        let mut rank = Rank::Scalar;
        for arg in node.args() {
            if arg.index() >= i {
                return fail(format!(
                    "node {i} uses node {} which does not precede it",
                    arg.index()
                ));
            }
            rank = rank.max(graph.rank(*arg));
        }
        let expected = match *node {
            Node::Const(_) | Node::Step => Rank::Scalar,
            Node::Param | Node::Grad => Rank::Element,
            Node::Hyper(n) if (n as usize) < graph.hypers().len() => Rank::Scalar,
            Node::State(n) if (n as usize) < graph.slots().len() => {
                match graph.slots()[n as usize].kind {
                    SlotKind::Element => Rank::Element,
                    SlotKind::Scalar | SlotKind::Group | SlotKind::Optimizer => Rank::Scalar,
                }
            }
            Node::Hyper(_) | Node::State(_) => {
                return fail(format!("node {i} names a missing symbol"))
            }
            Node::Reduce(op, _, _) => {
                if rank != Rank::Element {
                    return fail(format!("node {i}: {} of a per-step scalar", op.name()));
                }
                Rank::Scalar
            }
            Node::Apply(op, _) => {
                if op.scalar_only() && rank == Rank::Element {
                    return fail(format!("node {i}: {} of a per-element value", op.name()));
                }
                rank
            }
        };
        if graph.rank(super::NodeId(i as u32)) != expected {
            return fail(format!("node {i} has the wrong rank"));
        }
    }
    let outputs = graph.outputs();
    if outputs.len() != graph.slots().len() + 1 {
        return fail(format!(
            "{} outputs for {} slots",
            outputs.len(),
            graph.slots().len()
        ));
    }
    if graph.roots().any(|o| o.index() >= graph.nodes().len()) {
        return fail("an output names a missing node".to_string());
    }
    if graph.skip().is_some_and(|s| graph.rank(s) == Rank::Element) {
        return fail("the skip condition is per element".to_string());
    }
    for (slot, out) in graph.slots().iter().zip(&outputs[1..]) {
        if slot.kind.is_scalar() && graph.rank(*out) == Rank::Element {
            return fail(format!(
                "scalar slot {} gets a per-element value",
                slot.name
            ));
        }
    }
    Ok(())
}

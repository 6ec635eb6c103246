//! `contract`: with [`GraphFlags::fast_math`](crate::ir::GraphFlags), per-element
//! multiply-adds become fused multiply-adds (one rounding instead of two):
//!
//! ```text
//! a*b + c  ->  fma(a, b, c)        c + a*b  ->  fma(a, b, c)
//! a*b - c  ->  fma(a, b, -c)       c - a*b  ->  fma(-a, b, c)
//! ```
//!
//! only where the product has no other use (otherwise it is computed anyway). Scalars are left
//! alone: the prologue stays exact f64. Off unless the graph asks for it.

use super::rebuild;
use crate::ir::{Graph, Node, NodeId, Op, Rank};
use crate::Result;

/// Runs the pass (the identity when the graph's `fast_math` flag is off).
pub fn run(graph: &Graph) -> Result<Graph> {
    if !graph.flags().fast_math {
        return Ok(graph.clone());
    }
    let mut uses = vec![0usize; graph.nodes().len()];
    for node in graph.nodes() {
        for a in node.args() {
            uses[a.index()] += 1;
        }
    }
    for root in graph.roots() {
        uses[root.index()] += 1;
    }
    // The operands of `id` if it is a per-element product used only once.
    let product = |id: NodeId| match graph.node(id) {
        Node::Apply(Op::Mul, [a, b, _])
            if uses[id.index()] == 1 && graph.rank(id) == Rank::Element =>
        {
            Some((a, b))
        }
        _ => None,
    };
    rebuild(graph, |out, id, map| {
        let (op, l, r) = match graph.node(id) {
            Node::Apply(op @ (Op::Add | Op::Sub), [l, r, _]) => (op, l, r),
            _ => return Ok(None),
        };
        let m = |n: NodeId| map[n.index()];
        let (a, b, c) = match (op, product(l), product(r)) {
            // a*b + c, a*b - c -> fma(a, b, ±c)
            (Op::Add, Some((a, b)), _) => (m(a), m(b), m(r)),
            (Op::Sub, Some((a, b)), _) => (m(a), m(b), out.intern(Node::apply(Op::Neg, &[m(r)]))?),
            // c + a*b -> fma(a, b, c); c - a*b -> fma(-a, b, c)
            (Op::Add, None, Some((a, b))) => (m(a), m(b), m(l)),
            (Op::Sub, None, Some((a, b))) => {
                (out.intern(Node::apply(Op::Neg, &[m(a)]))?, m(b), m(l))
            }
            _ => return Ok(None),
        };
        out.intern(Node::apply(Op::Fma, &[a, b, c])).map(Some)
    })
}

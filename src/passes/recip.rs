//! `recip`: with [`GraphFlags::reciprocal`](crate::ir::GraphFlags), a division of a
//! per-element value by a per-step scalar becomes a multiplication by the scalar's reciprocal,
//! which the prologue computes once per step in f64:
//!
//! ```text
//! x / s  ->  x * (1 / s)        x per element, s per step
//! ```
//!
//! Not exact: `1/s` is rounded to the element type before the product, so the result can move
//! by about one ulp. When `|s|` is below `1/MAX` of the element type (about 2.9e-39 for f32),
//! `1/s` rounds to ±inf and a finite `x/s` becomes ±inf. Off unless the graph asks for it.

use super::rebuild;
use crate::ir::{Graph, Node, Op, Rank};
use crate::Result;

/// Runs the pass (the identity when the graph's `reciprocal` flag is off).
pub fn run(graph: &Graph) -> Result<Graph> {
    if !graph.flags().reciprocal {
        return Ok(graph.clone());
    }
    rebuild(graph, |out, id, map| {
        let Node::Apply(Op::Div, [x, s, _]) = graph.node(id) else {
            return Ok(None);
        };
        if graph.rank(x) != Rank::Element || graph.rank(s) != Rank::Scalar {
            return Ok(None);
        }
        let one = out.constant(1.0);
        let inverse = out.intern(Node::apply(Op::Div, &[one, map[s.index()]]))?;
        out.intern(Node::apply(Op::Mul, &[map[x.index()], inverse]))
            .map(Some)
    })
}

//! `fold`: IEEE-safe constant folding and exact algebraic identities.
//!
//! An op whose operands are all literals is evaluated in f64 (the prologue's type, so the
//! result is exactly what the prologue would compute), unless the result is NaN. Identities
//! are applied only where they hold bit for bit for every operand, NaN, ±0 and ±inf
//! included: never `x * 0 -> 0`, `x + 0 -> x` or reassociation.

use crate::ir::eval_op;
use crate::ir::{Graph, Node, NodeId, Op};
use crate::Result;

/// `op` with a literal at operand `literal_at` equal (bitwise) to `literal` is operand
/// `result`.
struct Identity {
    op: Op,
    literal_at: usize,
    literal: f64,
    result: usize,
}

const IDENTITIES: &[Identity] = &[
    // x * 1 -> x
    Identity {
        op: Op::Mul,
        literal_at: 1,
        literal: 1.0,
        result: 0,
    },
    // 1 * x -> x
    Identity {
        op: Op::Mul,
        literal_at: 0,
        literal: 1.0,
        result: 1,
    },
    // x / 1 -> x
    Identity {
        op: Op::Div,
        literal_at: 1,
        literal: 1.0,
        result: 0,
    },
    // x - (+0) -> x   (holds for x = -0 too: -0 - +0 = -0)
    Identity {
        op: Op::Sub,
        literal_at: 1,
        literal: 0.0,
        result: 0,
    },
    // x + (-0) -> x   (x + (+0) is not an identity: -0 + +0 = +0)
    Identity {
        op: Op::Add,
        literal_at: 1,
        literal: -0.0,
        result: 0,
    },
    // (-0) + x -> x
    Identity {
        op: Op::Add,
        literal_at: 0,
        literal: -0.0,
        result: 1,
    },
];

/// Runs the pass.
pub fn run(graph: &Graph) -> Result<Graph> {
    super::rebuild(graph, |out, id, map| {
        let node = graph.node(id);
        let Node::Apply(op, _) = node else {
            return Ok(None);
        };
        let args: Vec<NodeId> = node.args().iter().map(|a| map[a.index()]).collect();
        simplify(out, op, &args).map(Some)
    })
}

fn literal(graph: &Graph, id: NodeId) -> Option<f64> {
    match graph.node(id) {
        Node::Const(c) => Some(c.value()),
        _ => None,
    }
}

fn simplify(graph: &mut Graph, op: Op, args: &[NodeId]) -> Result<NodeId> {
    let values: Vec<Option<f64>> = args.iter().map(|&a| literal(graph, a)).collect();
    if values.iter().all(Option::is_some) {
        let v = |k: usize| values[k.min(args.len() - 1)].expect("all literals");
        let folded = eval_op(op, v(0), v(1), v(2));
        if !folded.is_nan() {
            return Ok(graph.constant(folded));
        }
    }
    for rule in IDENTITIES {
        let matches = rule.op == op
            && values[rule.literal_at].map(f64::to_bits) == Some(rule.literal.to_bits());
        if matches {
            return Ok(args[rule.result]);
        }
    }
    match op {
        // -(-x) -> x
        Op::Neg => {
            if let Node::Apply(Op::Neg, inner) = graph.node(args[0]) {
                return Ok(inner[0]);
            }
        }
        // select(c, a, b) with a literal c -> a if c != 0 (NaN included), else b
        Op::Select => {
            if let Some(c) = values[0] {
                return Ok(if c != 0.0 { args[1] } else { args[2] });
            }
        }
        _ => {}
    }
    graph.intern(Node::apply(op, args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Builder;

    #[test]
    fn folds_literals_but_not_into_nan_and_keeps_unsafe_identities() {
        let b = Builder::new("t");
        let g = b.grad();
        let two = b.constant(1.0) + 1.0;
        let nan = b.constant(0.0) / 0.0;
        b.set_param(g * two + g * 0.0 + (g + 0.0) + nan + g * 1.0);
        let folded = run(&b.finish().unwrap()).unwrap();
        let text = folded.to_string();
        assert!(text.contains("const 2.0"), "{text}");
        assert!(text.contains("div"), "0/0 must stay unfolded: {text}");
        // g * 2 and g * 0 stay; g * 1 is gone.
        assert_eq!(text.matches("= mul").count(), 2, "{text}");
        // g + 0 stays.
        assert!(text.contains("= add %0, $"), "{text}");
    }
}

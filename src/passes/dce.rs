//! `dce`: keeps only the nodes the roots (outputs and skip condition) depend on, in their original order.

use crate::ir::{Graph, NodeId};
use crate::Result;

/// Runs the pass.
pub fn run(graph: &Graph) -> Result<Graph> {
    let n = graph.nodes().len();
    let mut live = vec![false; n];
    for root in graph.roots() {
        live[root.index()] = true;
    }
    // Operands precede users, so one backward sweep marks everything live.
    for i in (0..n).rev() {
        if live[i] {
            for arg in graph.nodes()[i].args() {
                live[arg.index()] = true;
            }
        }
    }
    let mut out = graph.empty_like();
    let mut map: Vec<Option<NodeId>> = vec![None; n];
    for (i, node) in graph.nodes().iter().enumerate() {
        if !live[i] {
            continue;
        }
        let args: Vec<NodeId> = node
            .args()
            .iter()
            .map(|a| map[a.index()].expect("operands are live"))
            .collect();
        let node = node.with_args(&args);
        map[i] = Some(out.intern(node)?);
    }
    let mapped = |id: &NodeId| map[id.index()].expect("outputs are live");
    if let Some((param, slots)) = graph.outputs().split_first() {
        out.set_outputs(mapped(param), slots.iter().map(mapped).collect())?;
    }
    out.set_skip(graph.skip().as_ref().map(mapped))?;
    Ok(out)
}

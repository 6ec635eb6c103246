//! The pass pipeline, top to bottom: graph → recip → fold → contract → dce → hoist → program
//! (`recip` and `contract` only act on graphs that opt in through their flags).
//!
//! The verifier runs after every pass in debug builds. [`compile_traced`] returns the printed
//! result of each pass, for dumps and snapshots.

mod contract;
mod dce;
mod fold;
mod hoist;
mod recip;

use crate::ir::{verify_graph, Graph, NodeId};
use crate::program::{verify_program, Program};
use crate::{DType, Result};

/// A graph-to-graph pass: its name (used in dumps) and its function.
pub struct GraphPass {
    /// Name printed in dumps and snapshot headers.
    pub name: &'static str,
    /// The transformation.
    pub run: fn(&Graph) -> Result<Graph>,
}

/// The pipeline: these graph passes in order, then [`HOIST`], which lowers the result to a
/// [`Program`] (the only pass whose output is not a graph).
pub const PIPELINE: &[GraphPass] = &[
    GraphPass {
        name: "recip",
        run: recip::run,
    },
    GraphPass {
        name: "fold",
        run: fold::run,
    },
    GraphPass {
        name: "contract",
        run: contract::run,
    },
    GraphPass {
        name: "dce",
        run: dce::run,
    },
];

/// Name of the final lowering pass in dumps.
pub const HOIST: &str = "hoist";

fn check_graph(graph: &Graph, pass: &'static str) -> Result<()> {
    if cfg!(debug_assertions) {
        verify_graph(graph, pass)?;
    }
    Ok(())
}

/// Runs the whole pipeline on `graph`.
pub fn compile(graph: &Graph) -> Result<Program> {
    compile_with(graph, |_, _| {})
}

/// Runs the pipeline, calling `observe(pass name, printed result)` after each pass; the
/// program is printed with `dtype`'s element type.
pub fn compile_traced(
    graph: &Graph,
    dtype: DType,
) -> Result<(Vec<(&'static str, String)>, Program)> {
    let mut trace = Vec::new();
    let program = compile_with(graph, |name, text| trace.push((name, text)))?;
    let text = program.display(dtype).to_string();
    trace.push((HOIST, text));
    Ok((trace, program))
}

fn compile_with(graph: &Graph, mut observe: impl FnMut(&'static str, String)) -> Result<Program> {
    check_graph(graph, "input")?;
    let mut current = graph.clone();
    for pass in PIPELINE {
        current = (pass.run)(&current)?;
        check_graph(&current, pass.name)?;
        observe(pass.name, current.to_string());
    }
    let program = hoist::run(&current)?;
    if cfg!(debug_assertions) {
        verify_program(&program, HOIST)?;
    }
    // Within the executors' limits (`Stage::MAX_INSTRUCTIONS`, ...): a program too large to
    // compile is an error here, not at its first step.
    program.stage.check()?;
    for phase in &program.phases {
        phase.stage.check()?;
    }
    Ok(program)
}

/// Rebuilds `graph` node by node into a fresh arena. `rewrite(out, id, map)` may return the
/// new node standing for old node `id` (`map` holds the new id of every earlier node);
/// otherwise the node is copied with its operands mapped. The outputs are remapped.
pub(crate) fn rebuild(
    graph: &Graph,
    mut rewrite: impl FnMut(&mut Graph, NodeId, &[NodeId]) -> Result<Option<NodeId>>,
) -> Result<Graph> {
    let mut out = graph.empty_like();
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.nodes().len());
    for (i, node) in graph.nodes().iter().enumerate() {
        let new = match rewrite(&mut out, NodeId(i as u32), &map)? {
            Some(id) => id,
            None => {
                let args: Vec<NodeId> = node.args().iter().map(|a| map[a.index()]).collect();
                out.intern(node.with_args(&args))?
            }
        };
        map.push(new);
    }
    if let Some((param, slots)) = graph.outputs().split_first() {
        out.set_outputs(
            map[param.index()],
            slots.iter().map(|s| map[s.index()]).collect(),
        )?;
    }
    out.set_skip(graph.skip().map(|s| map[s.index()]))?;
    Ok(out)
}

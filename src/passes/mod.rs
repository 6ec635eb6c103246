//! The pass pipeline, top to bottom: graph → fold → dce → hoist → program.
//!
//! The verifier runs after every pass in debug builds. [`compile_traced`] returns the printed
//! result of each pass, for dumps and snapshots.

mod dce;
mod fold;
mod hoist;

use crate::ir::{verify_graph, Graph};
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
        name: "fold",
        run: fold::run,
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
    Ok(program)
}

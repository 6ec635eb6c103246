//! The printer (in progress).
use crate::{Graph, Result};

/// The text form of `graph`.
pub fn print(graph: &Graph) -> Result<String> {
    Ok(format!("optimizer {}() {{\n}}\n", graph.name()))
}

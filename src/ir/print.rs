//! Printing of graphs: a header with the signature, one node per line, then the outputs.
//!
//! Scalar nodes print as `$N`, per-element nodes as `%N`, each numbered in arena order.
//! Literals use the shortest round-trip form.

use super::{Graph, HyperDef, Node, NodeId, Rank, SlotDef};
use std::fmt;

/// Writes `name(a = 1, b = 2)` and one line per state slot.
pub(crate) fn print_signature(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    hypers: &[HyperDef],
    slots: &[SlotDef],
) -> fmt::Result {
    write!(f, "{name}(")?;
    for (i, h) in hypers.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(f, "{sep}{} = {:?}", h.name, h.default)?;
    }
    writeln!(f, ")")?;
    for s in slots {
        let kind = s.kind.keyword();
        writeln!(f, "  {kind} {} = {:?}", s.name, s.init)?;
    }
    Ok(())
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "graph ")?;
        print_signature(f, self.name(), self.hypers(), self.slots())?;
        let flags = self.flags();
        let on: Vec<&str> = [
            ("reciprocal", flags.reciprocal),
            ("fast_math", flags.fast_math),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
        if !on.is_empty() {
            writeln!(f, "  flags {}", on.join(", "))?;
        }
        let mut names: Vec<String> = Vec::with_capacity(self.nodes().len());
        let (mut scalars, mut elements) = (0, 0);
        for (i, node) in self.nodes().iter().enumerate() {
            let name = match self.rank(NodeId(i as u32)) {
                Rank::Scalar => {
                    scalars += 1;
                    format!("${}", scalars - 1)
                }
                Rank::Element => {
                    elements += 1;
                    format!("%{}", elements - 1)
                }
            };
            let rhs = match node {
                Node::Const(c) => format!("const {c}"),
                Node::Param => "param".to_string(),
                Node::Grad => "grad".to_string(),
                Node::Step => "step".to_string(),
                Node::Hyper(n) => format!("hyper {}", self.hypers()[*n as usize].name),
                Node::State(n) => format!("state {}", self.slots()[*n as usize].name),
                Node::Apply(op, _) => {
                    let args: Vec<&str> = node
                        .args()
                        .iter()
                        .map(|a| names[a.index()].as_str())
                        .collect();
                    format!("{} {}", op.name(), args.join(", "))
                }
                Node::Reduce(op, scope, arg) => {
                    format!("{}.{} {}", op.name(), scope.name(), names[arg.index()])
                }
            };
            writeln!(f, "  {name} = {rhs}")?;
            names.push(name);
        }
        if let Some((param, slots)) = self.outputs().split_first() {
            writeln!(f, "  param <- {}", names[param.index()])?;
            for (slot, out) in self.slots().iter().zip(slots) {
                writeln!(f, "  {} <- {}", slot.name, names[out.index()])?;
            }
        }
        if let Some(skip) = self.skip() {
            writeln!(f, "  skip if {}", names[skip.index()])?;
        }
        Ok(())
    }
}

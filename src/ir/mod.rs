//! The optimizer IR: ops, the hash-consed graph, the builder DSL, printing and verification.

mod builder;
mod graph;
mod names;
mod op;
mod print;
pub mod reduce;
mod verify;

pub use builder::{Builder, Expr, IntoExpr};
pub use graph::{Graph, GraphFlags, HyperDef, Literal, Node, NodeId, Rank, SlotDef, SlotKind};
pub(crate) use names::{is_identifier, KEYWORDS};
pub use op::{eval_op, Op, OpGroup};
pub(crate) use print::print_signature;
pub use reduce::{ReduceOp, Scope};
pub use verify::verify_graph;

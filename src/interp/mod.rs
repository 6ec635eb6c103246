//! Executors without code generation: the reference interpreter (the definition of every op)
//! and the eager evaluator (one op at a time over whole arrays, like an unfused framework).

mod eager;
mod reference;

pub use eager::run as run_eager;
pub use reference::{eval_op, run as run_reference};

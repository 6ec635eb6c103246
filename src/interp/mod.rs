//! Executors without code generation: the reference interpreter (the definition of every op),
//! the eager evaluator (one op at a time over whole arrays, like an unfused framework) and the
//! chunked interpreter (one op at a time over cache-sized blocks, the portable fast path).

mod chunked;
mod eager;
mod reference;

pub use chunked::{block_len as chunked_block_len, run as run_chunked};
pub use eager::run as run_eager;
pub use reference::{eval_op, run as run_reference};

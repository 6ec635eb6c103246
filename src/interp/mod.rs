//! Executors without code generation: the reference interpreter (the definition of every op),
//! the eager evaluator (one op at a time over whole arrays, like an unfused framework) and the
//! chunked interpreter (one op at a time over cache-sized blocks, the portable fast path).

mod chunked;
mod eager;
mod reference;

pub use chunked::{block_len as chunked_block_len, run as run_chunked};
pub use eager::run as run_eager;
pub use reference::{eval_op, run as run_reference};

/// Writes one segment's partials (see [`crate::Segment::partials`]) from the values of each
/// reduction's operand at every element of the segment (`operands[r]` for reduction `r`).
pub(crate) fn write_partials<T: crate::Float>(
    stage: &crate::program::Stage,
    operands: &[Vec<T>],
    partials: &mut [f64],
) {
    use crate::ir::reduce::{block_partial, BLOCK};
    let n = stage.reductions.len();
    for (r, ((op, _), xs)) in stage.reductions.iter().zip(operands).enumerate() {
        for (b, block) in xs.chunks(BLOCK).enumerate() {
            partials[b * n + r] = block_partial(*op, block);
        }
    }
}

//! Baselines that optjit's kernels are measured against, in the same process and run:
//!
//! - [`native`]: handwritten loops of five built-ins (Adam, AdamW, SGD with momentum, Lion,
//!   RMSprop), bit-identical to the JIT, compiled by rustc for the best instruction set the
//!   CPU has (AVX-512, AVX2) or for the portable baseline — the bar for cache-resident sizes.
//! - [`floor`]: the memory-bandwidth floor (copy and in-place axpy, on one or more threads) —
//!   the bar for buffers beyond the last-level cache.
//! - [`suite`]: the whole benchmark suite behind `optjit bench`.
//!
//! Benchmarks report ratios against these, as absolute times drift (STYLE rule 10).

pub mod floor;
mod many;
pub mod native;
pub mod suite;

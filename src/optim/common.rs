//! The helpers custom optimizers need, as the built-ins use them: moving averages, bias
//! corrections, PyTorch's `lerp` and weight decay, its `sign` (defined with the transforms,
//! in [`crate::transform::common`]).

pub use crate::transform::common::*;

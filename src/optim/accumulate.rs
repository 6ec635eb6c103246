//! Gradient accumulation with the division fused into the step: [`accumulate`] rewrites a
//! graph so that every read of the gradient reads it multiplied by the hyperparameter
//! [`GRAD_SCALE`], which [`crate::runtime::GradAccumulation`] sets to `1 / count` (the mean
//! of the micro-batches' gradients) or 1 (their sum) at the step that ends a window: no pass
//! over the gradients besides the step's own.

use super::clip::replace_grad;
use crate::ir::Graph;
use crate::Result;

/// The hyperparameter [`accumulate`] adds: the factor the gradients are multiplied by
/// (default 1).
pub const GRAD_SCALE: &str = "grad_scale";

/// `graph` with every read of the gradient reading `grad * grad_scale` (in registers; the
/// buffers untouched), for [`crate::runtime::GradAccumulation`] to average accumulated
/// gradients without a pass of their own.
///
/// ```
/// use optjit::optim::{accumulate, Sgd, GRAD_SCALE};
///
/// let graph = accumulate(&Sgd::default().graph()?)?;
/// assert!(graph.hyper_index(GRAD_SCALE).is_some());
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// The mean is `Σg · (1/k)` with `1/k` rounded once to the element type: for `k` a power of
/// two that is `Σg / k` exactly; otherwise it can differ from a division (and from
/// PyTorch's `loss / k` idiom, which scales each micro-batch before the sum) in the last
/// bit. The last rewrite applied is the first to see the gradient: apply it after
/// [`crate::optim::clip_grad_norm`] (which then clips the averaged gradients) and before
/// [`crate::optim::amp()`] (which unscales them first): `amp(&accumulate(&clip_grad_norm(&g,
/// 2.0)?)?)`. Fails with [`crate::Error::DuplicateName`] if the graph already has a
/// `grad_scale`.
pub fn accumulate(graph: &Graph) -> Result<Graph> {
    let (out, _) = replace_grad(graph, GRAD_SCALE, 1.0, |_, grad, scale| grad * scale)?;
    Ok(out)
}

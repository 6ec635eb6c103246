//! Mixed-precision gradient scaling fused into any optimizer's program, with
//! `torch.amp.GradScaler`'s semantics: [`amp`] rewrites a graph so that every read of the
//! gradient reads it multiplied by the hyperparameter [`INV_SCALE`] (unscaled in registers,
//! the buffers untouched), and so that a step where any gradient of any parameter is NaN or
//! infinite changes nothing (its skip condition, [`crate::Graph::skip`], is a global
//! non-finite check over the gradients as they come in). [`crate::GradScaler::step`] drives
//! such a program: it sets the hyperparameter from its scale and reads whether the step was
//! applied.

use super::clip::replace_grad;
use crate::ir::{Graph, Node, ReduceOp, Scope};
use crate::program::{ElemArg, Program, ScalarInst, GRAD_STREAM};
use crate::{Error, Result};

/// The hyperparameter [`amp`] adds: the factor the gradients are multiplied by, `1 / scale`
/// (default 1: gradients as they are).
pub const INV_SCALE: &str = "inv_scale";

/// `graph` with its gradients unscaled and its step skipped on overflow, as
/// `scaler.step(optimizer)` does around an unfused step: every read of the gradient reads
/// `grad * inv_scale`, and the step is skipped — no parameter, state or step count changes,
/// in any group — when any gradient element of any parameter of the step is NaN or
/// infinite. The check reads the gradients as they come in (scaled), as PyTorch's
/// `_amp_foreach_non_finite_check_and_unscale_` does.
///
/// Apply it last: [`crate::optim::clip_grad_norm`] before it clips the unscaled gradients
/// (their norm is one more reduction of the same pass as the non-finite check), so AMP,
/// clipping and the optimizer run as one program.
///
/// ```
/// use optjit::optim::{amp, clip_grad_norm, Adam};
///
/// let graph = amp(&clip_grad_norm(&Adam::default().graph()?, 2.0)?)?;
/// let program = optjit::passes::compile(&graph)?;
/// assert_eq!(program.phases.len(), 1); // the norm and the check, then Adam's update
/// assert!(program.prologue.skip.is_some());
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// Gives the same bits as [`crate::GradScaler::unscale`] (the gradients multiplied by
/// `inv_scale` in place) followed by the step, without `fast_math`.
///
/// Fails with [`Error::Unsupported`] if the graph already has a skip condition, and
/// [`Error::DuplicateName`] if it has an `inv_scale`.
pub fn amp(graph: &Graph) -> Result<Graph> {
    if graph.skip().is_some() {
        return Err(Error::Unsupported {
            what: "amp on a graph that already has a skip condition",
        });
    }
    let (mut out, grad) =
        replace_grad(graph, INV_SCALE, 1.0, |_, grad, inv_scale| grad * inv_scale)?;
    if let Some(grad) = grad {
        let found_inf = out.intern(Node::Reduce(ReduceOp::NonFinite, Scope::Global, grad))?;
        out.set_skip(Some(found_inf))?;
    }
    Ok(out)
}

/// Whether `program` is [`amp`]'s: an [`INV_SCALE`] hyperparameter, and a skip condition
/// that is a global non-finite check of the incoming gradient.
pub fn is_amp(program: &Program) -> bool {
    let Some(skip) = program.prologue.skip else {
        return false;
    };
    let ScalarInst::Reduced(r) = program.prologue.insts[skip as usize] else {
        return false;
    };
    let mut reductions = program.phases.iter().flat_map(|p| {
        let stage = p.stage.reductions.iter();
        stage
            .zip(&p.scopes)
            .map(|(&(op, value), &scope)| (op, value, scope))
    });
    let check = (
        ReduceOp::NonFinite,
        ElemArg::Load(GRAD_STREAM),
        Scope::Global,
    );
    program.hyper_index(INV_SCALE).is_some() && reductions.nth(r as usize) == Some(check)
}

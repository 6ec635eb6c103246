//! Gradient clipping as PyTorch's `torch.nn.utils.clip_grad_norm_` defines it, fused into any
//! optimizer's program: [`clip_grad_norm`] rewrites a graph so that every read of the gradient
//! reads it scaled by `min(max_norm / (total_norm + 1e-6), 1)`, the total norm a global
//! reduction over every parameter's gradient (one extra read-only pass over the gradients,
//! no extra write). [`crate::Optimizer::clip_grad_norm`] is the same computation on an
//! optimizer's gradients in place; both give the same bits. [`clip_by_global_norm`] is
//! optax's variant of the global 2-norm clip (no `1e-6`, no scaling below the bound).

use crate::ir::{Graph, Node, NodeId, ReduceOp};
use crate::transform::{global_norm, optax_clip_factor, torch_clip_factor};
use crate::{Builder, Expr};
use crate::{Error, Result};

/// The default for the `max_norm` hyperparameter [`clip_grad_norm`] adds.
pub const DEFAULT_MAX_NORM: f64 = 1.0;

/// The reduction a fused clip of this norm type runs: 1, 2 and ∞ (`None` for the others,
/// which need a per-element power; [`crate::Optimizer::clip_grad_norm`] computes them on the
/// host).
pub(crate) fn reduction(norm_type: f64) -> Option<ReduceOp> {
    match norm_type {
        1.0 => Some(ReduceOp::Sum),
        2.0 => Some(ReduceOp::SumSquares),
        f64::INFINITY => Some(ReduceOp::MaxAbs),
        _ => None,
    }
}

/// `graph` with its gradient clipped to a global norm of at most the new hyperparameter
/// `max_norm` (default [`DEFAULT_MAX_NORM`]), as `clip_grad_norm_(params, max_norm,
/// norm_type)` before the step would: the gradient of every parameter of the step is
/// multiplied by `min(max_norm / (total + 1e-6), 1)`, `total` the `norm_type` norm of all of
/// them as one vector (1, 2 or `f64::INFINITY`).
///
/// ```
/// use optjit::optim::{clip_grad_norm, Adam};
///
/// let clipped = clip_grad_norm(&Adam::default().graph()?, 2.0)?;
/// let program = optjit::passes::compile(&clipped)?;
/// assert_eq!(program.phases.len(), 1); // the norm's pass, then Adam's
/// assert!(program.hyper_index("max_norm").is_some());
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// The same bits as [`crate::Optimizer::clip_grad_norm`] followed by the step, as long as
/// every group has the same `max_norm` (it is a per-group hyperparameter here, one value in
/// PyTorch's call) and the graph does not opt into `fast_math` (which may fuse the scaling
/// into a multiply-add).
///
/// Fails with [`Error::InvalidOption`] for another norm type, [`Error::DuplicateName`] if
/// the graph already has a `max_norm`, and [`Error::Unsupported`] if it has a skip condition
/// (clip first, then [`crate::optim::amp()`], so that the norm is that of the unscaled
/// gradients).
pub fn clip_grad_norm(graph: &Graph, norm_type: f64) -> Result<Graph> {
    if graph.skip().is_some() {
        return Err(Error::Unsupported {
            what: "clipping a graph with a skip condition; clip first, then apply amp",
        });
    }
    let op = reduction(norm_type).ok_or(Error::InvalidOption {
        option: "norm_type",
        reason: "a fused clip takes 1, 2 or inf (Optimizer::clip_grad_norm takes any p > 0)",
    })?;
    let (out, _) = replace_grad(graph, "max_norm", DEFAULT_MAX_NORM, |_, grad, max_norm| {
        grad * torch_clip_factor(max_norm, global_norm(grad, op))
    })?;
    Ok(out)
}

/// `graph` with its gradient clipped as optax's `clip_by_global_norm(max_norm)` clips it,
/// `max_norm` the default of the new hyperparameter of that name:
///
/// ```text
/// n ← ‖g‖₂ over every parameter of the step, as one vector
/// g ← g if n < max_norm else g · (max_norm / n)
/// ```
///
/// The variant of [`clip_grad_norm`]`(graph, 2.0)` that optax defines: no `1e-6` added to
/// the norm, and a gradient whose norm is not below `max_norm` is scaled to exactly
/// `max_norm` (PyTorch scales by `max_norm / (n + 1e-6)`, which leaves a relative
/// difference of about `1e-6 / n`: 2.9e-10 in the parameters of optax's recorded
/// `clip_adam` run in f64, norms 20 to 29, where the tolerance is 1e-12). optax rounds
/// twice per element (`(g / n) · max_norm`); here the factor is one per-step scalar, so an
/// element can differ in its last bit. A NaN norm makes every gradient NaN, as in optax.
/// (In a chain of transforms: [`crate::transform::clip_by_global_norm`], and PyTorch's
/// [`crate::transform::clip_grad_norm`].)
///
/// ```
/// use optjit::optim::{clip_by_global_norm, Adam};
///
/// let clipped = clip_by_global_norm(&Adam::default().graph()?, 0.5)?;
/// let max_norm = clipped.hyper_index("max_norm").expect("a new hyperparameter");
/// assert_eq!(clipped.hypers()[max_norm].default, 0.5);
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// Fails with [`Error::DuplicateName`] if the graph already has a `max_norm`, and
/// [`Error::Unsupported`] if it has a skip condition (as [`clip_grad_norm`]).
pub fn clip_by_global_norm(graph: &Graph, max_norm: f64) -> Result<Graph> {
    if graph.skip().is_some() {
        return Err(Error::Unsupported {
            what: "clipping a graph with a skip condition; clip first, then apply amp",
        });
    }
    let (out, _) = replace_grad(graph, "max_norm", max_norm, |b, grad, max_norm| {
        grad * optax_clip_factor(b, grad, max_norm)
    })?;
    Ok(out)
}

/// `graph` with a new hyperparameter `hyper` (default `default`) and every read of the
/// gradient replaced by `replace(builder, grad, hyper)` (built once, where the gradient was
/// first read); the outputs and the skip condition are mapped. Returns the new graph and the
/// node of the gradient as it comes in (`None` if the graph never reads it).
pub(crate) fn replace_grad(
    graph: &Graph,
    hyper: &str,
    default: f64,
    replace: impl for<'b> FnOnce(&'b Builder, Expr<'b>, Expr<'b>) -> Expr<'b>,
) -> Result<(Graph, Option<NodeId>)> {
    let b = Builder::on(graph.empty_like());
    let value = b.hyper(hyper, default);
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.nodes().len());
    let mut replace = Some(replace);
    let mut replaced = None;
    let mut grad = None;
    for node in graph.nodes() {
        let new = match (node, replaced) {
            (Node::Grad, Some(id)) => id,
            (Node::Grad, None) => {
                let raw = b.grad();
                let make = replace.take().expect("the gradient is replaced once");
                let id = make(&b, raw, value).id();
                (grad, replaced) = (Some(raw.id()), Some(id));
                id
            }
            _ => {
                let args: Vec<NodeId> = node.args().iter().map(|a| map[a.index()]).collect();
                b.node(node.with_args(&args))?.id()
            }
        };
        map.push(new);
    }
    let mut out = b.into_graph()?;
    let (param, slots) = graph.outputs().split_first().expect("a finished graph");
    out.set_outputs(
        map[param.index()],
        slots.iter().map(|s| map[s.index()]).collect(),
    )?;
    out.set_skip(graph.skip().map(|s| map[s.index()]))?;
    Ok((out, grad))
}

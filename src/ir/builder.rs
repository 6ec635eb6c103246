//! The Rust DSL for writing optimizers: [`Builder`] declares symbols and outputs, [`Expr`]
//! handles combine with `+ - * /`, unary `-` and methods, so an update reads like its paper.
//!
//! Operators cannot return `Result`, so a mistake inside an expression (a per-element operand
//! of `pow`, an expression from another builder) is remembered and returned by
//! [`Builder::finish`]; declaration mistakes are returned where they happen.

use super::{Graph, GraphFlags, Node, NodeId, Op, Rank, ReduceOp, Scope, SlotKind};
use crate::{Error, Result};
use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Builds an optimizer [`Graph`].
///
/// ```
/// use optjit::Builder;
///
/// // Plain SGD with momentum, PyTorch style.
/// let b = Builder::new("sgd_momentum");
/// let lr = b.hyper("lr", 1e-3);
/// let momentum = b.hyper("momentum", 0.9);
/// let buf = b.state("momentum_buffer", 0.0);
/// let buf = momentum * buf + b.grad();
/// b.set_state("momentum_buffer", buf).unwrap();
/// b.set_param(b.param() - lr * buf);
/// let graph = b.finish().unwrap();
/// assert_eq!(graph.slots().len(), 1);
/// ```
pub struct Builder {
    inner: RefCell<State>,
}

struct State {
    graph: Graph,
    param_out: Option<NodeId>,
    slot_out: Vec<Option<NodeId>>,
    /// The first mistake made inside an expression; reported by `finish`.
    error: Option<Error>,
}

/// A value under construction: a handle into its [`Builder`]. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Expr<'b> {
    id: NodeId,
    builder: &'b Builder,
}

impl std::fmt::Debug for Expr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.id)
    }
}

impl Builder {
    /// A builder for an optimizer called `name`.
    pub fn new(name: &str) -> Builder {
        let graph = Graph::new(name, Vec::new(), Vec::new()).expect("an empty signature is valid");
        Builder {
            inner: RefCell::new(State {
                graph,
                param_out: None,
                slot_out: Vec::new(),
                error: None,
            }),
        }
    }

    /// A builder that goes on with `graph`, for a rewrite of another graph (see
    /// [`Builder::node`]); [`Builder::into_graph`] gives it back, its outputs for the caller
    /// to set.
    pub(crate) fn on(graph: Graph) -> Builder {
        let slots = graph.slots().len();
        Builder {
            inner: RefCell::new(State {
                graph,
                param_out: None,
                slot_out: vec![None; slots],
                error: None,
            }),
        }
    }

    /// Adds `node` as it is (one copied from another graph, its arguments already mapped).
    pub(crate) fn node(&self, node: Node) -> Result<Expr<'_>> {
        let id = self.inner.borrow_mut().graph.intern(node)?;
        Ok(self.expr(id))
    }

    /// The graph built so far, outputs not set; fails with the first mistake made while
    /// building.
    pub(crate) fn into_graph(self) -> Result<Graph> {
        let state = self.inner.into_inner();
        match state.error {
            Some(e) => Err(e),
            None => Ok(state.graph),
        }
    }

    fn expr(&self, id: NodeId) -> Expr<'_> {
        Expr { id, builder: self }
    }

    /// Records the first mistake and returns a placeholder so building can continue.
    fn fail(&self, error: Error, placeholder: NodeId) -> Expr<'_> {
        let mut state = self.inner.borrow_mut();
        state.error.get_or_insert(error);
        drop(state);
        self.expr(placeholder)
    }

    /// Records `error` as a mistake made inside an expression (reported by
    /// [`Builder::finish`]) and returns a placeholder so building can go on.
    pub(crate) fn mistake(&self, error: Error) -> Expr<'_> {
        let zero = self.constant(0.0).id;
        self.fail(error, zero)
    }

    /// The rank of `e`, a node of this builder.
    pub(crate) fn rank(&self, e: Expr<'_>) -> Rank {
        self.inner.borrow().graph.rank(e.id)
    }

    /// The expression of node `id` of this builder's graph.
    pub(crate) fn at(&self, id: NodeId) -> Expr<'_> {
        self.expr(id)
    }

    fn leaf(&self, node: Node) -> Expr<'_> {
        let id = self.inner.borrow_mut().graph.intern(node);
        self.expr(id.expect("leaves are always valid"))
    }

    /// Declares a hyperparameter with its default value; returns its (per-step scalar) value.
    ///
    /// A repeated or reserved name is reported by [`Builder::finish`].
    pub fn hyper(&self, name: &str, default: f64) -> Expr<'_> {
        let added = self.inner.borrow_mut().graph.add_hyper(name, default);
        match added {
            Ok(id) => self.expr(id),
            Err(e) => {
                let zero = self.constant(0.0).id;
                self.fail(e, zero)
            }
        }
    }

    fn add_slot(&self, name: &str, init: f64, kind: SlotKind) -> Expr<'_> {
        let mut state = self.inner.borrow_mut();
        match state.graph.add_slot(name, init, kind) {
            Ok(id) => {
                state.slot_out.push(None);
                drop(state);
                self.expr(id)
            }
            Err(e) => {
                drop(state);
                let zero = self.constant(0.0).id;
                self.fail(e, zero)
            }
        }
    }

    /// Declares a per-element state slot (a buffer like Adam's `exp_avg`) starting at `init`;
    /// returns its value before this step.
    pub fn state(&self, name: &str, init: f64) -> Expr<'_> {
        self.add_slot(name, init, SlotKind::Element)
    }

    /// Declares a per-parameter scalar state slot (like NAdam's `mu_product`) starting at
    /// `init`; returns its value before this step.
    pub fn scalar_state(&self, name: &str, init: f64) -> Expr<'_> {
        self.add_slot(name, init, SlotKind::Scalar)
    }

    /// Declares a per-group scalar state slot (like schedule-free's `weight_sum`) starting at
    /// `init`; returns its value before this step. See [`SlotKind::Group`] for what its new
    /// value may read.
    pub fn group_state(&self, name: &str, init: f64) -> Expr<'_> {
        self.add_slot(name, init, SlotKind::Group)
    }

    /// Declares a scalar state slot of the whole optimizer (one value for every parameter of
    /// every group) starting at `init`; returns its value before this step. See
    /// [`SlotKind::Optimizer`] for what its new value may read.
    pub fn optimizer_state(&self, name: &str, init: f64) -> Expr<'_> {
        self.add_slot(name, init, SlotKind::Optimizer)
    }

    /// The parameter's value before this step.
    pub fn param(&self) -> Expr<'_> {
        self.leaf(Node::Param)
    }

    /// The gradient.
    pub fn grad(&self) -> Expr<'_> {
        self.leaf(Node::Grad)
    }

    /// The 1-based count of updates this parameter has received, this one included.
    pub fn step(&self) -> Expr<'_> {
        self.leaf(Node::Step)
    }

    /// A literal constant.
    pub fn constant(&self, value: f64) -> Expr<'_> {
        let id = self.inner.borrow_mut().graph.constant(value);
        self.expr(id)
    }

    /// `select(cond, a, b)`: `a` where `cond` is non-zero, else `b` (see [`Op::Select`]).
    pub fn select<'b>(
        &'b self,
        cond: impl IntoExpr<'b>,
        a: impl IntoExpr<'b>,
        b: impl IntoExpr<'b>,
    ) -> Expr<'b> {
        let args = [cond.into_expr(self), a.into_expr(self), b.into_expr(self)];
        self.apply(Op::Select, &args)
    }

    /// Applies `op` to `args` (the general form behind the operators and methods).
    pub fn apply<'b>(&'b self, op: Op, args: &[Expr<'b>]) -> Expr<'b> {
        // Placeholders must be nodes of this builder, whatever the operands are.
        let placeholder = || self.constant(0.0).id;
        if args.len() != op.arity() {
            let error = Error::Arity {
                op: op.name(),
                expected: op.arity(),
                actual: args.len(),
            };
            return self.fail(error, placeholder());
        }
        if args.iter().any(|a| !std::ptr::eq(a.builder, self)) {
            return self.fail(Error::ForeignExpr, placeholder());
        }
        let ids: Vec<NodeId> = args.iter().map(|a| a.id).collect();
        let interned = self.inner.borrow_mut().graph.intern(Node::apply(op, &ids));
        match interned {
            Ok(id) => self.expr(id),
            Err(e) => self.fail(e, placeholder()),
        }
    }

    /// `op` over `x`'s elements in `scope` (the general form behind [`Expr::sum`] and the
    /// other reductions).
    pub fn reduce<'b>(&'b self, op: ReduceOp, scope: Scope, x: Expr<'b>) -> Expr<'b> {
        let placeholder = || self.constant(0.0).id;
        if !std::ptr::eq(x.builder, self) {
            return self.fail(Error::ForeignExpr, placeholder());
        }
        let interned = self
            .inner
            .borrow_mut()
            .graph
            .intern(Node::Reduce(op, scope, x.id));
        match interned {
            Ok(id) => self.expr(id),
            Err(e) => self.fail(e, placeholder()),
        }
    }

    /// Opts the graph into numerical rewrites (see [`GraphFlags`]).
    pub fn set_flags(&self, flags: GraphFlags) {
        self.inner.borrow_mut().graph.set_flags(flags);
    }

    /// Sets the new parameter value. A later call replaces an earlier one.
    pub fn set_param(&self, value: Expr<'_>) {
        if !std::ptr::eq(value.builder, self) {
            let zero = self.constant(0.0).id;
            self.fail(Error::ForeignExpr, zero);
            return;
        }
        self.inner.borrow_mut().param_out = Some(value.id);
    }

    /// Sets the new value of the state slot `name`. A later call replaces an earlier one.
    pub fn set_state(&self, name: &str, value: Expr<'_>) -> Result<()> {
        if !std::ptr::eq(value.builder, self) {
            return Err(Error::ForeignExpr);
        }
        let mut state = self.inner.borrow_mut();
        let slot = state
            .graph
            .slot_index(name)
            .ok_or_else(|| Error::UnknownSlot {
                name: name.to_string(),
            })?;
        state.slot_out[slot] = Some(value.id);
        Ok(())
    }

    /// Checks the definition and returns the graph.
    ///
    /// Fails with the first mistake made while building, or [`Error::OutputNotSet`] when the
    /// param or a state slot is never assigned.
    pub fn finish(self) -> Result<Graph> {
        let State {
            mut graph,
            param_out,
            slot_out,
            error,
        } = self.inner.into_inner();
        if let Some(e) = error {
            return Err(e);
        }
        super::graph::check_name(graph.name())?;
        let param = param_out.ok_or_else(|| Error::OutputNotSet {
            output: "param".to_string(),
        })?;
        let mut slots = Vec::with_capacity(slot_out.len());
        for (slot, out) in graph.slots().iter().zip(&slot_out) {
            slots.push(out.ok_or_else(|| Error::OutputNotSet {
                output: slot.name.clone(),
            })?);
        }
        graph.set_outputs(param, slots)?;
        Ok(graph)
    }
}

/// Anything that can stand where an [`Expr`] is expected: an `Expr` or an `f64` literal.
pub trait IntoExpr<'b> {
    /// The expression in builder `b`.
    fn into_expr(self, b: &'b Builder) -> Expr<'b>;
}

impl<'b> IntoExpr<'b> for Expr<'b> {
    fn into_expr(self, _: &'b Builder) -> Expr<'b> {
        self
    }
}

impl<'b> IntoExpr<'b> for f64 {
    fn into_expr(self, b: &'b Builder) -> Expr<'b> {
        b.constant(self)
    }
}

impl<'b> Expr<'b> {
    fn unary(self, op: Op) -> Expr<'b> {
        self.builder.apply(op, &[self])
    }

    fn binary(self, op: Op, other: impl IntoExpr<'b>) -> Expr<'b> {
        let other = other.into_expr(self.builder);
        self.builder.apply(op, &[self, other])
    }

    /// The node this expression stands for.
    pub fn id(self) -> NodeId {
        self.id
    }

    /// The builder this expression belongs to.
    pub(crate) fn builder(self) -> &'b Builder {
        self.builder
    }

    /// `√self` ([`Op::Sqrt`]).
    pub fn sqrt(self) -> Expr<'b> {
        self.unary(Op::Sqrt)
    }
    /// `|self|` ([`Op::Abs`]).
    pub fn abs(self) -> Expr<'b> {
        self.unary(Op::Abs)
    }
    /// `sign(self)` ([`Op::Sign`]).
    pub fn sign(self) -> Expr<'b> {
        self.unary(Op::Sign)
    }
    /// `e^self`, scalars only ([`Op::Exp`]).
    pub fn exp(self) -> Expr<'b> {
        self.unary(Op::Exp)
    }
    /// `ln(self)`, scalars only ([`Op::Ln`]).
    pub fn ln(self) -> Expr<'b> {
        self.unary(Op::Ln)
    }
    /// `cos(self)` in radians, scalars only ([`Op::Cos`]).
    pub fn cos(self) -> Expr<'b> {
        self.unary(Op::Cos)
    }
    /// `⌊self⌋`, scalars only ([`Op::Floor`]).
    pub fn floor(self) -> Expr<'b> {
        self.unary(Op::Floor)
    }
    /// `self^exponent`, scalars only ([`Op::Pow`]).
    pub fn pow(self, exponent: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Pow, exponent)
    }
    /// `self · a + b` with one rounding ([`Op::Fma`]).
    pub fn mul_add(self, a: impl IntoExpr<'b>, b: impl IntoExpr<'b>) -> Expr<'b> {
        let (a, b) = (a.into_expr(self.builder), b.into_expr(self.builder));
        self.builder.apply(Op::Fma, &[self, a, b])
    }
    /// `min(self, other)` ([`Op::Min`]).
    pub fn min(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Min, other)
    }
    /// `max(self, other)` ([`Op::Max`]).
    pub fn max(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Max, other)
    }
    /// `Σ self` over the parameter's elements ([`Scope::Param`]) or every parameter's
    /// ([`Scope::Global`]): a per-step scalar, in the accumulation order of
    /// [`crate::ir::reduce`]. `self` must be per element.
    ///
    /// ```
    /// use optjit::ir::Scope;
    /// use optjit::Builder;
    ///
    /// // SGD on gradients clipped to a global norm of at most 1.
    /// let b = Builder::new("clipped_sgd");
    /// let lr = b.hyper("lr", 0.1);
    /// let norm = b.grad().sum_squares(Scope::Global).sqrt();
    /// let coef = (1.0 / (norm + 1e-6)).min(1.0);
    /// b.set_param(b.param() - lr * (b.grad() * coef));
    /// let program = optjit::passes::compile(&b.finish()?)?;
    /// assert_eq!(program.phases.len(), 1, "one pass for the norm, then the update");
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn sum(self, scope: Scope) -> Expr<'b> {
        self.builder.reduce(ReduceOp::Sum, scope, self)
    }
    /// `Σ self²` (see [`Expr::sum`]).
    pub fn sum_squares(self, scope: Scope) -> Expr<'b> {
        self.builder.reduce(ReduceOp::SumSquares, scope, self)
    }
    /// `max |self|`, NaN if any element is NaN (see [`Expr::sum`]).
    pub fn max_abs(self, scope: Scope) -> Expr<'b> {
        self.builder.reduce(ReduceOp::MaxAbs, scope, self)
    }
    /// `1` if any element of `self` is ±inf or NaN, else `0` (see [`Expr::sum`]).
    pub fn non_finite(self, scope: Scope) -> Expr<'b> {
        self.builder.reduce(ReduceOp::NonFinite, scope, self)
    }
    /// `self == other` as 1/0 ([`Op::Eq`]).
    pub fn eq(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Eq, other)
    }
    /// `self != other` as 1/0 ([`Op::Ne`]).
    pub fn ne(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Ne, other)
    }
    /// `self < other` as 1/0 ([`Op::Lt`]).
    pub fn lt(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Lt, other)
    }
    /// `self <= other` as 1/0 ([`Op::Le`]).
    pub fn le(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Le, other)
    }
    /// `self > other` as 1/0 ([`Op::Gt`]).
    pub fn gt(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Gt, other)
    }
    /// `self >= other` as 1/0 ([`Op::Ge`]).
    pub fn ge(self, other: impl IntoExpr<'b>) -> Expr<'b> {
        self.binary(Op::Ge, other)
    }
}

macro_rules! binary_operator {
    ($trait:ident, $method:ident, $op:expr) => {
        impl<'b> $trait<Expr<'b>> for Expr<'b> {
            type Output = Expr<'b>;
            fn $method(self, rhs: Expr<'b>) -> Expr<'b> {
                self.binary($op, rhs)
            }
        }
        impl<'b> $trait<f64> for Expr<'b> {
            type Output = Expr<'b>;
            fn $method(self, rhs: f64) -> Expr<'b> {
                self.binary($op, rhs)
            }
        }
        impl<'b> $trait<Expr<'b>> for f64 {
            type Output = Expr<'b>;
            fn $method(self, rhs: Expr<'b>) -> Expr<'b> {
                rhs.builder.constant(self).binary($op, rhs)
            }
        }
    };
}

binary_operator!(Add, add, Op::Add);
binary_operator!(Sub, sub, Op::Sub);
binary_operator!(Mul, mul, Op::Mul);
binary_operator!(Div, div, Op::Div);

impl<'b> Neg for Expr<'b> {
    type Output = Expr<'b>;
    fn neg(self) -> Expr<'b> {
        self.unary(Op::Neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_the_same_expression_twice_gives_the_same_node() {
        let b = Builder::new("t");
        let g = b.grad();
        let x = g * g + 1.0;
        let y = g * g + 1.0;
        assert_eq!(x.id(), y.id());
        assert_ne!((g * 2.0).id(), (2.0 * g).id());
    }
}

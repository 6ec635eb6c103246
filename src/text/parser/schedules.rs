//! The schedules of the text form: built-in functions of `step` that expand to the
//! expressions of [`crate::schedule::graph`], evaluated at optax's count `step − 1`.
//!
//! Arguments that optax branches on in Python (step counts, rates, boundaries, `staircase`)
//! must be number literals; the others are expressions of per-step scalars. Trailing
//! arguments with optax defaults may be left out. `join(s₀, b₁, s₁, b₂, s₂, ...)` takes
//! schedule calls and the boundaries between them, each schedule counting from its boundary.

use super::{PResult, Parser, Spanned, Val};
use crate::ir::{Builder, Node, NodeId, Op, Rank};
use crate::schedule::graph as sched;
use crate::text::error::TextErrorKind;
use crate::text::lexer::Tok;
use crate::{Error, Graph};

/// How a schedule argument is given.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// An expression of per-step scalars, with optax's default if it has one.
    Expr(Option<f64>),
    /// An expression of per-step scalars that may be left out (optax's `None`).
    OptionalExpr,
    /// A number literal, with optax's default if it has one.
    Number(Option<f64>),
}

use Kind::{Expr as E, Number as N};

/// The schedules with fixed arguments: their text name and optax's argument names.
const SCHEDULES: [(&str, &[(&str, Kind)]); 6] = [
    ("constant", &[("value", E(None))]),
    (
        "linear",
        &[
            ("init_value", E(None)),
            ("end_value", E(None)),
            ("transition_steps", N(None)),
            ("transition_begin", N(Some(0.0))),
        ],
    ),
    (
        "polynomial",
        &[
            ("init_value", E(None)),
            ("end_value", E(None)),
            ("power", E(None)),
            ("transition_steps", N(None)),
            ("transition_begin", N(Some(0.0))),
        ],
    ),
    (
        "cosine_decay",
        &[
            ("init_value", E(None)),
            ("decay_steps", N(None)),
            ("alpha", E(Some(0.0))),
            ("exponent", E(Some(1.0))),
        ],
    ),
    (
        "warmup_cosine_decay",
        &[
            ("init_value", E(None)),
            ("peak_value", E(None)),
            ("warmup_steps", N(None)),
            ("decay_steps", N(None)),
            ("end_value", E(Some(0.0))),
            ("exponent", E(Some(1.0))),
        ],
    ),
    (
        "exponential_decay",
        &[
            ("init_value", E(None)),
            ("transition_steps", N(None)),
            ("decay_rate", N(None)),
            ("transition_begin", N(Some(0.0))),
            ("staircase", N(Some(0.0))),
            ("end_value", Kind::OptionalExpr),
        ],
    ),
];

/// Every schedule's name in the text form.
pub(super) const NAMES: [&str; 8] = [
    "constant",
    "linear",
    "polynomial",
    "cosine_decay",
    "warmup_cosine_decay",
    "exponential_decay",
    "piecewise_constant",
    "join",
];

/// An argument after checking: a per-step scalar node, a number, or left out.
#[derive(Clone, Copy)]
enum Arg {
    Node(NodeId),
    Number(f64),
    Absent,
}

impl Parser<'_> {
    /// A schedule call `name(...)`, the name not read yet, evaluated at `count` (optax's
    /// count `step − 1` when `None`).
    pub(super) fn schedule_call(
        &mut self,
        name: String,
        count: Option<NodeId>,
    ) -> PResult<Spanned> {
        let callee = self.next();
        let start = callee.start;
        if name == "join" {
            return self.join_call(start, count);
        }
        let (args, end) = self.all_arguments()?;
        let count = match count {
            Some(c) => c,
            None => self.count(start, end)?,
        };
        let values = if name == "piecewise_constant" {
            if args.is_empty() || args.len() % 2 == 0 {
                let expected = if args.is_empty() { 1 } else { args.len() + 1 };
                return Err(self.arity(&name, expected, args.len(), start, end));
            }
            let mut values = vec![self.scalar_arg(&name, "init_value", args[0])?];
            for (k, a) in args[1..].iter().enumerate() {
                let what = if k % 2 == 0 { "a boundary" } else { "a scale" };
                values.push(self.number_arg(&name, what, *a)?);
            }
            values
        } else {
            let &(_, params) = SCHEDULES
                .iter()
                .find(|(f, _)| *f == name)
                .expect("a schedule name");
            let required = params
                .iter()
                .filter(|(_, k)| matches!(k, E(None) | N(None)))
                .count();
            if args.len() < required || args.len() > params.len() {
                let expected = args.len().clamp(required, params.len());
                return Err(self.arity(&name, expected, args.len(), start, end));
            }
            let mut values = Vec::with_capacity(params.len());
            for (k, &(param, kind)) in params.iter().enumerate() {
                values.push(match (args.get(k), kind) {
                    (Some(a), N(_)) => self.number_arg(&name, param, *a)?,
                    (Some(a), _) => self.scalar_arg(&name, param, *a)?,
                    (None, E(Some(x)) | N(Some(x))) => Arg::Number(x),
                    (None, _) => Arg::Absent,
                });
            }
            values
        };
        let id = self.build(&name, start, end, |b| {
            let count = b.at(count);
            let e = |k: usize| match values[k] {
                Arg::Node(id) => b.at(id),
                Arg::Number(x) => b.constant(x),
                Arg::Absent => unreachable!("expression arguments have defaults"),
            };
            let n = |k: usize| match values[k] {
                Arg::Number(x) => x,
                _ => unreachable!("number arguments are literals"),
            };
            match name.as_str() {
                "constant" => sched::constant_schedule(count, e(0)),
                "linear" => sched::linear_schedule(count, e(0), e(1), n(2), n(3)),
                "polynomial" => sched::polynomial_schedule(count, e(0), e(1), e(2), n(3), n(4)),
                "cosine_decay" => sched::cosine_decay_schedule(count, e(0), n(1), e(2), e(3)),
                "warmup_cosine_decay" => {
                    sched::warmup_cosine_decay_schedule(count, e(0), e(1), n(2), n(3), e(4), e(5))
                }
                "exponential_decay" => {
                    let end_value = match values[5] {
                        Arg::Absent => None,
                        _ => Some(e(5)),
                    };
                    let staircase = n(4);
                    if staircase != 0.0 && staircase != 1.0 {
                        return b.mistake(Error::InvalidOption {
                            option: "staircase",
                            reason: "staircase is 0 (false) or 1 (true)",
                        });
                    }
                    let staircase = staircase == 1.0;
                    sched::exponential_decay(count, e(0), n(1), n(2), n(3), staircase, end_value)
                }
                _ => {
                    let pairs: Vec<(f64, f64)> = (1..values.len())
                        .step_by(2)
                        .map(|k| (n(k), n(k + 1)))
                        .collect();
                    sched::piecewise_constant_schedule(count, e(0), &pairs)
                }
            }
        })?;
        Ok(Spanned {
            val: Val::Node(id),
            start,
            end,
        })
    }

    /// `join(s₀, b₁, s₁, ...)` after its name, which starts at `start`.
    fn join_call(&mut self, start: usize, count: Option<NodeId>) -> PResult<Spanned> {
        self.next(); // `(`
        self.enter()?;
        let count = match count {
            Some(c) => c,
            None => {
                let at = self.peek().start;
                self.count(start, at)?
            }
        };
        let mut values = Vec::new();
        let mut boundaries = Vec::new();
        loop {
            let schedule_count = match boundaries.last() {
                None => count,
                Some(&(boundary, b_start, b_end)) => {
                    let c = self.intern(
                        Node::Const(crate::ir::Literal::new(boundary)),
                        b_start,
                        b_end,
                    )?;
                    self.intern(Node::apply(Op::Sub, &[count, c]), b_start, b_end)?
                }
            };
            let t = self.peek().clone();
            match &t.tok {
                Tok::Ident(name)
                    if NAMES.contains(&name.as_str()) && *self.peek_at(1) == Tok::Punct("(") =>
                {
                    let value = self.schedule_call(name.clone(), Some(schedule_count))?;
                    values.push(value);
                }
                _ => {
                    return Err(self.unexpected(
                        "a schedule call (`linear(...)`, `cosine_decay(...)`, ...) to join",
                    ))
                }
            }
            if self.is_punct(")") {
                break;
            }
            self.expect_punct(",", "`,` and a boundary, or `)`")?;
            let b = self.expression()?;
            let Val::Lit(boundary) = b.val else {
                let what = "a boundary of `join`".to_string();
                return Err(self.error(TextErrorKind::NumberRequired { what }, b.start, b.end));
            };
            boundaries.push((boundary, b.start, b.end));
            self.expect_punct(",", "`,` and the schedule from this boundary on")?;
        }
        let close = self.expect_punct(")", "`)`")?;
        self.depth -= 1;
        let end = close.end;
        let ids: Vec<NodeId> = values
            .iter()
            .map(|v| match v.val {
                Val::Node(id) => id,
                Val::Lit(_) => unreachable!("schedules are nodes"),
            })
            .collect();
        let boundaries: Vec<f64> = boundaries.iter().map(|b| b.0).collect();
        let id = self.build("join", start, end, |b| {
            let values: Vec<_> = ids.iter().map(|&id| b.at(id)).collect();
            sched::join(b.at(count), &values, &boundaries)
        })?;
        Ok(Spanned {
            val: Val::Node(id),
            start,
            end,
        })
    }

    /// Every argument of a call, its name read: `(a, b, ...)`, and the call's end.
    pub(super) fn all_arguments(&mut self) -> PResult<(Vec<Spanned>, usize)> {
        self.next(); // `(`
        self.enter()?;
        let mut args = Vec::new();
        while !self.is_punct(")") {
            args.push(self.expression()?);
            if !self.is_punct(")") {
                self.expect_punct(",", "`,` or `)`")?;
            }
        }
        let close = self.expect_punct(")", "`)`")?;
        self.depth -= 1;
        Ok((args, close.end))
    }

    fn arity(
        &self,
        function: &str,
        expected: usize,
        actual: usize,
        start: usize,
        end: usize,
    ) -> Box<crate::text::TextError> {
        let kind = TextErrorKind::Arity {
            function: function.to_string(),
            expected,
            actual,
        };
        self.error(kind, start, end)
    }

    /// optax's count, `step − 1`.
    fn count(&mut self, start: usize, end: usize) -> PResult<NodeId> {
        let step = self.intern(Node::Step, start, end)?;
        let one = self.intern(Node::Const(crate::ir::Literal::new(1.0)), start, end)?;
        self.intern(Node::apply(Op::Sub, &[step, one]), start, end)
    }

    /// An argument that must be a per-step scalar.
    fn scalar_arg(&mut self, function: &str, param: &str, a: Spanned) -> PResult<Arg> {
        let id = self.materialize(a)?;
        if self.graph.rank(id) == Rank::Element {
            let what = format!("the `{param}` argument of `{function}`");
            return Err(self.error(TextErrorKind::ScalarRequired { what }, a.start, a.end));
        }
        Ok(Arg::Node(id))
    }

    /// An argument that must be a number literal.
    fn number_arg(&self, function: &str, param: &str, a: Spanned) -> PResult<Arg> {
        match a.val {
            Val::Lit(x) => Ok(Arg::Number(x)),
            Val::Node(_) => {
                let what = if param.starts_with("a ") {
                    format!("{param} of `{function}`")
                } else {
                    format!("the `{param}` argument of `{function}`")
                };
                Err(self.error(TextErrorKind::NumberRequired { what }, a.start, a.end))
            }
        }
    }

    /// Runs `f` on a builder over the graph read so far; its mistakes are reported under
    /// the call `function(...)` from `start` to `end`.
    fn build(
        &mut self,
        function: &str,
        start: usize,
        end: usize,
        f: impl for<'b> FnOnce(&'b Builder) -> crate::Expr<'b>,
    ) -> PResult<NodeId> {
        let empty = Graph::new("optimizer", Vec::new(), Vec::new()).expect("an empty signature");
        let b = Builder::on(std::mem::replace(&mut self.graph, empty));
        let id = f(&b).id();
        match b.into_graph() {
            Ok(graph) => self.graph = graph,
            Err(e) => {
                let kind = match e {
                    Error::ScalarRequired { what } => TextErrorKind::ScalarRequired { what },
                    Error::InvalidOption { option, reason } => TextErrorKind::InvalidArgument {
                        function: function.to_string(),
                        argument: option.to_string(),
                        reason: reason.to_string(),
                    },
                    other => TextErrorKind::InvalidArgument {
                        function: function.to_string(),
                        argument: String::new(),
                        reason: other.to_string(),
                    },
                };
                return Err(self.error(kind, start, end));
            }
        }
        self.check_node_limit(start, end)?;
        Ok(id)
    }
}

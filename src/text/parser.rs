//! The parser of the text form: tokens to a [`Graph`], interning nodes in reading order.
//!
//! Nodes are created as the text is read, operands before the operation, so the arena
//! order follows the text (which is what lets [`super::print`] reproduce a graph exactly):
//! `param`, `grad` and `step` are interned where first named, a state where declared, the
//! hyperparameters in the header. A literal is interned when an operation (or a `let`, or
//! an assignment) consumes it, after the other operands: `-2` is the literal −2, and
//! `1 - b1` interns `b1`'s operands before the constant 1, as the builder's `1.0 - b1` does.

use super::error::{closest, TextError, TextErrorKind};
use super::lexer::{lex, Tok, Token, KEYWORDS};
use super::limits;
use crate::ir::{GraphFlags, Node, NodeId, Op, Rank, ReduceOp, Scope, SlotKind};
use crate::{Error, Graph};
use std::collections::HashMap;

mod schedules;

type PResult<T> = Result<T, Box<TextError>>;

/// A value while an expression is read: a node, or a literal not interned yet.
#[derive(Clone, Copy)]
enum Val {
    Node(NodeId),
    Lit(f64),
}

/// A value and the bytes of text it came from.
#[derive(Clone, Copy)]
struct Spanned {
    val: Val,
    start: usize,
    end: usize,
}

/// What a name in scope stands for.
#[derive(Clone, Copy, PartialEq)]
enum Binding {
    Hyper(NodeId),
    /// A state slot: its index and current value.
    Slot(usize, NodeId),
    Let(NodeId),
}

/// The functions of the text form and the op each calls.
const FUNCTIONS: [(&str, Op); 12] = [
    ("sqrt", Op::Sqrt),
    ("abs", Op::Abs),
    ("sign", Op::Sign),
    ("exp", Op::Exp),
    ("ln", Op::Ln),
    ("cos", Op::Cos),
    ("floor", Op::Floor),
    ("min", Op::Min),
    ("max", Op::Max),
    ("pow", Op::Pow),
    ("select", Op::Select),
    ("fma", Op::Fma),
];

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    graph: Graph,
    scope: HashMap<String, Binding>,
    /// The current value of `param`; `None` until assigned (then `param` is the input).
    param: Option<NodeId>,
    /// Whether each slot was assigned, and where it was declared.
    slot_assigned: Vec<bool>,
    slot_decl: Vec<(usize, usize)>,
    /// Per node so far: whether it differs between parameters (see
    /// [`Graph::per_parameter`]), extended as group states are assigned.
    per_parameter: Vec<bool>,
    flags_seen: bool,
    depth: usize,
}

/// Parses one optimizer.
pub(super) fn parse(source: &str) -> PResult<Graph> {
    if source.len() > limits::MAX_SOURCE_BYTES {
        return Err(super::error::check_source(source.as_bytes()).unwrap_err());
    }
    let tokens = lex(source)?;
    let p = Parser {
        source,
        tokens,
        pos: 0,
        graph: Graph::new("optimizer", Vec::new(), Vec::new()).expect("an empty signature"),
        scope: HashMap::new(),
        param: None,
        slot_assigned: Vec::new(),
        slot_decl: Vec::new(),
        per_parameter: Vec::new(),
        flags_seen: false,
        depth: 0,
    };
    p.optimizer()
}

impl<'s> Parser<'s> {
    // ---- tokens ----

    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.pos + ahead).min(last)].tok
    }

    fn next(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn error(&self, kind: TextErrorKind, start: usize, end: usize) -> Box<TextError> {
        TextError::at(kind, self.source, start, end)
    }

    /// The next token is not what the grammar allows. When it starts a later line than a
    /// name, number or `)` before it, the caret goes just after that token instead: what is
    /// missing (the `= 0` of `state m`, the `)` of `(a + b`) is missing there.
    fn unexpected(&self, expected: &str) -> Box<TextError> {
        let t = self.peek();
        let before = self.pos.checked_sub(1).map(|i| &self.tokens[i]);
        let Some(before) = before.filter(|b| {
            matches!(b.tok, Tok::Ident(_) | Tok::Number(_) | Tok::Punct(")"))
                && self.source[b.end..t.start].contains('\n')
        }) else {
            return self.unexpected_at(t, expected);
        };
        let found = match t.tok {
            Tok::Eof => t.tok.describe(),
            _ => {
                let line = self.source[..t.start].matches('\n').count() + 1;
                format!("{} on line {line}", t.tok.describe())
            }
        };
        let kind = TextErrorKind::Unexpected {
            found,
            expected: expected.to_string(),
        };
        self.error(kind, before.end, before.end)
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek().tok, Tok::Punct(q) if q == p)
    }

    fn expect_punct(&mut self, p: &'static str, expected: &str) -> PResult<Token> {
        if self.peek().tok == Tok::Punct(p) {
            Ok(self.next())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w == word)
    }

    /// A name that may be declared: an identifier that is not a keyword.
    fn declared_name(&mut self, expected: &str) -> PResult<(String, usize, usize)> {
        match &self.peek().tok {
            Tok::Ident(name) if !KEYWORDS.contains(&name.as_str()) => {
                let t = self.next();
                let Tok::Ident(name) = t.tok else {
                    unreachable!()
                };
                Ok((name, t.start, t.end))
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    /// `NUMBER`, `-NUMBER`, `inf`, `-inf`, `nan` or `-nan`.
    fn signed_literal(&mut self) -> PResult<f64> {
        let negative = self.is_punct("-");
        if negative {
            self.next();
        }
        let value = match &self.peek().tok {
            Tok::Number(v) => *v,
            Tok::Ident(w) if w == "inf" => f64::INFINITY,
            Tok::Ident(w) if w == "nan" => f64::NAN,
            _ => return Err(self.unexpected("a number, `inf` or `nan`")),
        };
        self.next();
        Ok(if negative { -value } else { value })
    }

    // ---- graph building ----

    fn intern(&mut self, node: Node, start: usize, end: usize) -> PResult<NodeId> {
        let id = self.graph.intern(node).map_err(|e| match e {
            Error::ScalarRequired { what } => {
                self.error(TextErrorKind::ScalarRequired { what }, start, end)
            }
            other => panic!("interning a checked node failed: {other}"),
        })?;
        self.check_node_limit(start, end)?;
        Ok(id)
    }

    /// The node of `v`, interning a literal now.
    fn materialize(&mut self, v: Spanned) -> PResult<NodeId> {
        match v.val {
            Val::Node(id) => Ok(id),
            Val::Lit(x) => self.intern(Node::Const(crate::ir::Literal::new(x)), v.start, v.end),
        }
    }

    /// `op(args)`: literals interned in operand order after every operand was read, then
    /// the operation. A per-element operand of a scalar-only op is reported where it is.
    fn apply(&mut self, op: Op, args: &[Spanned], start: usize, end: usize) -> PResult<Spanned> {
        self.apply_as(op, args, start, end, false)
    }

    /// [`Self::apply`], naming a per-element operand of a scalar-only op by its argument
    /// position when the op was `called` (`pow(a, b)`) rather than written as `a ^ b`.
    fn apply_as(
        &mut self,
        op: Op,
        args: &[Spanned],
        start: usize,
        end: usize,
        called: bool,
    ) -> PResult<Spanned> {
        let mut ids = Vec::with_capacity(args.len());
        for a in args {
            ids.push(self.materialize(*a)?);
        }
        if op.scalar_only() {
            for (i, (a, id)) in args.iter().zip(&ids).enumerate() {
                if self.graph.rank(*id) == Rank::Element {
                    let what = match (op, i, called) {
                        (Op::Pow, 0, false) => "the base of `^`".to_string(),
                        (Op::Pow, _, false) => "the exponent of `^`".to_string(),
                        _ if op.arity() == 1 => format!("the argument of `{}`", op.name()),
                        _ => {
                            let nth = ["first", "second", "third"][i];
                            format!("the {nth} argument of `{}`", op.name())
                        }
                    };
                    let kind = TextErrorKind::ScalarRequired { what };
                    return Err(self.error(kind, a.start, a.end));
                }
            }
        }
        let id = self.intern(Node::apply(op, &ids), start, end)?;
        Ok(Spanned {
            val: Val::Node(id),
            start,
            end,
        })
    }

    // ---- declarations and statements ----

    fn optimizer(mut self) -> PResult<Graph> {
        if !self.is_keyword("optimizer") {
            return Err(self.unexpected("`optimizer NAME(...) { ... }`"));
        }
        self.next();
        let (name, _, _) = self.declared_name("the optimizer's name")?;
        self.graph = Graph::new(&name, Vec::new(), Vec::new()).expect("an empty signature");
        self.expect_punct("(", "`(` and the hyperparameters")?;
        while !self.is_punct(")") {
            let (hyper, start, end) = self.declared_name("a hyperparameter name or `)`")?;
            self.check_free(&hyper, start, end)?;
            self.expect_punct("=", "`=` and the hyperparameter's default")?;
            let default = self.signed_literal()?;
            let id = self.graph.add_hyper(&hyper, default).map_err(|_| {
                self.error(
                    TextErrorKind::Redefined {
                        name: hyper.clone(),
                        what: "defined",
                    },
                    start,
                    end,
                )
            })?;
            self.check_node_limit(start, end)?;
            self.scope.insert(hyper, Binding::Hyper(id));
            if !self.is_punct(")") {
                self.expect_punct(",", "`,` or `)`")?;
            }
        }
        self.next();
        self.expect_punct("{", "`{` and the optimizer's body")?;
        while !self.is_punct("}") {
            if self.peek().tok == Tok::Eof {
                return Err(self.unexpected("a statement or `}`"));
            }
            self.statement()?;
        }
        let close = self.next();
        if self.peek().tok != Tok::Eof {
            let t = self.peek();
            return Err(self.unexpected_at(t, "end of file after the optimizer's `}`"));
        }
        self.finish(close)
    }

    fn finish(mut self, close: Token) -> PResult<Graph> {
        let Some(param) = self.param else {
            return Err(self.error(TextErrorKind::MissingParamUpdate, close.start, close.end));
        };
        let mut outputs = Vec::new();
        for (i, slot) in self.graph.slots().iter().enumerate() {
            if !self.slot_assigned[i] {
                let (start, end) = self.slot_decl[i];
                let kind = TextErrorKind::MissingStateUpdate {
                    name: slot.name.clone(),
                };
                return Err(self.error(kind, start, end));
            }
            match self.scope[&slot.name] {
                Binding::Slot(_, value) => outputs.push(value),
                _ => unreachable!("slot names stay slots"),
            }
        }
        self.graph
            .set_outputs(param, outputs)
            .expect("scalar slots were checked at their assignment");
        Ok(self.graph)
    }

    /// Fails when `name` is taken by a built-in symbol, hyperparameter, state or `let`.
    fn check_free(&self, name: &str, start: usize, end: usize) -> PResult<()> {
        let what = match (name, self.scope.get(name)) {
            ("param", _) => "the parameter",
            ("grad", _) => "the gradient",
            ("step", _) => "the step count",
            (_, Some(Binding::Hyper(_))) => "a hyperparameter",
            (_, Some(Binding::Slot(..))) => "a state",
            (_, Some(Binding::Let(_))) => "a `let` name",
            (_, None) => return Ok(()),
        };
        let kind = TextErrorKind::Redefined {
            name: name.to_string(),
            what,
        };
        Err(self.error(kind, start, end))
    }

    fn statement(&mut self) -> PResult<()> {
        if self.is_punct(";") {
            self.next();
            return Ok(());
        }
        let Tok::Ident(word) = self.peek().tok.clone() else {
            let expected = "a statement: `let`, `state`, `flags`, `skip if` or an assignment";
            return Err(self.unexpected_at(self.peek(), expected));
        };
        match word.as_str() {
            "let" => {
                self.next();
                let (name, start, end) = self.declared_name("a name after `let`")?;
                if !matches!(self.scope.get(&name), Some(Binding::Let(_))) {
                    self.check_free(&name, start, end)?;
                }
                self.expect_punct("=", "`=` after the name")?;
                let value = self.expression()?;
                let id = self.materialize(value)?;
                self.scope.insert(name, Binding::Let(id));
            }
            "state" | "scalar" | "group" | "optimizer"
                if !matches!(word.as_str(), "group" | "optimizer")
                    || self.peek_at(1) == &Tok::Ident("state".into()) =>
            {
                let kind = match word.as_str() {
                    "scalar" => SlotKind::Scalar,
                    "group" => SlotKind::Group,
                    "optimizer" => SlotKind::Optimizer,
                    _ => SlotKind::Element,
                };
                if kind != SlotKind::Element {
                    self.next();
                    if !self.is_keyword("state") {
                        return Err(self.unexpected(&format!("`state` after `{word}`")));
                    }
                }
                self.next();
                let (name, start, end) = self.declared_name("the state's name")?;
                self.check_free(&name, start, end)?;
                self.expect_punct("=", "`=` and the state's initial value")?;
                let init = self.signed_literal()?;
                let id = self
                    .graph
                    .add_slot(&name, init, kind)
                    .expect("the name is free");
                let index = self.graph.slots().len() - 1;
                self.check_node_limit(start, end)?;
                self.scope.insert(name, Binding::Slot(index, id));
                self.slot_assigned.push(false);
                self.slot_decl.push((start, end));
            }
            "skip" if self.peek_at(1) == &Tok::Ident("if".into()) => {
                let t = self.next();
                self.next();
                if self.graph.skip().is_some() {
                    let kind = TextErrorKind::Redefined {
                        name: "skip".into(),
                        what: "set: a step has one skip condition",
                    };
                    return Err(self.error(kind, t.start, t.end));
                }
                let value = self.expression()?;
                let (start, end) = (value.start, value.end);
                let id = self.materialize(value)?;
                if self.graph.set_skip(Some(id)).is_err() {
                    let what = "the condition of `skip if`".to_string();
                    return Err(self.error(TextErrorKind::ScalarRequired { what }, start, end));
                }
            }
            "flags" => {
                let t = self.next();
                if self.flags_seen {
                    let kind = TextErrorKind::BadFlag {
                        name: "flags".into(),
                    };
                    return Err(self.error(kind, t.start, t.end));
                }
                self.flags_seen = true;
                let mut flags = GraphFlags::default();
                loop {
                    let (flag, start, end) = self.declared_name("a flag name")?;
                    let slot = match flag.as_str() {
                        "reciprocal" => &mut flags.reciprocal,
                        "fast_math" => &mut flags.fast_math,
                        _ => {
                            return Err(self.error(
                                TextErrorKind::BadFlag { name: flag },
                                start,
                                end,
                            ))
                        }
                    };
                    if *slot {
                        return Err(self.error(TextErrorKind::BadFlag { name: flag }, start, end));
                    }
                    *slot = true;
                    if !self.is_punct(",") {
                        break;
                    }
                    self.next();
                }
                self.graph.set_flags(flags);
            }
            _ => self.assignment(word)?,
        }
        Ok(())
    }

    /// Fails once the graph holds more than [`limits::MAX_NODES`] nodes: every node comes
    /// through [`Parser::intern`] or a declaration, and each checks right after adding one.
    fn check_node_limit(&self, start: usize, end: usize) -> PResult<()> {
        if self.graph.nodes().len() > limits::MAX_NODES {
            return Err(self.error(TextErrorKind::TooManyNodes, start, end));
        }
        Ok(())
    }

    fn assignment(&mut self, name: String) -> PResult<()> {
        let target = self.next();
        let not_assignable = |what| TextErrorKind::NotAssignable {
            name: name.clone(),
            what,
        };
        let slot = match (name.as_str(), self.scope.get(&name)) {
            ("param", _) => None,
            ("grad", _) => {
                return Err(self.error(not_assignable("the gradient"), target.start, target.end))
            }
            ("step", _) => {
                return Err(self.error(not_assignable("the step count"), target.start, target.end))
            }
            (_, Some(Binding::Slot(index, _))) => Some(*index),
            (_, Some(Binding::Hyper(_))) => {
                return Err(self.error(
                    not_assignable("a hyperparameter"),
                    target.start,
                    target.end,
                ))
            }
            (_, Some(Binding::Let(_))) => {
                let what = "a `let` name (write `let` again to rebind it)";
                return Err(self.error(not_assignable(what), target.start, target.end));
            }
            (_, None) if KEYWORDS.contains(&name.as_str()) => {
                return Err(self.unexpected_at(&target, "a statement"));
            }
            (_, None) => {
                let kind = self.unknown_name(&name);
                return Err(self.error(kind, target.start, target.end));
            }
        };
        self.expect_punct("=", "`=` after the name being assigned")?;
        let value = self.expression()?;
        let id = self.materialize(value)?;
        match slot {
            None => self.param = Some(id),
            Some(index) => {
                let def = &self.graph.slots()[index];
                if def.kind.is_scalar() && self.graph.rank(id) == Rank::Element {
                    let what = format!("the new value of {} `{}`", def.kind.keyword(), def.name);
                    let kind = TextErrorKind::ScalarRequired { what };
                    return Err(self.error(kind, value.start, value.end));
                }
                let shared = def.kind.is_shared();
                if shared {
                    self.graph.extend_per_parameter(&mut self.per_parameter);
                }
                if shared && self.per_parameter[id.index()] {
                    let what = format!("the new value of {} `{}`", def.kind.keyword(), def.name);
                    let kind = TextErrorKind::PerParameterValue { what };
                    return Err(self.error(kind, value.start, value.end));
                }
                self.scope.insert(name, Binding::Slot(index, id));
                self.slot_assigned[index] = true;
            }
        }
        Ok(())
    }

    fn unexpected_at(&self, t: &Token, expected: &str) -> Box<TextError> {
        let kind = TextErrorKind::Unexpected {
            found: t.tok.describe(),
            expected: expected.to_string(),
        };
        self.error(kind, t.start, t.end)
    }

    // ---- expressions ----

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > limits::MAX_DEPTH {
            let t = self.peek();
            return Err(self.error(TextErrorKind::TooDeep, t.start, t.end));
        }
        Ok(())
    }

    fn expression(&mut self) -> PResult<Spanned> {
        self.enter()?;
        let lhs = self.sum()?;
        let result = match self.comparison_op() {
            None => lhs,
            Some(op) => {
                self.next();
                let rhs = self.sum()?;
                if self.comparison_op().is_some() {
                    let t = self.peek();
                    return Err(self.error(TextErrorKind::ChainedComparison, t.start, t.end));
                }
                self.apply(op, &[lhs, rhs], lhs.start, rhs.end)?
            }
        };
        self.depth -= 1;
        Ok(result)
    }

    fn comparison_op(&self) -> Option<Op> {
        match self.peek().tok {
            Tok::Punct("==") => Some(Op::Eq),
            Tok::Punct("!=") => Some(Op::Ne),
            Tok::Punct("<") => Some(Op::Lt),
            Tok::Punct("<=") => Some(Op::Le),
            Tok::Punct(">") => Some(Op::Gt),
            Tok::Punct(">=") => Some(Op::Ge),
            _ => None,
        }
    }

    fn sum(&mut self) -> PResult<Spanned> {
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("+") => Op::Add,
                Tok::Punct("-") => Op::Sub,
                _ => return Ok(lhs),
            };
            self.next();
            let rhs = self.term()?;
            lhs = self.apply(op, &[lhs, rhs], lhs.start, rhs.end)?;
        }
    }

    fn term(&mut self) -> PResult<Spanned> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("*") => Op::Mul,
                Tok::Punct("/") => Op::Div,
                _ => return Ok(lhs),
            };
            self.next();
            let rhs = self.unary()?;
            lhs = self.apply(op, &[lhs, rhs], lhs.start, rhs.end)?;
        }
    }

    /// `-x` negates a literal in place (so `-2` is the literal −2) and applies `neg`
    /// otherwise; it binds looser than `^`, so `-a ^ b` is `-(a ^ b)`.
    fn unary(&mut self) -> PResult<Spanned> {
        if !self.is_punct("-") {
            return self.power();
        }
        let minus = self.next();
        self.enter()?;
        let operand = self.unary()?;
        self.depth -= 1;
        match operand.val {
            Val::Lit(x) => Ok(Spanned {
                val: Val::Lit(-x),
                start: minus.start,
                end: operand.end,
            }),
            Val::Node(_) => self.apply(Op::Neg, &[operand], minus.start, operand.end),
        }
    }

    fn power(&mut self) -> PResult<Spanned> {
        let base = self.primary()?;
        if !self.is_punct("^") {
            return Ok(base);
        }
        self.next();
        self.enter()?;
        let exponent = self.unary()?;
        self.depth -= 1;
        self.apply(Op::Pow, &[base, exponent], base.start, exponent.end)
    }

    fn primary(&mut self) -> PResult<Spanned> {
        let t = self.peek().clone();
        let at = |val| Spanned {
            val,
            start: t.start,
            end: t.end,
        };
        match &t.tok {
            Tok::Number(x) => {
                self.next();
                Ok(at(Val::Lit(*x)))
            }
            Tok::Punct("(") => {
                self.next();
                let inner = self.expression()?;
                let close = self.expect_punct(")", "`)`")?;
                Ok(Spanned {
                    val: inner.val,
                    start: t.start,
                    end: close.end,
                })
            }
            Tok::Ident(name) if *self.peek_at(1) == Tok::Punct("(") => self.call(name.clone()),
            Tok::Ident(name) => {
                self.next();
                let id = match (name.as_str(), self.scope.get(name)) {
                    ("inf", _) => return Ok(at(Val::Lit(f64::INFINITY))),
                    ("nan", _) => return Ok(at(Val::Lit(f64::NAN))),
                    ("param", _) => match self.param {
                        Some(id) => id,
                        None => self.intern(Node::Param, t.start, t.end)?,
                    },
                    ("grad", _) => self.intern(Node::Grad, t.start, t.end)?,
                    ("step", _) => self.intern(Node::Step, t.start, t.end)?,
                    (_, Some(Binding::Hyper(id) | Binding::Slot(_, id) | Binding::Let(id))) => *id,
                    (_, None) => {
                        let kind = self.unknown_name(name);
                        return Err(self.error(kind, t.start, t.end));
                    }
                };
                Ok(at(Val::Node(id)))
            }
            _ => {
                Err(self.unexpected("an expression: a name, a number, `-`, `(` or a function call"))
            }
        }
    }

    /// The error for `name`, suggesting a name in scope spelled almost the same.
    fn unknown_name(&self, name: &str) -> TextErrorKind {
        let in_scope = self.scope.keys().map(String::as_str);
        let suggestion = closest(name, in_scope.chain(["param", "grad", "step"]));
        TextErrorKind::UnknownName {
            name: name.to_string(),
            suggestion,
        }
    }

    fn call(&mut self, name: String) -> PResult<Spanned> {
        if let Some((op, scope)) = reduction(&name) {
            return self.reduce_call(name, op, scope);
        }
        if schedules::NAMES.contains(&name.as_str()) {
            return self.schedule_call(name, None);
        }
        let callee = self.next();
        let Some(&(_, op)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            let reductions = ReduceOp::ALL.iter().flat_map(|op| {
                [Scope::Param, Scope::Global].map(move |scope| reduction_name(*op, scope))
            });
            let names: Vec<String> = FUNCTIONS
                .iter()
                .map(|(f, _)| f.to_string())
                .chain(reductions)
                .chain(schedules::NAMES.iter().map(|f| f.to_string()))
                .collect();
            let suggestion = closest(&name, names.iter().map(String::as_str));
            let kind = TextErrorKind::UnknownFunction { name, suggestion };
            return Err(self.error(kind, callee.start, callee.end));
        };
        let (args, end) = self.arguments(name, callee.start, op.arity())?;
        self.apply_as(op, &args, callee.start, end, true)
    }

    /// A call's `(arguments)` after its name (which starts at `start`): exactly `arity` of
    /// them, else an arity error under the whole call. Returns them and the call's end.
    fn arguments(
        &mut self,
        name: String,
        start: usize,
        arity: usize,
    ) -> PResult<(Vec<Spanned>, usize)> {
        let (args, end) = self.all_arguments()?;
        if args.len() != arity {
            let kind = TextErrorKind::Arity {
                function: name,
                expected: arity,
                actual: args.len(),
            };
            return Err(self.error(kind, start, end));
        }
        Ok((args, end))
    }

    /// `sumsq(x)`, `global_sumsq(x)`, ...: a reduction of one per-element argument.
    fn reduce_call(&mut self, name: String, op: ReduceOp, scope: Scope) -> PResult<Spanned> {
        let callee = self.next();
        let (args, end) = self.arguments(name.clone(), callee.start, 1)?;
        let arg = self.materialize(args[0])?;
        if self.graph.rank(arg) != Rank::Element {
            let what = format!("the argument of `{name}`");
            let kind = TextErrorKind::ElementRequired { what };
            return Err(self.error(kind, args[0].start, args[0].end));
        }
        let id = self.intern(Node::Reduce(op, scope, arg), callee.start, end)?;
        Ok(Spanned {
            val: Val::Node(id),
            start: callee.start,
            end,
        })
    }
}

/// The text form's name of a reduction: its op's name, prefixed by `global_` for the global
/// scope.
pub(crate) fn reduction_name(op: ReduceOp, scope: Scope) -> String {
    match scope {
        Scope::Param => op.name().to_string(),
        Scope::Global => format!("global_{}", op.name()),
    }
}

/// The reduction a function name calls, if it is one.
fn reduction(name: &str) -> Option<(ReduceOp, Scope)> {
    match name.strip_prefix("global_") {
        Some(rest) => ReduceOp::from_name(rest).map(|op| (op, Scope::Global)),
        None => ReduceOp::from_name(name).map(|op| (op, Scope::Param)),
    }
}

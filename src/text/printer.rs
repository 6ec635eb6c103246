//! The printer of the text form: a [`Graph`] to text that parses back to the same graph.
//!
//! The parser creates nodes in reading order (see the parser's module doc), so the printer
//! walks the graph's arena in order and writes statements whose reading recreates exactly
//! that order: a value used once is written inside its user's expression when the order
//! allows it, a value used more than once (or an output) gets its own `let` or assignment,
//! and a leaf or constant that the arena holds earlier than its first use gets a `let` of its
//! own. Each statement is checked against the arena by simulating the parser before it is
//! written, so the reading order is not a guess.

use crate::ir::{Node, NodeId, Op};
use crate::Graph;
use std::collections::HashSet;
use std::fmt::Write;

/// The text form of `graph`.
///
/// `parse(&print(g))` is a graph equal to `g` (same arena, node for node) whenever `g`'s
/// hyperparameters are its first nodes — as in every built-in, every graph that declares its
/// hyperparameters before anything else and every parsed graph — and the text fits within
/// [`super::limits`]; with a hyperparameter declared later it computes the same outputs with
/// the hyperparameters moved first. NaN literals print as `nan` (their payload is not kept).
/// Every name of a graph is an identifier (checked when it is declared), so printing cannot
/// fail.
pub fn print(graph: &Graph) -> String {
    Printer::new(graph).run()
}

/// Where an output goes: the param (`None`) or a state slot.
type Target = Option<usize>;

struct Printer<'g> {
    g: &'g Graph,
    /// Arena positions of each node's users, one per operand occurrence.
    users: Vec<Vec<usize>>,
    /// Whether an Apply node is written inside its only user's expression.
    inline: Vec<bool>,
    /// Which nodes the parser will have created so far.
    interned: Vec<bool>,
    /// How the text currently refers to a node (`None`: as a literal, or not at all).
    name: Vec<Option<String>>,
    /// Output targets and their nodes, param first.
    targets: Vec<(Target, NodeId)>,
    assigned: Vec<bool>,
    /// The node each target's name currently stands for (`None`: a param never read).
    current: Vec<Option<NodeId>>,
    taken: HashSet<String>,
    next_let: usize,
    body: String,
}

/// Most operations nested in one written expression; deeper ones are named by `let`.
const MAX_INLINE_HEIGHT: usize = 8;

/// Binding strength of what an expression's text is, loosest first.
const CMP: u8 = 0;
const SUM: u8 = 1;
const TERM: u8 = 2;
const UNARY: u8 = 3;
const POWER: u8 = 4;
const ATOM: u8 = 5;

impl<'g> Printer<'g> {
    fn new(g: &'g Graph) -> Printer<'g> {
        let n = g.nodes().len();
        let mut users = vec![Vec::new(); n];
        for (i, node) in g.nodes().iter().enumerate() {
            for a in node.args() {
                users[a.index()].push(i);
            }
        }
        // The skip condition is read after every node (`skip if ...` comes last): a user
        // past the arena's end keeps its name alive to the end.
        if let Some(skip) = g.skip() {
            users[skip.index()].push(n);
        }
        let (param_out, slot_outs) = g.outputs().split_first().expect("a finished graph");
        let targets: Vec<(Target, NodeId)> = std::iter::once((None, *param_out))
            .chain(slot_outs.iter().enumerate().map(|(i, &o)| (Some(i), o)))
            .collect();
        let is_output: HashSet<NodeId> = g.outputs().iter().copied().collect();
        let mut inline: Vec<bool> = (0..n)
            .map(|i| {
                is_op(g.nodes()[i]) && users[i].len() == 1 && !is_output.contains(&NodeId(i as u32))
            })
            .collect();
        // Cap the height of written expressions, so that printed text stays far within the
        // parser's nesting limit and the printer's recursion stays shallow.
        let mut height = vec![0usize; n];
        for (i, node) in g.nodes().iter().enumerate() {
            if inline[i] {
                let h = 1 + node
                    .args()
                    .iter()
                    .map(|a| height[a.index()])
                    .max()
                    .unwrap_or(0);
                if h > MAX_INLINE_HEIGHT {
                    inline[i] = false;
                } else {
                    height[i] = h;
                }
            }
        }
        let mut name = vec![None; n];
        let mut interned = vec![false; n];
        let mut current = vec![None; targets.len()];
        for (i, node) in g.nodes().iter().enumerate() {
            match *node {
                Node::Hyper(h) => {
                    name[i] = Some(g.hypers()[h as usize].name.clone());
                    interned[i] = true;
                }
                Node::Param => {
                    name[i] = Some("param".into());
                    current[0] = Some(NodeId(i as u32));
                }
                Node::Grad => name[i] = Some("grad".into()),
                Node::Step => name[i] = Some("step".into()),
                Node::State(s) => current[s as usize + 1] = Some(NodeId(i as u32)),
                _ => {}
            }
        }
        let taken = g
            .hypers()
            .iter()
            .map(|h| h.name.clone())
            .chain(g.slots().iter().map(|s| s.name.clone()))
            .collect();
        Printer {
            g,
            users,
            inline,
            interned,
            name,
            assigned: vec![false; targets.len()],
            targets,
            current,
            taken,
            next_let: 0,
            body: String::new(),
        }
    }

    fn run(mut self) -> String {
        let flags = self.g.flags();
        let on: Vec<&str> = [
            ("reciprocal", flags.reciprocal),
            ("fast_math", flags.fast_math),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if !on.is_empty() {
            self.line(format!("flags {}", on.join(", ")));
        }
        // A state whose value is never read (a graph after `dce`) has no node: declare it
        // first. Its parse holds the node, unused.
        for t in 1..self.targets.len() {
            if self.current[t].is_none() {
                self.declare(t - 1);
            }
        }
        let mut pos = 0;
        while pos < self.g.nodes().len() {
            if self.interned[pos] {
                pos += 1;
                continue;
            }
            if let Node::State(s) = self.g.nodes()[pos] {
                self.declare(s as usize);
                self.name[pos] = Some(self.g.slots()[s as usize].name.clone());
                self.interned[pos] = true;
                continue;
            }
            let root = (pos..self.g.nodes().len()).find(|&i| {
                !self.interned[i]
                    && match self.g.nodes()[i] {
                        Node::State(_) => true,
                        Node::Apply(..) | Node::Reduce(..) => !self.inline[i],
                        _ => false,
                    }
            });
            let end = root.unwrap_or(self.g.nodes().len() - 1);
            let expected: Vec<usize> = (pos..=end).filter(|&i| !self.interned[i]).collect();
            if let Some(r) = root.filter(|&r| is_op(self.g.nodes()[r])) {
                if self.reading_order(r) == expected {
                    self.statement(r);
                    continue;
                }
            }
            // The next statement would create nodes in another order than the arena's: split
            // off the largest expression that creates exactly the nodes due now, else give
            // the node due now a statement of its own.
            if let Some(a) = self.prefix_statement(&expected) {
                self.inline[a] = false;
            } else if is_op(self.g.nodes()[pos]) {
                self.inline[pos] = false;
            } else {
                // A leaf or constant due before any statement can use it: its own `let`. The
                // gradient and the input param keep the short name given here (`g`, `p`),
                // which also names the input param once `param` is assigned.
                let node = self.g.nodes()[pos];
                let text = self.reference(pos, false);
                let t = match node {
                    Node::Grad => self.short_name("g"),
                    Node::Param => self.short_name("p"),
                    _ => self.fresh(),
                };
                self.line(format!("let {t} = {text}"));
                self.interned[pos] = true;
                if !matches!(node, Node::Step) {
                    self.name[pos] = Some(t);
                }
            }
        }
        if let Some(skip) = self.g.skip() {
            let text = self.reference(skip.index(), false);
            self.line(format!("skip if {text}"));
        }
        self.trailing_assignments();
        let mut out = String::new();
        let hypers: Vec<String> = self
            .g
            .hypers()
            .iter()
            .map(|h| format!("{} = {}", h.name, literal(h.default)))
            .collect();
        let _ = writeln!(out, "optimizer {}({}) {{", self.g.name(), hypers.join(", "));
        out.push_str(&self.body);
        out.push_str("}\n");
        out
    }

    fn declare(&mut self, slot: usize) {
        let slot = &self.g.slots()[slot];
        let kind = slot.kind.keyword();
        let text = format!("{kind} {} = {}", slot.name, literal(slot.init));
        self.line(text);
    }

    fn line(&mut self, text: String) {
        let _ = writeln!(self.body, "    {text}");
    }

    /// `base` as a `let` name if no hyperparameter, state or earlier `let` has it, else a
    /// fresh one.
    fn short_name(&mut self, base: &str) -> String {
        if self.taken.insert(base.to_string()) {
            base.to_string()
        } else {
            self.fresh()
        }
    }

    fn fresh(&mut self) -> String {
        loop {
            let t = format!("t{}", self.next_let);
            self.next_let += 1;
            if !self.taken.contains(&t) {
                return t;
            }
        }
    }

    /// The inlined operation whose expression, read alone, creates the longest prefix of
    /// `expected` (the nodes due next, in arena order): found among the enclosing
    /// expressions of the first node due.
    fn prefix_statement(&self, expected: &[usize]) -> Option<usize> {
        let first = expected[0];
        let last = *expected.last().expect("a node is due");
        let mut cur = if self.inline[first] {
            first
        } else {
            *self.users[first]
                .iter()
                .find(|&&u| u <= last && self.inline[u] && !self.interned[u])?
        };
        let mut best = None;
        loop {
            let reading = self.reading_order(cur);
            if expected.starts_with(&reading) {
                best = Some(cur);
            }
            match self.users[cur].first() {
                Some(&u) if u <= last && self.inline[u] => cur = u,
                _ => return best,
            }
        }
    }

    /// The inlined Apply nodes inside the expression of `root`.
    fn inlined_tree(&self, root: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack: Vec<usize> = self.g.nodes()[root]
            .args()
            .iter()
            .map(|a| a.index())
            .collect();
        while let Some(i) = stack.pop() {
            if !self.interned[i] && self.inline[i] {
                out.push(i);
                stack.extend(self.g.nodes()[i].args().iter().map(|a| a.index()));
            }
        }
        out
    }

    /// The nodes the parser creates, in order, when it reads the expression of `root`.
    fn reading_order(&self, root: usize) -> Vec<usize> {
        let mut made = Vec::new();
        let mut seen = HashSet::new();
        self.read(root, true, &mut made, &mut seen);
        made
    }

    fn read(&self, i: usize, root: bool, made: &mut Vec<usize>, seen: &mut HashSet<usize>) {
        let fresh = |i: usize, seen: &HashSet<usize>| !self.interned[i] && !seen.contains(&i);
        match self.g.nodes()[i] {
            Node::Apply(op, _) if root || (self.inline[i] && fresh(i, seen)) => {
                let args = self.g.nodes()[i].args();
                for a in args {
                    self.read(a.index(), false, made, seen);
                }
                // Literals are created when the operation consumes them; `neg`'s operand is
                // written as a name, never a literal (`-2` would be the literal −2).
                if op != Op::Neg {
                    for a in args {
                        let a = a.index();
                        if matches!(self.g.nodes()[a], Node::Const(_)) && fresh(a, seen) {
                            seen.insert(a);
                            made.push(a);
                        }
                    }
                }
                seen.insert(i);
                made.push(i);
            }
            Node::Reduce(_, _, arg) if root || (self.inline[i] && fresh(i, seen)) => {
                self.read(arg.index(), false, made, seen);
                seen.insert(i);
                made.push(i);
            }
            Node::Param | Node::Grad | Node::Step if fresh(i, seen) => {
                seen.insert(i);
                made.push(i);
            }
            _ => {}
        }
    }

    /// How an operand reads: its name, a literal, or (inlined) its expression; with the
    /// binding strength of that text.
    fn expr(&self, i: usize, root: bool) -> (String, u8) {
        let node = self.g.nodes()[i];
        if let Node::Const(c) = node {
            let v = c.value();
            return (literal(v), if v.is_sign_negative() { UNARY } else { ATOM });
        }
        let written_here = root || (self.inline[i] && !self.interned[i]);
        if let Node::Reduce(op, scope, arg) = node {
            if !written_here {
                return (self.reference(i, false), ATOM);
            }
            let name = crate::text::parser::reduction_name(op, scope);
            return (format!("{name}({})", self.expr(arg.index(), false).0), ATOM);
        }
        let Node::Apply(op, _) = node else {
            return (self.reference(i, false), ATOM);
        };
        if !written_here {
            return (self.reference(i, false), ATOM);
        }
        let args = node.args();
        let operand = |k: usize| self.expr(args[k].index(), false);
        let wrap = |(text, _): (String, u8), parens: bool| {
            if parens {
                format!("({text})")
            } else {
                text
            }
        };
        let infix = |symbol: &str, prec: u8| {
            let (l, r) = (operand(0), operand(1));
            // Comparisons do not chain, so a comparison operand of one needs parentheses.
            let left_parens = if prec == CMP { l.1 == CMP } else { l.1 < prec };
            let right_parens = r.1 <= prec;
            let text = format!(
                "{} {symbol} {}",
                wrap(l, left_parens),
                wrap(r, right_parens)
            );
            (text, prec)
        };
        match op {
            Op::Add => infix("+", SUM),
            Op::Sub => infix("-", SUM),
            Op::Mul => infix("*", TERM),
            Op::Div => infix("/", TERM),
            Op::Eq => infix("==", CMP),
            Op::Ne => infix("!=", CMP),
            Op::Lt => infix("<", CMP),
            Op::Le => infix("<=", CMP),
            Op::Gt => infix(">", CMP),
            Op::Ge => infix(">=", CMP),
            Op::Pow => {
                let (base, exponent) = (operand(0), operand(1));
                let base_parens = base.1 <= POWER;
                let exponent_parens = exponent.1 < UNARY;
                let text = format!(
                    "{} ^ {}",
                    wrap(base, base_parens),
                    wrap(exponent, exponent_parens)
                );
                (text, POWER)
            }
            Op::Neg => {
                let a = args[0].index();
                let text = if matches!(self.g.nodes()[a], Node::Const(_)) {
                    self.reference(a, true)
                } else {
                    let (text, prec) = operand(0);
                    wrap((text, prec), prec <= UNARY)
                };
                (format!("-{text}"), UNARY)
            }
            _ => {
                let texts: Vec<String> = (0..args.len()).map(|k| operand(k).0).collect();
                (format!("{}({})", op.name(), texts.join(", ")), ATOM)
            }
        }
    }

    /// The name of node `i` (or, for a constant, its literal unless `named` is asked for).
    fn reference(&self, i: usize, named: bool) -> String {
        match (&self.name[i], self.g.nodes()[i]) {
            (Some(name), _) => name.clone(),
            (None, Node::Const(c)) if !named => literal(c.value()),
            _ => unreachable!("node {i} is referred to by a name it does not have"),
        }
    }

    /// Writes the statement that creates the named node `r` (its expression already
    /// checked against the arena).
    fn statement(&mut self, r: usize) {
        // `neg`'s constant operands are referred to by name: give them one.
        for i in self.inlined_tree(r).into_iter().chain([r]) {
            if let Node::Apply(Op::Neg, args) = self.g.nodes()[i] {
                let a = args[0].index();
                if matches!(self.g.nodes()[a], Node::Const(_)) && self.name[a].is_none() {
                    let t = self.fresh();
                    let text = self.reference(a, false);
                    self.line(format!("let {t} = {text}"));
                    self.name[a] = Some(t);
                }
            }
        }
        let text = self.expr(r, true).0;
        let reading = self.reading_order(r);
        let id = NodeId(r as u32);
        let first = self
            .targets
            .iter()
            .position(|&(_, out)| out == id)
            .filter(|&t| match self.current[t] {
                // A state is assigned after its declaration, the param after the input param
                // was created (once `param` is assigned, the text cannot name the input). An
                // old value still needed later is saved by a `let` before the assignment,
                // which is only possible when it existed before this statement.
                Some(old) => {
                    let before = self.interned[old.index()];
                    before || (reading.contains(&old.index()) && !self.needed_after(old, r))
                }
                None => true,
            });
        for i in reading {
            self.interned[i] = true;
        }
        let Some(t) = first else {
            let name = self.fresh();
            self.line(format!("let {name} = {text}"));
            self.name[r] = Some(name);
            return;
        };
        let target = self.target_name(t);
        if let Some(old) = self.current[t] {
            let named_otherwise = self.name[old.index()]
                .as_deref()
                .is_some_and(|name| name != target);
            if named_otherwise {
                // Still readable under its other name (`p` for the input param).
            } else if self.needed_after(old, r) {
                let saved = self.fresh();
                self.line(format!("let {saved} = {target}"));
                self.name[old.index()] = Some(saved);
            } else if self.name[old.index()].as_deref() == Some(target.as_str()) {
                self.name[old.index()] = None;
            }
        }
        self.line(format!("{target} = {text}"));
        self.name[r] = Some(target);
        self.current[t] = Some(id);
        self.assigned[t] = true;
    }

    fn target_name(&self, t: usize) -> String {
        match self.targets[t].0 {
            None => "param".to_string(),
            Some(s) => self.g.slots()[s].name.clone(),
        }
    }

    /// Whether the text still refers to `node` after the statement of arena position `r`.
    fn needed_after(&self, node: NodeId, r: usize) -> bool {
        let i = node.index();
        i < self.users.len() && self.users[i].iter().any(|&u| u > r)
            || self
                .targets
                .iter()
                .zip(&self.assigned)
                .any(|(&(_, out), &done)| out == node && !done)
    }

    /// Assigns every output that no statement assigned, reading each value before any of
    /// these assignments can overwrite the name it is read through.
    fn trailing_assignments(&mut self) {
        let pending: Vec<usize> = (0..self.targets.len())
            .filter(|&t| !self.assigned[t])
            .collect();
        let mut sources: Vec<String> = pending
            .iter()
            .map(|&t| self.reference(self.targets[t].1.index(), false))
            .collect();
        for k in 0..pending.len() {
            let overwritten_before = pending[..k]
                .iter()
                .any(|&t| self.target_name(t) == sources[k]);
            if overwritten_before {
                let saved = self.fresh();
                self.line(format!("let {saved} = {}", sources[k]));
                sources[k] = saved;
            }
        }
        for (k, &t) in pending.iter().enumerate() {
            let target = self.target_name(t);
            self.line(format!("{target} = {}", sources[k]));
        }
    }
}

/// A literal as the lexer reads it back: shortest round-trip decimal, `inf`, `nan`.
fn literal(v: f64) -> String {
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v.is_nan() {
        format!("{sign}nan")
    } else if v.is_infinite() {
        format!("{sign}inf")
    } else {
        format!("{v:?}")
    }
}

/// An operation or a reduction: a node written as an expression of its operands.
fn is_op(node: Node) -> bool {
    matches!(node, Node::Apply(..) | Node::Reduce(..))
}

//! The text form of an optimizer (`.opt` files): a lexer and parser into the same [`Graph`]
//! the [`crate::Builder`] makes, and a printer whose output parses back to an identical graph.
//!
//! ```text
//! # AdamW, as in its paper.
//! optimizer adamw(lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, weight_decay = 1e-2) {
//!     state m = 0
//!     state v = 0
//!     param = param * (1 - lr * weight_decay)
//!     m = b1 * m + (1 - b1) * grad
//!     v = b2 * v + (1 - b2) * grad * grad
//!     let m_hat = m / (1 - b1 ^ step)
//!     let v_hat = v / (1 - b2 ^ step)
//!     param = param - lr * m_hat / (sqrt(v_hat) + eps)
//! }
//! ```
//!
//! - The header names the optimizer and its hyperparameters with their defaults.
//! - `state NAME = INIT` declares a per-element state slot, `scalar state NAME = INIT` a
//!   per-parameter scalar one, `group state NAME = INIT` one scalar per parameter group
//!   ([`crate::ir::SlotKind::Group`]), `optimizer state NAME = INIT` one scalar for the whole
//!   optimizer ([`crate::ir::SlotKind::Optimizer`]); `flags reciprocal, fast_math` opts into
//!   [`crate::ir::GraphFlags`].
//! - `let NAME = EXPR` names a value; `param = EXPR` and `STATE = EXPR` assign, in order:
//!   later lines see earlier updates. The param must be assigned, and so must every state.
//! - `skip if EXPR` (at most once) gives the step a skip condition: a per-step scalar that,
//!   when not zero, makes the whole step change nothing ([`crate::Graph::skip`]); e.g.
//!   `skip if global_nonfinite(grad)`.
//! - Operators, loosest first: comparisons `== != < <= > >=` (yielding 1 or 0, not chained),
//!   `+ -`, `* /`, unary `-`, `^` (power, right-associative). Functions: `sqrt abs sign exp
//!   ln cos floor min max pow select fma`. `^`, `pow`, `exp`, `ln`, `cos` and `floor` take
//!   per-step scalars only (hyperparameters, `step`, scalar state, numbers). Reductions of a per-element value to
//!   a per-step scalar: `sum sumsq maxabs nonfinite` over each parameter tensor, and
//!   `global_sum global_sumsq global_maxabs global_nonfinite` over every parameter of the
//!   step (see [`crate::ir::reduce`]). Literals: decimal numbers, `inf`,
//!   `nan`. `#` starts a comment.
//! - Schedules, optax's, read `step` implicitly (at optax's count `step − 1`) and expand to
//!   per-step scalars ([`crate::schedule::graph`]; arguments in optax's order, trailing ones
//!   with optax's defaults optional; step counts, rates, boundaries and `staircase` are
//!   number literals): `constant(value)`, `linear(init, end, steps[, begin])`,
//!   `polynomial(init, end, power, steps[, begin])`, `cosine_decay(init, decay_steps[,
//!   alpha[, exponent]])`, `warmup_cosine_decay(init, peak, warmup_steps, decay_steps[,
//!   end[, exponent]])`, `exponential_decay(init, steps, rate[, begin[, staircase (0 or
//!   1)[, end]]])`, `piecewise_constant(init, boundary, scale, ...)` and `join(schedule,
//!   boundary, schedule, ...)`, e.g. `let lr_t = warmup_cosine_decay(0, lr, 100, 1000, 0)`.
//!   The printer writes the expanded operations.
//!
//! Errors carry the line and column, the offending line with a caret under the offending
//! text, and what was expected. Hostile input is bounded: see [`limits`].

mod error;
mod lexer;
mod parser;
mod printer;

pub use error::{TextError, TextErrorKind};
pub use printer::print;

use crate::{Error, Graph, Result};
use std::path::Path;

/// The bounds within which the parser works; input beyond them is an error, never a
/// crash, a hang or an unbounded allocation.
pub mod limits {
    /// Largest source accepted, in bytes.
    pub const MAX_SOURCE_BYTES: usize = 1 << 20;
    /// Deepest nesting of expressions: a statement's expression is the first level, and each
    /// parenthesis, sign or exponent inside it one more (a call two: itself and its
    /// arguments), so 63 nested parentheses are accepted.
    pub const MAX_DEPTH: usize = 64;
    /// Most nodes a parsed graph may hold.
    pub const MAX_NODES: usize = 100_000;
}

/// Parses the text form of one optimizer into its graph.
///
/// ```
/// let graph = optjit::text::parse(
///     "optimizer sgd(lr = 0.1) {
///          param = param - lr * grad
///      }",
/// )
/// .unwrap();
/// assert_eq!(graph.name(), "sgd");
/// assert_eq!(optjit::text::parse(&optjit::text::print(&graph)).unwrap(), graph);
/// ```
pub fn parse(source: &str) -> Result<Graph> {
    // Some editors start UTF-8 files with an invisible byte-order mark.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    parser::parse(source).map_err(Error::Text)
}

/// [`parse`] for raw bytes: invalid UTF-8 is an error at its position.
pub fn parse_bytes(source: &[u8]) -> Result<Graph> {
    let text = error::check_source(source).map_err(Error::Text)?;
    parse(text)
}

/// Reads and parses an `.opt` file; errors name the file.
pub fn parse_file(path: impl AsRef<Path>) -> Result<Graph> {
    let path = path.as_ref();
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit, so an oversized file is reported without reading it all.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, limits::MAX_SOURCE_BYTES as u64 + 1),
        &mut bytes,
    )
    .map_err(io)?;
    named(parse_bytes(&bytes), &path.display().to_string())
}

/// [`parse`] of text read from `file`: errors name it.
pub fn parse_named(source: &str, file: &str) -> Result<Graph> {
    named(parse(source), file)
}

fn named(parsed: Result<Graph>, file: &str) -> Result<Graph> {
    parsed.map_err(|e| match e {
        Error::Text(mut t) => {
            t.file = Some(file.to_string());
            Error::Text(t)
        }
        other => other,
    })
}

//! Errors of the text form: what went wrong, where (line, column, width), and the line itself,
//! so the message can show a caret under the offending text.

use super::limits;
use std::fmt;

/// What is wrong with a piece of optimizer text. Every kind is a user mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextErrorKind {
    /// The source is not valid UTF-8.
    InvalidUtf8,
    /// The source is longer than [`limits::MAX_SOURCE_BYTES`].
    TooLarge {
        /// Its size in bytes (at least the limit plus one).
        bytes: usize,
    },
    /// Nesting deeper than [`limits::MAX_DEPTH`].
    TooDeep,
    /// The graph would hold more than [`limits::MAX_NODES`] nodes.
    TooManyNodes,
    /// A character that starts no token.
    UnexpectedChar {
        /// The character.
        found: char,
    },
    /// A number that does not parse, or one too large for an f64.
    BadNumber {
        /// The text of the number.
        text: String,
    },
    /// A token other than the grammar allows here.
    Unexpected {
        /// The token found, and its line when the caret is on an earlier one.
        found: String,
        /// What the grammar allows.
        expected: String,
    },
    /// A name that is not a hyperparameter, state, `let` name, `param`, `grad` or `step`.
    UnknownName {
        /// The name.
        name: String,
        /// A name in scope spelled almost the same, if there is one.
        suggestion: Option<String>,
    },
    /// A call of a function optjit does not have.
    UnknownFunction {
        /// The name called.
        name: String,
        /// A function spelled almost the same, if there is one.
        suggestion: Option<String>,
    },
    /// A function called with the wrong number of arguments.
    Arity {
        /// The function.
        function: String,
        /// The arguments it takes.
        expected: usize,
        /// The arguments given.
        actual: usize,
    },
    /// An assignment to something that cannot be assigned.
    NotAssignable {
        /// The name assigned to.
        name: String,
        /// What it is: "a hyperparameter", "the gradient", ...
        what: &'static str,
    },
    /// A declaration reusing a name that is already taken.
    Redefined {
        /// The name.
        name: String,
        /// What it already is.
        what: &'static str,
    },
    /// The body never assigns the param.
    MissingParamUpdate,
    /// The body never assigns a declared state slot.
    MissingStateUpdate {
        /// The slot.
        name: String,
    },
    /// A per-element value where only a per-step scalar is allowed.
    ScalarRequired {
        /// Where: "the base of `^`", "the new value of scalar state `mu`", ...
        what: String,
    },
    /// A per-step scalar where a per-element value is required (a reduction's argument).
    ElementRequired {
        /// Where: "the argument of `sumsq`".
        what: String,
    },
    /// A group or optimizer state's new value that differs between the parameters of a
    /// group.
    PerParameterValue {
        /// What: "the new value of group state `k`".
        what: String,
    },
    /// An expression where a schedule needs a number literal (a step count, a rate, a
    /// boundary: optax branches on these while building the schedule).
    NumberRequired {
        /// Where: "the `decay_steps` argument of `cosine_decay`".
        what: String,
    },
    /// A schedule argument outside its domain (optax raises `ValueError`), e.g. a cosine
    /// decay over no steps.
    InvalidArgument {
        /// The schedule.
        function: String,
        /// The argument, as optax names it.
        argument: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Comparisons written in a chain (`a < b < c`).
    ChainedComparison,
    /// A `flags` item that is not a known flag, or `flags` given twice.
    BadFlag {
        /// The flag as written.
        name: String,
    },
}

impl fmt::Display for TextErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TextErrorKind::*;
        match self {
            InvalidUtf8 => write!(f, "the source is not valid UTF-8"),
            TooLarge { bytes } => write!(
                f,
                "the source is too large ({bytes} bytes or more; the limit is {})",
                limits::MAX_SOURCE_BYTES
            ),
            TooDeep => write!(
                f,
                "expressions nest too deeply (the limit is {})",
                limits::MAX_DEPTH
            ),
            TooManyNodes => write!(
                f,
                "the optimizer has too many operations (the limit is {})",
                limits::MAX_NODES
            ),
            UnexpectedChar { found } => write!(f, "unexpected character {found:?}"),
            BadNumber { text } => write!(f, "invalid number `{text}`"),
            Unexpected { found, .. } => write!(f, "unexpected {found}"),
            UnknownName { name, .. } => write!(f, "unknown name `{name}`"),
            UnknownFunction { name, .. } => write!(f, "unknown function `{name}`"),
            Arity {
                function,
                expected,
                actual,
            } => write!(
                f,
                "`{function}` takes {expected} argument{}, got {actual}",
                if *expected == 1 { "" } else { "s" }
            ),
            NotAssignable { name, what } => write!(f, "cannot assign to `{name}`: it is {what}"),
            Redefined { name, what } => write!(f, "`{name}` is already {what}"),
            MissingParamUpdate => write!(f, "the optimizer never assigns `param`"),
            MissingStateUpdate { name } => write!(f, "the state `{name}` is never updated"),
            ScalarRequired { what } => write!(
                f,
                "{what} must be a per-step scalar, but it depends on a per-element value"
            ),
            ElementRequired { what } => write!(
                f,
                "{what} must be a per-element value, but it is a per-step scalar"
            ),
            PerParameterValue { what } => write!(
                f,
                "{what} must be the same for every parameter of a group, but it reads the \
                 step count, a parameter's own state or a per-parameter value"
            ),
            NumberRequired { what } => write!(f, "{what} must be a number"),
            InvalidArgument {
                function,
                argument,
                reason,
            } => write!(f, "invalid argument `{argument}` of `{function}`: {reason}"),
            ChainedComparison => write!(f, "comparisons cannot be chained"),
            // `flags` is a keyword, never a flag: this is the statement given twice.
            BadFlag { name } if name == "flags" => write!(f, "`flags` is given twice"),
            BadFlag { name } => write!(f, "unknown or repeated flag `{name}`"),
        }
    }
}

impl TextErrorKind {
    /// What would have been right, shown after the caret.
    pub fn expected(&self) -> String {
        use TextErrorKind::*;
        match self {
            InvalidUtf8 => "expected UTF-8 text".into(),
            TooLarge { .. } => "expected a smaller file".into(),
            TooDeep => "expected fewer nested parentheses, calls or signs; use `let`".into(),
            TooManyNodes => "expected a smaller optimizer".into(),
            UnexpectedChar { .. } => {
                "expected a name, a number, an operator, a bracket, `,`, `;` or `#`".into()
            }
            BadNumber { .. } => "expected a finite decimal number such as 0.9 or 1e-8".into(),
            Unexpected { expected, .. } => format!("expected {expected}"),
            UnknownName { suggestion, .. } => with_suggestion(
                "expected a hyperparameter, a state, a `let` name, `param`, `grad` or `step`",
                suggestion,
            ),
            UnknownFunction { suggestion, .. } => with_suggestion(
                "expected sqrt, abs, sign, exp, ln, min, max, pow, select, fma, \
                 sum, sumsq, maxabs, nonfinite or global_sum, ...",
                suggestion,
            ),
            Arity { expected, .. } => format!("expected {expected} argument(s)"),
            NotAssignable { .. } => "expected `param` or a state on the left of `=`".into(),
            Redefined { .. } => "expected a new name".into(),
            MissingParamUpdate => "expected `param = ...` in the body".into(),
            MissingStateUpdate { name } => format!("expected `{name} = ...` in the body"),
            ScalarRequired { what } if what == "the base of `^`" => {
                "expected an expression of hyperparameters, step, scalar state and numbers \
                 (square a per-element value as `x * x`)"
                    .into()
            }
            ScalarRequired { .. } => {
                "expected an expression of hyperparameters, step, scalar state and numbers".into()
            }
            ElementRequired { .. } => {
                "expected an expression of param, grad or a state, e.g. `sumsq(grad)`".into()
            }
            PerParameterValue { .. } => {
                "expected an expression of hyperparameters, group or optimizer state, numbers \
                 and global reductions"
                    .into()
            }
            NumberRequired { .. } => {
                "expected a number literal such as 100 (optax takes a Python number here)".into()
            }
            InvalidArgument { .. } => "expected an argument in the schedule's domain".into(),
            ChainedComparison => "expected parentheses, e.g. `(a < b) * (b < c)`".into(),
            BadFlag { name } if name == "flags" => {
                "expected one `flags` line listing every flag".into()
            }
            BadFlag { .. } => "expected `reciprocal` or `fast_math`, each at most once".into(),
        }
    }
}

fn with_suggestion(expected: &str, suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("did you mean `{s}`? ({expected})"),
        None => expected.to_string(),
    }
}

/// Longest name for which a near miss is looked for.
const MAX_SUGGESTED_LEN: usize = 40;

/// The candidate closest to `name` in edit distance, if it is a plausible typo: none for a
/// one-letter name, one edit for names of up to four letters, two for longer ones.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let len = name.chars().count();
    let budget = match len {
        0 | 1 => return None,
        2..=4 => 1,
        // Long names are not typed by hand: no suggestion, and no quadratic distance.
        5..=MAX_SUGGESTED_LEN => 2,
        _ => return None,
    };
    candidates
        .into_iter()
        .filter(|c| c.chars().count().abs_diff(len) <= budget)
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, _)| d <= budget)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance (insertions, deletions and substitutions of characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// An error in optimizer text, with its position.
///
/// Its display is the message, the position, the offending line and a caret (the command
/// line prefixes it with `error: `):
///
/// ```text
/// unknown name `mm`
///  --> lion.opt:3:9
///   |
/// 3 |     m = mm * b1
///   |         ^^ expected a hyperparameter, a state, a `let` name, `param`, `grad` or `step`
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextError {
    /// What is wrong.
    pub kind: TextErrorKind,
    /// The file, when the text came from one.
    pub file: Option<String>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Width of the offending text, in characters (at least 1).
    pub width: usize,
    /// The offending line, without its line break.
    pub source_line: String,
}

impl TextError {
    /// An error of `kind` covering the bytes `start..end` of `source`, boxed: errors are
    /// rare, and a boxed one keeps the parser's `Result`s one word wide.
    pub(crate) fn at(
        kind: TextErrorKind,
        source: &str,
        start: usize,
        end: usize,
    ) -> Box<TextError> {
        let start = floor_char_boundary(source, start.min(source.len()));
        let end = floor_char_boundary(source, end.clamp(start, source.len()));
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        // The caret stops where the shown line does: before a CRLF's `\r`.
        let text_end = line_end - usize::from(source[..line_end].ends_with('\r'));
        let width = source[start..end.min(text_end).max(start)]
            .chars()
            .count()
            .max(1);
        Box::new(TextError {
            kind,
            file: None,
            line,
            column,
            width,
            source_line: source[line_start..line_end]
                .trim_end_matches('\r')
                .to_string(),
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Most characters of the offending line an error shows.
const SHOWN_CHARS: usize = 160;

/// `text` cut to [`SHOWN_CHARS`] characters (a name in a message can be very long).
fn clip(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<text>");
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        // Tabs would move the caret: show them as single spaces. A long line is shown as a
        // window around the caret.
        let chars: Vec<char> = self
            .source_line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let caret = self.column.saturating_sub(1);
        let first = if chars.len() > SHOWN_CHARS {
            caret.saturating_sub(SHOWN_CHARS / 3)
        } else {
            0
        };
        let last = (first + SHOWN_CHARS).min(chars.len());
        let before = if first > 0 { "…" } else { "" };
        let after = if last < chars.len() { "…" } else { "" };
        let shown: String = chars[first.min(last)..last].iter().collect();
        let offset = caret - first + before.chars().count();
        let width = self.width.clamp(1, (last + 1).saturating_sub(caret).max(1));
        writeln!(f, "{}", clip(&self.kind.to_string()))?;
        writeln!(f, "{gutter}--> {file}:{}:{}", self.line, self.column)?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{number} | {before}{shown}{after}")?;
        write!(
            f,
            "{gutter} | {}{} {}",
            " ".repeat(offset),
            "^".repeat(width),
            clip(&self.kind.expected())
        )
    }
}

impl std::error::Error for TextError {}

/// The source as text, or the error for invalid UTF-8 or an oversized source.
pub(crate) fn check_source(source: &[u8]) -> Result<&str, Box<TextError>> {
    if source.len() > limits::MAX_SOURCE_BYTES {
        return Err(Box::new(TextError {
            kind: TextErrorKind::TooLarge {
                bytes: source.len(),
            },
            file: None,
            line: 1,
            column: 1,
            width: 1,
            source_line: String::new(),
        }));
    }
    std::str::from_utf8(source).map_err(|e| {
        let valid = std::str::from_utf8(&source[..e.valid_up_to()]).expect("valid prefix");
        TextError::at(TextErrorKind::InvalidUtf8, valid, valid.len(), valid.len())
    })
}

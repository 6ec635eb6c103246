//! Helpers of the text-form tests: parse expecting an error, and assert where its caret is.

use optjit::text::{self, TextError, TextErrorKind};
use optjit::{Error, Graph};
use std::path::Path;

/// The text error `source` fails with.
pub fn error(source: &str) -> TextError {
    unwrap_text(text::parse(source), source)
}

pub fn unwrap_text(result: optjit::Result<Graph>, source: &str) -> TextError {
    match result {
        Err(Error::Text(e)) => *e,
        Err(other) => panic!("not a text error: {other}\n{source}"),
        Ok(graph) => panic!("parsed, but should not have:\n{source}\n{graph}"),
    }
}

/// An optimizer with hyperparameters `lr` and `b1` and a state `m`; `body` starts on line 3.
pub fn opt(body: &str) -> String {
    format!("optimizer t(lr = 0.1, b1 = 0.9) {{\n    state m = 0\n{body}\n}}\n")
}

/// The text under the caret: `width` characters of the line from `column`.
pub fn pointed(e: &TextError) -> String {
    e.source_line
        .chars()
        .skip(e.column - 1)
        .take(e.width)
        .collect()
}

/// Asserts that `e` is on `line` with its caret under exactly `text`, starting at `column`.
#[track_caller]
pub fn assert_at(e: &TextError, line: usize, column: usize, text: &str) {
    assert_eq!(
        (e.line, e.column, e.width, pointed(e).as_str()),
        (line, column, text.chars().count(), text),
        "\n{e}"
    );
}

/// Asserts that `source` fails with `kind`, on `line` with the caret under `text` at `column`.
#[track_caller]
pub fn assert_error(source: &str, kind: TextErrorKind, line: usize, column: usize, text: &str) {
    let e = error(source);
    assert_eq!(e.kind, kind, "\n{e}");
    assert_at(&e, line, column, text);
}

pub fn parses(source: &str) -> Graph {
    match text::parse(source) {
        Ok(graph) => graph,
        Err(e) => panic!("{e}\n{source}"),
    }
}

pub fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

pub fn unexpected(found: &str, expected: &str) -> TextErrorKind {
    TextErrorKind::Unexpected {
        found: found.into(),
        expected: expected.into(),
    }
}

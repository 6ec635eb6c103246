//! The parser (in progress).
use super::{TextError, TextErrorKind};
use crate::Graph;

pub(super) fn parse(source: &str) -> Result<Graph, TextError> {
    Err(TextError::at(
        TextErrorKind::Unexpected {
            found: "text".into(),
            expected: "a parser".into(),
        },
        source,
        0,
        0,
    ))
}

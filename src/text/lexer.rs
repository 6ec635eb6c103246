//! The lexer (in progress).

//! Subcommands of the `optjit` binary that need more than a few lines.

pub mod demo;

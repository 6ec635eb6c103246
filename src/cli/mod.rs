//! Subcommands of the `optjit` binary that need more than a few lines.

pub mod bench;
pub mod conformance;
pub mod demo;
pub mod output;
pub mod show;

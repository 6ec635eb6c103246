//! Writing to stdout, and the errors of the command line.
//!
//! Every subcommand prints through [`out`], so that a reader which stops early
//! (`optjit show adam | head -3`) ends the process quietly instead of making it panic with
//! "failed printing to stdout: Broken pipe".

use std::fmt;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

/// Writes `text` to stdout and flushes it.
///
/// A closed pipe means the reader has all it wanted: the process exits at once with status 0
/// and no message, as `cat` does. Any other write error (a full disk) is reported and the
/// process exits with status 1.
pub fn out(text: impl fmt::Display) {
    let mut stdout = std::io::stdout().lock();
    let written = write!(stdout, "{text}").and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// [`out`] followed by a line break.
pub fn outln(text: impl fmt::Display) {
    out(format_args!("{text}\n"));
}

/// Why a subcommand failed. Every variant is a user mistake or an environment problem,
/// except [`CliError::Optjit`], which passes on the library's own error (its documentation
/// says which of its variants are internal bugs).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// User mistake: neither a built-in optimizer nor a file.
    #[error(
        "`{0}` is neither a built-in optimizer (see `optjit list`) nor an `.opt` file that exists"
    )]
    UnknownOptimizer(String),
    /// User mistake: a `bench --impl` item that is not an implementation.
    #[error("unknown implementation `{name}` (expected one of {expected})")]
    UnknownImpl {
        /// The item as given.
        name: String,
        /// The implementations, comma-separated.
        expected: String,
    },
    /// User mistake: `bench` options that leave nothing to measure (`--no-sizes --quick`
    /// without `--tensors`).
    #[error("nothing to measure: --no-sizes with --quick needs --tensors COUNTxEACH")]
    NothingToMeasure,
    /// User mistake: `demo --lr` for an optimizer without an `lr` hyperparameter.
    #[error("--lr: {label} has no hyperparameter `lr` (it has: {hypers})")]
    NoLr {
        /// The optimizer's label.
        label: String,
        /// Its hyperparameters, comma-separated.
        hypers: String,
    },
    /// Environment: the demo's chart could not be drawn.
    #[error("cannot draw the chart: {0}")]
    Chart(String),
    /// Environment: an output file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// The system's message.
        message: String,
    },
    /// An error of the library: a file that cannot be read or parsed, a graph that does not
    /// compile.
    #[error(transparent)]
    Optjit(#[from] optjit::Error),
}

/// Prints `error` to stderr as `error: ...` and returns the failure exit code.
pub fn fail(error: impl fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

/// [`ExitCode::SUCCESS`], or the error printed by [`fail`].
pub fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

//! Subcommands of the `optjit` binary that need more than a few lines.

pub mod bench;
pub mod conformance;
pub mod demo;
pub mod output;
pub mod schedule;
pub mod show;

/// A parser of whole numbers in `lo..=hi` for numeric arguments, so that a huge count is a
/// usage error instead of an allocation failure.
pub fn count_in(lo: usize, hi: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text: &str| match text.parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {lo} to {hi}")),
    }
}

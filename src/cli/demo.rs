//! `optjit demo`: a small, real training run (in progress).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `optjit demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// An optimizer in the text form to train with beside the built-ins (default: the
    /// embedded copy of examples/lion.opt).
    #[arg(long)]
    pub opt: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Where to write the chart.
    #[arg(long, default_value = "demo-loss.svg")]
    pub out: PathBuf,
}

/// Runs the demo.
pub fn run(_args: &DemoArgs) -> ExitCode {
    eprintln!("error: the demo is not built yet");
    ExitCode::FAILURE
}

//! The `optjit` command line: list the built-in optimizers, show an optimizer (built-in or
//! `.opt` file) at every stage of its compilation, check `.opt` files, replay PyTorch
//! conformance cases, benchmark, and train a small demo network.
//!
//! Every subcommand writes to stdout through [`cli::output::out`], so that a closed pipe
//! (`optjit show adam | head -3`) ends it quietly.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "optjit",
    version,
    about = "Deep-learning optimizers as fused, JIT-compiled expression graphs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the built-in optimizers with their hyperparameters, defaults and state.
    #[command(after_help = "\
Examples:
  optjit list
  optjit list --json")]
    List(cli::show::ListArgs),
    /// Print an optimizer at one stage of its compilation.
    ///
    /// OPTIMIZER is a built-in name (see `optjit list`); anything else is read as an `.opt`
    /// file (write `./adam` for a file that shares a built-in's name). The default stage,
    /// `passes`, prints the graph, the graph after every pass, and the program.
    #[command(after_help = "\
Examples:
  optjit show adam
  optjit show lion --stage program
  optjit show sgd_momentum --stage clif --dtype f64
  optjit show adam --stage asm
  optjit show examples/lion.opt --stage graph
  optjit show adamw --stage text > adamw.opt")]
    Show(cli::show::ShowArgs),
    /// Parse and compile `.opt` files, printing each program or each error.
    ///
    /// A file that compiles prints its program (f32); one that does not prints its error on
    /// stderr, with the line, the column and a caret under the offending text. Every file is
    /// checked; the exit status is 1 if any failed.
    #[command(after_help = "\
Examples:
  optjit check examples/lion.opt
  optjit check examples/*.opt")]
    Check(cli::show::CheckArgs),
    /// Replay PyTorch reference trajectories and compare every step.
    ///
    /// Reads every case file under DIR (recursively; format in
    /// tests/data/conformance/README.md), runs it through the optimizer runtime and prints,
    /// per case, the largest absolute and relative error of each step and of the final state,
    /// PASS or FAIL against the README's tolerances, and a summary. Exits with status 1 if
    /// any case failed or could not run.
    #[command(after_help = "\
Examples:
  optjit conformance tests/data/conformance
  optjit conformance tests/data/conformance/adam --executor reference --json")]
    Conformance(cli::conformance::ConformanceArgs),
    /// Measure every implementation against the bandwidth floor and a native loop.
    ///
    /// Runs Adam, AdamW, SGD-momentum, Lion and RMSprop (f32) at 2^12 … 2^26 elements on one
    /// thread and on all, with the JIT, the handwritten loop for the CPU's best instruction
    /// set (native) and for the portable 128-bit one (native128, SSE2 on x86-64), the chunked
    /// and reference interpreters and the eager evaluator, beside copy and axpy (the bandwidth
    /// floor) measured in the same run; then 10,000 tensors of 1,000 elements against one of
    /// 10M, and compile times. Prints the host's SIMD features, then ns/element, GB/s at the
    /// optimizer's byte count, the ratios to the floor and to the native loops, and the
    /// instruction set of each row. Progress is shown on stderr.
    #[command(after_help = "\
Examples:
  optjit bench
  optjit bench --optimizer adam --n 1048576 --threads 1,2 --json
  optjit bench --optimizer lion,examples/lion.opt --impl jit,native,native128 --quick
  optjit bench --optimizer adam --tensors 10000x1000 --no-sizes --threads 1 --quick")]
    Bench(cli::bench::BenchArgs),
    /// Train a small network on handwritten digits with several optimizers, one of them
    /// read from an `.opt` file; print the loss per epoch and write a chart.
    #[command(after_help = "\
Examples:
  optjit demo
  optjit demo --opt examples/adabelief.opt --epochs 5")]
    Demo(cli::demo::DemoArgs),
    /// Print a schedule's values over N steps (and chart them), before training with it.
    ///
    /// SCHEDULE is a PyTorch scheduler by class name, with its keyword arguments as `--arg
    /// NAME=VALUE` (values from construction, then after each `step()`, as PyTorch's), or
    /// an expression of `step` in the text syntax, optax's schedules included (values at
    /// steps 1..=N).
    #[command(after_help = "\
Examples:
  optjit schedule StepLR --arg step_size=30 --arg gamma=0.1 --steps 100
  optjit schedule CosineAnnealingLR --arg T_max=100 --arg eta_min=0.001 --base 0.1 --json
  optjit schedule LambdaLR --arg lr_lambda=0.95^epoch --steps 50
  optjit schedule 'warmup_cosine_decay(0, 1, 100, 1000, 0)' --steps 1000 --plot lr.svg")]
    Schedule(cli::schedule::ScheduleArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List(args) => cli::show::list(&args),
        Command::Show(args) => cli::show::show(&args),
        Command::Check(args) => cli::show::check(&args),
        Command::Conformance(args) => cli::conformance::run(&args),
        Command::Bench(args) => cli::bench::run(&args),
        Command::Demo(args) => cli::demo::run(&args),
        Command::Schedule(args) => cli::schedule::run(&args),
    }
}

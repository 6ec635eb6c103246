//! The `optjit` command line: list the built-in optimizers, print their IR, and replay
//! PyTorch conformance cases through the runtime.

use clap::{Parser, Subcommand, ValueEnum};
use optjit::conformance::{run_dir, CaseReport, Errors};
use optjit::{optim, passes, DType, Executor};
use std::path::PathBuf;
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
    /// List the built-in optimizers.
    List,
    /// Print a built-in optimizer's graph and program.
    ///
    /// Example: optjit show adam
    Show {
        /// A name from `optjit list`.
        name: String,
    },
    /// Replay PyTorch reference trajectories and compare every step.
    ///
    /// Reads every case file under DIR (recursively; format in
    /// tests/data/conformance/README.md), runs it through the optimizer runtime and prints,
    /// per case, the largest absolute and relative error of each step and of the final state,
    /// PASS or FAIL against the README's tolerances, and a summary. Exits with status 1 if
    /// any case failed or could not run.
    ///
    /// Example: optjit conformance tests/data/conformance
    Conformance {
        /// Directory of case files.
        dir: PathBuf,
        /// One JSON object per case and one for the summary, instead of text.
        #[arg(long)]
        json: bool,
        /// Which executor runs the steps.
        #[arg(long, value_enum, default_value_t = ExecutorArg::Jit)]
        executor: ExecutorArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExecutorArg {
    Jit,
    Reference,
    Eager,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for name in optim::NAMES {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Command::Show { name } => show(&name),
        Command::Conformance {
            dir,
            json,
            executor,
        } => {
            let executor = match executor {
                ExecutorArg::Jit => Executor::Jit,
                ExecutorArg::Reference => Executor::Reference,
                ExecutorArg::Eager => Executor::Eager,
            };
            conformance(&dir, json, executor)
        }
    }
}

fn show(name: &str) -> ExitCode {
    let Some(graph) = optim::by_name(name) else {
        eprintln!("error: unknown optimizer `{name}` (see `optjit list`)");
        return ExitCode::FAILURE;
    };
    match passes::compile(&graph) {
        Ok(program) => {
            print!("{graph}\n{}", program.display(DType::F32));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn errors_text(e: &Errors) -> String {
    format!("{:.1e}/{:.1e}", e.max_abs, e.max_rel)
}

fn conformance(dir: &std::path::Path, json: bool, executor: Executor) -> ExitCode {
    let reports = match run_dir(dir, executor) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed;
    for r in &reports {
        if json {
            let line = serde_json::json!({ "passed": r.passed(), "report": r });
            println!("{line}");
        } else {
            print_case(r);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "summary": { "passed": passed, "failed": failed } })
        );
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed == 0 && !reports.is_empty() {
        ExitCode::SUCCESS
    } else {
        if reports.is_empty() {
            eprintln!("error: no case files under {}", dir.display());
        }
        ExitCode::FAILURE
    }
}

fn print_case(r: &CaseReport) {
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    match &r.problem {
        Some(problem) if r.steps.is_empty() => {
            println!("{verdict} {}  could not run: {problem}", r.case)
        }
        problem => {
            let steps: Vec<String> = r.steps.iter().map(errors_text).collect();
            println!(
                "{verdict} {}  abs/rel per step: {}  state: {}",
                r.case,
                steps.join(" "),
                errors_text(&r.state)
            );
            if let Some(problem) = problem {
                println!("     {problem}");
            }
        }
    }
}

//! `optjit conformance`: replays PyTorch reference trajectories through the runtime and
//! prints, per case, the largest errors and a verdict (for bf16 cases, the largest
//! differences in bf16 ulps and the case's tolerance).

use super::output::{fail, outln};
use clap::ValueEnum;
use optjit::conformance::{run_dir, CaseReport, Errors, Tolerance};
use optjit::Executor;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `optjit conformance`.
#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Directory of case files.
    dir: PathBuf,
    /// One JSON object per case and one for the summary, instead of text.
    #[arg(long)]
    json: bool,
    /// Which executor runs the steps.
    #[arg(long, value_enum, default_value_t = ExecutorArg::Jit)]
    executor: ExecutorArg,
}

/// The executor on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum ExecutorArg {
    /// The Cranelift-compiled kernel.
    Jit,
    /// The reference interpreter, element by element.
    Reference,
    /// One op at a time over cache-sized blocks.
    Chunked,
    /// One op at a time over whole arrays, like an unfused framework.
    Eager,
}

/// Runs every case under the directory; fails if any case failed or none was found.
pub fn run(args: &ConformanceArgs) -> ExitCode {
    let executor = match args.executor {
        ExecutorArg::Jit => Executor::Jit,
        ExecutorArg::Reference => Executor::Reference,
        ExecutorArg::Chunked => Executor::Chunked,
        ExecutorArg::Eager => Executor::Eager,
    };
    let reports = match run_dir(&args.dir, executor) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed;
    for r in &reports {
        if args.json {
            outln(serde_json::json!({ "passed": r.passed(), "report": r }));
        } else {
            print_case(r);
        }
    }
    if args.json {
        outln(serde_json::json!({ "summary": { "passed": passed, "failed": failed } }));
    } else {
        outln(format_args!("{passed} passed, {failed} failed"));
    }
    if reports.is_empty() {
        return fail(format_args!("no case files under {}", args.dir.display()));
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn errors_text(e: &Errors) -> String {
    format!("{:.1e}/{:.1e}", e.max_abs, e.max_rel)
}

fn ulps_text(e: &Errors) -> String {
    e.max_ulps.unwrap_or(0.0).to_string()
}

fn print_case(r: &CaseReport) {
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    match &r.problem {
        Some(problem) if r.steps.is_empty() => outln(format_args!(
            "{verdict} {}  could not run: {problem}",
            r.case
        )),
        problem => {
            match r.tolerance {
                // A narrow dtype's case: the largest differences in its ulps, and the
                // tolerance, which depends on the case.
                Some(Tolerance::Ulps { dtype, ulps }) => {
                    let steps: Vec<String> = r.steps.iter().map(ulps_text).collect();
                    outln(format_args!(
                        "{verdict} {}  {dtype} ulps per step: {}  state: {}  tolerance: {ulps} ulps",
                        r.case,
                        steps.join(" "),
                        ulps_text(&r.state)
                    ))
                }
                _ => {
                    let steps: Vec<String> = r.steps.iter().map(errors_text).collect();
                    outln(format_args!(
                        "{verdict} {}  abs/rel per step: {}  state: {}",
                        r.case,
                        steps.join(" "),
                        errors_text(&r.state)
                    ))
                }
            }
            if let Some(problem) = problem {
                outln(format_args!("     {problem}"));
            }
        }
    }
}

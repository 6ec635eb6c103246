//! The `optjit` command line: list the built-in optimizers, print their IR, and replay
//! PyTorch conformance cases through the runtime.

mod cli;

use clap::{Parser, Subcommand, ValueEnum};
use optjit::bench::suite;
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
    /// Measure every implementation against the bandwidth floor and a native loop.
    ///
    /// Runs Adam, AdamW, SGD-momentum, Lion and RMSprop (f32) at 2^12 … 2^26 elements on one
    /// thread and on all, with the JIT, the native handwritten loop, the chunked and
    /// reference interpreters and the eager evaluator, beside copy and axpy (the bandwidth
    /// floor) measured in the same run; then 10,000 tensors of 1,000 elements against one of
    /// 10M, and compile times. Prints ns/element, GB/s at the optimizer's byte count, and the
    /// ratios to the floor and to the native loop.
    ///
    /// Examples: optjit bench; optjit bench --optimizer adam --n 1048576 --threads 1,2 --json
    Bench {
        /// One JSON object per measurement and line, instead of a table.
        #[arg(long)]
        json: bool,
        /// Thread counts (comma-separated; default: 1 and all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Option<Vec<usize>>,
        /// Element counts (comma-separated; default: 2^12, 2^16, 2^20, 2^24, 2^26).
        #[arg(long, value_delimiter = ',')]
        n: Option<Vec<usize>>,
        /// Built-in optimizers (comma-separated; default: adam, adamw, sgd_momentum, lion,
        /// rmsprop).
        #[arg(long, value_delimiter = ',')]
        optimizer: Option<Vec<String>>,
        /// Implementations (comma-separated: jit, native, chunked, eager, interp, copy, axpy;
        /// default: all).
        #[arg(long = "impl", value_delimiter = ',')]
        impls: Option<Vec<String>>,
        /// Only the per-size table: no many-small-tensors run, no compile times.
        #[arg(long)]
        quick: bool,
    },
    /// Train a small network on handwritten digits with several optimizers, one of them
    /// read from an `.opt` file; print the loss per epoch and write a chart.
    ///
    /// Example: optjit demo
    Demo(cli::demo::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ExecutorArg {
    Jit,
    Reference,
    Chunked,
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
                ExecutorArg::Chunked => Executor::Chunked,
                ExecutorArg::Eager => Executor::Eager,
            };
            conformance(&dir, json, executor)
        }
        Command::Bench {
            json,
            threads,
            n,
            optimizer,
            impls,
            quick,
        } => bench(json, threads, n, optimizer, impls, quick),
        Command::Demo(args) => cli::demo::run(&args),
    }
}

fn bench(
    json: bool,
    threads: Option<Vec<usize>>,
    n: Option<Vec<usize>>,
    names: Option<Vec<String>>,
    impls: Option<Vec<String>>,
    quick: bool,
) -> ExitCode {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = match suite::Config::full(all) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = threads {
        config.threads = t;
    }
    if let Some(n) = n {
        config.sizes = n;
    }
    if let Some(names) = names {
        let mut optimizers = Vec::new();
        for name in names {
            match optim::by_name(&name) {
                Some(graph) => optimizers.push((name, graph)),
                None => {
                    eprintln!("error: unknown optimizer `{name}` (see `optjit list`)");
                    return ExitCode::FAILURE;
                }
            }
        }
        config.optimizers = optimizers;
    }
    if let Some(impls) = impls {
        let mut chosen = Vec::new();
        for name in impls {
            match suite::Impl::ALL.into_iter().find(|i| i.name() == name) {
                Some(i) => chosen.push(i),
                None => {
                    eprintln!("error: unknown implementation `{name}`");
                    return ExitCode::FAILURE;
                }
            }
        }
        config.impls = chosen;
    }
    if quick {
        config.many_small = None;
        config.compile = false;
    }
    let progress = |done: usize, total: usize, what: &str| {
        eprint!("\r\x1b[2K[{done:>3}/{total}] {what}");
        if done == total {
            eprintln!();
        }
    };
    let records = match suite::run(&config, progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("\nerror: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        for r in &records {
            println!("{}", serde_json::to_string(r).expect("records serialize"));
        }
    } else {
        print_table(&records);
    }
    ExitCode::SUCCESS
}

fn print_table(records: &[suite::Record]) {
    let ratio = |r: Option<f64>| r.map_or(String::new(), |r| format!("{r:.2}"));
    println!(
        "{:<13} {:>9} {:>7} {:>3} {:<8} {:>10} {:>8} {:>7} {:>7}",
        "optimizer", "n", "tensors", "thr", "impl", "ns/elem", "GB/s", "/floor", "/native"
    );
    for r in records
        .iter()
        .filter(|r| !r.implementation.starts_with("compile") && r.implementation != "step_overhead")
    {
        println!(
            "{:<13} {:>9} {:>7} {:>3} {:<8} {:>10.3} {:>8.1} {:>7} {:>7}",
            r.optimizer,
            r.n,
            r.tensors,
            r.threads,
            r.implementation,
            r.ns_per_elem,
            r.gbps,
            ratio(r.of_floor),
            ratio(r.vs_native)
        );
    }
    for r in records
        .iter()
        .filter(|r| r.implementation.starts_with("compile") || r.implementation == "step_overhead")
    {
        println!(
            "{:<13} {:<13} {:>10.1} µs",
            r.optimizer,
            r.implementation,
            r.ns_per_elem / 1e3
        );
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

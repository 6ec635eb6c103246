//! `optjit bench`: the benchmark suite from the command line, built-ins or `.opt` files, with
//! a progress bar on stderr and a table (or JSON lines) on stdout.

use super::output::{exit, outln, CliError};
use super::show::load;
use indicatif::{ProgressBar, ProgressStyle};
use optjit::bench::suite;
use std::process::ExitCode;

/// Arguments of `optjit bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// One JSON object per measurement and line, instead of a table.
    #[arg(long)]
    json: bool,
    /// Thread counts (comma-separated; default: 1 and all cores).
    #[arg(long, value_delimiter = ',', value_parser = super::count_in(1, 1024))]
    threads: Option<Vec<usize>>,
    /// Element counts (comma-separated, at most 2^28; default: 2^12, 2^16, 2^20, 2^24,
    /// 2^26).
    #[arg(long, value_delimiter = ',', value_parser = super::count_in(1, 1 << 28))]
    n: Option<Vec<usize>>,
    /// Optimizers, comma-separated: built-in names or `.opt` files, labelled in the report by
    /// the name in their header (default: adam, adamw, sgd_momentum, lion, rmsprop).
    #[arg(long, value_delimiter = ',')]
    optimizer: Option<Vec<String>>,
    /// Implementations (comma-separated: jit, native, chunked, eager, interp, copy, axpy;
    /// default: all).
    #[arg(long = "impl", value_delimiter = ',')]
    impls: Option<Vec<String>>,
    /// Only the per-size table: no many-small-tensors run, no compile times.
    #[arg(long)]
    quick: bool,
}

/// Runs the suite as `args` configure it and prints the results.
pub fn run(args: &BenchArgs) -> ExitCode {
    exit(run_suite(args))
}

fn run_suite(args: &BenchArgs) -> Result<(), CliError> {
    let config = config(args)?;
    let bar = progress_bar();
    let result = suite::run(&config, |done, total, what| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    });
    bar.finish_and_clear();
    let records = result?;
    if args.json {
        for r in &records {
            outln(serde_json::to_string(r).expect("records serialize"));
        }
    } else {
        print_table(&records);
    }
    Ok(())
}

/// The suite's configuration: the full suite, narrowed by the arguments.
fn config(args: &BenchArgs) -> Result<suite::Config, CliError> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = suite::Config::full(all)?;
    if let Some(threads) = &args.threads {
        config.threads = threads.clone();
    }
    if let Some(n) = &args.n {
        config.sizes = n.clone();
    }
    if let Some(items) = &args.optimizer {
        config.optimizers = optimizers(items)?;
    }
    if let Some(impls) = &args.impls {
        config.impls = impls
            .iter()
            .map(|name| {
                suite::Impl::ALL
                    .into_iter()
                    .find(|i| i.name() == name)
                    .ok_or_else(|| CliError::UnknownImpl {
                        name: name.clone(),
                        expected: suite::Impl::ALL.map(|i| i.name()).join(", "),
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    if args.quick {
        config.many_small = None;
        config.compile = false;
    }
    Ok(config)
}

/// The optimizers to measure, labelled as [`load`] does, or by the item as given when an
/// earlier one already took that label (`--optimizer lion,examples/lion.opt`).
fn optimizers(items: &[String]) -> Result<Vec<(String, optjit::Graph)>, CliError> {
    let mut chosen: Vec<(String, optjit::Graph)> = Vec::new();
    for item in items {
        let (mut label, graph) = load(item)?;
        if chosen.iter().any(|(l, _)| *l == label) {
            label.clone_from(item);
        }
        chosen.push((label, graph));
    }
    Ok(chosen)
}

/// A bar on stderr (drawn only when stderr is a terminal): elapsed time, measurements done
/// of all, and the current one.
fn progress_bar() -> ProgressBar {
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    ProgressBar::new(0).with_style(style)
}

/// The results as a table: per-size rows, then compile times and the fixed cost of a step.
/// The optimizer column is as wide as the longest label (a file's path can be one); when
/// many small tensors were measured, their layout (`shared`, `staggered`) follows the tensor
/// count in a column of its own.
fn print_table(records: &[suite::Record]) {
    let ratio = |r: Option<f64>| r.map_or(String::new(), |r| format!("{r:.2}"));
    let is_duration = |r: &suite::Record| {
        r.implementation.starts_with("compile") || r.implementation == "step_overhead"
    };
    let w = records
        .iter()
        .map(|r| r.optimizer.chars().count())
        .max()
        .unwrap_or(0)
        .max(13);
    // The layout column, with its leading space; none at all when no record has a layout.
    let steps_w = records
        .iter()
        .filter_map(|r| r.steps)
        .map(|s| s.len() + 1)
        .max()
        .unwrap_or(0);
    let steps = |r: &suite::Record| r.steps.map_or(String::new(), |s| format!(" {s}"));
    outln(format_args!(
        "{:<w$} {:>9} {:>7}{:<steps_w$} {:>3} {:<8} {:>10} {:>8} {:>7} {:>7}",
        "optimizer", "n", "tensors", "", "thr", "impl", "ns/elem", "GB/s", "/floor", "/native"
    ));
    for r in records.iter().filter(|r| !is_duration(r)) {
        outln(format_args!(
            "{:<w$} {:>9} {:>7}{:<steps_w$} {:>3} {:<8} {:>10.3} {:>8.1} {:>7} {:>7}",
            r.optimizer,
            r.n,
            r.tensors,
            steps(r),
            r.threads,
            r.implementation,
            r.ns_per_elem,
            r.gbps,
            ratio(r.of_floor),
            ratio(r.vs_native)
        ));
    }
    for r in records.iter().filter(|r| is_duration(r)) {
        outln(format_args!(
            "{:<w$} {:<13} {:>10.1} µs",
            r.optimizer,
            r.implementation,
            r.ns_per_elem / 1e3
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_template_parses() {
        // `progress_bar` panics on a bad template; this runs it.
        assert_eq!(progress_bar().length(), Some(0));
    }
}

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
    /// Implementations (comma-separated: jit, native, native128, chunked, eager, interp,
    /// copy, axpy; default: all of these; also read: a read-only pass over one stream (Σ x²,
    /// 4 B/element); clip_fused and clip_unfused: the JIT with
    /// gradient clipping to a global 2-norm fused into the step, and as a separate pass;
    /// amp_clip_fused and amp_clip_unfused: the same with a GradScaler's unscaling and
    /// overflow check). `native` is the handwritten loop for the CPU's best
    /// instruction set, `native128` the same loop for the portable 128-bit one (SSE2).
    #[arg(long = "impl", value_delimiter = ',')]
    impls: Option<Vec<String>>,
    /// The instruction set the JIT compiles for: `host` (default), `avx2` (x86-64 with AVX2
    /// and FMA, no AVX-512: the code an AVX2-only machine gets) or `avx512`; the host must
    /// run it.
    #[arg(long, value_parser = parse_target, default_value = "host")]
    target: optjit::Target,
    /// Only the per-size table: no many-small-tensors run (unless `--tensors` asks for one),
    /// no compile times.
    #[arg(long)]
    quick: bool,
    /// The many-small-tensors run: COUNT tensors of EACH elements (`10000x1000`, the
    /// default), stepped by the JIT on the largest thread count, against one tensor of
    /// COUNT·EACH elements. Runs even with `--quick`.
    #[arg(long, value_name = "COUNTxEACH", value_parser = tensors)]
    tensors: Option<(usize, usize)>,
    /// No per-size table: with `--tensors`, only the many-small-tensors run.
    #[arg(long, conflicts_with = "n")]
    no_sizes: bool,
    /// How the optimizers store their streams, `PARAM[:STATE][~]`: `f32` (default), `bf16`
    /// (params, gradients and state), `bf16:f32` (bf16 params and gradients, f32 state),
    /// `f16:f32`, `f32:bf16`; `~` rounds every bf16/f16 store stochastically (`bf16~`).
    /// GB/s count each stream at its element size. The handwritten loops and the floors
    /// stay f32 (the table's dtype column says which is which).
    #[arg(long, value_parser = suite::Storage::parse)]
    dtype: Option<suite::Storage>,
}

/// Parses `--tensors`: `COUNTxEACH`, both at least 1, at most 2^20 tensors and 2^28
/// elements in all.
fn tensors(text: &str) -> Result<(usize, usize), String> {
    let usage = || format!("expected COUNTxEACH (e.g. 10000x1000), got `{text}`");
    let (count, each) = text.split_once(['x', 'X']).ok_or_else(usage)?;
    let count = super::count_in(1, 1 << 20)(count).map_err(|e| format!("COUNT: {e}"))?;
    let each = super::count_in(1, 1 << 28)(each).map_err(|e| format!("EACH: {e}"))?;
    if count.checked_mul(each).is_none_or(|n| n > 1 << 28) {
        return Err(format!(
            "{count} × {each} is more than 2^28 elements in all"
        ));
    }
    Ok((count, each))
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
                suite::Impl::NAMED
                    .into_iter()
                    .find(|i| i.name() == name)
                    .ok_or_else(|| CliError::UnknownImpl {
                        name: name.clone(),
                        expected: suite::Impl::NAMED.map(|i| i.name()).join(", "),
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    config.target = args.target;
    if let Some(storage) = args.dtype {
        config.storage = storage;
    }
    if args.quick {
        config.many_small = None;
        config.compile = false;
    }
    if let Some(tensors) = args.tensors {
        config.many_small = Some(tensors);
    }
    if args.no_sizes {
        config.sizes.clear();
    }
    if config.sizes.is_empty() && config.many_small.is_none() && !config.compile {
        return Err(CliError::NothingToMeasure);
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

/// The results as a table: the host's SIMD features, per-size rows (each with the
/// instruction set it ran, last), then compile times and the fixed cost of a step. The
/// optimizer column is as wide as the longest label (a file's path can be one); when many
/// small tensors were measured, their layout (`shared`, `staggered`) follows the tensor
/// count in a column of its own.
fn print_table(records: &[suite::Record]) {
    outln(format_args!("host: {}", suite::host_features()));
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
    // The dtype column, with its leading space; none when every record is f32.
    let dtype_w = records
        .iter()
        .filter(|r| r.dtype != "f32")
        .map(|r| r.dtype.len().max(5) + 1)
        .max()
        .unwrap_or(0);
    let dtype = |r: &suite::Record| match dtype_w {
        0 => String::new(),
        _ => format!(" {}", r.dtype),
    };
    // The impl column fits the longest name (`amp_clip_unfused`).
    let iw = records
        .iter()
        .map(|r| r.implementation.len())
        .max()
        .unwrap_or(0)
        .max(9);
    outln(format_args!(
        "{:<w$} {:>9} {:>7}{:<steps_w$} {:>3} {:<iw$}{:<dtype_w$} {:>10} {:>8} {:>7} {:>7} {:>8}  isa",
        "optimizer",
        "n",
        "tensors",
        "",
        "thr",
        "impl",
        if dtype_w > 0 { " dtype" } else { "" },
        "ns/elem",
        "GB/s",
        "/floor",
        "/native",
        "jit/n128"
    ));
    let rows: Vec<_> = records.iter().filter(|r| !is_duration(r)).collect();
    for r in &rows {
        outln(format_args!(
            "{:<w$} {:>9} {:>7}{:<steps_w$} {:>3} {:<iw$}{:<dtype_w$} {:>10.3} {:>8.1} {:>7} {:>7} {:>8}  {}",
            r.optimizer,
            r.n,
            r.tensors,
            steps(r),
            r.threads,
            r.implementation,
            dtype(r),
            r.ns_per_elem,
            r.gbps,
            ratio(r.of_floor),
            ratio(r.vs_native),
            ratio(r.vs_native128),
            r.isa.as_deref().unwrap_or("-")
        ));
    }
    if !rows.is_empty() {
        outln(
            "/floor, /native: speed over theirs (above 1: faster); \
             jit/n128: JIT time over native128's (below 1: faster)",
        );
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

/// `host`, `avx2` or `avx512` as a [`optjit::Target`].
fn parse_target(name: &str) -> Result<optjit::Target, String> {
    match name {
        "host" => Ok(optjit::Target::Host),
        "avx2" => Ok(optjit::Target::X64Avx2),
        "avx512" => Ok(optjit::Target::X64Avx512),
        _ => Err(format!("expected host, avx2 or avx512, got `{name}`")),
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

//! `optjit demo`: trains a small MLP on the UCI handwritten digits with SGD-momentum, Adam,
//! AdamW and one optimizer read from the text form (by default the embedded copy of
//! examples/lion.opt), prints the mean training loss per epoch and the test accuracy of
//! each, and writes the loss curves as an SVG chart.
//!
//! Everything is seeded: apart from the timings, every run prints the same table and writes
//! the same chart. Progress goes to stderr, the table to stdout.

mod chart;
mod mlp;

use super::output::{exit, outln, CliError};
use indicatif::{ProgressBar, ProgressStyle};
use mlp::{Digits, Mlp};
use optjit::optim::{Adam, AdamW, Sgd};
use optjit::schedule::{CosineAnnealingLR, LinearLR, Scheduler, StepLR};
use optjit::{text, Graph, Optimizer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The optimizer trained from text when no `--opt` is given.
const LION_OPT: &str = include_str!("../../examples/lion.opt");
/// Where [`LION_OPT`] comes from, for labels and error messages.
const LION_PATH: &str = "examples/lion.opt";
/// The learning rate the demo gives the embedded Lion: a sixth of AdamW's, as the Lion paper
/// suggests (3-10x smaller); the file's default, 1e-4, is too slow for this small run.
const LION_LR: f64 = 5e-4;

/// Arguments of `optjit demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// An optimizer in the text form to train beside the built-ins (default: the embedded
    /// copy of examples/lion.opt).
    #[arg(long, value_name = "FILE", conflicts_with = "builtins_only")]
    pub opt: Option<PathBuf>,
    /// The learning rate of the text optimizer, its `lr` hyperparameter (default: 5e-4 for
    /// the embedded Lion, the file's own default for `--opt FILE`).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Train only the built-in optimizers, none from text.
    #[arg(long)]
    pub builtins_only: bool,
    /// Passes over the training set.
    #[arg(long, default_value_t = 30, value_parser = super::count_in(1, 10_000))]
    pub epochs: usize,
    /// Width of the hidden layer.
    #[arg(long, default_value_t = 128, value_parser = super::count_in(1, 4096))]
    pub hidden: usize,
    /// Where to write the chart.
    #[arg(long, value_name = "FILE", default_value = "demo-loss.svg")]
    pub out: PathBuf,
    /// How every optimizer's learning rate changes from epoch to epoch (PyTorch schedulers,
    /// stepped once per epoch, relative to each optimizer's own lr); the chart then shows the
    /// learning rate beside the loss.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
}

/// The learning-rate schedules of `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// The optimizer's lr throughout.
    Constant,
    /// `CosineAnnealingLR` down to 0 at the last epoch.
    Cosine,
    /// `LinearLR` from a tenth over the first fifth of the epochs, then `CosineAnnealingLR`
    /// (through `SequentialLR`).
    WarmupCosine,
    /// `StepLR`: the lr times 0.3 every third of the epochs.
    Step,
}

/// The scheduler of `kind` over `epochs` epochs on `opt`'s lr (`None`: constant).
fn scheduler(
    kind: ScheduleArg,
    epochs: usize,
    opt: &mut Optimizer,
) -> optjit::Result<Option<Scheduler>> {
    let epochs = epochs as i64;
    Ok(Some(match kind {
        ScheduleArg::Constant => return Ok(None),
        ScheduleArg::Cosine => CosineAnnealingLR {
            t_max: epochs,
            eta_min: 0.0,
        }
        .build(opt)?,
        ScheduleArg::WarmupCosine => {
            let warmup = (epochs / 5).max(1);
            let linear = LinearLR {
                start_factor: 0.1,
                end_factor: 1.0,
                total_iters: warmup,
            };
            let cosine = CosineAnnealingLR {
                t_max: (epochs - warmup).max(1),
                eta_min: 0.0,
            };
            let parts = vec![linear.build(opt)?, cosine.build(opt)?];
            Scheduler::sequential(opt, parts, &[warmup])?
        }
        ScheduleArg::Step => StepLR {
            step_size: (epochs / 3).max(1),
            gamma: 0.3,
        }
        .build(opt)?,
    }))
}

/// One optimizer, ready to train a fresh MLP.
struct Run {
    /// Its column heading and legend entry.
    label: String,
    /// Its hyperparameters as shown under the heading, e.g. `lr=0.003`.
    hypers: String,
    /// The optimizer, owning the MLP's weights.
    opt: Optimizer,
    /// Handles to the weights.
    mlp: Mlp,
}

/// What training with one optimizer gave.
struct Outcome {
    /// Mean training loss of each epoch.
    losses: Vec<f32>,
    /// Fraction of the test images classified correctly after the last epoch.
    accuracy: f32,
    /// Wall-clock seconds of training.
    seconds: f64,
    /// The learning rate of each epoch over the optimizer's own.
    lr_factors: Vec<f64>,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> ExitCode {
    exit(demo(args))
}

/// The demo; every optimizer is built before the first is trained, so that a mistake in
/// the text one is reported at once.
fn demo(args: &DemoArgs) -> Result<(), CliError> {
    let mut runs = runs(args)?;
    let data = Digits::load();
    outln(format_args!(
        "UCI handwritten digits: {} images of 8x8 pixels, {} to train, {} to test",
        data.len(),
        mlp::TRAIN,
        data.len() - mlp::TRAIN
    ));
    outln(format_args!(
        "MLP 64-{}-10 (ReLU, softmax cross-entropy), batch {}, {} epochs, seeded",
        args.hidden,
        mlp::BATCH,
        args.epochs
    ));
    outln("");

    let progress = ProgressBar::new((runs.len() * args.epochs) as u64).with_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} epochs")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut outcomes = Vec::new();
    for run in &mut runs {
        progress.set_message(run.label.clone());
        let outcome = train(run, &data, args, &progress)?;
        progress.suspend(|| {
            eprintln!(
                "{}: loss {:.4} -> {:.4}, test accuracy {:.1}%, {:.0} ms",
                run.label,
                outcome.losses[0],
                outcome.losses[args.epochs - 1],
                outcome.accuracy * 100.0,
                outcome.seconds * 1e3
            )
        });
        outcomes.push(outcome);
    }
    progress.finish_and_clear();
    let total = start.elapsed().as_secs_f64();

    let curves: Vec<chart::Curve<'_>> = runs
        .iter()
        .zip(&outcomes)
        .map(|(run, outcome)| chart::Curve {
            label: &run.label,
            losses: &outcome.losses,
        })
        .collect();
    let title = format!(
        "optjit demo: MLP 64-{}-10 on the UCI digits, training loss",
        args.hidden
    );
    let lr = (args.schedule != ScheduleArg::Constant)
        .then(|| outcomes.first().map(|o| o.lr_factors.as_slice()))
        .flatten();
    let svg = chart::svg(&title, &curves, lr).map_err(|e| CliError::Chart(e.to_string()))?;
    std::fs::write(&args.out, svg).map_err(|e| CliError::Write {
        path: args.out.display().to_string(),
        message: e.to_string(),
    })?;
    // The chart is written before the table, so a reader that stops after the table's first
    // lines (`optjit demo | head`) still gets it.
    print_table(&runs, &outcomes);
    outln(format_args!("total {total:.2} s"));
    outln(format_args!("chart: {}", args.out.display()));
    Ok(())
}

/// The optimizers to train: the built-ins, then the text one unless `--builtins-only`.
fn runs(args: &DemoArgs) -> Result<Vec<Run>, CliError> {
    let sgd = Sgd {
        lr: 0.05,
        momentum: 0.9,
        ..Sgd::default()
    };
    let adam = Adam {
        lr: 3e-3,
        ..Adam::default()
    };
    let adamw = AdamW {
        lr: 3e-3,
        weight_decay: 0.1,
        ..AdamW::default()
    };
    let mut runs = vec![
        prepare("SGD-momentum", &sgd.graph()?, &[], args.hidden)?,
        prepare("Adam", &adam.graph()?, &[], args.hidden)?,
        prepare("AdamW", &adamw.graph()?, &[], args.hidden)?,
    ];
    if !args.builtins_only {
        let (source, graph, lr) = match &args.opt {
            Some(path) => (path.display().to_string(), text::parse_file(path)?, args.lr),
            None => (
                LION_PATH.to_string(),
                parse_embedded_lion()?,
                Some(args.lr.unwrap_or(LION_LR)),
            ),
        };
        let label = format!("{} ({source})", graph.name());
        if lr.is_some() && graph.hyper_index("lr").is_none() {
            let names: Vec<&str> = graph.hypers().iter().map(|h| h.name.as_str()).collect();
            return Err(CliError::NoLr {
                label,
                hypers: names.join(", "),
            });
        }
        let scheduled = args.schedule != ScheduleArg::Constant;
        if scheduled && graph.hyper_index("lr").is_none() {
            let names: Vec<&str> = graph.hypers().iter().map(|h| h.name.as_str()).collect();
            return Err(CliError::NoLr {
                label,
                hypers: names.join(", "),
            });
        }
        let overrides: Vec<(&str, f64)> = lr.iter().map(|&lr| ("lr", lr)).collect();
        runs.push(prepare(&label, &graph, &overrides, args.hidden)?);
    }
    Ok(runs)
}

/// The embedded examples/lion.opt, parsed; errors name that file.
fn parse_embedded_lion() -> optjit::Result<Graph> {
    text::parse_named(LION_OPT, LION_PATH)
}

/// An optimizer running `graph` with `overrides` over a freshly initialised MLP.
fn prepare(
    label: &str,
    graph: &Graph,
    overrides: &[(&str, f64)],
    hidden: usize,
) -> optjit::Result<Run> {
    let mut opt = Optimizer::new(graph)?;
    let group = opt.add_param_group(overrides)?;
    let mlp = Mlp::new(&mut opt, group, hidden)?;
    Ok(Run {
        label: label.to_string(),
        hypers: hypers(&opt, group),
        opt,
        mlp,
    })
}

/// Trains `run` for `args.epochs` epochs with `args.schedule`, then measures its test
/// accuracy.
fn train(
    run: &mut Run,
    data: &Digits,
    args: &DemoArgs,
    progress: &ProgressBar,
) -> optjit::Result<Outcome> {
    let epochs = args.epochs;
    let start = Instant::now();
    let mut losses = Vec::with_capacity(epochs);
    let mut lr_factors = Vec::with_capacity(epochs);
    let mut sched = scheduler(args.schedule, epochs, &mut run.opt)?;
    let base = match sched {
        Some(_) => run.opt.initial_hyper(0, "lr")?,
        None => 1.0,
    };
    for e in 0..epochs {
        lr_factors.push(match sched {
            Some(_) => run.opt.hyper(0, "lr")? / base,
            None => 1.0,
        });
        losses.push(run.mlp.epoch(&mut run.opt, data, e)?);
        if let Some(s) = &mut sched {
            s.step(&mut run.opt)?;
        }
        progress.inc(1);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Outcome {
        losses,
        accuracy: run.mlp.accuracy(&run.opt, data)?,
        seconds,
        lr_factors,
    })
}

/// The learning rate, momentum and (non-zero) weight decay of `group`, those it has.
fn hypers(opt: &Optimizer, group: usize) -> String {
    ["lr", "momentum", "weight_decay"]
        .iter()
        .filter_map(|&name| match opt.hyper(group, name) {
            Ok(v) if name != "weight_decay" || v != 0.0 => Some(format!("{name}={v}")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints the loss of every epoch (a row each, a column per optimizer under its label and
/// hyperparameters), then the test accuracy and the time of each optimizer.
fn print_table(runs: &[Run], outcomes: &[Outcome]) {
    let widths: Vec<usize> = runs
        .iter()
        .map(|r| r.label.chars().count().max(r.hypers.len()).max(9))
        .collect();
    let row = |first: &str, cells: Vec<String>| {
        let mut line = format!("{first:<8}");
        for (cell, w) in cells.iter().zip(&widths) {
            line += &format!("  {cell:>w$}");
        }
        outln(line.trim_end());
    };
    row("epoch", runs.iter().map(|r| r.label.clone()).collect());
    row("", runs.iter().map(|r| r.hypers.clone()).collect());
    let epochs = outcomes.first().map_or(0, |o| o.losses.len());
    for e in 0..epochs {
        let cells = outcomes.iter().map(|o| format!("{:.4}", o.losses[e]));
        row(&(e + 1).to_string(), cells.collect());
    }
    let accuracy = outcomes
        .iter()
        .map(|o| format!("{:.1}%", o.accuracy * 100.0));
    row("accuracy", accuracy.collect());
    let time = outcomes
        .iter()
        .map(|o| format!("{:.0} ms", o.seconds * 1e3));
    row("time", time.collect());
}

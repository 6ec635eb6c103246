//! `optjit schedule`: a schedule's values over N steps, as a table, JSON or an SVG chart, to
//! look at before training with it: a PyTorch scheduler by name with its keyword arguments,
//! or an expression of the step in the text syntax (optax's schedules included).

use super::output::{fail, outln};
use optjit::schedule::ScalarExpr;
use optjit::{optim, Optimizer};
use plotters::prelude::*;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `optjit schedule`.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// A PyTorch scheduler (`StepLR`, `CosineAnnealingLR`, `LambdaLR`, ...) or an expression
    /// of `step` (1 at the first update) in the text syntax, e.g.
    /// `warmup_cosine_decay(0, 1, 10, 100, 0)`.
    schedule: String,
    /// A keyword argument of the scheduler, `NAME=VALUE` (repeatable): a number, a
    /// comma-separated list (`milestones=30,60`) or, for `lr_lambda`, an expression of
    /// `epoch` (`lr_lambda=0.95^epoch`).
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    args: Vec<String>,
    /// Number of steps.
    #[arg(long, default_value_t = 100, value_parser = super::count_in(1, 1_000_000))]
    steps: usize,
    /// The value the scheduler starts from (the optimizer's lr).
    #[arg(long, default_value_t = 1.0)]
    base: f64,
    /// One JSON object per step instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the values as an SVG chart to this file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Prints the schedule's values (and writes the chart).
pub fn run(args: &ScheduleArgs) -> ExitCode {
    let values = match values(args) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    for (step, value) in &values {
        match args.json {
            true => outln(serde_json::json!({ "step": step, "value": value })),
            false => outln(format_args!("{step:>7}  {value}")),
        }
    }
    if let Some(path) = &args.plot {
        let written = svg(&args.schedule, &values)
            .map_err(|e| e.to_string())
            .and_then(|svg| std::fs::write(path, svg).map_err(|e| e.to_string()));
        if let Err(e) = written {
            return fail(format_args!("{}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

/// `(step, value)` pairs: for a scheduler, the value after construction (step 0, what the
/// first update uses) and after each `step()`; for an expression, its value at steps
/// `1..=steps`.
fn values(args: &ScheduleArgs) -> Result<Vec<(usize, f64)>, String> {
    let is_name = args.schedule.chars().all(|c| c.is_ascii_alphanumeric());
    if is_name && args.schedule.starts_with(|c: char| c.is_ascii_uppercase()) {
        return scheduler(args);
    }
    if !args.args.is_empty() {
        return Err("--arg is for a scheduler given by name".into());
    }
    let expr = ScalarExpr::parse(&args.schedule, &[]).map_err(|e| e.to_string())?;
    Ok((1..=args.steps)
        .map(|step| (step, expr.at(&[], step as u64)))
        .collect())
}

/// A PyTorch scheduler on an SGD-momentum optimizer of one group whose lr is `--base`.
fn scheduler(args: &ScheduleArgs) -> Result<Vec<(usize, f64)>, String> {
    let mut kwargs = Map::new();
    for arg in &args.args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}`: expected NAME=VALUE"))?;
        let value = match name {
            "lr_lambda" => Value::String(format!("lambda epoch: {}", value.replace('^', "**"))),
            _ if value.contains(',') => value
                .split(',')
                .map(|v| number(v.trim()))
                .collect::<Result<Vec<Value>, String>>()
                .map(Value::Array)?,
            _ => number(value)?,
        };
        kwargs.insert(name.to_string(), value);
    }
    // SGD with momentum, so that the schedulers that cycle momentum have one to cycle.
    let sgd = optim::Sgd {
        momentum: 0.9,
        ..optim::Sgd::default()
    };
    let graph = sgd.graph().map_err(|e| e.to_string())?;
    let mut opt = Optimizer::new(&graph).map_err(|e| e.to_string())?;
    opt.add_param_group(&[("lr", args.base)])
        .map_err(|e| e.to_string())?;
    let mut scheduler = optjit::conformance::schedulers::build(
        &mut opt,
        &args.schedule,
        &Value::Object(kwargs),
        "momentum",
    )?;
    let lr = |opt: &Optimizer| opt.hyper(0, "lr").map_err(|e| e.to_string());
    let mut values = vec![(0, lr(&opt)?)];
    for step in 1..=args.steps {
        scheduler.step(&mut opt).map_err(|e| e.to_string())?;
        values.push((step, lr(&opt)?));
    }
    Ok(values)
}

/// A JSON number (an integer when it reads as one, as PyTorch's integer arguments are).
fn number(text: &str) -> Result<Value, String> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::from(i));
    }
    let x: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("`{text}` is not a finite number"))
}

/// The values as a line chart (linear axes), as SVG text.
fn svg(title: &str, values: &[(usize, f64)]) -> Result<String, Box<dyn std::error::Error>> {
    let finite = values.iter().map(|v| v.1).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = match lo <= hi {
        true => (lo.min(0.0), hi + (hi - lo.min(0.0)).max(1e-12) * 0.05),
        false => (0.0, 1.0),
    };
    let last = values.last().map_or(1, |v| v.0).max(1);
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(0..last, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("value")
            .label_style(("sans-serif", 13))
            .draw()?;
        let points = values.iter().filter(|v| v.1.is_finite()).copied();
        chart.draw_series(LineSeries::new(
            points,
            RGBColor(31, 119, 180).stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(text)
}

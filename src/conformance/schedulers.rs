//! PyTorch's learning-rate scheduler sequences (`tests/data/schedulers`, format in its
//! README): the scheduler built on an SGD or Adam optimizer of two groups as recorded, its
//! values compared with PyTorch's after construction and after every `step()` (for
//! `ReduceLROnPlateau`, `step_with_metric` with the recorded metric): every group's `lr`, and
//! where recorded the cycled momentum, SGD's `momentum` or Adam's `b1` (`betas[0]`).
//!
//! The case files give lambdas as Python source; the forms that occur map to the text form's
//! expressions ([`python_lambda`]).

use super::{CaseReport, Errors, Tolerance};
use crate::schedule::{
    Anneal, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, CyclicLR, CyclicMode,
    ExponentialLR, Factor, LambdaLR, LinearLR, MultiStepLR, MultiplicativeLR, OneCycleLR,
    PlateauMode, PolynomialLR, ReduceLROnPlateau, ScaleMode, Scheduler, StepLR, ThresholdMode,
};
use crate::{optim, Optimizer};
use serde_json::Value;

type Outcome = std::result::Result<(), String>;

/// The tolerance of every scheduler: none. optjit follows PyTorch's arithmetic (its
/// recursive forms included), so the values are PyTorch's bit for bit.
const EXACT: Tolerance = Tolerance::EXACT;

fn field<'v>(v: &'v Value, key: &str) -> std::result::Result<&'v Value, String> {
    v.get(key).ok_or_else(|| format!("no `{key}`"))
}

fn float(v: &Value, key: &str) -> std::result::Result<f64, String> {
    field(v, key)?
        .as_f64()
        .ok_or_else(|| format!("`{key}` is not a number"))
}

fn int(v: &Value, key: &str) -> std::result::Result<i64, String> {
    field(v, key)?
        .as_i64()
        .ok_or_else(|| format!("`{key}` is not an integer"))
}

fn float_or(v: &Value, key: &str, default: f64) -> std::result::Result<f64, String> {
    match v.get(key) {
        None => Ok(default),
        Some(_) => float(v, key),
    }
}

/// A number or a list of numbers (PyTorch's "float or list"), `default` when absent.
fn floats(v: &Value, key: &str, default: f64) -> std::result::Result<Vec<f64>, String> {
    match v.get(key) {
        None => Ok(vec![default]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| format!("`{key}` holds a non-number"))
            })
            .collect(),
        Some(_) => Ok(vec![float(v, key)?]),
    }
}

fn bool_or(v: &Value, key: &str, default: bool) -> std::result::Result<bool, String> {
    match v.get(key) {
        None => Ok(default),
        Some(b) => b
            .as_bool()
            .ok_or_else(|| format!("`{key}` is not a boolean")),
    }
}

fn str_or<'v>(v: &'v Value, key: &str, default: &'v str) -> std::result::Result<&'v str, String> {
    match v.get(key) {
        None => Ok(default),
        Some(s) => s.as_str().ok_or_else(|| format!("`{key}` is not a string")),
    }
}

fn anneal(kwargs: &Value) -> std::result::Result<Anneal, String> {
    match str_or(kwargs, "anneal_strategy", "cos")? {
        "cos" => Ok(Anneal::Cos),
        "linear" => Ok(Anneal::Linear),
        other => Err(format!("unknown anneal_strategy `{other}`")),
    }
}

/// `milestones`: a list of integers.
fn milestones(kwargs: &Value) -> std::result::Result<Vec<i64>, String> {
    let list = field(kwargs, "milestones")?.as_array();
    let list = list.ok_or("`milestones` is not a list")?;
    let int = |m: &Value| {
        m.as_i64()
            .ok_or_else(|| "a milestone is not an integer".to_string())
    };
    list.iter().map(int).collect()
}

fn int_opt(v: &Value, key: &str) -> std::result::Result<Option<i64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => int(v, key).map(Some),
    }
}

/// A Python `lambda epoch: ...` of the forms the case files use, as a [`Factor`]: `a ** b`
/// becomes `a ^ b`, `x if c else y` becomes `select(c, x, y)`; the rest (numbers, `epoch`,
/// `+ - * /`, comparisons, parentheses) is the same in both languages.
pub fn python_lambda(source: &str) -> std::result::Result<Factor, String> {
    let body = source
        .trim()
        .strip_prefix("lambda epoch:")
        .ok_or_else(|| format!("`{source}` is not `lambda epoch: ...`"))?
        .trim();
    let expr = match body.split_once(" if ") {
        Some((value, rest)) => {
            let (cond, other) = rest
                .split_once(" else ")
                .ok_or_else(|| format!("`{body}`: `if` without `else`"))?;
            format!("select({cond}, {value}, {other})")
        }
        None => body.to_string(),
    };
    Factor::expr(&expr.replace("**", "^")).map_err(|e| e.to_string())
}

/// `lr_lambda`: one lambda or a list of them.
fn lambdas(kwargs: &Value) -> std::result::Result<Vec<Factor>, String> {
    match field(kwargs, "lr_lambda")? {
        Value::String(s) => Ok(vec![python_lambda(s)?]),
        Value::Array(list) => list
            .iter()
            .map(|v| python_lambda(v.as_str().ok_or("a lambda is not a string")?))
            .collect(),
        _ => Err("`lr_lambda` is neither a lambda nor a list".into()),
    }
}

/// The scheduler `name` (PyTorch's class name) with PyTorch's keyword arguments `kwargs`
/// (numbers, lists of numbers, lambdas as Python source), built on `opt`, whose momentum
/// hyperparameter (for the schedulers that cycle it) is `momentum`.
pub fn build(
    opt: &mut Optimizer,
    name: &str,
    kwargs: &Value,
    momentum: &str,
) -> std::result::Result<Scheduler, String> {
    let built = match name {
        "CosineAnnealingWarmRestarts" => CosineAnnealingWarmRestarts {
            t_0: int(kwargs, "T_0")?,
            t_mult: int_opt(kwargs, "T_mult")?.unwrap_or(1),
            eta_min: float_or(kwargs, "eta_min", 0.0)?,
        }
        .build(opt),
        "CyclicLR" => CyclicLR {
            base_lr: floats(kwargs, "base_lr", f64::NAN)?,
            max_lr: floats(kwargs, "max_lr", f64::NAN)?,
            step_size_up: int_opt(kwargs, "step_size_up")?.unwrap_or(2000),
            step_size_down: int_opt(kwargs, "step_size_down")?,
            mode: match str_or(kwargs, "mode", "triangular")? {
                "triangular" => CyclicMode::Triangular,
                "triangular2" => CyclicMode::Triangular2,
                "exp_range" => CyclicMode::ExpRange,
                other => return Err(format!("unknown mode `{other}`")),
            },
            gamma: float_or(kwargs, "gamma", 1.0)?,
            scale_fn: None,
            scale_mode: match str_or(kwargs, "scale_mode", "cycle")? {
                "cycle" => ScaleMode::Cycle,
                _ => ScaleMode::Iterations,
            },
            cycle_momentum: bool_or(kwargs, "cycle_momentum", true)?,
            base_momentum: floats(kwargs, "base_momentum", 0.8)?,
            max_momentum: floats(kwargs, "max_momentum", 0.9)?,
            momentum_hyper: momentum.into(),
        }
        .build(opt),
        "OneCycleLR" => OneCycleLR {
            max_lr: floats(kwargs, "max_lr", f64::NAN)?,
            total_steps: int_opt(kwargs, "total_steps")?,
            epochs: int_opt(kwargs, "epochs")?,
            steps_per_epoch: int_opt(kwargs, "steps_per_epoch")?,
            pct_start: float_or(kwargs, "pct_start", 0.3)?,
            anneal_strategy: anneal(kwargs)?,
            cycle_momentum: bool_or(kwargs, "cycle_momentum", true)?,
            base_momentum: floats(kwargs, "base_momentum", 0.85)?,
            max_momentum: floats(kwargs, "max_momentum", 0.95)?,
            div_factor: float_or(kwargs, "div_factor", 25.0)?,
            final_div_factor: float_or(kwargs, "final_div_factor", 1e4)?,
            three_phase: bool_or(kwargs, "three_phase", false)?,
            momentum_hyper: momentum.into(),
        }
        .build(opt),
        "ReduceLROnPlateau" => ReduceLROnPlateau {
            mode: match str_or(kwargs, "mode", "min")? {
                "min" => PlateauMode::Min,
                "max" => PlateauMode::Max,
                other => return Err(format!("unknown mode `{other}`")),
            },
            factor: float_or(kwargs, "factor", 0.1)?,
            patience: int_opt(kwargs, "patience")?
                .unwrap_or(10)
                .try_into()
                .map_err(|_| "`patience` is negative")?,
            threshold: float_or(kwargs, "threshold", 1e-4)?,
            threshold_mode: match str_or(kwargs, "threshold_mode", "rel")? {
                "rel" => ThresholdMode::Rel,
                "abs" => ThresholdMode::Abs,
                other => return Err(format!("unknown threshold_mode `{other}`")),
            },
            cooldown: int_opt(kwargs, "cooldown")?
                .unwrap_or(0)
                .try_into()
                .map_err(|_| "`cooldown` is negative")?,
            min_lr: floats(kwargs, "min_lr", 0.0)?,
            eps: float_or(kwargs, "eps", 1e-8)?,
        }
        .build(opt),
        "LambdaLR" => LambdaLR {
            lr_lambda: lambdas(kwargs)?,
        }
        .build(opt),
        "MultiplicativeLR" => MultiplicativeLR {
            lr_lambda: lambdas(kwargs)?,
        }
        .build(opt),
        "StepLR" => StepLR {
            step_size: int(kwargs, "step_size")?,
            gamma: float_or(kwargs, "gamma", 0.1)?,
        }
        .build(opt),
        "MultiStepLR" => MultiStepLR {
            milestones: milestones(kwargs)?,
            gamma: float_or(kwargs, "gamma", 0.1)?,
        }
        .build(opt),
        "ConstantLR" => ConstantLR {
            factor: float_or(kwargs, "factor", 1.0 / 3.0)?,
            total_iters: int(kwargs, "total_iters").unwrap_or(5),
        }
        .build(opt),
        "LinearLR" => LinearLR {
            start_factor: float_or(kwargs, "start_factor", 1.0 / 3.0)?,
            end_factor: float_or(kwargs, "end_factor", 1.0)?,
            total_iters: int(kwargs, "total_iters").unwrap_or(5),
        }
        .build(opt),
        "ExponentialLR" => ExponentialLR {
            gamma: float(kwargs, "gamma")?,
        }
        .build(opt),
        "PolynomialLR" => PolynomialLR {
            total_iters: int(kwargs, "total_iters").unwrap_or(5),
            power: float_or(kwargs, "power", 1.0)?,
        }
        .build(opt),
        "CosineAnnealingLR" => CosineAnnealingLR {
            t_max: int(kwargs, "T_max")?,
            eta_min: float_or(kwargs, "eta_min", 0.0)?,
        }
        .build(opt),
        "ChainedScheduler" | "SequentialLR" => {
            let subs = field(kwargs, "schedulers")?
                .as_array()
                .ok_or("`schedulers` is not a list")?;
            let mut built = Vec::with_capacity(subs.len());
            for sub in subs {
                let name = field(sub, "scheduler")?
                    .as_str()
                    .ok_or("`scheduler` is not a name")?;
                built.push(build(opt, name, field(sub, "kwargs")?, momentum)?);
            }
            if name == "ChainedScheduler" {
                Scheduler::chained(opt, built)
            } else {
                Scheduler::sequential(opt, built, &milestones(kwargs)?)
            }
        }
        other => return Err(format!("scheduler `{other}` is not implemented yet")),
    };
    built.map_err(|e| e.to_string())
}

/// Runs one scheduler case: `report.steps[k]` compares every group's value at index `k`.
pub(super) fn run(case: &Value, report: &mut CaseReport) -> Outcome {
    let name = field(case, "scheduler")?
        .as_str()
        .ok_or("`scheduler` is not a name")?;
    let optimizer = field(case, "optimizer")?;
    let groups = field(field(case, "param_groups")?, "groups")?
        .as_array()
        .ok_or("`groups` is not a list")?;
    // The optimizer, and where each group's cycled momentum sits: SGD's `momentum`, or
    // Adam's `b1` (`betas[0]` in the case file).
    let (mut opt, momentum) = match field(optimizer, "class")?.as_str() {
        Some("SGD") => {
            let graph = optim::Sgd {
                momentum: float(optimizer, "momentum")?,
                ..optim::Sgd::default()
            }
            .graph()
            .map_err(|e| e.to_string())?;
            let mut opt = Optimizer::new(&graph).map_err(|e| e.to_string())?;
            for g in groups {
                let hypers = [("lr", float(g, "lr")?), ("momentum", float(g, "momentum")?)];
                opt.add_param_group(&hypers).map_err(|e| e.to_string())?;
            }
            (opt, "momentum")
        }
        Some("Adam") => {
            let betas = |v: &Value| -> std::result::Result<(f64, f64), String> {
                match field(v, "betas")?.as_array().map(Vec::as_slice) {
                    Some([b1, b2]) => Ok((
                        b1.as_f64().ok_or("a beta is not a number")?,
                        b2.as_f64().ok_or("a beta is not a number")?,
                    )),
                    _ => Err("`betas` is not a pair".into()),
                }
            };
            let graph = optim::Adam {
                lr: float(optimizer, "lr")?,
                betas: betas(optimizer)?,
                ..optim::Adam::default()
            }
            .graph()
            .map_err(|e| e.to_string())?;
            let mut opt = Optimizer::new(&graph).map_err(|e| e.to_string())?;
            for g in groups {
                let (b1, b2) = betas(g)?;
                let hypers = [("lr", float(g, "lr")?), ("b1", b1), ("b2", b2)];
                opt.add_param_group(&hypers).map_err(|e| e.to_string())?;
            }
            (opt, "b1")
        }
        other => return Err(format!("optimizer {other:?} is not implemented yet")),
    };
    let mut scheduler = build(&mut opt, name, field(case, "kwargs")?, momentum)?;
    let steps = usize::try_from(int(case, "steps")?).map_err(|e| e.to_string())?;
    // Per recorded hyperparameter: its name in optjit and its values per group.
    let mut expected = vec![("lr", values(case, "lr", None)?)];
    if case.get("momentum").is_some() {
        expected.push(("momentum", values(case, "momentum", None)?));
    }
    if case.get("betas").is_some() {
        expected.push(("b1", values(case, "betas", Some(0))?));
    }
    for (_, values) in &expected {
        if values.len() != groups.len() || values.iter().any(|g| g.len() != steps + 1) {
            return Err("a recorded field does not have steps + 1 values per group".into());
        }
    }
    let metrics = match case.get("metrics") {
        None => None,
        Some(_) => Some(values(case, "metrics", None).map(|m| m.concat())?),
    };
    for k in 0..=steps {
        if k > 0 {
            let stepped = match &metrics {
                Some(m) => {
                    let metric = *m.get(k - 1).ok_or("fewer metrics than steps")?;
                    scheduler.step_with_metric(metric, &mut opt)
                }
                None => scheduler.step(&mut opt),
            };
            stepped.map_err(|e| e.to_string())?;
        }
        let mut errors = Errors::new();
        for (hyper, values) in &expected {
            for (g, values) in values.iter().enumerate() {
                let actual = opt.hyper(g, hyper).map_err(|e| e.to_string())?;
                errors.add(actual, values[k], EXACT);
            }
        }
        report.steps.push(errors);
    }
    Ok(())
}

/// The numbers of field `key`: a list per group (each entry a number, or with `item`, a list
/// whose `item`-th entry is taken), or one list of numbers (`metrics`).
fn values(
    case: &Value,
    key: &str,
    item: Option<usize>,
) -> std::result::Result<Vec<Vec<f64>>, String> {
    let number = |v: &Value| -> std::result::Result<f64, String> {
        let v = match item {
            Some(i) => v
                .get(i)
                .ok_or_else(|| format!("a `{key}` entry is too short"))?,
            None => v,
        };
        v.as_f64()
            .ok_or_else(|| format!("a `{key}` entry is not a number"))
    };
    let list = field(case, key)?
        .as_array()
        .ok_or_else(|| format!("`{key}` is not a list"))?;
    if list.iter().all(Value::is_number) {
        return Ok(vec![list.iter().map(number).collect::<Result<_, _>>()?]);
    }
    list.iter()
        .map(|g| {
            g.as_array()
                .ok_or_else(|| format!("a group's `{key}` is not a list"))?
                .iter()
                .map(number)
                .collect()
        })
        .collect()
}

//! PyTorch's learning-rate scheduler sequences (`tests/data/schedulers`, format in its
//! README): the scheduler built on an SGD or Adam optimizer of two groups as recorded, its
//! values compared with PyTorch's after construction and after every `step()`.
//!
//! The case files give lambdas as Python source; the forms that occur map to the text form's
//! expressions ([`python_lambda`]).

use super::{CaseReport, Errors, Tolerance};
use crate::schedule::{
    ConstantLR, CosineAnnealingLR, ExponentialLR, Factor, LambdaLR, LinearLR, MultiStepLR,
    MultiplicativeLR, PolynomialLR, Scheduler, StepLR,
};
use crate::{optim, Optimizer};
use serde_json::Value;

type Outcome = std::result::Result<(), String>;

/// The tolerance of every scheduler: none. optjit follows PyTorch's arithmetic (its
/// recursive forms included), so the values are PyTorch's bit for bit.
const EXACT: Tolerance = Tolerance {
    rtol: 0.0,
    atol: 0.0,
};

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
/// (numbers, lists of numbers, lambdas as Python source), built on `opt`.
pub fn build(
    opt: &mut Optimizer,
    name: &str,
    kwargs: &Value,
) -> std::result::Result<Scheduler, String> {
    let built = match name {
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
        "MultiStepLR" => {
            let milestones = field(kwargs, "milestones")?
                .as_array()
                .ok_or("`milestones` is not a list")?
                .iter()
                .map(|m| m.as_i64().ok_or("a milestone is not an integer"))
                .collect::<std::result::Result<Vec<i64>, _>>()?;
            MultiStepLR {
                milestones,
                gamma: float_or(kwargs, "gamma", 0.1)?,
            }
            .build(opt)
        }
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
                built.push(build(opt, name, field(sub, "kwargs")?)?);
            }
            if name == "ChainedScheduler" {
                Scheduler::chained(opt, built)
            } else {
                let milestones = field(kwargs, "milestones")?
                    .as_array()
                    .ok_or("`milestones` is not a list")?
                    .iter()
                    .map(|m| m.as_i64().ok_or("a milestone is not an integer"))
                    .collect::<std::result::Result<Vec<i64>, _>>()?;
                Scheduler::sequential(opt, built, &milestones)
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
    let mut opt = match field(optimizer, "class")?.as_str() {
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
            opt
        }
        other => return Err(format!("optimizer {other:?} is not implemented yet")),
    };
    let mut scheduler = build(&mut opt, name, field(case, "kwargs")?)?;
    let expected = field(case, "lr")?
        .as_array()
        .ok_or("`lr` is not a list")?
        .iter()
        .map(|g| {
            g.as_array()
                .ok_or("a group's `lr` is not a list")?
                .iter()
                .map(|v| v.as_f64().ok_or("an lr is not a number"))
                .collect::<std::result::Result<Vec<f64>, _>>()
        })
        .collect::<std::result::Result<Vec<Vec<f64>>, _>>()?;
    let steps = usize::try_from(int(case, "steps")?).map_err(|e| e.to_string())?;
    if expected.len() != groups.len() || expected.iter().any(|g| g.len() != steps + 1) {
        return Err("`lr` does not have steps + 1 values per group".into());
    }
    for k in 0..=steps {
        if k > 0 {
            scheduler.step(&mut opt).map_err(|e| e.to_string())?;
        }
        let mut errors = Errors::new();
        for (g, values) in expected.iter().enumerate() {
            let actual = opt.hyper(g, "lr").map_err(|e| e.to_string())?;
            errors.add(actual, values[k], EXACT);
        }
        report.steps.push(errors);
    }
    Ok(())
}

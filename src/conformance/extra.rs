//! The case files beyond `torch.optim` trajectories: PyTorch's gradient clipping and
//! `GradScaler` (`tests/data/clip`), and optax's trajectories (`tests/data/optax`). Each
//! folder's README describes its format.

use super::{CaseReport, Errors, Tolerance};
use crate::runtime::StateDict;
use crate::{optim, Element, Error, Executor, Float, GradScaler, Optimizer, Param};
use ndarray::Array1;
use serde_json::{Map, Value};

type Outcome = std::result::Result<(), String>;

/// A number as the case files write it: JSON numbers, and `"inf"`, `"-inf"`, `"nan"`.
fn number(v: &Value) -> std::result::Result<f64, String> {
    match v {
        Value::String(s) => match s.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            other => Err(format!("`{other}` is not a number")),
        },
        v => v.as_f64().ok_or_else(|| format!("{v} is not a number")),
    }
}

fn field<'v>(case: &'v Value, key: &str) -> std::result::Result<&'v Value, String> {
    case.get(key).ok_or_else(|| format!("no `{key}`"))
}

fn numbers(v: &Value) -> std::result::Result<Vec<f64>, String> {
    let list = v.as_array().ok_or("expected a list of numbers")?;
    list.iter().map(number).collect()
}

fn tensors(v: &Value) -> std::result::Result<Vec<Vec<f64>>, String> {
    let list = v.as_array().ok_or("expected a list of tensors")?;
    list.iter().map(numbers).collect()
}

/// An optimizer of `graph` with one group holding `values` as its parameters.
pub(super) fn with_params<T: Element>(
    graph: &crate::Graph,
    values: &[Vec<f64>],
    executor: Executor,
) -> std::result::Result<(Optimizer, Vec<Param<T>>), String> {
    let opt = Optimizer::new(graph).map_err(|e| e.to_string())?;
    let mut opt = opt.with_executor(executor);
    let group = opt.add_param_group(&[]).map_err(|e| e.to_string())?;
    let handles = values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let v: Array1<T> = v.iter().map(|&x| T::from_f64(x)).collect();
            opt.add_param(group, &format!("p{k}"), &v)
        })
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    Ok((opt, handles))
}

fn set_grads<T: Float>(opt: &mut Optimizer, handles: &[Param<T>], grads: &[Vec<f64>]) -> Outcome {
    if grads.len() != handles.len() {
        return Err("one gradient per parameter expected".into());
    }
    for (h, g) in handles.iter().zip(grads) {
        let g: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
        opt.set_grad(h, &g).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `expected`, one entry per parameter of `handles`, or an error saying what is missing.
fn per_param<'e, V, H>(
    handles: &[H],
    expected: &'e [V],
    what: &str,
) -> std::result::Result<&'e [V], String> {
    match expected.len() == handles.len() {
        true => Ok(expected),
        false => Err(format!(
            "{what}: {} tensors, the case has {} parameters",
            expected.len(),
            handles.len()
        )),
    }
}

/// The parameters of `handles` against `expected` (one tensor per parameter), as one step's
/// errors.
fn param_errors<T: Float>(
    opt: &Optimizer,
    handles: &[Param<T>],
    expected: &[Vec<f64>],
    what: &str,
    tol: Tolerance,
) -> std::result::Result<Errors, String> {
    let mut errors = Errors::new();
    for (h, e) in handles.iter().zip(per_param(handles, expected, what)?) {
        compare(
            opt.param(h).map_err(|e| e.to_string())?,
            e,
            tol,
            &mut errors,
        )?;
    }
    Ok(errors)
}

/// Compares `actual` with `expected` (rounded to `T`), value by value.
fn compare<T: Float>(
    actual: &[T],
    expected: &[f64],
    tol: Tolerance,
    errors: &mut Errors,
) -> Outcome {
    if actual.len() != expected.len() {
        return Err(format!(
            "{} values, the case has {}",
            actual.len(),
            expected.len()
        ));
    }
    for (a, &e) in actual.iter().zip(expected) {
        errors.add(a.to_f64(), T::from_f64(e).to_f64(), tol);
    }
    Ok(())
}

/// `clip_grad_norm_` or `clip_grad_value_` on the case's gradients, compared with PyTorch's
/// total norm and clipped gradients (one entry in `report.steps`); a case that raises must
/// give [`Error::NonFiniteNorm`] and leave the gradients as they were.
pub(super) fn clip<T: Float>(case: &Value, executor: Executor, report: &mut CaseReport) -> Outcome {
    let tol = Tolerance::for_dtype(T::DTYPE);
    let grads = tensors(field(case, "grads")?)?;
    let sgd = optim::Sgd::default().graph().map_err(|e| e.to_string())?;
    let zeros: Vec<Vec<f64>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
    let (mut opt, handles) = with_params::<T>(&sgd, &zeros, executor)?;
    set_grads(&mut opt, &handles, &grads)?;
    let kwargs = field(case, "kwargs")?;
    let mut errors = Errors::new();
    let function = field(case, "function")?.as_str().unwrap_or_default();
    if function.ends_with("clip_grad_value_") {
        opt.clip_grad_value(number(field(kwargs, "clip_value")?)?);
    } else {
        let max_norm = number(field(kwargs, "max_norm")?)?;
        let norm_type = number(field(kwargs, "norm_type")?)?;
        let error_if_nonfinite = field(kwargs, "error_if_nonfinite")?.as_bool();
        let result = opt.clip_grad_norm(max_norm, norm_type, error_if_nonfinite == Some(true));
        match (result, case.get("raises")) {
            (Err(Error::NonFiniteNorm { .. }), Some(_)) => {
                for (h, g) in handles.iter().zip(per_param(&handles, &grads, "grads")?) {
                    let ours = opt.grad(h).map_err(|e| e.to_string())?.unwrap_or(&[]);
                    compare(ours, g, tol, &mut errors)?;
                }
                report.steps.push(errors);
                return Ok(());
            }
            (Ok(total), None) => {
                let expected = number(field(case, "total_norm")?)?;
                compare(&[T::from_f64(total)], &[expected], tol, &mut errors)?;
            }
            (result, raises) => {
                return Err(format!(
                    "PyTorch {} an error, optjit gave {result:?}",
                    if raises.is_some() {
                        "raised"
                    } else {
                        "did not raise"
                    }
                ))
            }
        }
    }
    let expected = tensors(field(case, "clipped_grads")?)?;
    for (h, e) in handles
        .iter()
        .zip(per_param(&handles, &expected, "clipped_grads")?)
    {
        let ours = opt.grad(h).map_err(|e| e.to_string())?.unwrap_or(&[]);
        compare(ours, e, tol, &mut errors)?;
    }
    report.steps.push(errors);
    Ok(())
}

/// `torch.amp.GradScaler` driving SGD with momentum: replayed twice, unfused (gradients
/// unscaled in place, then the step) and fused ([`optim::amp`]), each step's parameters
/// compared (one entry in `report.steps` per step and run) and the scale, growth tracker and
/// skipped steps matched exactly.
pub(super) fn grad_scaler(case: &Value, executor: Executor, report: &mut CaseReport) -> Outcome {
    if case.get("supported").and_then(Value::as_bool) == Some(false) {
        return Err("PyTorch recorded the case as unsupported".into());
    }
    for fused in [false, true] {
        scaler_run(case, fused, executor, report).map_err(|e| match fused {
            true => format!("fused: {e}"),
            false => e,
        })?;
    }
    Ok(())
}

fn scaler_run(case: &Value, fused: bool, executor: Executor, report: &mut CaseReport) -> Outcome {
    let tol = Tolerance::for_dtype(crate::DType::F32);
    let kwargs = field(case, "scaler_kwargs")?;
    let interval = field(kwargs, "growth_interval")?
        .as_u64()
        .ok_or("growth_interval")?;
    let mut scaler = GradScaler::new(
        number(field(kwargs, "init_scale")?)?,
        number(field(kwargs, "growth_factor")?)?,
        number(field(kwargs, "backoff_factor")?)?,
        interval,
    )
    .map_err(|e| e.to_string())?;
    let options = field(case, "optimizer")?;
    let sgd = optim::Sgd {
        lr: number(field(options, "lr")?)?,
        momentum: number(field(options, "momentum")?)?,
        ..optim::Sgd::default()
    }
    .graph()
    .map_err(|e| e.to_string())?;
    let graph = match fused {
        true => optim::amp(&sgd).map_err(|e| e.to_string())?,
        false => sgd,
    };
    let (mut opt, handles) =
        with_params::<f32>(&graph, &tensors(field(case, "params")?)?, executor)?;
    let coefs = field(case, "coefs")?.as_array().ok_or("coefs")?;
    let records = field(case, "step_records")?
        .as_array()
        .ok_or("step_records")?;
    if coefs.len() != records.len() {
        return Err("one coefficient set per step record expected".into());
    }
    for (k, (coef, record)) in coefs.iter().zip(records).enumerate() {
        let at = |what: &str| format!("step {}: {what}", k + 1);
        let scale = scaler.scale();
        if scale != number(field(record, "scale_used")?)? {
            return Err(at("the scale differs"));
        }
        let mut grads = tensors(coef)?;
        for g in &mut grads {
            g.iter_mut().for_each(|x| *x *= scale);
        }
        if let Some(inject) = record
            .get("injected_into_scaled_grad")
            .filter(|v| !v.is_null())
        {
            let t = field(inject, "tensor")?.as_u64().ok_or("tensor")? as usize;
            let i = field(inject, "index")?.as_u64().ok_or("index")? as usize;
            let slot = grads
                .get_mut(t)
                .and_then(|g| g.get_mut(i))
                .ok_or("injection")?;
            *slot = number(field(inject, "value")?)?;
        }
        opt.zero_grad();
        set_grads(&mut opt, &handles, &grads)?;
        let stepped = scaler.step(&mut opt).map_err(|e| e.to_string())?;
        if stepped == field(record, "skipped")?.as_bool().ok_or("skipped")? {
            return Err(at("skipped differently"));
        }
        scaler.update();
        if scaler.scale() != number(field(record, "scale_after_update")?)? {
            return Err(at("the scale after the update differs"));
        }
        let tracker = field(record, "growth_tracker_after_update")?.as_u64();
        if Some(scaler.growth_tracker()) != tracker {
            return Err(at("the growth tracker differs"));
        }
        let expected = tensors(field(record, "params_after")?)?;
        let errors = param_errors(&opt, &handles, &expected, "params_after", tol)?;
        report.steps.push(errors);
    }
    Ok(())
}

/// An optax trajectory through [`optim::from_optax`]: every step's parameters, then the
/// state leaves that optjit keeps under the same name or under PyTorch's name for it
/// (`mu` → `exp_avg`, `nu` → `exp_avg_sq`); counters and per-layer leaves are not
/// compared.
pub(super) fn optax<T: Float>(
    case: &Value,
    executor: Executor,
    report: &mut CaseReport,
) -> Outcome {
    let tol = Tolerance::for_dtype(T::DTYPE);
    let name = field(case, "optimizer")?.as_str().ok_or("optimizer")?;
    let empty = Map::new();
    let hyper = field(case, "hyper")?.as_object().unwrap_or(&empty);
    let graph = optim::from_optax(name, hyper).map_err(|e| e.to_string())?;
    let (mut opt, handles) = with_params::<T>(&graph, &tensors(field(case, "params")?)?, executor)?;
    let steps = field(case, "grads")?.as_array().ok_or("grads")?;
    let expected = field(case, "expected_params")?
        .as_array()
        .ok_or("expected")?;
    if steps.len() != expected.len() {
        return Err("grads and expected_params have different lengths".into());
    }
    for (grads, expected) in steps.iter().zip(expected) {
        opt.zero_grad();
        set_grads(&mut opt, &handles, &tensors(grads)?)?;
        opt.step().map_err(|e| e.to_string())?;
        let expected = tensors(expected)?;
        let errors = param_errors(&opt, &handles, &expected, "expected_params", tol)?;
        report.steps.push(errors);
    }
    let state = field(case, "expected_state_after_last")?
        .as_object()
        .ok_or("state")?;
    let dict = opt.state_dict();
    for (key, leaves) in state {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        if leaf.starts_with("count") {
            continue; // step counters: the steps were counted by the trajectory itself
        }
        // `name[k]`: a per-tensor scalar of tensor `k` (NovoGrad's per-layer `nu`).
        if let Some((name, k)) = leaf.strip_suffix(']').and_then(|l| l.split_once('[')) {
            let k: usize = k.parse().map_err(|_| format!("state leaf `{key}`"))?;
            let ours = dict.state.get(&k).and_then(|e| e.scalars.get(name));
            let ours = ours.ok_or_else(|| format!("optjit has no scalar for leaf `{key}`"))?;
            compare(
                &[T::from_f64(*ours)],
                &[number(leaves)?],
                tol,
                &mut report.state,
            )?;
            continue;
        }
        let slot = optax_slot(&dict, leaf)
            .ok_or_else(|| format!("optjit has no state for optax's leaf `{key}`"))?;
        let leaves = tensors(leaves)?;
        for (h, leaf) in handles.iter().zip(per_param(&handles, &leaves, key)?) {
            let ours = opt.state_buffer(h, slot).map_err(|e| e.to_string())?;
            compare(ours.unwrap_or(&[]), leaf, tol, &mut report.state)?;
        }
    }
    Ok(())
}

/// The element slot of optjit's optimizer that holds optax's state leaf `leaf`.
fn optax_slot<'d>(dict: &'d StateDict, leaf: &'d str) -> Option<&'d str> {
    let alias = match leaf {
        "mu" => "exp_avg",
        "nu" => "exp_avg_sq",
        // AdEMAMix's fast and slow averages, by the authors' PyTorch names.
        "m1" => "exp_avg_fast",
        "m2" => "exp_avg_slow",
        other => other,
    };
    let entry = dict.state.values().next()?;
    [leaf, alias]
        .into_iter()
        .find(|name| entry.tensors.contains_key(*name))
}

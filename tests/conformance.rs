//! Conformance with PyTorch: replays the `torch.optim` trajectories recorded in
//! `tests/data/conformance/` (format and tolerances in its README) with optjit's built-ins, on
//! every executor, and compares the parameters after every step and the state after the last.

mod common;

use common::slot_index;
use optjit::optim::{Adam, AdamW, Sgd};
use optjit::{DType, Executor, Float, Graph, ParamRef, ParamState, Stepper};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const EXECUTORS: [Executor; 3] = [Executor::Jit, Executor::Reference, Executor::Eager];

/// Failure lines printed in full; the rest are counted.
const MAX_REPORTED: usize = 60;

#[test]
fn sgd_follows_torch_trajectories() {
    check_folder("sgd");
}

#[test]
fn adam_follows_torch_trajectories() {
    check_folder("adam");
}

#[test]
fn adamw_follows_torch_trajectories() {
    check_folder("adamw");
}

/// One case file. Fields as in the README; the informational ones are not read.
#[derive(Deserialize)]
struct Case {
    optimizer: String,
    dtype: String,
    hyper: BTreeMap<String, Value>,
    steps: usize,
    params: Vec<Vec<f64>>,
    /// `grads[k][i]`: tensor `i`'s gradient in step `k + 1`; `None` skips the tensor.
    grads: Vec<Vec<Option<Vec<f64>>>>,
    expected_params: Vec<Vec<Vec<f64>>>,
    expected_state_after_last: Vec<BTreeMap<String, Value>>,
}

/// Runs every case file of `tests/data/conformance/<optimizer>/` on every executor and fails
/// with one message listing every mismatch.
fn check_folder(optimizer: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/conformance")
        .join(optimizer);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());

    let mut failures = Vec::new();
    for file in &files {
        let name = format!(
            "{optimizer}/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        if let Err(e) = check_file(file, optimizer, &name, &mut failures) {
            failures.push(format!("{name}: {e}"));
        }
    }
    let mut message = String::new();
    for line in failures.iter().take(MAX_REPORTED) {
        writeln!(message, "  {line}").unwrap();
    }
    if failures.len() > MAX_REPORTED {
        writeln!(message, "  ... and {} more", failures.len() - MAX_REPORTED).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} mismatches with torch in {} case files of {optimizer}:\n{message}",
        failures.len(),
        files.len(),
    );
}

/// Parses one case file and runs it on every executor.
fn check_file(
    path: &Path,
    optimizer: &str,
    name: &str,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))?;
    check_shape(&case, optimizer, path)?;
    let graph = graph(&case.optimizer, &case.hyper)?;
    for executor in EXECUTORS {
        let label = format!("{name} [{executor:?}]");
        let stepper = Stepper::new(&graph)
            .map_err(|e| format!("compiling: {e}"))?
            .with_executor(executor);
        let run = match case.dtype.as_str() {
            "float32" => replay::<f32>(&label, &case, &stepper, failures),
            "float64" => replay::<f64>(&label, &case, &stepper, failures),
            other => Err(format!("unknown dtype `{other}`")),
        };
        run.map_err(|e| format!("[{executor:?}] {e}"))?;
    }
    Ok(())
}

/// Checks that the file is one well-formed case of `optimizer` in the dtype its name says.
fn check_shape(case: &Case, optimizer: &str, path: &Path) -> Result<(), String> {
    let file_dtype = path
        .file_stem()
        .and_then(|stem| Path::new(stem).extension())
        .map(|ext| ext.to_string_lossy().into_owned());
    let tensors = case.params.len();
    let checks = [
        (
            case.optimizer == optimizer,
            "`optimizer` is not the folder's name",
        ),
        (
            file_dtype.as_deref() == Some(case.dtype.as_str()),
            "`dtype` differs from the file name's",
        ),
        (case.steps > 0, "no steps"),
        (tensors > 0, "no tensors"),
        (
            case.grads.len() == case.steps,
            "`grads` is not `steps` long",
        ),
        (
            case.expected_params.len() == case.steps,
            "`expected_params` is not `steps` long",
        ),
        (
            case.expected_state_after_last.len() == tensors,
            "`expected_state_after_last` has not one entry per tensor",
        ),
        (
            case.grads.iter().all(|step| step.len() == tensors),
            "a step of `grads` has not one entry per tensor",
        ),
        (
            case.expected_params
                .iter()
                .all(|step| step.len() == tensors),
            "a step of `expected_params` has not one entry per tensor",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, problem)) => Err(format!("malformed case: {problem}")),
        None => Ok(()),
    }
}

/// The optjit built-in for a torch optimizer and its constructor kwargs.
fn graph(optimizer: &str, hyper: &BTreeMap<String, Value>) -> Result<Graph, String> {
    let mut kwargs = Kwargs(hyper.clone());
    let graph = match optimizer {
        "sgd" => {
            let d = Sgd::default();
            Sgd {
                lr: kwargs.number("lr", d.lr)?,
                momentum: kwargs.number("momentum", d.momentum)?,
                dampening: kwargs.number("dampening", d.dampening)?,
                weight_decay: kwargs.number("weight_decay", d.weight_decay)?,
                nesterov: kwargs.flag("nesterov", d.nesterov)?,
                maximize: kwargs.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adam" => adam(&mut kwargs, Adam::default())?.graph(),
        "adamw" => {
            let d = AdamW::default();
            let defaults = Adam {
                lr: d.lr,
                betas: d.betas,
                eps: d.eps,
                weight_decay: d.weight_decay,
                amsgrad: d.amsgrad,
                maximize: d.maximize,
            };
            AdamW::from(adam(&mut kwargs, defaults)?).graph()
        }
        other => return Err(format!("no optjit built-in for torch optimizer `{other}`")),
    };
    kwargs.finish()?;
    graph.map_err(|e| format!("building the graph: {e}"))
}

/// Adam's (and AdamW's) options from torch kwargs, `defaults` for the missing ones.
fn adam(kwargs: &mut Kwargs, defaults: Adam) -> Result<Adam, String> {
    Ok(Adam {
        lr: kwargs.number("lr", defaults.lr)?,
        betas: kwargs.pair("betas", defaults.betas)?,
        eps: kwargs.number("eps", defaults.eps)?,
        weight_decay: kwargs.number("weight_decay", defaults.weight_decay)?,
        amsgrad: kwargs.flag("amsgrad", defaults.amsgrad)?,
        maximize: kwargs.flag("maximize", defaults.maximize)?,
    })
}

/// torch constructor kwargs, taken out one by one so that the ones left over, which optjit
/// does not map, can be reported.
struct Kwargs(BTreeMap<String, Value>);

impl Kwargs {
    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    fn number(&mut self, name: &str, default: f64) -> Result<f64, String> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("kwarg `{name}` is not a number: {v}")),
        }
    }

    fn flag(&mut self, name: &str, default: bool) -> Result<bool, String> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("kwarg `{name}` is not a bool: {v}")),
        }
    }

    fn pair(&mut self, name: &str, default: (f64, f64)) -> Result<(f64, f64), String> {
        let Some(v) = self.take(name) else {
            return Ok(default);
        };
        match v.as_array().map(Vec::as_slice) {
            Some([a, b]) => a
                .as_f64()
                .zip(b.as_f64())
                .ok_or_else(|| format!("kwarg `{name}` is not two numbers: {v}")),
            _ => Err(format!("kwarg `{name}` is not a pair: {v}")),
        }
    }

    /// Fails naming every kwarg not taken.
    fn finish(self) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        Err(format!("unknown torch kwarg(s): {}", names.join(", ")))
    }
}

/// `(rtol, atol)` from the README: `|actual - expected| <= atol + rtol * |expected|`.
fn tolerance<T: Float>() -> (f64, f64) {
    match T::DTYPE {
        DType::F32 => (1e-5, 1e-7),
        DType::F64 => (1e-12, 1e-12),
    }
}

/// Compares `actual` with `expected` element by element, pushing one line per mismatch.
fn compare<T: Float>(at: &str, actual: &[T], expected: &[f64], failures: &mut Vec<String>) {
    if actual.len() != expected.len() {
        failures.push(format!(
            "{at}: {} values, expected {}",
            actual.len(),
            expected.len()
        ));
        return;
    }
    let (rtol, atol) = tolerance::<T>();
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let a = a.to_f64();
        // False for a NaN, which so fails.
        let close = (a - e).abs() <= atol + rtol * e.abs();
        if !close {
            failures.push(format!(
                "{at}[{index}]: expected {e:e}, actual {a:e} (diff {:e})",
                a - e
            ));
        }
    }
}

/// Replays `case` in `T` with `stepper`, pushing mismatches to `failures`; an error means the
/// replay could not go on.
fn replay<T: Float>(
    label: &str,
    case: &Case,
    stepper: &Stepper,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let to_t = |values: &[f64]| values.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let mut params: Vec<Vec<T>> = case.params.iter().map(|p| to_t(p)).collect();
    let mut states: Vec<ParamState<T>> = params
        .iter()
        .map(|p| stepper.init_state::<T>(p.len()))
        .collect();

    for (k, (grads, expected)) in case.grads.iter().zip(&case.expected_params).enumerate() {
        let step = k + 1;
        let grads: Vec<Option<Vec<T>>> = grads.iter().map(|g| g.as_deref().map(to_t)).collect();
        let mut batch: Vec<ParamRef<'_, T>> = params
            .iter_mut()
            .zip(states.iter_mut())
            .zip(&grads)
            .filter_map(|((param, state), grad)| {
                let grad = grad.as_deref()?;
                Some(ParamRef { param, grad, state })
            })
            .collect();
        stepper
            .step_many(&mut batch)
            .map_err(|e| format!("step {step}: {e}"))?;
        for (i, (actual, expected)) in params.iter().zip(expected).enumerate() {
            let at = format!("{label} step {step} tensor {i} param");
            compare(&at, actual, expected, failures);
        }
    }

    let last = case.steps;
    for (i, (state, expected)) in states
        .iter()
        .zip(&case.expected_state_after_last)
        .enumerate()
    {
        let at = |key: &str| format!("{label} state after step {last} tensor {i} {key}");
        for slot in &stepper.program().slots {
            if !expected.contains_key(&slot.name) {
                failures.push(format!("{}: torch keeps no such state", at(&slot.name)));
            }
        }
        for (key, value) in expected {
            if key == "step" {
                match value.as_f64() {
                    Some(e) => compare(&at(key), &[T::from_f64(state.step as f64)], &[e], failures),
                    None => failures.push(format!("{}: not a number: {value}", at(key))),
                }
                continue;
            }
            let Some(n) = slot_index(stepper, key) else {
                failures.push(format!("{}: optjit has no such slot", at(key)));
                continue;
            };
            let Some(actual) = state.buffer(n) else {
                failures.push(format!("{}: optjit's slot is not a buffer", at(key)));
                continue;
            };
            match serde_json::from_value::<Vec<f64>>(value.clone()) {
                Ok(e) => compare(&at(key), actual, &e, failures),
                Err(_) => failures.push(format!(
                    "{}: expected a list of numbers, got {value}",
                    at(key)
                )),
            }
        }
    }
    Ok(())
}

//! The conformance runner: replays PyTorch reference trajectories (the case format of
//! `tests/data/conformance/README.md`) through the [`Optimizer`](crate::Optimizer) runtime and compares every
//! step and the final state against PyTorch within the README's tolerances. It also runs
//! PyTorch's clipping and `GradScaler` cases (`tests/data/clip`) and optax's trajectories
//! (`tests/data/optax`), recognised by their `function` and `source` fields.
//!
//! Used by `optjit conformance DIR` and by the test suite.

use crate::runtime::{StateDict, TensorData};
use crate::{optim, DType, Error, Executor, Float, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

mod extra;
pub mod schedulers;

/// Per-element tolerance `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// Relative part.
    pub rtol: f64,
    /// Absolute part.
    pub atol: f64,
}

impl Tolerance {
    /// The README's tolerance for a dtype: f32 `rtol = 1e-5, atol = 1e-7`; f64 `1e-12` both.
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype {
            DType::F32 => Tolerance {
                rtol: 1e-5,
                atol: 1e-7,
            },
            DType::F64 => Tolerance {
                rtol: 1e-12,
                atol: 1e-12,
            },
            DType::BF16 | DType::F16 => dtype.no_half_params(),
        }
    }

    fn accepts(&self, actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= self.atol + self.rtol * expected.abs()
    }
}

/// The largest errors over a set of compared values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Errors {
    /// Largest `|actual - expected|`.
    pub max_abs: f64,
    /// Largest `|actual - expected| / |expected|` over non-zero expected values.
    pub max_rel: f64,
    /// Whether every value was within tolerance.
    pub pass: bool,
}

impl Errors {
    fn new() -> Errors {
        Errors {
            max_abs: 0.0,
            max_rel: 0.0,
            pass: true,
        }
    }

    fn add(&mut self, actual: f64, expected: f64, tol: Tolerance) {
        // The same infinity, or NaN for NaN, is an exact match.
        if actual == expected || actual.is_nan() && expected.is_nan() {
            return;
        }
        let abs = (actual - expected).abs();
        // NaN never passes and always shows.
        self.max_abs = if abs.is_nan() {
            f64::NAN
        } else {
            self.max_abs.max(abs)
        };
        if expected != 0.0 {
            self.max_rel = self.max_rel.max(abs / expected.abs());
        }
        self.pass &= tol.accepts(actual, expected);
    }
}

/// The outcome of one case file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseReport {
    /// The file, relative to the directory given.
    pub case: String,
    /// Errors of the parameters after each step (one entry per step).
    pub steps: Vec<Errors>,
    /// Errors of the state after the last step.
    pub state: Errors,
    /// Why the case could not run or failed beyond numbers (unknown optimizer or option, a
    /// state key optjit does not have, malformed file...).
    pub problem: Option<String>,
}

impl CaseReport {
    /// Every step and the state within tolerance, and no problem.
    pub fn passed(&self) -> bool {
        self.problem.is_none() && self.state.pass && self.steps.iter().all(|s| s.pass)
    }
}

/// One case file, as recorded from PyTorch.
#[derive(Deserialize)]
struct Case {
    optimizer: String,
    hyper: Map<String, Value>,
    params: Vec<Vec<f64>>,
    grads: Vec<Vec<Option<Vec<f64>>>>,
    expected_params: Vec<Vec<Vec<f64>>>,
    expected_state_after_last: Vec<Map<String, Value>>,
}

/// Every `*.json` file under `dir` (recursively, the README files excluded), sorted.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |e: std::io::Error| Error::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Runs every case under `dir` with `executor`.
pub fn run_dir(dir: &Path, executor: Executor) -> Result<Vec<CaseReport>> {
    Ok(case_files(dir)?
        .iter()
        .map(|file| {
            let name = file.strip_prefix(dir).unwrap_or(file).display().to_string();
            run_file(file, &name, executor)
        })
        .collect())
}

/// Runs one case file; `name` labels the report.
pub fn run_file(file: &Path, name: &str, executor: Executor) -> CaseReport {
    let mut report = CaseReport {
        case: name.to_string(),
        steps: Vec::new(),
        state: Errors::new(),
        problem: None,
    };
    let value = std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            serde_json::from_str::<Value>(&text).map_err(|e| format!("malformed case file: {e}"))
        });
    let outcome = value.and_then(|value| run_value(value, executor, &mut report));
    if let Err(problem) = outcome {
        report.problem = Some(problem);
    }
    report
}

/// Runs one parsed case file of any of the kinds the module knows.
fn run_value(
    value: Value,
    executor: Executor,
    report: &mut CaseReport,
) -> std::result::Result<(), String> {
    if value.get("scheduler").is_some() {
        return schedulers::run(&value, report);
    }
    let dtype = value
        .get("dtype")
        .and_then(Value::as_str)
        .unwrap_or("float32");
    let f64 = match dtype {
        "float32" => false,
        "float64" => true,
        other => return Err(format!("unknown dtype `{other}`")),
    };
    let function = value.get("function").and_then(Value::as_str);
    let source = value.get("source").and_then(Value::as_str);
    match (function, source) {
        (Some("torch.nn.utils.clip_grad_norm_" | "torch.nn.utils.clip_grad_value_"), _) => {
            match f64 {
                false => extra::clip::<f32>(&value, executor, report),
                true => extra::clip::<f64>(&value, executor, report),
            }
        }
        (Some("torch.amp.GradScaler"), _) if !f64 => extra::grad_scaler(&value, executor, report),
        (Some("torch.amp.GradScaler"), _) => Err("GradScaler cases are float32".into()),
        (Some(other), _) => Err(format!("unknown function `{other}`")),
        (None, Some("optax")) => match f64 {
            false => extra::optax::<f32>(&value, executor, report),
            true => extra::optax::<f64>(&value, executor, report),
        },
        (None, _) => {
            let case: Case =
                serde_json::from_value(value).map_err(|e| format!("malformed case file: {e}"))?;
            match f64 {
                false => replay::<f32>(&case, executor, report),
                true => replay::<f64>(&case, executor, report),
            }
        }
    }
}

/// Replays `case` in dtype `T` through the runtime, filling `report`.
fn replay<T: Float>(
    case: &Case,
    executor: Executor,
    report: &mut CaseReport,
) -> std::result::Result<(), String> {
    let tol = Tolerance::for_dtype(T::DTYPE);
    let graph = optim::from_torch(&case.optimizer, &case.hyper).map_err(|e| e.to_string())?;
    let (mut opt, handles) = extra::with_params::<T>(&graph, &case.params, executor)?;
    if case.grads.len() != case.expected_params.len() {
        return Err("grads and expected_params have different lengths".into());
    }
    for (grads, expected) in case.grads.iter().zip(&case.expected_params) {
        opt.zero_grad();
        for (h, grad) in handles.iter().zip(grads) {
            if let Some(grad) = grad {
                let grad: Vec<T> = grad.iter().map(|&x| T::from_f64(x)).collect();
                opt.set_grad(h, &grad).map_err(|e| e.to_string())?;
            }
        }
        opt.step().map_err(|e| e.to_string())?;
        let mut errors = Errors::new();
        for (h, expected) in handles.iter().zip(expected) {
            let actual = opt.param(h).map_err(|e| e.to_string())?;
            if actual.len() != expected.len() {
                return Err("expected params have the wrong length".into());
            }
            for (a, &e) in actual.iter().zip(expected) {
                errors.add(a.to_f64(), T::from_f64(e).to_f64(), tol);
            }
        }
        report.steps.push(errors);
    }
    compare_state(
        &opt.state_dict(),
        &case.expected_state_after_last,
        tol,
        &mut report.state,
    )
}

/// Compares optjit's state with PyTorch's, key by key, both ways.
fn compare_state(
    dict: &StateDict,
    expected: &[Map<String, Value>],
    tol: Tolerance,
    errors: &mut Errors,
) -> std::result::Result<(), String> {
    for (i, keys) in expected.iter().enumerate() {
        let ours = dict.state.get(&i);
        for (key, value) in keys {
            let numbers = |v: &Value| -> std::result::Result<Vec<f64>, String> {
                match v {
                    Value::Null => Ok(Vec::new()),
                    Value::Number(n) => Ok(vec![n.as_f64().unwrap_or(f64::NAN)]),
                    Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_f64().ok_or(format!("`{key}` is not numeric")))
                        .collect(),
                    _ => Err(format!("`{key}` of tensor {i} is not numeric")),
                }
            };
            let want = numbers(value)?;
            if want.is_empty() {
                continue; // PyTorch keeps None (e.g. no momentum buffer): nothing to compare
            }
            let entry = ours
                .ok_or_else(|| format!("tensor {i} has no state in optjit, PyTorch has `{key}`"))?;
            let got: Vec<f64> = if key == "step" {
                vec![entry.step as f64]
            } else if let Some(&s) = entry.scalars.get(key) {
                vec![s]
            } else if let Some((_, data)) = entry.tensors.get(key) {
                match data {
                    TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                    TensorData::F64(v) => v.clone(),
                }
            } else {
                return Err(format!("optjit has no state `{key}` (tensor {i})"));
            };
            if got.len() != want.len() {
                return Err(format!(
                    "state `{key}` of tensor {i}: {} values, PyTorch has {}",
                    got.len(),
                    want.len()
                ));
            }
            for (a, e) in got.into_iter().zip(want) {
                errors.add(a, e, tol);
            }
        }
        if let Some(entry) = ours {
            let unknown = entry
                .tensors
                .keys()
                .chain(entry.scalars.keys())
                .find(|k| !keys.contains_key(*k));
            if let Some(key) = unknown {
                return Err(format!(
                    "optjit keeps state `{key}` (tensor {i}) that PyTorch does not"
                ));
            }
        }
    }
    Ok(())
}

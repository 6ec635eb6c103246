//! The conformance runner: replays PyTorch reference trajectories (the case format of
//! `tests/data/conformance/README.md`) through the [`Optimizer`](crate::Optimizer) runtime and compares every
//! step and the final state against PyTorch within the README's tolerances. It also runs
//! PyTorch's clipping and `GradScaler` cases (`tests/data/clip`) and optax's trajectories
//! (`tests/data/optax`), recognised by their `function` and `source` fields, and bfloat16
//! trajectories (`tests/data/conformance-bf16`, `dtype: "bfloat16"`), compared in bf16 ulps
//! with a tolerance that depends on the PyTorch implementation that recorded them (see
//! [`FUSED_ULPS`] and [`PER_OP_ULPS`]).
//!
//! Used by `optjit conformance DIR` and by the test suite.

use crate::runtime::StateDict;
use crate::{optim, DType, Element, Error, Executor, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

mod bf16;
mod extra;
pub mod schedulers;

pub use bf16::{FUSED_ULPS, PER_OP_ULPS};

/// How close a value must be to PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Tolerance {
    /// `|actual - expected| <= atol + rtol * |expected|`.
    Close {
        /// Relative part.
        rtol: f64,
        /// Absolute part.
        atol: f64,
    },
    /// `|actual - expected| <= ulps * ulp(expected)`, the unit in the last place of `dtype` at
    /// the expected value (see [`ulp`]): for cases stored in a narrow dtype, where one
    /// rounding is the natural unit of difference.
    Ulps {
        /// The dtype whose ulps count.
        dtype: DType,
        /// How many of them.
        ulps: f64,
    },
}

impl Tolerance {
    /// No difference at all.
    pub const EXACT: Tolerance = Tolerance::Close {
        rtol: 0.0,
        atol: 0.0,
    };

    /// The README's tolerance for a compute dtype: f32 `rtol = 1e-5, atol = 1e-7`; f64
    /// `1e-12` both (bf16 and f16 storage compute in f32).
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype.compute() {
            DType::F32 | DType::BF16 | DType::F16 => Tolerance::Close {
                rtol: 1e-5,
                atol: 1e-7,
            },
            DType::F64 => Tolerance::Close {
                rtol: 1e-12,
                atol: 1e-12,
            },
        }
    }

    fn accepts(&self, actual: f64, expected: f64) -> bool {
        let diff = (actual - expected).abs();
        match *self {
            Tolerance::Close { rtol, atol } => diff <= atol + rtol * expected.abs(),
            Tolerance::Ulps { dtype, ulps } => diff <= ulps * ulp(dtype, expected),
        }
    }
}

/// The unit in the last place of `dtype` at `x`: the spacing of `dtype`'s values in `x`'s
/// binade, `2^(e − p + 1)` for `2^e <= |x| < 2^(e+1)` and `p` significand bits (with the
/// implicit one); for 0 and subnormals the smallest subnormal, the spacing there. NaN for an
/// infinite or NaN `x`.
///
/// ```
/// use optjit::{conformance::ulp, DType};
///
/// assert_eq!(ulp(DType::BF16, 1.0), 2f64.powi(-7));
/// assert_eq!(ulp(DType::BF16, -0.75), 2f64.powi(-8));
/// assert_eq!(ulp(DType::BF16, 0.0), 2f64.powi(-133));
/// assert_eq!(ulp(DType::F32, 1.0), f64::from(f32::EPSILON));
/// ```
pub fn ulp(dtype: DType, x: f64) -> f64 {
    // (significand bits, smallest normal exponent)
    let (precision, min_exp) = match dtype {
        DType::BF16 => (8, -126),
        DType::F16 => (11, -14),
        DType::F32 => (24, -126),
        DType::F64 => (53, -1022),
    };
    if !x.is_finite() {
        return f64::NAN;
    }
    // The binary exponent of |x| from its bits (0 and f64 subnormals give -1023, below
    // every dtype's smallest normal exponent, so they take the subnormal spacing).
    let exp = ((x.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
    pow2(exp.max(min_exp) - (precision - 1))
}

/// `2^e`, exactly, for `-1074 <= e <= 1023` (built from the bits: `powi` of a negative
/// exponent divides by an overflowing power below 2^-1023).
fn pow2(e: i32) -> f64 {
    if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (e + 1074))
    }
}

/// The largest errors over a set of compared values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Errors {
    /// Largest `|actual - expected|`.
    pub max_abs: f64,
    /// Largest `|actual - expected| / |expected|` over non-zero expected values.
    pub max_rel: f64,
    /// Largest `|actual - expected| / ulp(expected)` in the dtype of an ulp tolerance
    /// ([`Tolerance::Ulps`]); `None` when no value was compared in ulps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ulps: Option<f64>,
    /// Whether every value was within tolerance.
    pub pass: bool,
}

impl Errors {
    fn new() -> Errors {
        Errors {
            max_abs: 0.0,
            max_rel: 0.0,
            max_ulps: None,
            pass: true,
        }
    }

    fn add(&mut self, actual: f64, expected: f64, tol: Tolerance) {
        if let Tolerance::Ulps { .. } = tol {
            self.max_ulps.get_or_insert(0.0);
        }
        // The same infinity, or NaN for NaN, is an exact match.
        if actual == expected || actual.is_nan() && expected.is_nan() {
            return;
        }
        let abs = (actual - expected).abs();
        // NaN never passes and always shows.
        self.max_abs = if abs.is_nan() || self.max_abs.is_nan() {
            f64::NAN
        } else {
            self.max_abs.max(abs)
        };
        if expected != 0.0 {
            self.max_rel = self.max_rel.max(abs / expected.abs());
        }
        if let (Tolerance::Ulps { dtype, .. }, Some(max)) = (tol, &mut self.max_ulps) {
            // NaN (an infinite or NaN value) shows as NaN, as in `max_abs`.
            let ulps = abs / ulp(dtype, expected);
            *max = if ulps.is_nan() || max.is_nan() {
                f64::NAN
            } else {
                max.max(ulps)
            };
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
    /// The tolerance of a `torch.optim` trajectory's comparisons (`None` for the other kinds
    /// of case, which may use several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
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
    /// The implementation flags (`foreach`, `fused`): they choose a narrow case's tolerance.
    #[serde(default)]
    torch_impl_kwargs: Map<String, Value>,
    params: Vec<Vec<f64>>,
    grads: Vec<Vec<Option<Vec<f64>>>>,
    expected_params: Vec<Vec<Vec<f64>>>,
    expected_state_after_last: Vec<Map<String, Value>>,
    /// PyTorch's dtype of every state entry (`{"exp_avg": "bfloat16", ...}`), in the narrow
    /// cases; each state tensor's dtype is checked against it.
    #[serde(default)]
    state_dtypes: Map<String, Value>,
}

/// The dtype PyTorch names `name` (`float32`, `float64`, `bfloat16`, `float16`).
fn torch_dtype(name: &str) -> Option<DType> {
    match name {
        "float32" => Some(DType::F32),
        "float64" => Some(DType::F64),
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        _ => None,
    }
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
        tolerance: None,
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
    let dtype = match torch_dtype(dtype) {
        Some(d @ (DType::F32 | DType::F64 | DType::BF16)) => d,
        _ => return Err(format!("unknown dtype `{dtype}`")),
    };
    let f64 = dtype == DType::F64;
    let function = value.get("function").and_then(Value::as_str);
    let source = value.get("source").and_then(Value::as_str);
    if dtype.is_narrow() && (function.is_some() || source.is_some()) {
        return Err(format!("{dtype} cases are torch.optim trajectories only"));
    }
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
            match dtype {
                DType::F32 => replay::<f32>(&case, Tolerance::for_dtype(dtype), executor, report),
                DType::F64 => replay::<f64>(&case, Tolerance::for_dtype(dtype), executor, report),
                _ => bf16::replay(&case, executor, report),
            }
        }
    }
}

/// Replays `case` with parameters, gradients and state in dtype `T` through the runtime,
/// comparing within `tol`, filling `report`.
fn replay<T: Element>(
    case: &Case,
    tol: Tolerance,
    executor: Executor,
    report: &mut CaseReport,
) -> std::result::Result<(), String> {
    report.tolerance = Some(tol);
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
        &case.state_dtypes,
        tol,
        &mut report.state,
    )
}

/// Compares optjit's state with PyTorch's, key by key, both ways, and each state tensor's
/// dtype with `dtypes` (PyTorch's, by key) where it names one. `step` is a count: it must be
/// exact whatever the tolerance.
fn compare_state(
    dict: &StateDict,
    expected: &[Map<String, Value>],
    dtypes: &Map<String, Value>,
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
                let torch = dtypes.get(key).and_then(Value::as_str);
                if let Some(torch) = torch.filter(|&t| torch_dtype(t) != Some(data.dtype())) {
                    return Err(format!(
                        "state `{key}` of tensor {i} is {} in optjit, {torch} in PyTorch",
                        data.dtype()
                    ));
                }
                data.to_vec::<f64>()
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
            let tol = if key == "step" { Tolerance::EXACT } else { tol };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_is_the_spacing_of_the_binade_and_of_the_subnormals_below() {
        // bf16: 8 significand bits; the smallest subnormal is 2^-133.
        assert_eq!(ulp(DType::BF16, 1.0), 2f64.powi(-7));
        assert_eq!(ulp(DType::BF16, 1.9921875), 2f64.powi(-7));
        assert_eq!(ulp(DType::BF16, -2.0), 2f64.powi(-6));
        assert_eq!(ulp(DType::BF16, 2f64.powi(-126)), 2f64.powi(-133));
        assert_eq!(ulp(DType::BF16, 2f64.powi(-130)), 2f64.powi(-133));
        assert_eq!(ulp(DType::BF16, -0.0), 2f64.powi(-133));
        assert_eq!(ulp(DType::F16, 65504.0), 32.0);
        assert_eq!(ulp(DType::F16, 0.0), 2f64.powi(-24));
        assert_eq!(ulp(DType::F64, 1.0), f64::EPSILON);
        assert_eq!(ulp(DType::F64, 0.0), f64::from_bits(1));
        assert_eq!(ulp(DType::F64, f64::MAX), 2f64.powi(971));
        assert!(ulp(DType::BF16, f64::INFINITY).is_nan());
        assert!(ulp(DType::BF16, f64::NAN).is_nan());
    }

    #[test]
    fn an_ulp_tolerance_counts_ulps_of_the_expected_value() {
        let tol = Tolerance::Ulps {
            dtype: DType::BF16,
            ulps: 1.0,
        };
        let mut errors = Errors::new();
        errors.add(1.0 + 2f64.powi(-7), 1.0, tol);
        assert_eq!((errors.max_ulps, errors.pass), (Some(1.0), true));
        // One step down from 1.0 is half an ulp of 1.0 (the binade below is finer).
        errors.add(1.0 - 2f64.powi(-8), 1.0, tol);
        assert_eq!((errors.max_ulps, errors.pass), (Some(1.0), true));
        errors.add(1.0 + 2f64.powi(-6), 1.0, tol);
        assert_eq!((errors.max_ulps, errors.pass), (Some(2.0), false));
        // A NaN stays NaN whatever comes after.
        errors.add(f64::NAN, 1.0, tol);
        errors.add(3.0, 1.0, tol);
        assert!(errors.max_ulps.unwrap().is_nan() && errors.max_abs.is_nan());
        // A close tolerance leaves ulps out.
        let mut errors = Errors::new();
        errors.add(1.5, 1.0, Tolerance::for_dtype(DType::F32));
        assert_eq!(errors.max_ulps, None);
    }
}

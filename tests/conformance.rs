//! Conformance with PyTorch: replays the `torch.optim` trajectories recorded in
//! `tests/data/conformance/` (format and tolerances in its README) with optjit's built-ins, on
//! every executor, and compares the parameters after every step and the state after the last.
//! Each case's constructor kwargs (`hyper` and `torch_impl_kwargs`) go through
//! [`optim::from_torch`], as a user's would. Run with `--nocapture` to see, per optimizer,
//! the largest error relative to the tolerance.

mod common;

use common::slot_index;
use optjit::{optim, DType, Executor, Float, ParamRef, ParamState, SlotValue, Stepper};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const EXECUTORS: [Executor; 4] = [
    Executor::Jit,
    Executor::Reference,
    Executor::Eager,
    Executor::Chunked,
];

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

#[test]
fn rmsprop_follows_torch_trajectories() {
    check_folder("rmsprop");
}

#[test]
fn adagrad_follows_torch_trajectories() {
    check_folder("adagrad");
}

#[test]
fn adadelta_follows_torch_trajectories() {
    check_folder("adadelta");
}

#[test]
fn adamax_follows_torch_trajectories() {
    check_folder("adamax");
}

#[test]
fn nadam_follows_torch_trajectories() {
    check_folder("nadam");
}

#[test]
fn radam_follows_torch_trajectories() {
    check_folder("radam");
}

#[test]
fn asgd_follows_torch_trajectories() {
    check_folder("asgd");
}

#[test]
fn rprop_follows_torch_trajectories() {
    check_folder("rprop");
}

/// The optimizer folders of `tests/data/conformance/`, one test each above.
const FOLDERS: [&str; 11] = [
    "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam", "asgd",
    "rprop",
];

#[test]
fn every_vendored_folder_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected = FOLDERS.to_vec();
    expected.sort_unstable();
    assert_eq!(found, expected);
}

/// One case file. Fields as in the README; the informational ones are not read.
#[derive(Deserialize)]
struct Case {
    optimizer: String,
    dtype: String,
    hyper: Map<String, Value>,
    /// Implementation flags passed besides `hyper` (`{"foreach": false}`).
    #[serde(default)]
    torch_impl_kwargs: Map<String, Value>,
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

    let mut outcome = Outcome::default();
    for file in &files {
        let name = format!(
            "{optimizer}/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        if let Err(e) = check_file(file, optimizer, &name, &mut outcome) {
            outcome.failures.push(format!("{name}: {e}"));
        }
    }
    for (dtype, (worst, at)) in &outcome.worst {
        println!("{optimizer} {dtype}: largest error {worst:.2e} × tolerance, at {at}");
    }
    let failures = outcome.failures;
    let message = common::failure_report(&failures, MAX_REPORTED);
    assert!(
        failures.is_empty(),
        "{} mismatches with torch in {} case files of {optimizer}:\n{message}",
        failures.len(),
        files.len(),
    );
}

/// Mismatches found so far, and per dtype the largest error relative to the tolerance,
/// `|actual − expected| / (atol + rtol·|expected|)` (above 1 is a mismatch), and where.
#[derive(Default)]
struct Outcome {
    failures: Vec<String>,
    worst: BTreeMap<DType, (f64, String)>,
}

/// Parses one case file and runs it on every executor.
fn check_file(
    path: &Path,
    optimizer: &str,
    name: &str,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))?;
    check_shape(&case, optimizer, path)?;
    let mut kwargs = case.hyper.clone();
    kwargs.extend(case.torch_impl_kwargs.clone());
    let graph = optim::from_torch(&case.optimizer, &kwargs)
        .map_err(|e| format!("building the graph: {e}"))?;
    for executor in EXECUTORS {
        let label = format!("{name} [{executor:?}]");
        let stepper = Stepper::new(&graph)
            .map_err(|e| format!("compiling: {e}"))?
            .with_executor(executor);
        let run = match case.dtype.as_str() {
            "float32" => replay::<f32>(&label, &case, &stepper, outcome),
            "float64" => replay::<f64>(&label, &case, &stepper, outcome),
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

/// `(rtol, atol)` from the README: `|actual - expected| <= atol + rtol * |expected|`.
fn tolerance<T: Float>() -> (f64, f64) {
    match T::DTYPE {
        DType::F32 => (1e-5, 1e-7),
        DType::F64 => (1e-12, 1e-12),
        d => panic!("no Float has dtype {d}"),
    }
}

/// Compares `actual` (values of the case's dtype `T`, or optjit's f64 scalar state) with
/// `expected` element by element with `T`'s tolerance, pushing one line per mismatch.
fn compare<T: Float>(at: &str, actual: &[f64], expected: &[f64], outcome: &mut Outcome) {
    if actual.len() != expected.len() {
        outcome.failures.push(format!(
            "{at}: {} values, expected {}",
            actual.len(),
            expected.len()
        ));
        return;
    }
    let (rtol, atol) = tolerance::<T>();
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ratio = (a - e).abs() / (atol + rtol * e.abs());
        let worst = outcome.worst.entry(T::DTYPE).or_default();
        if ratio > worst.0 || worst.1.is_empty() {
            *worst = (ratio, format!("{at}[{index}]"));
        }
        // False for a NaN, which so fails.
        let close = (a - e).abs() <= atol + rtol * e.abs();
        if !close {
            outcome.failures.push(format!(
                "{at}[{index}]: expected {e:e}, actual {a:e} (diff {:e})",
                a - e
            ));
        }
    }
}

fn to_f64<T: Float>(values: &[T]) -> Vec<f64> {
    values.iter().map(|x| x.to_f64()).collect()
}

/// Replays `case` in `T` with `stepper`, recording mismatches in `outcome`; an error means
/// the replay could not go on.
fn replay<T: Float>(
    label: &str,
    case: &Case,
    stepper: &Stepper,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let to_t = |values: &[f64]| values.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let mut params: Vec<Vec<T>> = case.params.iter().map(|p| to_t(p)).collect();
    let mut states: Vec<ParamState<T>> = params
        .iter()
        .map(|p| stepper.init_state::<T>(p.len()).unwrap())
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
            compare::<T>(&at, &to_f64(actual), expected, outcome);
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
                let line = format!("{}: torch keeps no such state", at(&slot.name));
                outcome.failures.push(line);
            }
        }
        for (key, value) in expected {
            // torch keeps `step` (and scalar state such as NAdam's `mu_product`) as a tensor
            // of the case's dtype; optjit keeps a count and f64 scalars.
            let actual = if key == "step" {
                vec![state.step as f64]
            } else {
                let Some(n) = slot_index(stepper, key) else {
                    outcome
                        .failures
                        .push(format!("{}: optjit has no such slot", at(key)));
                    continue;
                };
                match &state.slots[n] {
                    SlotValue::Buffer(buffer) => to_f64(buffer),
                    SlotValue::Scalar(x) => vec![*x],
                }
            };
            let expected = match value {
                Value::Number(x) => x.as_f64().map(|x| vec![x]),
                other => serde_json::from_value::<Vec<f64>>(other.clone()).ok(),
            };
            match expected {
                Some(e) => compare::<T>(&at(key), &actual, &e, outcome),
                None => outcome.failures.push(format!(
                    "{}: expected a number or a list of numbers, got {value}",
                    at(key)
                )),
            }
        }
    }
    Ok(())
}

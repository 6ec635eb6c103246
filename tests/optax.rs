//! optax's recorded trajectories (tests/data/optax, optax 0.2.8; README there) replayed
//! through `optim::from_optax` and the `Optimizer`: three tensors of 37, 5 and 129 elements
//! in one flat buffer, so per-tensor reductions (LAMB's trust ratios) must stay per tensor.
//! Tolerances as the README's: float32 rtol 1e-5 and atol 1e-7 per step, float64 1e-12.
//! After the last step, every state leaf optax recorded is compared by its field name, and
//! the optimizer has no state optax does not have.
//!
//! `cargo test --release --test optax -- --nocapture` prints each case's largest error.

use ndarray::Array1;
use optjit::{optim, Float, Graph, Optimizer};
use serde_json::Value;
use std::collections::BTreeSet;

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The case's tolerance in `T`: `(rtol, atol)`.
fn tolerance<T: Float>() -> (f64, f64) {
    match T::DTYPE {
        optjit::DType::F32 => (1e-5, 1e-7),
        optjit::DType::F64 => (1e-12, 1e-12),
        d => panic!("no Float has dtype {d}"),
    }
}

/// The largest error of a replay: absolute, and as a fraction of the tolerance
/// (`|a − e| / (atol + rtol·|e|)`, at most 1 within it).
#[derive(Clone, Copy, Debug, Default)]
struct Worst {
    abs: f64,
    of_tolerance: f64,
}

impl Worst {
    /// Records one comparison; returns its error as a fraction of the tolerance.
    fn add<T: Float>(&mut self, ours: f64, theirs: f64) -> f64 {
        let (rtol, atol) = tolerance::<T>();
        let abs = (ours - theirs).abs();
        // NaN compares as an error larger than any tolerance.
        let of_tolerance = if abs.is_nan() {
            f64::INFINITY
        } else {
            abs / (atol + rtol * theirs.abs())
        };
        self.abs = self.abs.max(abs);
        self.of_tolerance = self.of_tolerance.max(of_tolerance);
        of_tolerance
    }
}

/// optjit's per-element state slot for optax's state field `field` (PyTorch's or the
/// authors' names).
fn slot_of(field: &str) -> &str {
    match field {
        "mu" => "exp_avg",
        "nu" => "exp_avg_sq",
        "m1" => "exp_avg_fast",
        "m2" => "exp_avg_slow",
        other => other,
    }
}

/// Replays `case` through `graph`, asserting every step's parameters and the final state
/// within the tolerance unless `check` is false; returns the largest error either way.
fn replay<T: Float>(case: &Value, graph: &Graph, name: &str, check: bool) -> Worst {
    let mut opt = Optimizer::new(graph).unwrap();
    let group = opt.add_param_group(&[]).unwrap();
    let handles: Vec<_> = case["params"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let values: Array1<T> = numbers(p).into_iter().map(T::from_f64).collect();
            opt.add_param(group, &format!("p{k}"), &values).unwrap()
        })
        .collect();
    let mut worst = Worst::default();
    let mut compare = |what: &dyn Fn() -> String, ours: f64, theirs: f64| {
        let theirs = T::from_f64(theirs).to_f64();
        let error = worst.add::<T>(ours, theirs);
        assert!(
            !check || error <= 1.0,
            "{name}: {} is {ours:?}, optax's {theirs:?}",
            what()
        );
    };
    let steps = case["grads"].as_array().unwrap();
    let expected = case["expected_params"].as_array().unwrap();
    assert_eq!(steps.len(), case["steps"].as_u64().unwrap() as usize);
    for (s, (grads, expected)) in steps.iter().zip(expected).enumerate() {
        for (h, g) in handles.iter().zip(grads.as_array().unwrap()) {
            let g: Vec<T> = numbers(g).into_iter().map(T::from_f64).collect();
            opt.set_grad(h, &g).unwrap();
        }
        opt.step().unwrap();
        for (k, (h, e)) in handles.iter().zip(expected.as_array().unwrap()).enumerate() {
            let theirs = numbers(e);
            let ours = opt.param(h).unwrap();
            assert_eq!(ours.len(), theirs.len());
            for (j, (a, e)) in ours.iter().zip(theirs).enumerate() {
                let what = || format!("step {}: p{k}[{j}]", s + 1);
                compare(&what, a.to_f64(), e);
            }
        }
    }
    // optax's state leaves: `[i].field` (`[i]` the position in optax's chain) per tensor,
    // `[i].field[k]` for tensor k's scalar, and the counters.
    let dict = opt.state_dict();
    let mut theirs_slots = BTreeSet::new();
    for (key, all) in case["expected_state_after_last"].as_object().unwrap() {
        let leaf = key.rsplit('.').next().unwrap();
        match leaf.split_once('[') {
            _ if leaf == "count" || leaf == "count_m2" => {
                for (k, entry) in &dict.state {
                    assert_eq!(entry.step, all.as_u64().unwrap(), "{name}: p{k}'s {leaf}");
                }
            }
            Some((field, tensor)) => {
                let k: usize = tensor.trim_end_matches(']').parse().unwrap();
                // Per-tensor scalars keep optax's names (NovoGrad's `nu`).
                let slot = field;
                theirs_slots.insert(slot.to_string());
                let Some(&ours) = dict.state[&k].scalars.get(slot) else {
                    panic!("{name}: no scalar slot {slot} for optax's {key}");
                };
                let what = || format!("{slot} of p{k}");
                compare(&what, T::from_f64(ours).to_f64(), all.as_f64().unwrap());
            }
            None => {
                let slot = slot_of(leaf);
                theirs_slots.insert(slot.to_string());
                for (k, _) in handles.iter().enumerate() {
                    let Some((_, data)) = dict.state[&k].tensors.get(slot) else {
                        panic!("{name}: no slot {slot} for optax's {key}");
                    };
                    let theirs = numbers(&all[k]);
                    assert_eq!(data.len(), theirs.len());
                    for (j, (a, e)) in data.to_vec::<T>().iter().zip(theirs).enumerate() {
                        let what = || format!("{slot} of p{k}[{j}]");
                        compare(&what, a.to_f64(), e);
                    }
                }
            }
        }
    }
    // Nothing more than optax's state.
    for entry in dict.state.values() {
        let ours: BTreeSet<String> = entry
            .tensors
            .keys()
            .chain(entry.scalars.keys())
            .cloned()
            .collect();
        assert_eq!(ours, theirs_slots, "{name}: state slots");
    }
    worst
}

/// The cases of `folder`, by file name; there must be `count`.
fn cases(folder: &str, count: usize) -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/optax")
        .join(folder);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), count, "{folder}");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// The graph `from_optax` builds for the case's optimizer and keyword arguments.
fn optax_graph(case: &Value) -> Graph {
    optim::from_optax(
        case["optimizer"].as_str().unwrap(),
        case["hyper"].as_object().unwrap(),
    )
    .unwrap()
}

/// Replays `case` through `graph` in the case's dtype.
fn replay_case(case: &Value, graph: &Graph, name: &str, check: bool) -> Worst {
    match case["dtype"].as_str().unwrap() {
        "float32" => replay::<f32>(case, graph, name, check),
        "float64" => replay::<f64>(case, graph, name, check),
        other => panic!("{name}: dtype {other}"),
    }
}

/// Every case of `folder` (there are `count`) within the tolerance.
fn check_folder(folder: &str, count: usize) {
    for (name, case) in cases(folder, count) {
        let worst = replay_case(&case, &optax_graph(&case), &name, true);
        println!(
            "{folder}/{name}: largest error {:.3e}, {:.3} of the tolerance",
            worst.abs, worst.of_tolerance
        );
    }
}

#[test]
fn lamb_follows_optax() {
    check_folder("lamb", 4);
}

#[test]
fn lars_follows_optax() {
    check_folder("lars", 4);
}

#[test]
fn novograd_follows_optax() {
    check_folder("novograd", 2);
}

#[test]
fn yogi_follows_optax() {
    check_folder("yogi", 2);
}

#[test]
fn sign_sgd_follows_optax() {
    check_folder("sign_sgd", 2);
}

#[test]
fn ademamix_follows_optax() {
    check_folder("ademamix", 2);
}

#[test]
fn clip_adam_follows_optax() {
    check_folder("clip_adam", 2);
}

/// PyTorch's clip (`optim::clip_grad_norm`: `max_norm / (‖g‖ + 1e-6)`) in place of optax's
/// misses the float64 `clip_adam` trajectory (by 2.9e-10 in the parameters and 2.9e-9 in
/// the state, where the tolerance is 1e-12):
/// the recorded case tells the two clips apart, so it catches a `from_optax("clip_adam")`
/// built on the wrong one.
#[test]
fn clip_adam_catches_pytorch_clip_epsilon() {
    let (name, case) = cases("clip_adam", 2)
        .into_iter()
        .find(|(name, _)| name.ends_with("float64.json"))
        .unwrap();
    let adam = optim::Adam {
        lr: case["hyper"]["learning_rate"].as_f64().unwrap(),
        ..optim::Adam::default()
    };
    let torch_clip = optim::clip_grad_norm(&adam.graph().unwrap(), 2.0).unwrap();
    let worst = replay_case(&case, &torch_clip, &name, false);
    println!("PyTorch's clip: largest error {:.3e}", worst.abs);
    assert!(
        worst.of_tolerance > 10.0,
        "PyTorch's clip is within {:.3} of the tolerance",
        worst.of_tolerance
    );
}

/// Yogi's moments start at optax's `initial_accumulator_value` (1e-6), not at 0 as Adam's:
/// started at 0 they miss the recorded float64 trajectory.
#[test]
fn yogi_catches_moments_started_at_zero() {
    let (name, case) = cases("yogi", 2)
        .into_iter()
        .find(|(name, _)| name.ends_with("float64.json"))
        .unwrap();
    let zero = optim::Yogi {
        lr: case["hyper"]["learning_rate"].as_f64().unwrap(),
        initial_accumulator_value: 0.0,
        ..optim::Yogi::default()
    };
    let worst = replay_case(&case, &zero.graph().unwrap(), &name, false);
    println!("moments started at 0: largest error {:.3e}", worst.abs);
    assert!(
        worst.of_tolerance > 10.0,
        "moments started at 0 are within {:.3} of the tolerance",
        worst.of_tolerance
    );
}

//! optax's recorded trajectories (tests/data/optax, optax 0.2.8; README there) replayed
//! through `optim::from_optax` and the `Optimizer`: three tensors of 37, 5 and 129 elements
//! in one flat buffer, so per-tensor reductions (LAMB's trust ratios) must stay per tensor.
//! Tolerances as the README's: float32 rtol 1e-5 and atol 1e-7 per step, float64 1e-12.

use ndarray::Array1;
use optjit::{optim, Float, Optimizer};
use serde_json::Value;

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn replay<T: Float>(case: &Value, name: &str) {
    let (rtol, atol) = match T::DTYPE {
        optjit::DType::F32 => (1e-5, 1e-7),
        optjit::DType::F64 => (1e-12, 1e-12),
    };
    let graph = optim::from_optax(
        case["optimizer"].as_str().unwrap(),
        case["hyper"].as_object().unwrap(),
    )
    .unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
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
    let steps = case["grads"].as_array().unwrap();
    let expected = case["expected_params"].as_array().unwrap();
    let close = |a: f64, e: f64| (a - e).abs() <= atol + rtol * e.abs();
    for (s, (grads, expected)) in steps.iter().zip(expected).enumerate() {
        for (h, g) in handles.iter().zip(grads.as_array().unwrap()) {
            let g: Vec<T> = numbers(g).into_iter().map(T::from_f64).collect();
            opt.set_grad(h, &g).unwrap();
        }
        opt.step().unwrap();
        for (k, (h, e)) in handles.iter().zip(expected.as_array().unwrap()).enumerate() {
            for (j, (a, e)) in opt.param(h).unwrap().iter().zip(numbers(e)).enumerate() {
                let e = T::from_f64(e).to_f64();
                assert!(
                    close(a.to_f64(), e),
                    "{name} step {}: p{k}[{j}] {a:?} vs {e}",
                    s + 1
                );
            }
        }
    }
    // optax's per-tensor state leaves, by field name (`[i].field`, i the chain position).
    let state = case["expected_state_after_last"].as_object().unwrap();
    let mut compared = 0;
    for (key, all) in state {
        let field = key.rsplit('.').next().unwrap();
        let Some(slot) = [("mu", "exp_avg"), ("nu", "exp_avg_sq"), ("trace", "trace")]
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, s)| *s)
        else {
            continue; // `count` (the step) and per-layer scalars
        };
        compared += 1;
        for (k, h) in handles.iter().enumerate() {
            let theirs = numbers(&all[k]);
            let ours = opt.state_buffer(h, slot).unwrap().unwrap();
            for (a, e) in ours.iter().zip(theirs) {
                let e = T::from_f64(e).to_f64();
                assert!(close(a.to_f64(), e), "{name}: {slot} of p{k}");
            }
        }
    }
    assert!(compared > 0, "{name}: no state compared");
}

/// Every case of `folder` (there are `count`).
fn check_folder(folder: &str, count: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/optax")
        .join(folder);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), count);
    for path in files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match case["dtype"].as_str().unwrap() {
            "float32" => replay::<f32>(&case, &name),
            _ => replay::<f64>(&case, &name),
        }
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

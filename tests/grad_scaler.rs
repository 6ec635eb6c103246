//! `GradScaler` against `torch.amp.GradScaler("cpu")` driving SGD with momentum for 12 steps,
//! two of them with an `inf` injected into a scaled gradient (tests/data/clip, PyTorch 2.15;
//! README there): the same scale and growth tracker after every update, the same steps
//! skipped (parameters and momentum untouched), the same unscaled gradients, and parameters
//! within PyTorch's own spread between its foreach and fused SGD.

use ndarray::Array1;
use optjit::optim::{self, Sgd};
use optjit::{GradScaler, Optimizer};
use serde_json::Value;

fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        v => v.as_f64().expect("a number"),
    }
}

fn tensors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t.as_array()
                .unwrap()
                .iter()
                .map(|x| number(x) as f32)
                .collect()
        })
        .collect()
}

/// Replays `file` with SGD-momentum stepped by the scaler: unfused (gradients unscaled in
/// place, then the step), or `fused` (`optim::amp`: one program, gradients left scaled).
fn check(file: &str, fused: bool, check_grads: bool, tolerance: f32) {
    let path = format!("{}/tests/data/clip/{file}", env!("CARGO_MANIFEST_DIR"));
    let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let kwargs = &case["scaler_kwargs"];
    let mut scaler = GradScaler::new(
        number(&kwargs["init_scale"]),
        number(&kwargs["growth_factor"]),
        number(&kwargs["backoff_factor"]),
        kwargs["growth_interval"].as_u64().unwrap(),
    )
    .unwrap();
    let sgd = Sgd {
        lr: number(&case["optimizer"]["lr"]),
        momentum: number(&case["optimizer"]["momentum"]),
        ..Sgd::default()
    };
    let graph = match fused {
        true => optim::amp(&sgd.graph().unwrap()).unwrap(),
        false => sgd.graph().unwrap(),
    };
    let mut opt = Optimizer::new(&graph).unwrap();
    let group = opt.add_param_group(&[]).unwrap();
    let handles: Vec<_> = tensors(&case["params"])
        .into_iter()
        .enumerate()
        .map(|(k, p)| {
            opt.add_param(group, &format!("p{k}"), &Array1::from_vec(p))
                .unwrap()
        })
        .collect();
    let coefs = case["coefs"].as_array().unwrap();
    for (k, record) in case["step_records"].as_array().unwrap().iter().enumerate() {
        let what = format!("{file} (fused: {fused}) step {}", k + 1);
        let scale = scaler.scale();
        assert_eq!(scale, number(&record["scale_used"]), "{what}: scale");
        // The scaled gradients of the recorded loss: scale · coefs, exactly (powers of two).
        let mut grads = tensors(&coefs[k]);
        for g in &mut grads {
            g.iter_mut().for_each(|x| *x *= scale as f32);
        }
        if let Some(inject) = record["injected_into_scaled_grad"].as_object() {
            let t = inject["tensor"].as_u64().unwrap() as usize;
            let i = inject["index"].as_u64().unwrap() as usize;
            grads[t][i] = number(&inject["value"]) as f32;
        }
        let before: Vec<Vec<f32>> = handles
            .iter()
            .map(|h| opt.param(h).unwrap().to_vec())
            .collect();
        for (h, g) in handles.iter().zip(&grads) {
            opt.set_grad(h, g).unwrap();
        }
        let stepped = scaler.step(&mut opt).unwrap();
        assert_eq!(
            stepped,
            !record["skipped"].as_bool().unwrap(),
            "{what}: skipped"
        );
        if !stepped {
            for (h, b) in handles.iter().zip(&before) {
                assert_eq!(
                    opt.param(h).unwrap(),
                    b.as_slice(),
                    "{what}: a skipped step"
                );
            }
        }
        if check_grads {
            let seen = tensors(&record["grads_seen_after_step"]);
            for (h, s) in handles.iter().zip(&seen) {
                let ours = opt.grad(h).unwrap().unwrap();
                let same = ours.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}: unscaled gradients");
            }
        }
        scaler.update();
        assert_eq!(
            scaler.scale(),
            number(&record["scale_after_update"]),
            "{what}"
        );
        let tracker = record["growth_tracker_after_update"].as_u64().unwrap();
        assert_eq!(scaler.growth_tracker(), tracker, "{what}: tracker");
        let expected = tensors(&record["params_after"]);
        for (h, e) in handles.iter().zip(&expected) {
            for (a, b) in opt.param(h).unwrap().iter().zip(e) {
                assert!((a - b).abs() <= tolerance, "{what}: {a} vs {b}");
            }
        }
        opt.zero_grad();
    }
}

#[test]
fn grad_scaler_matches_pytorch() {
    // PyTorch's foreach SGD: our SGD-momentum is within a few float32 ulps of it.
    check("grad_scaler.sgd_momentum.json", false, true, 1e-6);
    // Its fused SGD differs from its foreach SGD by up to 2.4e-7 (README); a skipped fused
    // step leaves the scaled gradients, so only the parameters are compared.
    check("grad_scaler.sgd_momentum_fused.json", false, false, 1e-6);
    // optjit's fused form (`optim::amp`: unscaled in registers, skipped on overflow by the
    // program) against both.
    check("grad_scaler.sgd_momentum.json", true, false, 1e-6);
    check("grad_scaler.sgd_momentum_fused.json", true, false, 1e-6);
}

#[test]
fn a_second_step_before_update_is_an_error_and_changes_nothing() {
    let mut opt = Optimizer::new(
        &Sgd {
            lr: 0.5,
            ..Sgd::default()
        }
        .graph()
        .unwrap(),
    )
    .unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![1.0f32]).unwrap();
    let mut scaler = GradScaler::new(4.0, 2.0, 0.5, 3).unwrap();
    opt.set_grad(&w, &[2.0]).unwrap();
    assert!(scaler.step(&mut opt).unwrap());
    let after = opt.param(&w).unwrap().to_vec();
    assert!(
        scaler.step(&mut opt).is_err(),
        "PyTorch: step() already called"
    );
    assert_eq!(opt.param(&w).unwrap(), after.as_slice());
    scaler.update();
    opt.set_grad(&w, &[2.0]).unwrap();
    assert!(scaler.step(&mut opt).unwrap(), "a new step after update");
}

#[test]
fn the_scale_is_a_float32_that_never_grows_to_infinity() {
    let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![1.0f32]).unwrap();
    let big = f64::from(f32::MAX) / 1.5;
    let mut scaler = GradScaler::new(big, 2.0, 0.5, 1).unwrap();
    opt.set_grad(&w, &[1.0]).unwrap();
    scaler.step(&mut opt).unwrap();
    scaler.update();
    assert_eq!(
        scaler.scale(),
        f64::from(big as f32),
        "a growth past f32's range is refused"
    );
    assert_eq!(scaler.growth_tracker(), 0);
}

#[test]
fn the_scaler_state_round_trips_in_pytorchs_layout_and_resumes_exactly() {
    // Two runs of SGD under a scaler with an overflow at step 3; one is saved after step 4
    // (scaler state as PyTorch's JSON) and resumed in a fresh scaler: the same scales after.
    let grads = [1.0f32, 2.0, f32::INFINITY, 0.5, 0.25, 1.0, 3.0];
    let run = |resume_after: Option<usize>| {
        let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let w = opt.add_param(g, "w", &ndarray::array![1.0f32]).unwrap();
        let mut scaler = GradScaler::new(8.0, 2.0, 0.5, 2).unwrap();
        let mut scales = Vec::new();
        for (k, &grad) in grads.iter().enumerate() {
            opt.set_grad(&w, &[grad * scaler.scale() as f32]).unwrap();
            scaler.step(&mut opt).unwrap();
            scaler.update();
            if Some(k) == resume_after {
                let json = serde_json::to_value(scaler.state_dict()).unwrap();
                let mut keys: Vec<&str> = json
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str())
                    .collect();
                keys.sort_unstable();
                assert_eq!(
                    keys,
                    [
                        "_growth_tracker",
                        "backoff_factor",
                        "growth_factor",
                        "growth_interval",
                        "scale"
                    ]
                );
                let mut fresh = GradScaler::default();
                fresh
                    .load_state_dict(&serde_json::from_value(json).unwrap())
                    .unwrap();
                scaler = fresh;
            }
            scales.push((scaler.scale(), scaler.growth_tracker()));
        }
        (scales, opt.param(&w).unwrap().to_vec())
    };
    let plain = run(None);
    assert_eq!(plain.0[1], (16.0, 0), "grown after two good steps");
    assert_eq!(plain.0[2], (8.0, 0), "backed off after the overflow");
    assert_eq!(run(Some(3)), plain);
}

#[test]
fn an_invalid_scaler_state_is_refused_and_changes_nothing() {
    let mut scaler = GradScaler::new(4.0, 2.0, 0.5, 3).unwrap();
    let good = scaler.state_dict();
    for (what, state) in [
        (
            "scale",
            optjit::runtime::ScalerState {
                scale: f64::NAN,
                ..good.clone()
            },
        ),
        (
            "growth",
            optjit::runtime::ScalerState {
                growth_factor: 0.5,
                ..good.clone()
            },
        ),
        (
            "tracker",
            optjit::runtime::ScalerState {
                growth_tracker: 3,
                ..good.clone()
            },
        ),
        (
            "interval",
            optjit::runtime::ScalerState {
                growth_interval: 0,
                ..good.clone()
            },
        ),
    ] {
        assert!(scaler.load_state_dict(&state).is_err(), "{what}");
        assert_eq!(scaler.state_dict(), good, "{what}: nothing changed");
    }
    let unknown = serde_json::json!({"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
        "growth_interval": 3, "_growth_tracker": 0, "extra": 1});
    assert!(serde_json::from_value::<optjit::runtime::ScalerState>(unknown).is_err());
}

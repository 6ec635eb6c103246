//! The schedulers that cycle, restart, watch a metric or average (`CyclicLR`, `OneCycleLR`,
//! `CosineAnnealingWarmRestarts`, `ReduceLROnPlateau`, `SWALR`): their momentum in the
//! conformance runner (SGD and Adam), SWALR against its formula, typed errors, and resumed
//! runs bit-identical through JSON.

#![cfg(feature = "cli")]

use ndarray::Array1;
use optjit::optim::Sgd;
use optjit::schedule::{
    Anneal, CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR, PlateauMode, ReduceLROnPlateau,
    Scheduler, ThresholdMode, SWALR,
};
use optjit::{Error, Optimizer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn case(path: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/schedulers")
        .join(path);
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// Runs the conformance runner on `case` alone (written to a fresh directory named `tag`).
fn run_case(case: &Value, tag: &str) -> optjit::conformance::CaseReport {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("optjit-sched-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let mut reports = optjit::conformance::run_dir(&dir, optjit::Executor::Jit).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    reports.remove(0)
}

#[test]
fn a_momentum_one_ulp_off_fails_the_case() {
    let mut case = case("OneCycleLR/cos_momentum.json");
    let v = case["momentum"][0][40].as_f64().unwrap();
    case["momentum"][0][40] = json!(f64::from_bits(v.to_bits() + 1));
    let report = run_case(&case, "momentum-ulp");
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert!(!report.steps[40].pass && report.steps[39].pass && report.steps[41].pass);
}

/// A case recorded on SGD, as it would be on Adam: the cycled momentum is `betas[0]`, which
/// is optjit's `b1`; PyTorch computes the same values either way.
fn as_adam(mut case: Value) -> Value {
    let beta = |m: &Value| json!([m, 0.999]);
    case["optimizer"] = json!({"class": "Adam", "lr": 0.001, "betas": [0.9, 0.999]});
    for g in case["param_groups"]["groups"].as_array_mut().unwrap() {
        g["betas"] = beta(&g["momentum"]);
        g.as_object_mut().unwrap().remove("momentum");
    }
    let momentum = case.as_object_mut().unwrap().remove("momentum").unwrap();
    let betas: Vec<Vec<Value>> = momentum
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(beta).collect())
        .collect();
    case["betas"] = json!(betas);
    case
}

#[test]
fn cycled_momentum_drives_adams_b1_bit_for_bit() {
    for (path, tag) in [
        (
            "CyclicLR/triangular2_up15_down25_momentum.json",
            "adam-cyclic",
        ),
        ("OneCycleLR/cos_three_phase_momentum.json", "adam-onecycle"),
    ] {
        let report = run_case(&as_adam(case(path)), tag);
        assert!(report.passed(), "{path}: {report:?}");
        assert!(report.steps.iter().all(|e| e.max_abs == 0.0), "{path}");
        assert_eq!(report.steps.len(), 151);
    }
    // A tampered beta1 is noticed.
    let mut case = as_adam(case("CyclicLR/triangular_momentum.json"));
    case["betas"][1][7][0] = json!(0.5);
    assert!(!run_case(&case, "adam-tampered").steps[7].pass);
}

/// An SGD optimizer (with momentum) of two groups with one parameter each.
fn sgd() -> Optimizer {
    let graph = Sgd {
        momentum: 0.9,
        ..Sgd::default()
    }
    .graph()
    .unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
    for lr in [0.1, 0.05] {
        let g = opt
            .add_param_group(&[("lr", lr), ("momentum", 0.9)])
            .unwrap();
        opt.add_param(g, &format!("w{g}"), &Array1::from_elem(3, 1.0f32))
            .unwrap();
    }
    opt
}

/// PyTorch's SWALR step, transcribed from `torch/optim/swa_utils.py` independently of
/// optjit's: the value at `step` from the group's current `lr`.
fn swalr_reference(lr: f64, swa_lr: f64, step: i64, anneal_epochs: i64, cos: bool) -> f64 {
    let f = |t: f64| match cos {
        true => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
        false => t,
    };
    let step = if anneal_epochs == 0 {
        step.max(1)
    } else {
        step
    };
    let n = anneal_epochs.max(1) as f64;
    let prev_alpha = f(((step - 1) as f64 / n).clamp(0.0, 1.0));
    let prev = if prev_alpha == 1.0 {
        swa_lr
    } else {
        (lr - prev_alpha * swa_lr) / (1.0 - prev_alpha)
    };
    let alpha = f((step as f64 / n).clamp(0.0, 1.0));
    swa_lr * alpha + prev * (1.0 - alpha)
}

#[test]
fn swalr_follows_its_formula() {
    for (anneal, cos) in [(Anneal::Cos, true), (Anneal::Linear, false)] {
        for anneal_epochs in [0, 1, 7, 10] {
            let mut opt = sgd();
            let swa = [0.02, 0.03];
            let mut sched = SWALR {
                swa_lr: swa.to_vec(),
                anneal_epochs,
                anneal_strategy: anneal,
            }
            .build(&mut opt)
            .unwrap();
            let mut expected = [0.1, 0.05];
            for step in 0..25 {
                if step > 0 {
                    sched.step(&mut opt).unwrap();
                }
                for g in 0..2 {
                    expected[g] = swalr_reference(expected[g], swa[g], step, anneal_epochs, cos);
                    let actual = opt.hyper(g, "lr").unwrap();
                    assert_eq!(actual.to_bits(), expected[g].to_bits(), "step {step}");
                    // The closed form, `swa_lr α + lr0 (1 − α)`, up to the recursion's rounding.
                    let t = (step as f64 / anneal_epochs.max(1) as f64).min(1.0);
                    let t = if anneal_epochs == 0 { 1.0 } else { t };
                    let alpha = if cos {
                        (1.0 - (std::f64::consts::PI * t).cos()) / 2.0
                    } else {
                        t
                    };
                    let closed = swa[g] * alpha + [0.1, 0.05][g] * (1.0 - alpha);
                    assert!((actual - closed).abs() <= 1e-15, "{actual} vs {closed}");
                    if step >= anneal_epochs {
                        assert_eq!(actual, swa[g], "swa_lr from anneal_epochs on");
                    }
                }
            }
            if anneal_epochs > 1 {
                assert_eq!(sched.get_last_lr()[0], 0.02);
            }
        }
    }
}

#[test]
fn bad_options_are_typed_errors() {
    let mut opt = sgd();
    let cyclic = |f: fn(&mut CyclicLR)| {
        let mut c = CyclicLR::new(0.001, 0.01);
        f(&mut c);
        c
    };
    let one_cycle = |f: fn(&mut OneCycleLR)| {
        let mut c = OneCycleLR::new(0.1, 100);
        f(&mut c);
        c
    };
    let warm = |t_0, t_mult| CosineAnnealingWarmRestarts {
        t_0,
        t_mult,
        eta_min: 0.0,
    };
    let plateau = |f: fn(&mut ReduceLROnPlateau)| {
        let mut c = ReduceLROnPlateau::default();
        f(&mut c);
        c
    };
    let swalr = |swa_lr: Vec<f64>, anneal_epochs| SWALR {
        swa_lr,
        anneal_epochs,
        anneal_strategy: Anneal::Cos,
    };
    let bad: Vec<(&str, Result<Scheduler, Error>)> = vec![
        ("T_0", warm(0, 1).build(&mut opt)),
        ("T_mult", warm(10, 0).build(&mut opt)),
        (
            "step_size_up",
            cyclic(|c| c.step_size_up = 0).build(&mut opt),
        ),
        (
            "step_size_down",
            cyclic(|c| c.step_size_down = Some(-1)).build(&mut opt),
        ),
        (
            "base_lr",
            cyclic(|c| c.base_lr = vec![0.1; 3]).build(&mut opt),
        ),
        (
            "max_momentum",
            cyclic(|c| c.max_momentum = vec![]).build(&mut opt),
        ),
        (
            "total_steps",
            one_cycle(|c| c.total_steps = Some(0)).build(&mut opt),
        ),
        (
            "total_steps",
            one_cycle(|c| c.total_steps = None).build(&mut opt),
        ),
        (
            "epochs",
            one_cycle(|c| {
                c.total_steps = None;
                c.epochs = Some(0);
                c.steps_per_epoch = Some(3);
            })
            .build(&mut opt),
        ),
        (
            "pct_start",
            one_cycle(|c| c.pct_start = 1.5).build(&mut opt),
        ),
        (
            "max_lr",
            one_cycle(|c| c.max_lr = vec![0.1; 3]).build(&mut opt),
        ),
        ("factor", plateau(|c| c.factor = 1.0).build(&mut opt)),
        (
            "min_lr",
            plateau(|c| c.min_lr = vec![0.0; 3]).build(&mut opt),
        ),
        ("swa_lr", swalr(vec![0.1; 3], 10).build(&mut opt)),
        ("anneal_epochs", swalr(vec![0.1], -1).build(&mut opt)),
    ];
    for (option, result) in bad {
        match result {
            Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option),
            other => panic!("{option}: {other:?}"),
        }
    }
    // An optimizer without the momentum hyperparameter: an error, and nothing changed.
    let unknown = cyclic(|c| c.momentum_hyper = "b1".into()).build(&mut opt);
    assert!(
        matches!(unknown, Err(Error::UnknownHyper { .. })),
        "{unknown:?}"
    );
    assert_eq!(opt.hyper(0, "lr").unwrap(), 0.1, "nothing changed");
    assert_eq!(opt.hyper(0, "momentum").unwrap(), 0.9, "nothing changed");
}

#[test]
fn steps_of_the_wrong_kind_are_typed_errors() {
    let mut opt = sgd();
    let mut plateau = ReduceLROnPlateau::default().build(&mut opt).unwrap();
    let e = plateau.step(&mut opt).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("step_with_metric"), "{e}");
    let mut warm = CosineAnnealingWarmRestarts {
        t_0: 5,
        t_mult: 2,
        eta_min: 0.0,
    }
    .build(&mut opt)
    .unwrap();
    let e = warm.step_with_metric(1.0, &mut opt).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert_eq!(plateau.last_epoch(), 0);
    assert_eq!(warm.last_epoch(), 0);

    // OneCycleLR: total_steps steps, then an error that changes nothing.
    let mut opt = sgd();
    let mut one = OneCycleLR::new(0.1, 10).build(&mut opt).unwrap();
    for _ in 0..10 {
        one.step(&mut opt).unwrap();
    }
    let before = (one.state_dict(), opt.hyper(0, "lr").unwrap());
    let e = one.step(&mut opt).unwrap_err();
    assert!(matches!(e, Error::InvalidOption { .. }), "{e:?}");
    assert_eq!((one.state_dict(), opt.hyper(0, "lr").unwrap()), before);
}

/// `steps` steps of the scheduler `make` builds (with `metric(k)` for ReduceLROnPlateau);
/// with `resume_at`, the optimizer and scheduler are saved there (bytes, JSON) and a new
/// pair, built the same way, loads them and goes on. Every group's lr and momentum bits.
fn run(
    make: fn(&mut Optimizer) -> Scheduler,
    metric: Option<fn(usize) -> f64>,
    steps: usize,
    resume_at: Option<usize>,
) -> Vec<[u64; 4]> {
    let mut opt = sgd();
    let mut sched = make(&mut opt);
    let mut seen = Vec::new();
    for k in 0..steps {
        if Some(k) == resume_at {
            let bytes = opt.state_dict().to_bytes().unwrap();
            let saved = serde_json::to_string(&sched.state_dict()).unwrap();
            opt = sgd();
            sched = make(&mut opt);
            let dict = optjit::runtime::StateDict::from_bytes(&bytes).unwrap();
            assert!(opt.load_state_dict(&dict, true).unwrap().is_clean());
            sched
                .load_state_dict(&serde_json::from_str(&saved).unwrap(), &mut opt)
                .unwrap();
        }
        let bits = |name: &str, g| opt.hyper(g, name).unwrap().to_bits();
        seen.push([
            bits("lr", 0),
            bits("lr", 1),
            bits("momentum", 0),
            bits("momentum", 1),
        ]);
        match metric {
            Some(m) => sched.step_with_metric(m(k), &mut opt).unwrap(),
            None => sched.step(&mut opt).unwrap(),
        }
    }
    seen
}

fn plateau(opt: &mut Optimizer) -> Scheduler {
    ReduceLROnPlateau {
        mode: PlateauMode::Max,
        factor: 0.5,
        patience: 2,
        threshold: 0.01,
        threshold_mode: ThresholdMode::Rel,
        cooldown: 3,
        min_lr: vec![1e-3, 1e-4],
        eps: 1e-8,
    }
    .build(opt)
    .unwrap()
}

/// An accuracy that rises, then stalls and wobbles.
fn accuracy(k: usize) -> f64 {
    let k = k as f64;
    (k / 10.0).min(1.0) + 0.01 * (k * 1.7).sin()
}

fn one_cycle(opt: &mut Optimizer) -> Scheduler {
    OneCycleLR {
        max_lr: vec![0.1, 0.04],
        three_phase: true,
        ..OneCycleLR::new(0.1, 30)
    }
    .build(opt)
    .unwrap()
}

#[test]
fn resumed_plateau_and_one_cycle_runs_are_bit_identical() {
    let straight = run(plateau, Some(accuracy), 40, None);
    for at in [0, 1, 5, 13, 22, 31] {
        assert_eq!(
            run(plateau, Some(accuracy), 40, Some(at)),
            straight,
            "at {at}"
        );
    }
    let lrs: std::collections::BTreeSet<u64> = straight.iter().map(|s| s[0]).collect();
    assert!(lrs.len() >= 3, "the plateau reduced the lr: {lrs:?}");

    let straight = run(one_cycle, None, 30, None);
    for at in [1, 8, 9, 17, 29] {
        assert_eq!(run(one_cycle, None, 30, Some(at)), straight, "at {at}");
    }
    let momenta: std::collections::BTreeSet<u64> = straight.iter().map(|s| s[3]).collect();
    assert!(momenta.len() > 5, "the momentum cycles: {momenta:?}");
}

#[test]
fn a_plateau_state_holds_infinities_through_json() {
    for (mode, inf) in [
        (PlateauMode::Min, "\"inf\""),
        (PlateauMode::Max, "\"-inf\""),
    ] {
        let mut opt = sgd();
        let config = ReduceLROnPlateau {
            mode,
            ..Default::default()
        };
        let sched = config.clone().build(&mut opt).unwrap();
        let state = sched.state_dict();
        assert!(state.extra["best"].is_infinite());
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains(&format!("\"best\":{inf}")), "{text}");
        let back: optjit::schedule::SchedulerState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        let mut other = config.build(&mut opt).unwrap();
        other.load_state_dict(&back, &mut opt).unwrap();
        assert_eq!(other.state_dict(), state);
    }
    // A state of another kind, or missing the plateau's scalars, is refused.
    let mut opt = sgd();
    let mut sched = ReduceLROnPlateau::default().build(&mut opt).unwrap();
    let mut state = sched.state_dict();
    state.extra.remove("best");
    assert!(matches!(
        sched.load_state_dict(&state, &mut opt),
        Err(Error::InvalidStateDict { .. })
    ));
}

#[test]
fn warm_restarts_restart_at_growing_periods() {
    let mut opt = sgd();
    let mut sched = CosineAnnealingWarmRestarts {
        t_0: 3,
        t_mult: 2,
        eta_min: 0.0,
    }
    .build(&mut opt)
    .unwrap();
    let mut restarts = Vec::new();
    for k in 1..=30 {
        sched.step(&mut opt).unwrap();
        if opt.hyper(0, "lr").unwrap() == 0.1 {
            restarts.push(k);
        }
    }
    // Periods 3, 6, 12: restarts at 3, 9, 21.
    assert_eq!(restarts, [3, 9, 21]);
}

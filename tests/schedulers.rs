//! Host-side schedulers (`optjit::schedule`): PyTorch's recorded sequences
//! (`tests/data/schedulers`) bit for bit, any hyperparameter without recompiling, and a
//! resumed run equal to an uninterrupted one.

#![cfg(feature = "cli")]

use ndarray::Array1;
use optjit::optim::{Adam, Sgd};
use optjit::schedule::{
    CosineAnnealingLR, ExponentialLR, Factor, LambdaLR, LinearLR, Scheduler, StepLR,
};
use optjit::{Jit, Optimizer, Stepper};
use std::path::{Path, PathBuf};

/// The schedulers whose recorded cases are not implemented yet; each of their cases must
/// report so (and every other case pass), so this list shrinks as they land.
const NOT_YET: [&str; 0] = [];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schedulers")
}

#[test]
fn pytorch_scheduler_sequences_match_bit_for_bit() {
    let reports = optjit::conformance::run_dir(&data(), optjit::Executor::Jit).unwrap();
    assert_eq!(reports.len(), 30, "every vendored case ran");
    let mut passed = 0;
    for r in &reports {
        let scheduler = r.case.split('/').next().unwrap();
        if NOT_YET.contains(&scheduler) {
            let problem = r.problem.as_deref().unwrap_or("");
            assert!(
                problem.contains("not implemented yet"),
                "{}: {problem}",
                r.case
            );
            continue;
        }
        assert!(r.passed(), "{}: {:?}", r.case, r);
        // Exact: the largest difference over every value of every group is zero.
        assert!(
            r.steps.iter().all(|e| e.max_abs == 0.0),
            "{}: not bit for bit",
            r.case
        );
        passed += 1;
    }
    assert_eq!(passed, 30);
}

#[test]
fn a_value_one_ulp_off_fails_the_case() {
    let file = data().join("CosineAnnealingLR/tmax40_eta_min.json");
    let mut case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let v = case["lr"][1][77].as_f64().unwrap();
    case["lr"][1][77] = serde_json::json!(f64::from_bits(v.to_bits() + 1));
    let dir = std::env::temp_dir().join(format!("optjit-sched-tampered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let reports = optjit::conformance::run_dir(&dir, optjit::Executor::Jit).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!reports[0].passed());
    assert!(!reports[0].steps[77].pass && reports[0].steps[76].pass);
}

#[test]
fn python_lambdas_of_the_case_files_map_to_expressions() {
    use optjit::conformance::schedulers::python_lambda;
    type Expected = fn(i64) -> f64;
    let cases: [(&str, Expected); 4] = [
        ("lambda epoch: 0.95 ** epoch", |e| 0.95f64.powf(e as f64)),
        ("lambda epoch: 1.0 / (1.0 + 0.1 * epoch)", |e| {
            1.0 / (1.0 + 0.1 * e as f64)
        }),
        ("lambda epoch: 0.9", |_| 0.9),
        ("lambda epoch: 0.99 if epoch < 50 else 0.9", |e| {
            if e < 50 {
                0.99
            } else {
                0.9
            }
        }),
    ];
    for (source, expected) in cases {
        let f = python_lambda(source).unwrap();
        for epoch in [0, 1, 2, 49, 50, 149] {
            assert_eq!(f.at(epoch), expected(epoch), "{source} at {epoch}");
        }
    }
    assert!(python_lambda("def f(epoch): return 1").is_err());
    let err = Factor::expr("0.5 ^ (epoch +").unwrap_err();
    assert!(err.to_string().contains("1:"), "{err}");
}

/// An SGD optimizer of two groups with one parameter each.
fn sgd() -> Optimizer {
    let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
    for lr in [0.1, 0.05] {
        let g = opt.add_param_group(&[("lr", lr)]).unwrap();
        opt.add_param(g, &format!("w{g}"), &Array1::from_elem(3, 1.0f32))
            .unwrap();
    }
    opt
}

/// The schedulers of a warmup then cosine run, plus a chained exponential decay.
fn schedulers(opt: &mut Optimizer) -> Scheduler {
    let warmup = LinearLR {
        start_factor: 0.1,
        end_factor: 1.0,
        total_iters: 5,
    }
    .build(opt)
    .unwrap();
    let cosine = CosineAnnealingLR {
        t_max: 20,
        eta_min: 1e-4,
    }
    .build(opt)
    .unwrap();
    let sequence = Scheduler::sequential(opt, vec![warmup, cosine], &[5]).unwrap();
    let decay = ExponentialLR { gamma: 0.99 }.build(opt).unwrap();
    Scheduler::chained(opt, vec![sequence, decay]).unwrap()
}

/// `steps` scheduler steps from a fresh optimizer; with `resume_at`, the optimizer and the
/// scheduler are saved there in one checkpoint and a new pair, built as the first was,
/// loads it and goes on. Returns every group's lr at every step.
fn run(steps: usize, resume_at: Option<usize>) -> Vec<[u64; 2]> {
    let mut opt = sgd();
    let mut sched = schedulers(&mut opt);
    let mut lrs = Vec::new();
    for k in 0..steps {
        if Some(k) == resume_at {
            // One checkpoint: the optimizer's state with the scheduler's inside.
            let mut dict = opt.state_dict();
            dict.put("scheduler", &sched.state_dict()).unwrap();
            let bytes = dict.to_bytes().unwrap();
            opt = sgd();
            sched = schedulers(&mut opt);
            let dict = optjit::runtime::StateDict::from_bytes(&bytes).unwrap();
            assert!(opt.load_state_dict(&dict, true).unwrap().is_clean());
            let state = dict.get("scheduler").unwrap().expect("saved");
            sched.load_state_dict(&state, &mut opt).unwrap();
        }
        lrs.push([0, 1].map(|g| opt.hyper(g, "lr").unwrap().to_bits()));
        sched.step(&mut opt).unwrap();
    }
    lrs
}

#[test]
fn a_resumed_run_with_schedulers_is_bit_identical() {
    let straight = run(30, None);
    for at in [1, 4, 5, 6, 17] {
        assert_eq!(run(30, Some(at)), straight, "resumed at {at}");
    }
    // The schedule moved: warmup, cosine and decay all show.
    let distinct: std::collections::BTreeSet<u64> = straight.iter().map(|l| l[0]).collect();
    assert_eq!(distinct.len(), 30);
}

#[test]
fn a_state_of_another_scheduler_is_refused_and_changes_nothing() {
    let mut opt = sgd();
    let mut sched = StepLR {
        step_size: 2,
        gamma: 0.5,
    }
    .build(&mut opt)
    .unwrap();
    let other = ExponentialLR { gamma: 0.5 }
        .build(&mut sgd())
        .unwrap()
        .state_dict();
    let before = (sched.state_dict(), opt.hyper(0, "lr").unwrap());
    assert!(sched.load_state_dict(&other, &mut opt).is_err());
    assert_eq!((sched.state_dict(), opt.hyper(0, "lr").unwrap()), before);
}

#[test]
fn any_hyperparameter_can_be_scheduled_without_recompiling() {
    let jit = Jit::new().unwrap();
    let mut opt = Optimizer::new(&Adam::default().graph().unwrap())
        .unwrap()
        .with_jit(jit.clone());
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt
        .add_param(g, "w", &Array1::from_elem(64, 1.0f32))
        .unwrap();
    let mut b1 = CosineAnnealingLR {
        t_max: 10,
        eta_min: 0.5,
    }
    .build_on(&mut opt, "b1")
    .unwrap();
    let mut wd = LambdaLR {
        lr_lambda: vec![Factor::expr("1 / (1 + epoch)").unwrap()],
    }
    .build_on(&mut opt, "weight_decay")
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        opt.set_grad(&w, &[0.1; 64]).unwrap();
        opt.step().unwrap();
        b1.step(&mut opt).unwrap();
        wd.step(&mut opt).unwrap();
        seen.push((
            opt.hyper(g, "b1").unwrap(),
            opt.hyper(g, "weight_decay").unwrap(),
        ));
    }
    assert!(
        seen.windows(2).all(|w| w[1].0 < w[0].0),
        "b1 decays: {seen:?}"
    );
    assert_eq!(
        seen[0].1, 0.0,
        "weight decay's initial value 0 times any factor"
    );
    assert_eq!(jit.stats().compiles, 1, "one kernel for every value");
}

#[test]
fn a_stepper_is_one_group_to_schedulers() {
    let mut stepper = Stepper::new(&Sgd::default().graph().unwrap()).unwrap();
    stepper.set_hyper("lr", 0.2).unwrap();
    let mut sched = StepLR {
        step_size: 1,
        gamma: 0.5,
    }
    .build(&mut stepper)
    .unwrap();
    sched.step(&mut stepper).unwrap();
    assert_eq!(stepper.hyper("lr").unwrap(), 0.1);
    assert_eq!(sched.get_last_lr(), [0.1]);
}

#[test]
fn bad_options_are_typed_errors() {
    let mut opt = sgd();
    let bad = [
        StepLR {
            step_size: 0,
            gamma: 0.5,
        }
        .build(&mut opt)
        .err(),
        LinearLR {
            start_factor: 0.0,
            end_factor: 1.0,
            total_iters: 5,
        }
        .build(&mut opt)
        .err(),
        CosineAnnealingLR {
            t_max: 0,
            eta_min: 0.0,
        }
        .build(&mut opt)
        .err(),
        LambdaLR {
            lr_lambda: vec![Factor::new(|_| 1.0); 3],
        }
        .build(&mut opt)
        .err(),
        ExponentialLR { gamma: 0.5 }
            .build_on(&mut opt, "nope")
            .err(),
        Scheduler::sequential(&mut opt, Vec::new(), &[]).err(),
    ];
    for (k, e) in bad.iter().enumerate() {
        assert!(
            matches!(
                e,
                Some(optjit::Error::InvalidOption { .. } | optjit::Error::UnknownHyper { .. })
            ),
            "{k}: {e:?}"
        );
    }
    assert_eq!(opt.hyper(0, "lr").unwrap(), 0.1, "nothing changed");
}

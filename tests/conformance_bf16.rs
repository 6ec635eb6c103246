//! bfloat16 conformance (`tests/data/conformance-bf16/`, format and the three PyTorch
//! implementations in its README): optjit's bf16 Adam equals `fused=True` bit for bit on every
//! executor; the per-op `single` and `foreach` cases pass at their documented tolerance; and
//! the comparison is live: the same replay against `single`'s expectations with the fused
//! tolerance fails, as does a single expected value one ulp off.

// `optjit::conformance` comes with the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use optjit::conformance::{run_file, CaseReport, Tolerance, FUSED_ULPS, PER_OP_ULPS};
use optjit::{DType, Executor};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const EXECUTORS: [Executor; 4] = [
    Executor::Jit,
    Executor::Reference,
    Executor::Eager,
    Executor::Chunked,
];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance-bf16")
}

fn case(name: &str) -> Value {
    let file = data().join("adam").join(name);
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
}

/// Runs `case` as a file of its own (named after the test, so tests do not share files).
fn run_tampered(test: &str, case: &Value) -> CaseReport {
    let dir = std::env::temp_dir().join(format!("optjit-bf16-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("case.json");
    std::fs::write(&file, case.to_string()).unwrap();
    let report = run_file(&file, "case.json", Executor::Jit);
    std::fs::remove_dir_all(&dir).unwrap();
    report
}

/// The largest difference over every step and the state, in ulps.
fn max_ulps(r: &CaseReport) -> f64 {
    let all = r.steps.iter().chain([&r.state]);
    all.map(|e| e.max_ulps.expect("compared in ulps"))
        .fold(0.0, f64::max)
}

#[test]
fn fused_adam_matches_torch_bit_for_bit_on_every_executor() {
    assert_eq!(FUSED_ULPS, 0.0);
    let file = data().join("adam/fused.bfloat16.json");
    for executor in EXECUTORS {
        let r = run_file(&file, "fused", executor);
        assert!(r.passed(), "{executor:?}: {r:?}");
        assert_eq!(r.steps.len(), 6, "{executor:?}");
        let bf16_ulps = |ulps| Tolerance::Ulps {
            dtype: DType::BF16,
            ulps,
        };
        assert_eq!(r.tolerance, Some(bf16_ulps(FUSED_ULPS)), "{executor:?}");
        assert_eq!(max_ulps(&r), 0.0, "{executor:?}: {r:?}");
    }
}

#[test]
fn the_per_op_cases_pass_at_their_documented_tolerance() {
    // The README's summary: fused and single differ by at most 38 ulps; optjit is fused.
    assert_eq!(PER_OP_ULPS, 38.0);
    for name in ["single", "foreach"] {
        let r = run_file(
            &data().join(format!("adam/{name}.bfloat16.json")),
            name,
            Executor::Jit,
        );
        assert!(r.passed(), "{name}: {r:?}");
        let steps: Vec<f64> = r.steps.iter().map(|e| e.max_ulps.unwrap()).collect();
        assert_eq!(steps, [38.0, 2.0, 2.0, 2.0, 4.0, 35.0], "{name}");
        assert_eq!(r.state.max_ulps, Some(1.0), "{name}");
    }
}

#[test]
fn the_single_expectations_at_the_fused_tolerance_fail() {
    // Mutation check: the same replay (single's inputs are fused's) against single's
    // expectations, with the fused tolerance, must fail.
    let mut single = case("single.bfloat16.json");
    let fused = case("fused.bfloat16.json");
    for key in ["hyper", "params", "grads"] {
        assert_eq!(single[key], fused[key], "{key}");
    }
    single["torch_impl_kwargs"] = json!({"fused": true});
    let r = run_tampered("single-as-fused", &single);
    assert!(r.problem.is_none(), "{r:?}");
    assert!(!r.passed(), "{r:?}");
    assert!(!r.steps[0].pass && !r.state.pass, "{r:?}");
    assert_eq!(max_ulps(&r), 38.0);
}

#[test]
fn one_expected_value_one_ulp_off_fails() {
    let mut fused = case("fused.bfloat16.json");
    let x = &mut fused["expected_params"][5][1][2];
    let bits = half::bf16::from_f64(x.as_f64().unwrap()).to_bits();
    *x = json!(half::bf16::from_bits(bits + 1).to_f64());
    let r = run_tampered("one-ulp", &fused);
    assert!(!r.passed(), "{r:?}");
    let failing: Vec<usize> = (0..6).filter(|&k| !r.steps[k].pass).collect();
    assert_eq!(failing, [5]);
    assert_eq!(r.steps[5].max_ulps, Some(1.0));
}

#[test]
fn numbers_that_are_not_bf16_values_and_wrong_state_dtypes_are_refused() {
    let mut fused = case("fused.bfloat16.json");
    fused["params"][0][3] = json!(0.1);
    let problem = run_tampered("not-bf16", &fused).problem.unwrap();
    assert!(problem.contains("0.1 is not a bfloat16 value"), "{problem}");

    let mut fused = case("fused.bfloat16.json");
    fused["state_dtypes"]["exp_avg_sq"] = json!("float32");
    let problem = run_tampered("state-dtype", &fused).problem.unwrap();
    assert!(
        problem.contains("`exp_avg_sq` of tensor 0 is bf16 in optjit, float32 in PyTorch"),
        "{problem}"
    );
}

#[test]
fn optjit_conformance_runs_the_bf16_folder() {
    let dir = data();
    let run = common::run_optjit(&dir, &["conformance", dir.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "PASS adam/foreach.bfloat16.json  bf16 ulps per step: 38 2 2 2 4 35  state: 1  \
             tolerance: 38 ulps",
            "PASS adam/fused.bfloat16.json  bf16 ulps per step: 0 0 0 0 0 0  state: 0  \
             tolerance: 0 ulps",
            "PASS adam/single.bfloat16.json  bf16 ulps per step: 38 2 2 2 4 35  state: 1  \
             tolerance: 38 ulps",
            "3 passed, 0 failed",
        ]
    );
}

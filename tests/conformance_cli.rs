//! `optjit conformance`: every vendored PyTorch case passes through the optimizer runtime,
//! and cases that cannot run are named and make the command fail.

// The command line and `optjit::bench`/`conformance` come with the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};

/// Runs `optjit args...`: whether it succeeded, its stdout and its stderr.
fn optjit(args: &[&str]) -> (bool, String, String) {
    let run = common::run_optjit(Path::new(env!("CARGO_MANIFEST_DIR")), args);
    (run.code == Some(0), run.stdout, run.stderr)
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance")
}

#[test]
fn every_vendored_case_passes_through_the_runtime() {
    let cases = optjit::conformance::case_files(&data()).unwrap().len();
    assert!(cases >= 82, "{cases} case files");
    for executor in ["jit", "reference"] {
        let (ok, out, err) = optjit(&[
            "conformance",
            data().to_str().unwrap(),
            "--executor",
            executor,
        ]);
        assert!(ok, "{executor}: {out}{err}");
        assert!(
            out.ends_with(&format!("{cases} passed, 0 failed\n")),
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with("PASS ")).count(),
            cases
        );
    }
}

#[test]
fn the_clipping_scaler_and_optax_cases_pass_too() {
    // PyTorch's clip_grad_norm_/clip_grad_value_/GradScaler cases and optax's trajectories:
    // every file of each folder runs and passes.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (folder, at_least) in [("clip", 32), ("optax", 10)] {
        let dir = root.join(folder);
        let cases = optjit::conformance::case_files(&dir).unwrap().len();
        assert!(cases >= at_least, "{folder}: {cases} case files");
        let (ok, out, err) = optjit(&["conformance", dir.to_str().unwrap()]);
        assert!(ok, "{folder}: {out}{err}");
        assert!(
            out.ends_with(&format!("{cases} passed, 0 failed\n")),
            "{out}"
        );
    }
}

#[test]
fn a_clip_case_with_a_wrong_total_norm_fails() {
    // The runner compares, not just runs: a tampered expectation is a failure.
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/clip/clip_grad_norm.norm2_clip.float64.json");
    let mut case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let total = case["total_norm"].as_f64().unwrap();
    case["total_norm"] = serde_json::json!(total * (1.0 + 1e-9));
    let dir = std::env::temp_dir().join(format!("optjit-clip-tampered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let (ok, out, _) = optjit(&["conformance", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL case.json"), "{out}");
}

/// The runner compared AdEMAMix's `nu` but skipped its `m1` and `m2` (no slot of those
/// names): a tampered slow average must fail.
#[test]
fn an_ademamix_case_with_a_wrong_slow_average_fails() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/optax/ademamix/default.float64.json");
    let mut case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let m2 = &mut case["expected_state_after_last"]["[0].m2"][0][1];
    *m2 = serde_json::json!(m2.as_f64().unwrap() + 1e-6);
    let dir = std::env::temp_dir().join(format!("optjit-optax-tampered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
    let (ok, out, _) = optjit(&["conformance", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL case.json"), "{out}");
}

#[test]
fn json_output_has_one_object_per_case_and_a_summary() {
    let (ok, out, _) = optjit(&[
        "conformance",
        data().join("adam").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, cases) = lines.split_last().unwrap();
    assert_eq!(summary["summary"]["passed"], cases.len());
    assert_eq!(summary["summary"]["failed"], 0);
    for case in cases {
        assert_eq!(case["passed"], true);
        assert_eq!(case["report"]["steps"].as_array().unwrap().len(), 6);
        assert!(case["report"]["steps"][0]["max_rel"].as_f64().unwrap() < 1e-5);
    }
}

#[test]
fn cases_that_cannot_run_are_named_and_fail_the_command() {
    let dir = std::env::temp_dir().join(format!("optjit-conformance-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let case = std::fs::read_to_string(data().join("adam/default.float32.json")).unwrap();
    std::fs::write(dir.join("ok.json"), &case).unwrap();
    std::fs::write(
        dir.join("nested/lbfgs.json"),
        case.replace("\"optimizer\": \"adam\"", "\"optimizer\": \"lbfgs\""),
    )
    .unwrap();
    std::fs::write(
        dir.join("foo.json"),
        case.replace("\"eps\": 1e-08", "\"eps\": 1e-08, \"foo\": 1"),
    )
    .unwrap();
    // A shifted expected value: runs, but fails on numbers.
    let shifted = case.replacen(
        "\"expected_params\": [\n  [\n   [\n    ",
        "\"expected_params\": [\n  [\n   [\n    1.0 + ",
        1,
    );
    std::fs::write(dir.join("broken.json"), "{ not json").unwrap();
    let (ok, out, _) = optjit(&["conformance", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL nested/lbfgs.json  could not run: unknown optimizer `lbfgs`"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAIL foo.json  could not run: optimizer `adam` does not support option `foo`"
        ),
        "{out}"
    );
    assert!(
        out.contains("FAIL broken.json  could not run: malformed case file"),
        "{out}"
    );
    assert!(out.contains("PASS ok.json"), "{out}");
    assert!(out.ends_with("1 passed, 3 failed\n"), "{out}");
    let _ = shifted;
}

#[test]
fn a_numeric_mismatch_fails_the_case() {
    let dir = std::env::temp_dir().join(format!("optjit-conformance-num-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut case: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data().join("sgd/momentum.float64.json")).unwrap(),
    )
    .unwrap();
    let v = &mut case["expected_params"][3][1][2];
    *v = serde_json::json!(v.as_f64().unwrap() * (1.0 + 1e-9));
    std::fs::write(dir.join("shifted.json"), case.to_string()).unwrap();
    let (ok, out, _) = optjit(&["conformance", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(out.starts_with("FAIL shifted.json"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

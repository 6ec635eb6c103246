//! The `optjit` command line, run as a user would: `list`, `show` at every stage, `check`,
//! `bench` with built-ins and `.opt` files, help texts, exit codes, error messages, and a
//! reader that closes the pipe early. Printed IR is snapshotted; machine code never is.

// The command line and `optjit::bench`/`conformance` come with the `cli` feature.
#![cfg(feature = "cli")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::Run;

/// Runs `optjit args...` in the crate's root, so that `examples/...` paths resolve.
fn optjit(args: &[&str]) -> Run {
    common::run_optjit(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// Runs a command expected to succeed with no message on stderr; returns its stdout.
fn ok(args: &[&str]) -> String {
    let run = optjit(args);
    assert_eq!(run.code, Some(0), "optjit {args:?}\nstderr: {}", run.stderr);
    assert_eq!(run.stderr, "", "optjit {args:?}");
    run.stdout
}

/// Runs a command expected to succeed and print one JSON object per line; returns them.
fn ok_json(args: &[&str]) -> Vec<serde_json::Value> {
    ok(args)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// A file under Cargo's scratch directory for integration tests, holding `text`; the name
/// carries the process id, so that concurrent test runs do not share it.
fn scratch(name: &str, text: &str) -> PathBuf {
    let name = format!("{}-{name}", std::process::id());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("scratch file written");
    path
}

macro_rules! snapshot {
    ($name:literal, $text:expr) => {
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!($name, $text);
        });
    };
}

#[test]
fn list_shows_every_builtin_with_defaults_and_state() {
    let out = ok(&["list"]);
    for name in optjit::optim::NAMES {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{out}"
        );
    }
    snapshot!("cli__list", out);
}

#[test]
fn list_json_keeps_hyperparameter_order() {
    let lines = ok_json(&["list", "--json"]);
    let names: Vec<&str> = lines.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, optjit::optim::NAMES);
    let adam = &lines[optjit::optim::NAMES
        .iter()
        .position(|&n| n == "adam")
        .unwrap()];
    let hypers: Vec<(&str, f64)> = adam["hypers"]
        .as_array()
        .expect("an array")
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["default"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        hypers,
        [
            ("lr", 1e-3),
            ("b1", 0.9),
            ("b2", 0.999),
            ("eps", 1e-8),
            ("weight_decay", 0.0)
        ]
    );
    assert_eq!(adam["state"][1]["name"], "exp_avg_sq");
}

#[test]
fn show_graph() {
    snapshot!(
        "cli__show_sgd_graph",
        ok(&["show", "sgd", "--stage", "graph"])
    );
}

#[test]
fn show_passes_is_the_default_stage() {
    let passes = ok(&["show", "adam", "--stage", "passes"]);
    assert_eq!(ok(&["show", "adam"]), passes);
    // Every pass of the pipeline appears, in order, ending with the program.
    let headers: Vec<&str> = passes.lines().filter(|l| l.starts_with("== ")).collect();
    assert_eq!(
        headers,
        [
            "== built ==",
            "== after recip ==",
            "== after fold ==",
            "== after contract ==",
            "== after dce ==",
            "== after hoist =="
        ]
    );
    snapshot!("cli__show_adam_passes", passes);
}

#[test]
fn show_program() {
    snapshot!(
        "cli__show_lion_program",
        ok(&["show", "lion", "--stage", "program"])
    );
}

#[test]
fn show_a_clipped_optimizer_prints_its_phases() {
    // Adam with its gradients clipped to a global 2-norm: the norm's phase, the prologue
    // after it, then Adam's stage reading the coefficient.
    snapshot!(
        "cli__show_adam_clipped_program",
        ok(&["show", "adam", "--clip", "2", "--stage", "program"])
    );
}

#[test]
fn show_amp_with_clipping_prints_one_program_that_can_skip() {
    // AMP + clipping + Adam: one pass computing the norm of the unscaled gradients and the
    // non-finite check of the incoming ones, the clip coefficient and the skip condition,
    // then Adam's stage reading the gradient unscaled and clipped.
    snapshot!(
        "cli__show_adam_clipped_amp_program",
        ok(&["show", "adam", "--clip", "2", "--amp", "--stage", "program"])
    );
}

#[test]
fn show_text_of_built_ins() {
    // The text form of a few built-ins, as a reader sees it; each parses back to the same
    // graph (tests/text.rs checks every built-in).
    let texts: Vec<String> = ["sgd_nesterov", "adamw", "nadam", "lion"]
        .iter()
        .map(|name| ok(&["show", name, "--stage", "text"]))
        .collect();
    snapshot!("cli__show_text", texts.join("\n"));
}

#[test]
fn show_program_in_f64() {
    let out = ok(&["show", "lion", "--stage", "program", "--dtype", "f64"]);
    assert!(out.contains("mul.f64 param[i]"), "{out}");
    assert!(!out.contains(".f32"), "{out}");
}

#[test]
fn show_clif_in_f64() {
    let out = ok(&["show", "sgd_momentum", "--stage", "clif", "--dtype", "f64"]);
    assert!(out.contains("f64x2"), "{out}");
    snapshot!("cli__show_sgd_momentum_clif_f64", out);
}

#[test]
fn show_asm_is_machine_code_with_a_return() {
    let out = ok(&["show", "adam", "--stage", "asm"]);
    assert!(out.lines().count() > 20, "{out}");
    // x86-64 `retq`/`ret`, AArch64 `ret`, RISC-V `ret`.
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|w| w.starts_with("ret"))),
        "{out}"
    );
    // Not the Cranelift IR.
    assert!(!out.contains("function u0:0"), "{out}");
}

#[test]
fn show_unknown_name_fails_naming_both_possibilities() {
    let run = optjit(&["show", "adamm"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.starts_with("error: `adamm`"), "{}", run.stderr);
    assert!(run.stderr.contains("optjit list"), "{}", run.stderr);
    assert!(run.stderr.contains(".opt"), "{}", run.stderr);
}

#[test]
fn show_unknown_stage_is_a_usage_error() {
    let run = optjit(&["show", "adam", "--stage", "bytecode"]);
    // clap's status for usage errors.
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("'bytecode'"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("graph, passes, program, clif, asm, text"),
        "{}",
        run.stderr
    );
}

#[test]
fn show_missing_file_fails_naming_it() {
    let run = optjit(&["show", "no/such/optimizer.opt"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with("error: no/such/optimizer.opt: "),
        "{}",
        run.stderr
    );
}

#[test]
fn check_missing_file_fails_naming_it() {
    let run = optjit(&["check", "no/such/file.opt"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with("error: no/such/file.opt: "),
        "{}",
        run.stderr
    );
}

#[test]
fn check_needs_a_file() {
    let run = optjit(&["check"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("<FILES>..."), "{}", run.stderr);
}

#[test]
fn every_subcommand_help_shows_examples() {
    for sub in ["list", "show", "check", "conformance", "bench", "demo"] {
        let out = ok(&[sub, "--help"]);
        let examples = out
            .split_once("Examples:\n")
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("{sub}: no examples:\n{out}"));
        assert!(
            examples.starts_with(&format!("  optjit {sub}")),
            "{sub}:\n{out}"
        );
    }
}

#[test]
fn a_closed_pipe_ends_quietly() {
    for args in [
        &["list"][..],
        &["show", "adam"],
        &["show", "adam", "--stage", "clif"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_optjit"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // Close the reading end before the child has written anything (it is still
        // starting), as `| head -0` would.
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr)
            .expect("UTF-8 stderr");
        let status = child.wait().expect("the child exits");
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn bench_rejects_unknown_optimizers_and_implementations() {
    let run = optjit(&["bench", "--optimizer", "adam,nope", "--quick"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("`nope`"), "{}", run.stderr);
    let run = optjit(&["bench", "--optimizer", "adam", "--impl", "jit,fast"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("unknown implementation `fast` (expected one of jit,"),
        "{}",
        run.stderr
    );
    let run = optjit(&["bench", "--optimizer", "missing.opt", "--quick"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.starts_with("error: missing.opt: "),
        "{}",
        run.stderr
    );
}

/// The JSON records of a small, quick bench run.
fn bench_records(optimizers: &str) -> Vec<serde_json::Value> {
    let args = [
        "bench",
        "--optimizer",
        optimizers,
        "--n",
        "4096",
        "--threads",
        "1",
        "--impl",
        "jit",
        "--quick",
        "--json",
    ];
    ok_json(&args)
}

#[test]
fn bench_labels_builtins_by_their_name() {
    let records = bench_records("sgd_momentum");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["optimizer"], "sgd_momentum");
    assert_eq!(records[0]["impl"], "jit");
    assert_eq!(records[0]["n"], 4096);
}

/// `--dtype` stores the optimizer's streams as asked, and its GB/s count each stream at its
/// element size: Adam moves 4 streams in and 3 out, 2 bytes each in bf16, and bf16 params
/// and gradients with f32 state make 2·2 + 2·4 in and 2 + 2·4 out; the native loop stays f32.
#[test]
fn bench_dtype_counts_bytes_at_each_streams_size() {
    for (dtype, bytes) in [
        ("bf16", 14.0),
        ("bf16:f32", 22.0),
        ("f32", 28.0),
        ("bf16~", 14.0),
    ] {
        let args = [
            "bench",
            "--optimizer",
            "adam",
            "--n",
            "4096",
            "--threads",
            "1",
            "--impl",
            "jit,native",
            "--quick",
            "--json",
            "--dtype",
            dtype,
        ];
        let records = ok_json(&args);
        let jit = records
            .iter()
            .find(|r| r["impl"] == "jit")
            .expect("a jit row");
        assert_eq!(jit["dtype"], dtype);
        let moved = jit["gbps"].as_f64().unwrap() * jit["ns_per_elem"].as_f64().unwrap();
        assert!(
            (moved - bytes).abs() < 1e-6 * bytes,
            "{dtype}: {moved} B/element"
        );
        let native = records
            .iter()
            .find(|r| r["impl"] == "native")
            .expect("a native row");
        assert_eq!(native["dtype"], "f32");
    }
    let run = optjit(&[
        "bench",
        "--optimizer",
        "adam",
        "--quick",
        "--dtype",
        "f64:bf16",
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("f64 goes with f64 only"),
        "{}",
        run.stderr
    );
}

// Tests below need the text parser.

#[test]
fn bench_labels_files_by_their_header() {
    let records = bench_records("lion,examples/lion.opt,examples/signsgd.opt");
    let labels: Vec<&str> = records
        .iter()
        .filter_map(|r| r["optimizer"].as_str())
        .collect();
    // The file that repeats a name is labelled by its path.
    assert_eq!(labels, ["lion", "examples/lion.opt", "signsgd"]);
}

/// Regression: the native baseline was chosen by label, so a file naming its optimizer
/// `adam` was compared with the handwritten Adam loop whatever its maths.
#[test]
fn bench_compares_only_built_ins_with_their_native_loop() {
    let file = scratch(
        "cli_not_adam.opt",
        "optimizer adam(lr = 0.001) {\n    param = param - lr * grad\n}\n",
    );
    let items = format!("adam,{}", file.display());
    let args = [
        "bench",
        "--optimizer",
        &items,
        "--n",
        "4096",
        "--threads",
        "1",
        "--impl",
        "jit,native",
        "--quick",
        "--json",
    ];
    let records = ok_json(&args);
    let of = |label: &str, imp: &str| {
        records
            .iter()
            .find(|r| r["optimizer"] == label && r["impl"] == imp)
            .cloned()
    };
    let file_label = file.display().to_string();
    assert!(of("adam", "native").is_some(), "{records:?}");
    assert!(of("adam", "jit").unwrap()["vs_native"].is_number());
    assert!(of(&file_label, "native").is_none(), "{records:?}");
    assert!(of(&file_label, "jit").unwrap()["vs_native"].is_null());
}

#[test]
fn bench_records_name_their_isa_and_compare_the_jit_with_the_128_bit_loop() {
    let args = [
        "bench",
        "--optimizer",
        "adam",
        "--n",
        "4096",
        "--threads",
        "1",
        "--impl",
        "jit,native,native128,copy",
        "--quick",
        "--json",
    ];
    let records = ok_json(&args);
    let of = |imp: &str| {
        records
            .iter()
            .find(|r| r["impl"] == imp)
            .cloned()
            .unwrap_or_else(|| panic!("no {imp} record in {records:?}"))
    };
    assert_eq!(of("native128")["isa"], "portable");
    assert!(of("native")["isa"].is_string());
    assert!(of("copy")["isa"].is_null());
    assert!(of("jit")["vs_native128"].is_number());
    assert!(of("native")["vs_native128"].is_null());
    let host = of("jit")["host"].as_str().expect("a string").to_string();
    assert!(records.iter().all(|r| r["host"] == host.as_str()));
}

#[test]
fn bench_runs_many_small_tensors_alone() {
    let args = [
        "bench",
        "--optimizer",
        "sgd_momentum",
        "--tensors",
        "20x100",
        "--no-sizes",
        "--threads",
        "1",
        "--quick",
        "--json",
    ];
    let records = ok_json(&args);
    let layouts: Vec<(u64, u64, &str)> = records
        .iter()
        .map(|r| {
            let steps = r["steps"].as_str().unwrap_or("one");
            (
                r["tensors"].as_u64().unwrap(),
                r["n"].as_u64().unwrap(),
                steps,
            )
        })
        .collect();
    assert_eq!(
        layouts,
        [
            (20, 2000, "shared"),
            (20, 2000, "staggered"),
            (1, 2000, "one")
        ]
    );
    let run = optjit(&["bench", "--no-sizes", "--quick"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("nothing to measure"), "{}", run.stderr);
}

#[test]
fn show_file_at_every_stage() {
    let graph = ok(&["show", "examples/lion.opt", "--stage", "graph"]);
    assert!(graph.starts_with("graph lion(lr = 0.0001,"), "{graph}");
    let program = ok(&["show", "examples/lion.opt", "--stage", "program"]);
    assert!(program.contains("sign.f32"), "{program}");
    let clif = ok(&["show", "examples/lion.opt", "--stage", "clif"]);
    assert!(clif.starts_with("; lion: f32 kernel"), "{clif}");
}

#[test]
fn show_text_parses_back_to_the_same_program() {
    for name in ["adam", "nadam", "schedule_free_adamw"] {
        let text = ok(&["show", name, "--stage", "text"]);
        let path = scratch(&format!("cli_roundtrip_{name}.opt"), &text);
        let path = path.to_str().expect("UTF-8 path");
        assert_eq!(
            ok(&["show", path, "--stage", "program"]),
            ok(&["show", name, "--stage", "program"]),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn check_examples_prints_each_program() {
    let files = [
        "examples/adabelief.opt",
        "examples/lion.opt",
        "examples/signsgd.opt",
    ];
    let mut args = vec!["check"];
    args.extend(files);
    let out = ok(&args);
    for file in files {
        assert!(out.contains(&format!("== {file} ==\nprogram ")), "{out}");
    }
    // One file: the program alone.
    assert!(ok(&["check", "examples/lion.opt"]).starts_with("program lion("));
}

#[test]
fn check_reports_position_and_caret_and_goes_on() {
    let bad = scratch(
        "cli_check_bad.opt",
        "optimizer bad(lr = 0.1) {\n    param = param - lr * gradd\n}\n",
    );
    let bad = bad.to_str().expect("UTF-8 path");
    let run = optjit(&["check", bad, "no/such/file.opt", "examples/lion.opt"]);
    assert_eq!(run.code, Some(1));
    let expected = format!(
        "error: unknown name `gradd`\n --> {bad}:2:26\n  |\n2 |     param = param - lr * gradd\n  \
         |                          ^^^^^ did you mean `grad`? (expected"
    );
    assert!(run.stderr.starts_with(&expected), "{}", run.stderr);
    assert!(
        run.stderr.contains("\nerror: no/such/file.opt: "),
        "{}",
        run.stderr
    );
    // The good file after the bad ones is still checked.
    assert!(
        run.stdout
            .contains("== examples/lion.opt ==\nprogram lion("),
        "{}",
        run.stdout
    );
}

#[test]
fn schedule_prints_a_pytorch_scheduler_and_an_expression() {
    let out = ok(&[
        "schedule",
        "StepLR",
        "--arg",
        "step_size=2",
        "--arg",
        "gamma=0.5",
        "--steps",
        "4",
    ]);
    let values: Vec<f64> = out
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(values, [1.0, 1.0, 0.5, 0.5, 0.25]);
    // An in-graph schedule, charted: values at steps 1..=N, and an SVG written.
    let plot = std::env::temp_dir().join(format!("optjit-schedule-{}.svg", std::process::id()));
    let out = ok(&[
        "schedule",
        "warmup_cosine_decay(0, 1, 2, 6, 0)",
        "--steps",
        "7",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 7);
    assert_eq!(
        (rows[0]["step"].as_u64(), rows[0]["value"].as_f64()),
        (Some(1), Some(0.0))
    );
    assert_eq!(
        rows[2]["value"].as_f64(),
        Some(1.0),
        "the peak at the end of the warmup"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    std::fs::remove_file(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg:.200}"
    );
}

#[test]
fn schedule_mistakes_are_reported() {
    for args in [
        &["schedule", "NoSuchLR"][..],
        &["schedule", "StepLR", "--arg", "gamma=0.5"],
        &["schedule", "StepLR", "--arg", "step_size"],
        &["schedule", "1 +", "--steps", "3"],
        &["schedule", "step", "--arg", "gamma=1"],
    ] {
        let run = optjit(args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stdout);
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

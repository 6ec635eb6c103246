//! `optjit demo`, the first command a newcomer runs: its loss table, its chart, the optimizer
//! it reads from text, and its errors.

// The command line and `optjit::bench`/`conformance` come with the `cli` feature.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};

mod common;

use common::Run;

/// Runs `optjit demo ARGS` in `dir`.
fn demo(dir: &Path, args: &[&str]) -> Run {
    common::run_optjit(dir, &[&["demo"], args].concat())
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("optjit-demo-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    dir
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

/// The printed table: its two heading lines, the loss of each epoch per column, and the
/// test accuracy (in %) per column.
struct Table {
    labels: String,
    hypers: String,
    losses: Vec<Vec<f64>>,
    accuracy: Vec<f64>,
}

fn table(stdout: &str) -> Table {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("epoch"));
    let labels = lines.next().expect("a heading line").to_string();
    let hypers = lines.next().expect("a hyperparameter line").to_string();
    let mut losses = Vec::new();
    let mut accuracy = Vec::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        match cells.next() {
            Some("accuracy") => {
                accuracy = cells
                    .map(|c| c.trim_end_matches('%').parse().expect("a percentage"))
                    .collect();
                break;
            }
            Some(epoch) => {
                let epoch: usize = epoch.parse().expect("an epoch number");
                assert_eq!(epoch, losses.len() + 1, "epochs in order: {line}");
                losses.push(cells.map(|c| c.parse().expect("a loss")).collect());
            }
            None => panic!("a blank line inside the table"),
        }
    }
    Table {
        labels,
        hypers,
        losses,
        accuracy,
    }
}

/// Checks that `t` has `epochs` rows of `columns` finite losses and `columns` accuracies,
/// and that each of the first `decreasing` columns ends below where it started.
fn check_losses(t: &Table, epochs: usize, columns: usize, decreasing: usize) {
    assert_eq!(t.losses.len(), epochs, "{:?}", t.losses);
    for row in &t.losses {
        assert_eq!(row.len(), columns, "{row:?}");
        assert!(row.iter().all(|l| l.is_finite() && *l > 0.0), "{row:?}");
    }
    for c in 0..decreasing {
        let (first, last) = (t.losses[0][c], t.losses[epochs - 1][c]);
        assert!(last < first, "column {c}: {first} -> {last}");
    }
    assert_eq!(t.accuracy.len(), columns, "{:?}", t.accuracy);
    assert!(t.accuracy.iter().all(|a| (0.0..=100.0).contains(a)));
}

/// The chart at `path`, checked to be an SVG document.
fn svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("the chart was written");
    assert!(
        text.starts_with("<svg") || text.starts_with("<?xml"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    text
}

const BUILTINS: [&str; 3] = ["SGD-momentum", "Adam", "AdamW"];

#[test]
fn builtins_only_prints_a_loss_table_and_writes_a_chart() {
    let dir = scratch("builtins");
    let out = dir.join("chart.svg");
    let out_arg = out.display().to_string();
    let run = demo(
        &dir,
        &[
            "--builtins-only",
            "--epochs",
            "4",
            "--hidden",
            "16",
            "--out",
            &out_arg,
        ],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let t = table(&run.stdout);
    for name in BUILTINS {
        assert!(t.labels.contains(name), "{}", t.labels);
    }
    assert!(!t.labels.contains("lion"), "{}", t.labels);
    assert!(t.hypers.contains("lr=0.05 momentum=0.9"), "{}", t.hypers);
    check_losses(&t, 4, 3, 3);
    let chart = svg(&out);
    for name in BUILTINS {
        assert!(
            chart.contains(&format!(">\n{name}\n<")),
            "the legend names {name}"
        );
    }
    assert!(run.stdout.contains(&format!("chart: {out_arg}")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_default_demo_trains_the_embedded_lion_from_any_directory() {
    // An empty directory: the data and examples/lion.opt are embedded in the binary, and
    // the chart goes to ./demo-loss.svg.
    let dir = scratch("default");
    let run = demo(&dir, &["--epochs", "3", "--hidden", "16"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let t = table(&run.stdout);
    assert!(
        t.labels.contains("lion (examples/lion.opt)"),
        "{}",
        t.labels
    );
    assert!(t.hypers.ends_with("lr=0.0005"), "{}", t.hypers);
    check_losses(&t, 3, 4, 4);
    let chart = svg(&dir.join("demo-loss.svg"));
    for name in BUILTINS.iter().chain(&["lion (examples/lion.opt)"]) {
        assert!(chart.contains(name), "the chart names {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_opt_file_is_trained_under_its_name_and_path_with_the_given_lr() {
    let dir = scratch("file");
    let file = example("signsgd.opt");
    let run = demo(
        &dir,
        &[
            "--opt", &file, "--lr", "0.002", "--epochs", "3", "--hidden", "16",
        ],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let t = table(&run.stdout);
    assert!(
        t.labels.contains(&format!("signsgd ({file})")),
        "{}",
        t.labels
    );
    assert!(t.hypers.ends_with("lr=0.002 momentum=0.9"), "{}", t.hypers);
    check_losses(&t, 3, 4, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_opt_file_exits_1_naming_it_before_any_training() {
    let dir = scratch("missing");
    let missing = dir.join("no-such.opt").display().to_string();
    let run = demo(&dir, &["--opt", &missing]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(&missing), "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(!dir.join("demo-loss.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_syntax_error_is_shown_with_file_line_column_and_a_caret() {
    let dir = scratch("syntax");
    let file = dir.join("bad.opt");
    std::fs::write(
        &file,
        "optimizer bad(lr = 0.1) {\n    param = param - lr * gard\n}\n",
    )
    .expect("the temp dir is writable");
    let run = demo(&dir, &["--opt", &file.display().to_string()]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!("--> {}:2:26", file.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("gard"), "{}", run.stderr);
    assert!(
        run.stderr.contains("\n  |                          ^^^^ "),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lr_for_an_optimizer_without_one_is_refused_naming_what_it_has() {
    let dir = scratch("no-lr");
    let file = dir.join("eta.opt");
    std::fs::write(
        &file,
        "optimizer eta(eta = 0.1) {\n    param = param - eta * grad\n}\n",
    )
    .expect("the temp dir is writable");
    let file = file.display().to_string();
    let run = demo(&dir, &["--opt", &file, "--lr", "0.1"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("`lr`") && run.stderr.contains("eta"),
        "{}",
        run.stderr
    );
    // Without --lr it trains with the file's own default.
    let run = demo(&dir, &["--opt", &file, "--epochs", "2", "--hidden", "8"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    check_losses(&table(&run.stdout), 2, 4, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_runs_print_the_same_table_and_draw_the_same_chart() {
    let dir = scratch("deterministic");
    let args = ["--builtins-only", "--epochs", "2", "--hidden", "8"];
    let first = demo(&dir, &args);
    let first_chart = svg(&dir.join("demo-loss.svg"));
    let second = demo(&dir, &args);
    let second_chart = svg(&dir.join("demo-loss.svg"));
    let untimed = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("time") && !l.starts_with("total"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(untimed(&first.stdout), untimed(&second.stdout));
    assert!(first.stdout.lines().any(|l| l.starts_with("time")));
    assert_eq!(first_chart, second_chart);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_or_huge_sizes_are_usage_errors() {
    let dir = scratch("zero");
    for (flag, value) in [("--epochs", "0"), ("--hidden", "100000000000")] {
        let run = demo(&dir, &[flag, value]);
        assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("expected a whole number from 1 to"),
            "{}",
            run.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_schedule_changes_the_losses_and_charts_the_learning_rate() {
    let dir = scratch("schedule");
    let args = |schedule: &'static str, out: &'static str| {
        [
            "--builtins-only",
            "--epochs",
            "5",
            "--hidden",
            "16",
            "--schedule",
            schedule,
            "--out",
            out,
        ]
    };
    let constant = demo(&dir, &args("constant", "constant.svg"));
    let warmup = demo(&dir, &args("warmup-cosine", "warmup.svg"));
    assert_eq!(constant.code, Some(0), "{}", constant.stderr);
    assert_eq!(warmup.code, Some(0), "{}", warmup.stderr);
    let (c, w) = (table(&constant.stdout), table(&warmup.stdout));
    // The warmup starts at a tenth of the lr: the losses differ from the constant run.
    assert_ne!(c.losses[1], w.losses[1]);
    assert!(svg(&dir.join("warmup.svg")).contains("learning rate"));
    assert!(!svg(&dir.join("constant.svg")).contains("learning rate"));
    let _ = std::fs::remove_dir_all(&dir);
}

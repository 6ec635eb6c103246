//! `optjit check` on hostile sources (tests/common/hostile.rs): every one within the text
//! limits is accepted or rejected with the error it should get, in a child process whose
//! peak memory stays under 500 MB. Each case's time and memory are printed (`cargo test
//! --release --test hostile -- --nocapture`); the README's limits table quotes them from a
//! release build.

// The command line and `optjit::bench`/`conformance` come with the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use common::hostile::{cases, Expect};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The bound on `optjit check`'s peak resident memory for any source within the limits.
const MAX_PEAK_BYTES: u64 = 500 << 20;

/// How a child `optjit check` ended.
struct Outcome {
    success: bool,
    stderr: String,
    /// Peak resident memory in bytes, where the platform reports it.
    peak_bytes: Option<u64>,
}

#[cfg(unix)]
// Waited for with `wait4`, which std's `Child` cannot do (it gives no resource usage).
#[allow(clippy::zombie_processes)]
fn run_check(path: &std::path::Path, stderr_path: &std::path::Path) -> Outcome {
    let child = Command::new(env!("CARGO_BIN_EXE_optjit"))
        .arg("check")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_path).expect("stderr file"))
        .spawn()
        .expect("the binary runs");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (`child` is never waited on or
    // killed after this); `status` and `usage` are valid for writes for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    // Linux reports `ru_maxrss` in kilobytes.
    let peak = u64::try_from(usage.ru_maxrss).expect("a size") * 1024;
    Outcome {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stderr: std::fs::read_to_string(stderr_path).expect("stderr read"),
        peak_bytes: cfg!(target_os = "linux").then_some(peak),
    }
}

#[cfg(not(unix))]
fn run_check(path: &std::path::Path, stderr_path: &std::path::Path) -> Outcome {
    let status = Command::new(env!("CARGO_BIN_EXE_optjit"))
        .arg("check")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_path).expect("stderr file"))
        .status()
        .expect("the binary runs");
    Outcome {
        success: status.success(),
        stderr: std::fs::read_to_string(stderr_path).expect("stderr read"),
        peak_bytes: None,
    }
}

#[test]
fn hostile_sources_are_accepted_or_rejected_within_the_memory_bound() {
    let dir = std::env::temp_dir().join(format!("optjit-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        assert!(case.source.len() <= optjit::text::limits::MAX_SOURCE_BYTES);
        let path = dir.join(format!("{}.opt", case.name));
        std::fs::write(&path, &case.source).unwrap();
        let start = Instant::now();
        let outcome = run_check(&path, &dir.join("stderr"));
        let seconds = start.elapsed().as_secs_f64();
        let peak_mb = outcome.peak_bytes.map(|b| b >> 20);
        eprintln!(
            "{:>16}: {:>7} bytes, {seconds:.2} s, peak {peak_mb:?} MB, {}",
            case.name,
            case.source.len(),
            if outcome.success {
                "accepted"
            } else {
                "rejected"
            }
        );
        let as_expected = match case.expect {
            Expect::Accepted => outcome.success,
            Expect::Rejected(text) => !outcome.success && outcome.stderr.contains(text),
        };
        if !as_expected {
            failures.push(format!(
                "{}: expected {:?}, stderr: {}",
                case.name,
                case.expect,
                outcome.stderr.chars().take(400).collect::<String>()
            ));
        }
        if outcome.peak_bytes.is_some_and(|b| b > MAX_PEAK_BYTES) {
            failures.push(format!("{}: peak memory {peak_mb:?} MB", case.name));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

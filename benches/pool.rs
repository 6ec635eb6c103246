//! Execution variants of one step: rayon's global pool against optjit's pinned pool, and the
//! flat store on transparent huge pages against 4 KiB pages, for Adam f32 through
//! `Optimizer::step` on two threads, at sizes from one tiny tensor (the fixed cost of a step)
//! to 2^26 elements and 10,000 tensors × 1,000 elements.
//!
//! The machine is shared and noisy, so the variants are measured in alternation: each round
//! times every variant for a fixed wall time, each going first in turn (A, B; B, A; …). Per
//! variant the table gives the 10th percentile of all its steps (the steps the noise spared)
//! and the median and range over rounds of its per-round median; then the median and range
//! of the per-round ratio to the first variant (below 1: faster than it). The tiny case is in
//! µs per step, the others in ns per element.
//!
//! Run with `cargo bench --bench pool` (rayon against pinned, both on huge pages; 31 rounds
//! of 100 ms per variant: about a minute and a half); `-- --rounds 9 --ms 300` changes both,
//! `-- --threads 4` the threads per step, `-- --cases tiny,2^17,many` picks cases,
//! `-- --pools pinned,rayon` the pools and `-- --pages huge,small` the page sizes (the
//! variants are every pool with every page size; the first is the baseline of the ratios).
//! The page comparison: `cargo bench --bench pool -- --pools rayon --pages small,huge
//! --cases 2^20,2^24,2^26`, on one thread (`--threads 1`) and two.

use ndarray::Array1;
use optjit::optim::Adam;
use optjit::runtime::PoolKind;
use optjit::{Optimizer, Param};
use std::time::{Duration, Instant};

/// One case: `tensors` tensors of `each` elements.
struct Case {
    /// Its name in `--cases`.
    key: &'static str,
    label: &'static str,
    tensors: usize,
    each: usize,
}

const CASES: [Case; 8] = [
    Case {
        key: "tiny",
        label: "1 × 1,000 (fixed cost)",
        tensors: 1,
        each: 1_000,
    },
    Case {
        key: "2^16",
        label: "2^16",
        tensors: 1,
        each: 1 << 16,
    },
    Case {
        key: "2^17",
        label: "2^17",
        tensors: 1,
        each: 1 << 17,
    },
    Case {
        key: "2^18",
        label: "2^18",
        tensors: 1,
        each: 1 << 18,
    },
    Case {
        key: "2^20",
        label: "2^20",
        tensors: 1,
        each: 1 << 20,
    },
    Case {
        key: "2^24",
        label: "2^24",
        tensors: 1,
        each: 1 << 24,
    },
    Case {
        key: "2^26",
        label: "2^26",
        tensors: 1,
        each: 1 << 26,
    },
    Case {
        key: "many",
        label: "10,000 × 1,000",
        tensors: 10_000,
        each: 1_000,
    },
];

/// How a step runs: its pool, and whether the flat store asks for huge pages.
#[derive(Clone, Copy)]
struct Variant {
    pool: PoolKind,
    huge: bool,
}

/// An Adam optimizer over `case` run as `variant`, gradients set, one step taken (the kernel
/// is compiled and the state allocated). Many tensors are kept from merging into one segment as
/// in the staggered layout of `optjit bench`: every other tensor is one step ahead, so
/// neighbours differ in Adam's per-step scalars and each tensor is a segment with its own
/// prologue.
fn optimizer(case: &Case, variant: Variant, threads: usize) -> Optimizer {
    let graph = Adam::default().graph().expect("Adam builds");
    let mut opt = Optimizer::new(&graph)
        .expect("Adam compiles")
        .with_threads(threads)
        .with_pool(variant.pool)
        .with_huge_pages(variant.huge);
    let g = opt.add_param_group(&[]).expect("a group");
    let values = Array1::from_shape_fn(case.each, |i| ((i % 1000) as f32 - 500.0) * 1e-3);
    let grad: Vec<f32> = (0..case.each)
        .map(|i| ((i % 997) as f32 - 498.0) * 1e-3)
        .collect();
    let handles: Vec<Param<f32>> = (0..case.tensors)
        .map(|t| {
            opt.add_param(g, &format!("p{t}"), &values)
                .expect("a param")
        })
        .collect();
    for h in handles.iter().step_by(2) {
        opt.set_grad(h, &grad).expect("same length");
    }
    opt.step().expect("a step");
    for h in &handles {
        opt.set_grad(h, &grad).expect("same length");
    }
    opt.step().expect("a step");
    opt
}

/// Median ns/element of steps repeated for `budget` (at least 5); every step's time is
/// added to `all`.
fn measure(opt: &mut Optimizer, n: usize, budget: Duration, all: &mut Vec<f64>) -> f64 {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 5 || started.elapsed() < budget {
        let t = Instant::now();
        opt.step().expect("a step");
        times.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    all.extend(&times);
    summary(times).0
}

/// Median, minimum and maximum.
fn summary(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// How much of the process's memory is on transparent huge pages, in KiB (Linux).
fn anon_huge_kib() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's CPU time (user + system, all threads) in clock ticks, from /proc (Linux).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let rounds = arg("--rounds").unwrap_or(31);
    let budget = Duration::from_millis(arg("--ms").unwrap_or(100) as u64);
    let threads = arg("--threads").unwrap_or(2);
    let list = |flag: &str| -> Vec<String> {
        std::env::args()
            .skip_while(|a| a != flag)
            .nth(1)
            .map(|list| list.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let pools: Vec<PoolKind> = match list("--pools") {
        names if names.is_empty() => vec![PoolKind::Rayon, PoolKind::Pinned],
        names => names.iter().map(|n| pool_kind(n)).collect(),
    };
    let pages: Vec<bool> = match list("--pages") {
        names if names.is_empty() => vec![true],
        names => names.iter().map(|n| huge_pages(n)).collect(),
    };
    let kinds: Vec<Variant> = pools
        .iter()
        .flat_map(|&pool| pages.iter().map(move |&huge| Variant { pool, huge }))
        .collect();
    // A variant's label: its pool, and its pages when more than one is measured.
    let label = |v: &Variant| match pages.len() {
        1 => format!("{:?}", v.pool),
        _ => format!(
            "{:?}, {} pages",
            v.pool,
            if v.huge { "huge" } else { "small" }
        ),
    };
    for &kind in &pools {
        println!(
            "{kind:?}: up to {} threads per step; workers' CPUs {:?}",
            kind.max_threads(),
            kind.worker_cpus()
        );
    }
    println!(
        "Adam f32 through Optimizer::step, {threads} threads, {rounds} rounds of {} ms per \
         variant; ns/element (µs/step for the tiny case): 10th percentile of all steps / \
         median (range) over rounds; ratio: per-round time over {}'s",
        budget.as_millis(),
        label(&kinds[0])
    );
    println!();
    let mut header = "| case |".to_string();
    let mut rule = "|---|".to_string();
    for (k, kind) in kinds.iter().enumerate() {
        header += &format!(" {} |", label(kind));
        rule += "--:|";
        if k > 0 {
            header += &format!(" {} / {} |", label(kind), label(&kinds[0]));
            rule += "--:|";
        }
    }
    println!("{header}\n{rule}");
    let only = list("--cases");
    for case in CASES
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.key == o))
    {
        let n = case.tensors * case.each;
        let mut opts: Vec<Optimizer> = kinds.iter().map(|&k| optimizer(case, k, threads)).collect();
        if let Some(kib) = anon_huge_kib() {
            eprintln!(
                "{}: {} MiB of the process on huge pages",
                case.label,
                kib / 1024
            );
        }
        let mut times = vec![Vec::new(); kinds.len()];
        let mut steps = vec![Vec::new(); kinds.len()];
        for round in 0..rounds {
            // Each variant goes first in turn.
            for j in 0..kinds.len() {
                let k = (round + j) % kinds.len();
                times[k].push(measure(&mut opts[k], n, budget, &mut steps[k]));
            }
        }
        // A tiny step is reported in µs per step: its fixed cost is the point.
        let scale = if n < 10_000 { n as f64 / 1e3 } else { 1.0 };
        let mut row = format!("| {} |", case.label);
        for k in 0..kinds.len() {
            let (m, lo, hi) = summary(times[k].iter().map(|t| t * scale).collect());
            steps[k].sort_by(f64::total_cmp);
            let p10 = steps[k][steps[k].len() / 10] * scale;
            row += &format!(" {p10:.3} / {m:.3} ({lo:.3}–{hi:.3}) |");
            if k > 0 {
                let ratios = times[k].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
                let (m, lo, hi) = summary(ratios);
                row += &format!(" {m:.2} ({lo:.2}–{hi:.2}) |");
            }
        }
        println!("{row}");
    }
    if only.is_empty() {
        idle_cpu(threads);
    }
}

/// A pool by its name in `--pools`.
fn pool_kind(name: &str) -> PoolKind {
    match name {
        "rayon" => PoolKind::Rayon,
        "pinned" => PoolKind::Pinned,
        _ => panic!("unknown pool {name}"),
    }
}

/// Whether a page size named in `--pages` is the huge one.
fn huge_pages(name: &str) -> bool {
    match name {
        "huge" => true,
        "small" => false,
        _ => panic!("unknown page size {name} (huge or small)"),
    }
}

/// CPU time the process burns while idle right after a burst of steps on each pool: the
/// pools' workers spin briefly after their last batch and then park, so a second of idling
/// must cost (nearly) no CPU time.
fn idle_cpu(threads: usize) {
    let case = &CASES[3];
    for pool in [PoolKind::Rayon, PoolKind::Pinned] {
        let variant = Variant { pool, huge: true };
        let mut opt = optimizer(case, variant, threads);
        for _ in 0..100 {
            opt.step().expect("a step");
        }
        let (before, t) = (cpu_ticks(), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let (after, wall) = (cpu_ticks(), t.elapsed());
        if let (Some(a), Some(b)) = (before, after) {
            println!(
                "{pool:?}: {} clock ticks of CPU time in {:.2} s idle after 100 steps",
                b - a,
                wall.as_secs_f64()
            );
        }
    }
}

//! Adam f32 step time per element at 2^20 (in cache) and 2^26 (DRAM), one thread:
//! the JIT at each unroll factor, the reference interpreter, the eager evaluator, and a
//! handwritten Rust loop of the same algorithm compiled by rustc in this benchmark.
//! Also the cold compile time of one Adam kernel.
//!
//! Run with `cargo bench --bench adam_step` (add `-- 20` to run only 2^20).

use optjit::optim::Adam;
use optjit::{DType, Executor, Jit, JitOptions, ParamState, SlotValue, Stepper};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Median time of `runs` calls after one warm-up call.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// PyTorch's Adam (single tensor) as a plain Rust loop: the same operations in the same order
/// as the built-in, scalars computed in f64 once per step.
#[allow(clippy::too_many_arguments)]
fn handwritten_adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64) {
    let (lr, b1, b2, eps, wd) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64, 0.0f64);
    let bc1 = 1.0 - b1.powf(step as f64);
    let bc2 = 1.0 - b2.powf(step as f64);
    let (wd, w1, b2f, w2) = (wd as f32, (1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32);
    let (bc2_sqrt, eps, step_size) = (bc2.sqrt() as f32, eps as f32, (lr / bc1) as f32);
    for i in 0..p.len() {
        let g = g[i] + wd * p[i];
        let mi = m[i] + w1 * (g - m[i]);
        let vi = b2f * v[i] + w2 * g * g;
        let denom = vi.sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

fn ns_per_elem(t: Duration, n: usize) -> f64 {
    t.as_secs_f64() * 1e9 / n as f64
}

fn main() {
    let only_small = std::env::args().any(|a| a == "20");
    let graph = Adam::default().graph().unwrap();
    let jit = Jit::new().unwrap();

    // Cold compile: a fresh JIT each time, so nothing is cached.
    let mut compile: Vec<Duration> = (0..20)
        .map(|_| {
            let jit = Jit::new().unwrap();
            let program = optjit::passes::compile(&graph).unwrap();
            jit.compile(&program, DType::F32).unwrap();
            jit.stats().compile_time
        })
        .collect();
    compile.sort();
    println!(
        "compile, Adam f32 kernel (cold, median of 20): {:.3} ms",
        compile[10].as_secs_f64() * 1e3
    );

    let sizes: &[u32] = if only_small { &[20] } else { &[20, 26] };
    for &log in sizes {
        let n = 1usize << log;
        let runs = if log <= 20 { 51 } else { 7 };
        let grad: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
        println!("\nAdam f32, n = 2^{log}, 1 thread (median of {runs}):");
        for unroll in [1, 2, 4, 8] {
            let kernel_stepper = Stepper::new(&graph).unwrap().with_jit(jit.clone());
            let program = kernel_stepper.program().clone();
            jit.compile_with(&program, DType::F32, JitOptions { unroll })
                .unwrap();
            // Stepper uses the default unroll; time the kernel directly for the others.
            let kernel = jit
                .compile_with(&program, DType::F32, JitOptions { unroll })
                .unwrap();
            let mut p = vec![1.0f32; n];
            let mut state: ParamState<f32> = kernel_stepper.init_state(n);
            let mut scalars = vec![0.0f32; program.stage.n_scalars as usize];
            let mut values = Vec::new();
            program.eval_prologue(&[1e-3, 0.9, 0.999, 1e-8, 0.0], 1, |_| 0.0, &mut values);
            for (s, &k) in scalars.iter_mut().zip(&program.prologue.kernel_scalars) {
                *s = values[k as usize] as f32;
            }
            let t = median(runs, || {
                let state: Vec<&mut [f32]> = state
                    .slots
                    .iter_mut()
                    .map(|s| match s {
                        SlotValue::Buffer(b) => b.as_mut_slice(),
                        SlotValue::Scalar(_) => unreachable!(),
                    })
                    .collect();
                let mut seg = [optjit::Segment {
                    param: &mut p,
                    grad: &grad,
                    state,
                    scalars: &scalars,
                }];
                kernel.run(&mut seg).unwrap();
            });
            println!(
                "  jit, unroll {unroll}      {:>8.3} ns/element",
                ns_per_elem(t, n)
            );
        }
        let stepper = Stepper::new(&graph).unwrap().with_jit(jit.clone());
        let mut p = vec![1.0f32; n];
        let mut state = stepper.init_state(n);
        let t = median(runs, || stepper.step(&mut p, &grad, &mut state).unwrap());
        println!(
            "  jit via Stepper     {:>8.3} ns/element",
            ns_per_elem(t, n)
        );

        let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let mut step = 0;
        let t = median(runs, || {
            step += 1;
            handwritten_adam(black_box(&mut p), black_box(&grad), &mut m, &mut v, step);
        });
        println!(
            "  handwritten rustc   {:>8.3} ns/element",
            ns_per_elem(t, n)
        );

        for executor in [Executor::Reference, Executor::Eager] {
            let stepper = Stepper::new(&graph).unwrap().with_executor(executor);
            let mut p = vec![1.0f32; n];
            let mut state = stepper.init_state(n);
            let t = median(3, || stepper.step(&mut p, &grad, &mut state).unwrap());
            println!(
                "  {:<19} {:>8.3} ns/element",
                format!("{executor:?}").to_lowercase(),
                ns_per_elem(t, n)
            );
        }
    }
}

//! Adam f32 step time per element at 2^20 (in cache) and 2^26 (DRAM), one thread:
//! the JIT at each unroll factor, the reference interpreter, the eager evaluator, the chunked
//! interpreter, and a handwritten Rust loop of the same algorithm compiled by rustc in this
//! benchmark.
//! Also the cold compile time of one Adam kernel.
//!
//! Run with `cargo bench --bench adam_step` (add `-- 20` to run only 2^20).

use optjit::optim::Adam;
use optjit::{DType, Executor, Jit, JitOptions, ParamState, Segment, Stepper};
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
    let program = optjit::passes::compile(&graph).unwrap();
    for unroll in [1, 2, 4, 8] {
        let mut compile: Vec<Duration> = (0..21)
            .map(|_| {
                let jit = Jit::new().unwrap();
                jit.compile_with(&program, DType::F32, JitOptions { unroll })
                    .unwrap();
                jit.stats().compile_time
            })
            .collect();
        compile.sort();
        let ms = compile[10].as_secs_f64() * 1e3;
        println!("compile, Adam f32 kernel, unroll {unroll} (cold, median of 21): {ms:.3} ms");
    }
    let start = Instant::now();
    for _ in 0..1000 {
        jit.compile(&program, DType::F32).unwrap();
    }
    println!(
        "compile, cache hit: {:.2} µs",
        start.elapsed().as_secs_f64() * 1e3
    );

    // The unroll factor: every built-in shape at an L2-resident size, where loop overhead
    // and latency show (at DRAM sizes every factor runs at memory speed).
    for name in ["sgd", "sgd_momentum", "adam"] {
        unroll_sweep(&jit, name, 1 << 16, 401);
    }

    let sizes: &[u32] = if only_small { &[20] } else { &[20, 26] };
    for &log in sizes {
        let n = 1usize << log;
        let rounds = if log <= 20 { 41 } else { 9 };
        let grad: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
        let program = optjit::passes::compile(&graph).unwrap();
        let scalars = scalar_block(&program, 1);

        // Fast implementations, timed in interleaved rounds so that drift hits all alike.
        let mut names: Vec<String> = Vec::new();
        let mut runs: Vec<Box<dyn FnMut()>> = Vec::new();
        for unroll in [1, 2, 4, 8] {
            let kernel = jit
                .compile_with(&program, DType::F32, JitOptions { unroll })
                .unwrap();
            let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            let (grad, scalars) = (grad.clone(), scalars.clone());
            names.push(format!("jit, unroll {unroll}"));
            runs.push(Box::new(move || {
                let mut state = [m.as_mut_slice().into(), v.as_mut_slice().into()];
                let mut seg = [Segment {
                    param: (&mut p).into(),
                    grad: (&grad).into(),
                    state: &mut state,
                    scalars: &scalars,
                    partials: &mut [],
                    noise: optjit::Noise::NONE,
                }];
                kernel.run(&mut seg).unwrap();
            }));
        }
        {
            let stepper = Stepper::new(&graph).unwrap().with_jit(jit.clone());
            let mut p = vec![1.0f32; n];
            let mut state: ParamState<f32> = stepper.init_state(n).unwrap();
            let grad = grad.clone();
            names.push("jit via Stepper".into());
            runs.push(Box::new(move || {
                stepper.step(&mut p, &grad, &mut state).unwrap();
            }));
        }
        {
            let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            let grad = grad.clone();
            let mut step = 0;
            names.push("handwritten rustc".into());
            runs.push(Box::new(move || {
                step += 1;
                handwritten_adam(black_box(&mut p), black_box(&grad), &mut m, &mut v, step);
            }));
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runs.len()];
        for round in 0..=rounds {
            for (run, t) in runs.iter_mut().zip(&mut times) {
                let start = Instant::now();
                run();
                if round > 0 {
                    t.push(start.elapsed());
                }
            }
        }
        println!("\nAdam f32, n = 2^{log}, 1 thread (median of {rounds} interleaved rounds):");
        for (name, mut t) in names.iter().zip(times) {
            t.sort();
            println!(
                "  {name:<19} {:>8.3} ns/element",
                ns_per_elem(t[t.len() / 2], n)
            );
        }

        for executor in [Executor::Reference, Executor::Eager, Executor::Chunked] {
            let stepper = Stepper::new(&graph).unwrap().with_executor(executor);
            let mut p = vec![1.0f32; n];
            let mut state = stepper.init_state(n).unwrap();
            let t = median(3, || {
                stepper.step(&mut p, &grad, &mut state).unwrap();
            });
            let name = format!("{executor:?}").to_lowercase();
            println!("  {name:<19} {:>8.3} ns/element", ns_per_elem(t, n));
        }
    }
}

/// Times the kernel of built-in `name` at every unroll factor in interleaved rounds.
fn unroll_sweep(jit: &Jit, name: &str, n: usize, rounds: usize) {
    let program = optjit::passes::compile(&optjit::optim::by_name(name).unwrap()).unwrap();
    let grad: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
    let scalars = scalar_block(&program, 1);
    let slots = program.stage.n_streams as usize - 2;
    let mut times = [const { Vec::new() }; 4];
    let kernels: Vec<_> = [1, 2, 4, 8]
        .iter()
        .map(|&unroll| {
            jit.compile_with(&program, DType::F32, JitOptions { unroll })
                .unwrap()
        })
        .collect();
    let mut p = vec![1.0f32; n];
    let mut state = vec![vec![0.0f32; n]; slots];
    for round in 0..=rounds {
        for (kernel, t) in kernels.iter().zip(&mut times) {
            let mut bufs: Vec<optjit::Elems<'_>> = state.iter_mut().map(|s| s.into()).collect();
            let mut seg = [Segment {
                param: (&mut p).into(),
                grad: (&grad).into(),
                state: &mut bufs,
                scalars: &scalars,
                partials: &mut [],
                noise: optjit::Noise::NONE,
            }];
            let start = Instant::now();
            kernel.run(&mut seg).unwrap();
            if round > 0 {
                t.push(start.elapsed());
            }
        }
    }
    let cells: Vec<String> = times
        .iter_mut()
        .zip([1, 2, 4, 8])
        .map(|(t, u)| {
            t.sort();
            format!("unroll {u}: {:.3}", ns_per_elem(t[t.len() / 2], n))
        })
        .collect();
    println!("{name:<13} f32, n = {n}, ns/element: {}", cells.join(", "));
}

/// The scalar block of `program` at `step` with default hyperparameters.
fn scalar_block(program: &optjit::Program, step: u64) -> Vec<f32> {
    let hypers: Vec<f64> = program.hypers.iter().map(|h| h.default).collect();
    let mut values = Vec::new();
    program.eval_prologue(&hypers, step, |_| 0.0, &mut values);
    program
        .prologue
        .kernel_scalars
        .iter()
        .map(|&k| values[k as usize] as f32)
        .collect()
}

//! Quickstart: define Adam with the builder, step 10M parameters, and compare the JIT with
//! the reference interpreter and the eager (op-at-a-time) evaluator.
//!
//! Run with `cargo run --release --example quickstart`.

use optjit::{Builder, Executor, Stepper};
use std::time::Instant;

fn main() -> optjit::Result<()> {
    // Adam, written like its paper.
    let b = Builder::new("adam");
    let lr = b.hyper("lr", 1e-3);
    let (b1, b2, eps) = (
        b.hyper("b1", 0.9),
        b.hyper("b2", 0.999),
        b.hyper("eps", 1e-8),
    );
    let g = b.grad();
    let m = b1 * b.state("m", 0.0) + (1.0 - b1) * g;
    let v = b2 * b.state("v", 0.0) + (1.0 - b2) * g * g;
    b.set_state("m", m)?;
    b.set_state("v", v)?;
    let m_hat = m / (1.0 - b1.pow(b.step()));
    let v_hat = v / (1.0 - b2.pow(b.step()));
    b.set_param(b.param() - lr * m_hat / (v_hat.sqrt() + eps));
    let graph = b.finish()?;

    let stepper = Stepper::new(&graph)?;
    println!("{}", stepper.program().display(optjit::DType::F32));

    let n = 10_000_000;
    let grad: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
    println!("Adam, f32, {n} parameters, one thread:");
    let mut reference_param = None;
    for (executor, steps) in [
        (Executor::Jit, 20),
        (Executor::Reference, 2),
        (Executor::Eager, 2),
    ] {
        let stepper = Stepper::new(&graph)?.with_executor(executor);
        let mut param = vec![1.0f32; n];
        let mut state = stepper.init_state(n).unwrap();
        stepper.step(&mut param, &grad, &mut state)?; // warm-up (and JIT compile)
        let start = Instant::now();
        for _ in 0..steps {
            stepper.step(&mut param, &grad, &mut state)?;
        }
        let per_step = start.elapsed() / steps;
        println!(
            "  {:<10} {:>10.2} ms/step  {:>6.3} ns/element",
            format!("{executor:?}"),
            per_step.as_secs_f64() * 1e3,
            per_step.as_secs_f64() * 1e9 / n as f64
        );
        if executor == Executor::Jit {
            // The interpreters run fewer steps; keep a JIT result after 3 steps to compare.
            let mut p = vec![1.0f32; n];
            let mut s = stepper.init_state(n).unwrap();
            for _ in 0..3 {
                stepper.step(&mut p, &grad, &mut s)?;
            }
            reference_param = Some(p);
        } else {
            let jit = reference_param.as_ref().expect("the JIT ran first");
            let same = jit
                .iter()
                .zip(&param)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            println!(
                "  {:<10} bit-identical to the JIT after 3 steps: {same}",
                ""
            );
        }
    }
    Ok(())
}

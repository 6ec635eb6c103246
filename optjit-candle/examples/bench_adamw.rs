//! Step time of candle's `AdamW` against optjit-candle's AdamW, the two alternated round by
//! round in one run (so drift and neighbours' load hit both alike), with the ratio printed
//! per round and their median last.
//!
//! Two models: the example MLP's vars (64×64, 64, 64×10, 10: 4,810 elements in 4 tensors)
//! and many small tensors (1,000 × 10,000 elements). Each side steps its own copy of the
//! vars with the same gradients; optjit's effective bandwidth (28 bytes an element: param,
//! m and v read and written, the gradient read) is printed as a sanity check of the
//! absolute figures.
//!
//! Run with `cargo run --release -p optjit-candle --example bench_adamw [-- ROUNDS]`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use optjit_candle::{Config, OptjitOptimizer};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Vars of `shapes` (each value a function of its index) and a gradient for each.
fn vars_and_grads(shapes: &[Vec<usize>]) -> Result<(Vec<Var>, Vec<Var>, GradStore)> {
    let dummy = Var::zeros((), DType::F32, &Device::Cpu)?;
    let mut grads = dummy.as_tensor().affine(1.0, 0.0)?.backward()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + k) % 101) as f32 / 101.0 - 0.5)
            .collect();
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
        let (va, vb) = (Var::from_tensor(&t)?, Var::from_tensor(&t.copy()?)?);
        let g = ((t.sin()? * 0.1)? + 0.01)?;
        grads.insert(va.as_tensor(), g.clone());
        grads.insert(vb.as_tensor(), g);
        a.push(va);
        b.push(vb);
    }
    Ok((a, b, grads))
}

/// The median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times `steps` steps of `opt`, returning seconds per step.
fn time<O: Optimizer>(opt: &mut O, grads: &GradStore, steps: usize) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..steps {
        opt.step(grads)?;
    }
    Ok(start.elapsed().as_secs_f64() / steps as f64)
}

fn bench(name: &str, shapes: &[Vec<usize>], rounds: usize, steps: usize) -> Result<f64> {
    let (theirs, ours, grads) = vars_and_grads(shapes)?;
    let elements: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let params = ParamsAdamW {
        lr: 1e-4,
        ..ParamsAdamW::default()
    };
    let mut candle_opt = candle_nn::AdamW::new(theirs, params.clone())?;
    let mut optjit_opt = OptjitOptimizer::new(ours, Config::adamw(&params)?)?;
    // Warm up: the JIT compiles at the first step, candle's allocator settles.
    time(&mut candle_opt, &grads, 1)?;
    time(&mut optjit_opt, &grads, 1)?;
    println!(
        "\n{name}: {} tensors, {elements} elements, {steps} steps a side a round",
        shapes.len()
    );
    println!("round  candle AdamW  optjit AdamW  ratio  optjit GB/s");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Alternate which side goes first.
        let (c, o) = if round % 2 == 0 {
            let c = time(&mut candle_opt, &grads, steps)?;
            (c, time(&mut optjit_opt, &grads, steps)?)
        } else {
            let o = time(&mut optjit_opt, &grads, steps)?;
            (time(&mut candle_opt, &grads, steps)?, o)
        };
        let gbs = 28.0 * elements as f64 / o / 1e9;
        println!(
            "{round:>5}  {:>9.1} µs  {:>9.1} µs  {:>5.2}  {gbs:>11.1}",
            c * 1e6,
            o * 1e6,
            c / o
        );
        ratios.push(c / o);
    }
    let m = median(ratios);
    println!("median ratio (candle / optjit): {m:.2}");
    Ok(m)
}

fn main() -> Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(r) => r.parse()?,
        None => 7,
    };
    let mlp = [vec![64, 64], vec![64], vec![64, 10], vec![10]];
    let small = bench("the example MLP", &mlp, rounds, 2000)?;
    let many: Vec<Vec<usize>> = (0..1000).map(|_| vec![10_000]).collect();
    let big = bench("many small tensors", &many, rounds, 5)?;
    println!("\ntarget >= 3x: MLP {small:.2}x, 1000 x 10000 {big:.2}x");
    Ok(())
}

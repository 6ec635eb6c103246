//! A custom optimizer written twice — with the Rust builder and as text — checked to be the
//! same graph and the same compiled program, then trained side by side on a small problem.
//!
//! The optimizer is AdaBelief (Zhuang et al., NeurIPS 2020): Adam whose second moment tracks
//! how far the gradient strays from its mean, `(g − m)²`, instead of `g²`. The text lives in
//! `examples/adabelief.opt`; `optjit check examples/adabelief.opt` prints its program.
//!
//! Run with `cargo run --example custom_optimizer`.

use ndarray::Array1;
use optjit::{passes, text, Builder, Graph, Optimizer};

/// AdaBelief with the builder, line for line the statements of `adabelief.opt`.
fn adabelief() -> optjit::Result<Graph> {
    let b = Builder::new("adabelief");
    let lr = b.hyper("lr", 1e-3);
    let b1 = b.hyper("b1", 0.9);
    let b2 = b.hyper("b2", 0.999);
    let eps = b.hyper("eps", 1e-16);
    let weight_decay = b.hyper("weight_decay", 0.0);
    let m = b.state("m", 0.0);
    let s = b.state("s", 0.0);

    let param = b.param() * (1.0 - lr * weight_decay);
    let m = b1 * m + (1.0 - b1) * b.grad();
    let s = b2 * s + (1.0 - b2) * (b.grad() - m) * (b.grad() - m) + eps;
    let m_hat = m / (1.0 - b1.pow(b.step()));
    let s_hat = s / (1.0 - b2.pow(b.step()));
    b.set_state("m", m)?;
    b.set_state("s", s)?;
    b.set_param(param - lr * m_hat / (s_hat.sqrt() + eps));
    b.finish()
}

/// Builds AdaBelief both ways, checks that they are one graph and one program, and trains
/// both side by side (also run by `tests/text.rs`).
pub fn main() -> optjit::Result<()> {
    let from_rust = adabelief()?;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/adabelief.opt");
    let from_text = text::parse_file(path)?;

    // The same graph node for node, hence the same program and the same kernels.
    assert_eq!(from_rust, from_text);
    let program = passes::compile(&from_text)?;
    assert_eq!(passes::compile(&from_rust)?, program);
    println!("{}", program.display(optjit::DType::F32));

    // Both minimise f(w) = Σ (w − target)² with identical steps.
    let target = Array1::linspace(-1.0f32, 1.0, 64);
    let mut runs = Vec::new();
    for graph in [&from_rust, &from_text] {
        let mut opt = Optimizer::new(graph)?;
        opt.add_param_group(&[("lr", 0.05)])?;
        let w = opt.add_param(0, "w", &Array1::<f32>::zeros(64))?;
        for _ in 0..200 {
            let grad: Vec<f32> = opt
                .param(&w)?
                .iter()
                .zip(&target)
                .map(|(w, t)| 2.0 * (w - t))
                .collect();
            opt.set_grad(&w, &grad)?;
            opt.step()?;
        }
        let loss: f32 = opt
            .param(&w)?
            .iter()
            .zip(&target)
            .map(|(w, t)| (w - t) * (w - t))
            .sum();
        runs.push((opt.param(&w)?.to_vec(), loss));
    }
    assert_eq!(runs[0], runs[1], "builder and text step identically");
    println!(
        "loss after 200 steps: {:.3e} (builder and text identical)",
        runs[0].1
    );
    assert!(runs[0].1 < 1e-2, "AdaBelief minimises the quadratic");
    Ok(())
}

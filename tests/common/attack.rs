//! Helpers of the attack tests of skip conditions, AMP and group state
//! (`tests/skip_attacks.rs`, `tests/group_state_attacks.rs`): a two-group, two-dtype model
//! and an optimizer with every kind of state and a skip condition.

// Each test crate uses its own subset.
#![allow(dead_code)]

use ndarray::Array1;
use optjit::{text, Executor, Graph, Optimizer, Param};

pub const EXECUTORS: [Executor; 4] = [
    Executor::Jit,
    Executor::Reference,
    Executor::Chunked,
    Executor::Eager,
];

pub fn parse(source: &str) -> Graph {
    text::parse(source).unwrap_or_else(|e| panic!("{e}\n{source}"))
}

/// Two groups, each with an f32 and an f64 tensor (lengths around the vector width).
pub struct Model {
    pub opt: Optimizer,
    pub p32: Vec<Param<f32>>,
    pub p64: Vec<Param<f64>>,
}

pub fn model(graph: &Graph, executor: Executor, threads: usize) -> Model {
    let mut opt = Optimizer::new(graph)
        .unwrap()
        .with_executor(executor)
        .with_threads(threads);
    let (mut p32, mut p64) = (Vec::new(), Vec::new());
    for g in 0..2 {
        opt.add_param_group(&[]).unwrap();
        let n32 = [1usize, 9000][g];
        let n64 = [17usize, 37][g];
        let v32: Array1<f32> = (0..n32).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let v64: Array1<f64> = (0..n64).map(|i| (i % 5) as f64 * 0.5 - 1.0).collect();
        p32.push(opt.add_param(g, &format!("a{g}"), &v32).unwrap());
        p64.push(opt.add_param(g, &format!("b{g}"), &v64).unwrap());
    }
    Model { opt, p32, p64 }
}

impl Model {
    /// Gradients for every tensor; `poison` replaces one element of tensor `b1` (f64, group 1).
    pub fn set_grads(&mut self, scale: f64, poison: Option<f64>) {
        for h in &self.p32 {
            let n = self.opt.param(h).unwrap().len();
            let g: Vec<f32> = (0..n)
                .map(|i| ((i % 11) as f32 - 5.0) * scale as f32)
                .collect();
            self.opt.set_grad(h, &g).unwrap();
        }
        for (k, h) in self.p64.iter().enumerate() {
            let n = self.opt.param(h).unwrap().len();
            let mut g: Vec<f64> = (0..n).map(|i| ((i % 3) as f64 - 1.0) * scale).collect();
            if k == 1 {
                if let Some(v) = poison {
                    g[n / 2] = v;
                }
            }
            self.opt.set_grad(h, &g).unwrap();
        }
    }

    /// Every parameter's bits, then the state dict (state, step counts, group state, hypers).
    pub fn snapshot(&self) -> (Vec<Vec<u64>>, Vec<u8>) {
        let mut bits: Vec<Vec<u64>> = self
            .p32
            .iter()
            .map(|h| {
                let p = self.opt.param(h).unwrap();
                p.iter().map(|x| u64::from(x.to_bits())).collect()
            })
            .collect();
        bits.extend(self.p64.iter().map(|h| {
            let p = self.opt.param(h).unwrap();
            p.iter().map(|x| x.to_bits()).collect()
        }));
        (bits, self.opt.state_dict().to_bytes().unwrap())
    }
}

/// An optimizer with every kind of state, whose step is skipped when `CONDITION` holds.
pub const EVERY_STATE: &str = "optimizer every(lr = 0.01, limit = 100) {
    state m = 0
    scalar state s = 0
    group state n = 0
    m = 0.9 * m + grad
    s = s + 1
    n = n + 1
    param = param - lr * n * m
    skip if CONDITION
}";

pub fn every_state(condition: &str) -> Graph {
    parse(&EVERY_STATE.replace("CONDITION", condition))
}

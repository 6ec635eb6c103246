//! Trains a small MLP (64 → 64 → 10, ReLU, softmax cross-entropy) on the UCI handwritten
//! digits (data/digits.csv, see data/README.md) with SGD-momentum, Adam, AdamW and Lion,
//! printing the training loss per epoch and the test accuracy.
//!
//! Forward and backward passes are written by hand with ndarray (in `examples/common`, shared
//! with `train_mlp_bf16`); the optimizer owns the weights and gradients. Midway through the
//! Adam run the optimizer is saved to a checkpoint, a fresh optimizer is built from the saved
//! weights and the checkpoint, and training goes on: the example asserts that the result is
//! bit-identical to the uninterrupted run.
//!
//! Last, the full loop: AdamW with global-norm clipping, each batch's gradient accumulated
//! over two micro-batches (the mean, divided in the step), a warmup + cosine learning rate
//! (PyTorch's `LinearLR` then `CosineAnnealingLR`, via `SequentialLR`), and a checkpoint
//! that carries the scheduler and the accumulation: resumed, it is bit-identical too.
//!
//! Run with `cargo run --release --example train_mlp`.

mod common;

use common::{Data, Weights, BATCH, TRAIN};
use ndarray::{Array2, ArrayView1, ArrayView2};
use optjit::optim::{accumulate, clip_grad_norm, Adam, AdamW, Lion, Sgd};
use optjit::runtime::{GradAccumulation, StateDict};
use optjit::schedule::{CosineAnnealingLR, LinearLR, Scheduler};
use optjit::{Graph, Optimizer, Param};

const EPOCHS: usize = 12;

struct Mlp {
    w1: Param<f32>,
    b1: Param<f32>,
    w2: Param<f32>,
    b2: Param<f32>,
}

/// An optimizer running `graph` over freshly initialised (or given) weights.
fn build(graph: &Graph, weights: Option<&[Vec<f32>]>) -> (Optimizer, Mlp) {
    let mut opt = Optimizer::new(graph).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let [w1, b1, w2, b2] = match weights {
        None => common::initial_weights(),
        Some(w) => std::array::from_fn(|k| {
            Array2::from_shape_vec(common::SHAPES[k], w[k].clone()).unwrap()
        }),
    };
    let mlp = Mlp {
        w1: opt.add_param(g, "w1", &w1).unwrap(),
        b1: opt.add_param(g, "b1", &b1.row(0)).unwrap(),
        w2: opt.add_param(g, "w2", &w2).unwrap(),
        b2: opt.add_param(g, "b2", &b2.row(0)).unwrap(),
    };
    (opt, mlp)
}

fn weights(opt: &Optimizer, m: &Mlp) -> Vec<Vec<f32>> {
    [&m.w1, &m.b1, &m.w2, &m.b2]
        .iter()
        .map(|h| opt.param(h).unwrap().to_vec())
        .collect()
}

fn matrix<'a>(opt: &'a Optimizer, h: &Param<f32>) -> ArrayView2<'a, f32> {
    opt.param_view(h).unwrap().into_dimensionality().unwrap()
}

fn vector<'a>(opt: &'a Optimizer, h: &Param<f32>) -> ArrayView1<'a, f32> {
    opt.param_view(h).unwrap().into_dimensionality().unwrap()
}

/// The MLP's weights as the optimizer stores them.
fn view<'a>(opt: &'a Optimizer, m: &Mlp) -> Weights<'a> {
    Weights {
        w1: matrix(opt, &m.w1),
        b1: vector(opt, &m.b1),
        w2: matrix(opt, &m.w2),
        b2: vector(opt, &m.b2),
    }
}

/// What drives the optimizer in the full loop besides its steps: gradient accumulation over
/// `micro` micro-batches per batch, and a scheduler stepped after each optimizer step.
struct Driver {
    acc: GradAccumulation,
    sched: Scheduler,
    micro: usize,
}

/// One epoch of mini-batch training; returns the mean training loss.
fn epoch(opt: &mut Optimizer, m: &Mlp, data: &Data, e: usize) -> f32 {
    epoch_with(opt, m, data, e, None)
}

/// [`epoch`], each batch split into micro-batches whose gradients `driver` accumulates.
fn epoch_with(
    opt: &mut Optimizer,
    m: &Mlp,
    data: &Data,
    e: usize,
    mut driver: Option<&mut Driver>,
) -> f32 {
    let order = common::epoch_order(e);
    let mut total = 0.0;
    for batch in order.chunks(BATCH) {
        let parts = driver.as_ref().map_or(1, |d| d.micro);
        if driver.is_none() {
            opt.zero_grad();
        }
        for part in batch.chunks(batch.len().div_ceil(parts)) {
            total += backward(opt, m, data, part);
            if let Some(d) = driver.as_deref_mut() {
                if d.acc.micro_step(opt).unwrap().is_some() {
                    d.sched.step(opt).unwrap();
                }
            }
        }
        if driver.is_none() {
            opt.step().unwrap();
        }
    }
    total / TRAIN as f32
}

/// Forward and backward over the samples `batch`: adds the gradient of their mean loss to
/// the optimizer's gradients; returns their summed loss.
fn backward(opt: &mut Optimizer, m: &Mlp, data: &Data, batch: &[usize]) -> f32 {
    let (total, g) = common::backward(&view(opt, m), data, batch);
    let (_, mut grads) = opt.split::<f32>();
    let mut add = |h: &Param<f32>, g: ndarray::ArrayD<f32>| {
        grads.view_mut(h).unwrap().scaled_add(1.0, &g);
    };
    add(&m.w2, g.w2.into_dyn());
    add(&m.b2, g.b2.into_dyn());
    add(&m.w1, g.w1.into_dyn());
    add(&m.b1, g.b1.into_dyn());
    total
}

fn accuracy(opt: &Optimizer, m: &Mlp, data: &Data) -> f32 {
    common::accuracy(&view(opt, m), data)
}

/// The full loop's optimizer and driver: AdamW, clipped to a global 2-norm of 1, gradients
/// averaged over 2 micro-batches, lr warmed up over 20 steps then cosine-annealed.
fn full_loop(weights: Option<&[Vec<f32>]>) -> (Optimizer, Mlp, Driver) {
    let adamw = AdamW {
        lr: 3e-3,
        weight_decay: 1e-2,
        ..AdamW::default()
    };
    let graph = accumulate(&clip_grad_norm(&adamw.graph().unwrap(), 2.0).unwrap()).unwrap();
    let (mut opt, mlp) = build(&graph, weights);
    let steps = EPOCHS as i64 * TRAIN.div_ceil(BATCH) as i64;
    let warmup = LinearLR {
        start_factor: 0.05,
        end_factor: 1.0,
        total_iters: 20,
    }
    .build(&mut opt)
    .unwrap();
    let cosine = CosineAnnealingLR {
        t_max: steps - 20,
        eta_min: 1e-5,
    }
    .build(&mut opt)
    .unwrap();
    let sched = Scheduler::sequential(&mut opt, vec![warmup, cosine], &[20]).unwrap();
    let driver = Driver {
        acc: GradAccumulation::new(2, true).unwrap(),
        sched,
        micro: 2,
    };
    (opt, mlp, driver)
}

fn main() {
    let data = common::load_digits();
    println!(
        "digits: {} images, {TRAIN} for training, {} for testing",
        data.y.len(),
        data.y.len() - TRAIN
    );
    let runs: Vec<(&str, Graph)> = vec![
        (
            "SGD-momentum",
            Sgd {
                lr: 0.05,
                momentum: 0.9,
                ..Sgd::default()
            }
            .graph()
            .unwrap(),
        ),
        (
            "Adam",
            Adam {
                lr: 3e-3,
                ..Adam::default()
            }
            .graph()
            .unwrap(),
        ),
        (
            "AdamW",
            AdamW {
                lr: 3e-3,
                weight_decay: 1e-2,
                ..AdamW::default()
            }
            .graph()
            .unwrap(),
        ),
        (
            "Lion",
            Lion {
                lr: 1e-3,
                weight_decay: 1e-2,
                ..Lion::default()
            }
            .graph()
            .unwrap(),
        ),
    ];
    let mut table: Vec<(String, Vec<f32>, f32)> = Vec::new();
    for (name, graph) in &runs {
        let (mut opt, mlp) = build(graph, None);
        let losses: Vec<f32> = (0..EPOCHS)
            .map(|e| epoch(&mut opt, &mlp, &data, e))
            .collect();
        table.push((name.to_string(), losses, accuracy(&opt, &mlp, &data)));
    }
    print!("{:>5}", "epoch");
    for (name, _, _) in &table {
        print!(" {name:>13}");
    }
    println!();
    for e in 0..EPOCHS {
        print!("{:>5}", e + 1);
        for (_, losses, _) in &table {
            print!(" {:>13.4}", losses[e]);
        }
        println!();
    }
    print!("{:>5}", "acc");
    for (_, _, acc) in &table {
        print!(" {:>12.1}%", acc * 100.0);
    }
    println!();

    // Checkpoint and resume: half the epochs, save, rebuild, load, finish.
    let graph = &runs[1].1;
    let (mut straight, m) = build(graph, None);
    for e in 0..EPOCHS {
        epoch(&mut straight, &m, &data, e);
    }
    let (mut first, m1) = build(graph, None);
    for e in 0..EPOCHS / 2 {
        epoch(&mut first, &m1, &data, e);
    }
    let path = std::env::temp_dir().join("optjit-train-mlp.safetensors");
    first.state_dict().save(&path).unwrap();
    let saved_weights = weights(&first, &m1);
    drop(first);
    let (mut resumed, m2) = build(graph, Some(&saved_weights));
    resumed
        .load_state_dict(&StateDict::load(&path).unwrap(), true)
        .unwrap();
    for e in EPOCHS / 2..EPOCHS {
        epoch(&mut resumed, &m2, &data, e);
    }
    let same = weights(&straight, &m)
        .iter()
        .flatten()
        .zip(weights(&resumed, &m2).iter().flatten())
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "the resumed run must be bit-identical to the uninterrupted one"
    );
    println!(
        "checkpoint at epoch {} ({}, {} bytes), reloaded into a new optimizer: final weights bit-identical",
        EPOCHS / 2,
        path.display(),
        std::fs::metadata(&path).unwrap().len()
    );

    // The full loop, uninterrupted, then checkpointed at half and resumed.
    println!("\nAdamW + clipping + 2 micro-batches per step + warmup/cosine lr:");
    println!("{:>5} {:>10} {:>10}", "epoch", "loss", "lr");
    let (mut straight, m, mut driver) = full_loop(None);
    for e in 0..EPOCHS {
        let loss = epoch_with(&mut straight, &m, &data, e, Some(&mut driver));
        println!(
            "{:>5} {loss:>10.4} {:>10.2e}",
            e + 1,
            straight.hyper(0, "lr").unwrap()
        );
    }
    println!(
        "{:>5} {:>9.1}%",
        "acc",
        accuracy(&straight, &m, &data) * 100.0
    );
    let (mut first, m1, mut d1) = full_loop(None);
    for e in 0..EPOCHS / 2 {
        epoch_with(&mut first, &m1, &data, e, Some(&mut d1));
    }
    let mut checkpoint = first.state_dict();
    checkpoint.put("scheduler", &d1.sched.state_dict()).unwrap();
    checkpoint
        .put("accumulation", &d1.acc.state_dict())
        .unwrap();
    checkpoint.save(&path).unwrap();
    let saved_weights = weights(&first, &m1);
    let (mut resumed, m2, mut d2) = full_loop(Some(&saved_weights));
    let loaded = StateDict::load(&path).unwrap();
    resumed.load_state_dict(&loaded, true).unwrap();
    let sched = loaded.get("scheduler").unwrap().expect("saved");
    d2.sched.load_state_dict(&sched, &mut resumed).unwrap();
    d2.acc
        .load_state_dict(&loaded.get("accumulation").unwrap().expect("saved"))
        .unwrap();
    for e in EPOCHS / 2..EPOCHS {
        epoch_with(&mut resumed, &m2, &data, e, Some(&mut d2));
    }
    let same = weights(&straight, &m)
        .iter()
        .flatten()
        .zip(weights(&resumed, &m2).iter().flatten())
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "the resumed full loop must be bit-identical");
    println!(
        "checkpoint with scheduler and accumulation at epoch {}: resumed bit-identical",
        EPOCHS / 2
    );
}

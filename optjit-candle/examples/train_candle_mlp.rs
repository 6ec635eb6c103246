//! Trains candle's MNIST-style MLP (64 → 64 → 10, ReLU, cross-entropy) on the UCI digits
//! (`data/digits.csv`, see `data/README.md`) three ways from the same initial weights:
//!
//! 1. candle's own `AdamW`;
//! 2. optjit-candle's AdamW, the same hyperparameters: the same losses within tolerance
//!    (asserted);
//! 3. Lion from `examples/lion.opt` (text, loaded at run time), weight decay on the weights
//!    only (a parameter group for the biases), a cosine learning rate (optjit's
//!    `CosineAnnealingLR`) and global-norm clipping; checkpointed midway (the VarMap, the
//!    optimizer and the scheduler), resumed in fresh objects, and asserted bit-identical to
//!    the uninterrupted run.
//!
//! Run with `cargo run --release -p optjit-candle --example train_candle_mlp`.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, loss, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use optjit::schedule::{CosineAnnealingLR, Scheduler, SchedulerState};
use optjit_candle::{Config, OptjitOptimizer, ParamGroup};
use std::path::Path;

const HIDDEN: usize = 64;
const CLASSES: usize = 10;
const BATCH: usize = 64;
const TRAIN: usize = 1500;
const EPOCHS: usize = 10;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// candle's MNIST example's MLP, smaller.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Mlp> {
        Ok(Mlp {
            fc1: linear(64, HIDDEN, vb.pp("fc1"))?,
            fc2: linear(HIDDEN, CLASSES, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// The digits: pixels scaled to [0, 1]; the first [`TRAIN`] rows train, the rest test.
struct Data {
    x: Tensor,
    y: Tensor,
}

fn load_digits() -> Result<Data> {
    let text = include_str!("../../data/digits.csv");
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let row: Vec<f32> = line
            .split(',')
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        pixels.extend(row[..64].iter().map(|p| p / 16.0));
        labels.push(row[64] as u32);
    }
    let n = labels.len();
    Ok(Data {
        x: Tensor::from_vec(pixels, (n, 64), &Device::Cpu)?,
        y: Tensor::from_vec(labels, n, &Device::Cpu)?,
    })
}

/// splitmix64: the initial weights and the batch order, the same for every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A fresh model whose weights are uniform in ±1/√fan_in from a fixed seed.
fn model() -> Result<(VarMap, Mlp)> {
    let mut varmap = VarMap::new();
    let mlp = Mlp::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let mut rng = Rng(42);
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    for name in names {
        let shape = varmap.data().lock().unwrap()[&name].shape().clone();
        let fan_in = if name.starts_with("fc1") {
            64.0
        } else {
            HIDDEN as f32
        };
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) / fan_in.sqrt())
            .collect();
        varmap.set_one(&name, Tensor::from_vec(values, shape, &Device::Cpu)?)?;
    }
    Ok((varmap, mlp))
}

/// The batches of one epoch: the training rows in a shuffled order.
fn batches(epoch: usize) -> Vec<Vec<u32>> {
    let mut order: Vec<u32> = (0..TRAIN as u32).collect();
    let mut rng = Rng(epoch as u64);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    order.chunks(BATCH).map(<[u32]>::to_vec).collect()
}

/// What a run does after each step (a scheduler's step, a checkpoint).
type AfterStep<'a, O> = &'a mut dyn FnMut(&mut O, usize) -> Result<()>;

/// Trains `epochs` and returns the mean training loss of each.
fn train<O: Optimizer>(
    mlp: &Mlp,
    opt: &mut O,
    data: &Data,
    epochs: std::ops::Range<usize>,
    after_step: AfterStep<'_, O>,
) -> Result<Vec<f32>> {
    let mut losses = Vec::new();
    let per_epoch = TRAIN.div_ceil(BATCH);
    for epoch in epochs {
        let mut total = 0.0;
        for (b, rows) in batches(epoch).iter().enumerate() {
            let rows = Tensor::new(rows.as_slice(), &Device::Cpu)?;
            let logits = mlp.forward(&data.x.index_select(&rows, 0)?)?;
            let loss = loss::cross_entropy(&logits, &data.y.index_select(&rows, 0)?)?;
            total += loss.to_scalar::<f32>()?;
            opt.backward_step(&loss)?;
            after_step(opt, epoch * per_epoch + b + 1)?;
        }
        losses.push(total / per_epoch as f32);
    }
    Ok(losses)
}

/// The share of test rows classified right.
fn accuracy(mlp: &Mlp, data: &Data) -> Result<f32> {
    let n = data.y.dim(0)? - TRAIN;
    let logits = mlp.forward(&data.x.narrow(0, TRAIN, n)?)?;
    let right = logits.argmax(D::Minus1)?.eq(&data.y.narrow(0, TRAIN, n)?)?;
    Ok(right.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? / n as f32)
}

/// The VarMap's weights, for bit-exact comparisons.
fn weights(varmap: &VarMap) -> Result<Vec<(String, Vec<u32>)>> {
    let data = varmap.data().lock().unwrap();
    let mut out = Vec::new();
    for (name, var) in data.iter() {
        let bits = var
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        out.push((name.clone(), bits));
    }
    out.sort();
    Ok(out)
}

/// Lion with weight decay on the weights only, clipping, and a cosine learning rate over
/// the whole run.
fn lion(varmap: &VarMap) -> Result<(OptjitOptimizer, Scheduler)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lion.opt");
    let config = Config::from_file(path)?
        .lr(1e-3)
        .hyper("weight_decay", 0.1)
        .group(ParamGroup::matching(&["*.bias"]).hyper("weight_decay", 0.0))
        .clip_grad_norm(5.0, 2.0);
    let mut opt = OptjitOptimizer::from_varmap(varmap, config)?;
    let t_max = (EPOCHS * TRAIN.div_ceil(BATCH)) as i64;
    let sched = CosineAnnealingLR {
        t_max,
        eta_min: 1e-5,
    }
    .build(&mut opt)?;
    Ok((opt, sched))
}

/// Saves the weights, the optimizer and the scheduler into `dir`.
fn save(dir: &Path, varmap: &VarMap, opt: &OptjitOptimizer, sched: &Scheduler) -> Result<()> {
    varmap.save(dir.join("model.safetensors"))?;
    opt.save(dir.join("optimizer.safetensors"))?;
    std::fs::write(
        dir.join("scheduler.json"),
        serde_json::to_string(&sched.state_dict())?,
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let data = load_digits()?;
    let adamw = ParamsAdamW {
        lr: 3e-3,
        ..ParamsAdamW::default()
    };

    println!(
        "AdamW (lr {}, weight decay {}), {EPOCHS} epochs of {BATCH}-row batches",
        adamw.lr, adamw.weight_decay
    );
    let (candle_map, candle_mlp) = model()?;
    let mut candle_opt = candle_nn::AdamW::new(candle_map.all_vars(), adamw.clone())?;
    let theirs = train(
        &candle_mlp,
        &mut candle_opt,
        &data,
        0..EPOCHS,
        &mut |_, _| Ok(()),
    )?;
    let (ours_map, ours_mlp) = model()?;
    let mut ours_opt = OptjitOptimizer::from_varmap(&ours_map, Config::adamw(&adamw)?)?;
    let ours = train(&ours_mlp, &mut ours_opt, &data, 0..EPOCHS, &mut |_, _| {
        Ok(())
    })?;
    println!("epoch  candle AdamW  optjit AdamW  relative difference");
    let mut worst = 0.0f32;
    for (e, (a, b)) in theirs.iter().zip(&ours).enumerate() {
        let diff = (a - b).abs() / a.abs();
        worst = worst.max(diff);
        println!("{:>5}  {a:>12.6}  {b:>12.6}  {diff:>10.1e}", e + 1);
    }
    println!(
        "test accuracy: candle {:.3}, optjit {:.3}",
        accuracy(&candle_mlp, &data)?,
        accuracy(&ours_mlp, &data)?
    );
    // Two orders of the same arithmetic (see tests/numbers.rs), grown over 240 steps.
    assert!(worst < 1e-3, "the two AdamWs differ by {worst:e}");

    println!("\nLion from examples/lion.opt, cosine lr, no weight decay on biases, clipped");
    let dir = std::env::temp_dir().join(format!("optjit-candle-mlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let half = EPOCHS / 2;
    let (lion_map, lion_mlp) = model()?;
    let (mut opt, mut sched) = lion(&lion_map)?;
    let mut after = |opt: &mut OptjitOptimizer, _: usize| Ok(sched.step(opt)?);
    let first = train(&lion_mlp, &mut opt, &data, 0..half, &mut after)?;
    save(&dir, &lion_map, &opt, &sched)?;
    let mut after = |opt: &mut OptjitOptimizer, _: usize| Ok(sched.step(opt)?);
    let second = train(&lion_mlp, &mut opt, &data, half..EPOCHS, &mut after)?;
    for (e, l) in first.iter().chain(&second).enumerate() {
        println!("{:>5}  loss {l:.6}", e + 1);
    }
    println!(
        "test accuracy {:.3}, last lr {:.2e}, last gradient norm {:.3}",
        accuracy(&lion_mlp, &data)?,
        opt.learning_rate(),
        opt.last_grad_norm().unwrap_or(0.0)
    );

    // Resume from the checkpoint in fresh objects: bit for bit the same second half.
    let (mut resumed_map, resumed_mlp) = model()?;
    resumed_map.load(dir.join("model.safetensors"))?;
    let (mut resumed, mut resumed_sched) = lion(&resumed_map)?;
    resumed.load(dir.join("optimizer.safetensors"))?;
    let state: SchedulerState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scheduler.json"))?)?;
    resumed_sched.load_state_dict(&state, &mut resumed)?;
    let mut after = |opt: &mut OptjitOptimizer, _: usize| Ok(resumed_sched.step(opt)?);
    let again = train(&resumed_mlp, &mut resumed, &data, half..EPOCHS, &mut after)?;
    assert_eq!(again, second, "resumed losses");
    assert_eq!(
        weights(&resumed_map)?,
        weights(&lion_map)?,
        "resumed weights"
    );
    println!("resumed from the checkpoint at epoch {half}: identical losses and weights");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

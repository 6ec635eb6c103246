//! Writes two optimizer checkpoints and prints what each must contain, for
//! `scripts/check_checkpoint.py` to check with Python's `safetensors` package:
//!
//! - at the path given: Adam with AMSGrad, two groups, f32 and f64 parameters, one
//!   parameter never updated;
//! - beside it (`-bf16` before the extension): Adam over bf16 parameters with bf16 state,
//!   `exp_avg_sq` in f16 (see [`optjit::Precision`]).
//!
//! For each checkpoint, a line `file PATH`, then one line per tensor: `name dtype shape
//! values`, with the safetensors dtype (`F32`, `F64`, `BF16`, `F16`), the shape's sizes and
//! the values (each widened to f64, exactly) separated by commas.
//!
//! Run with `cargo run --example checkpoint -- /tmp/ckpt.safetensors`.

use half::bf16;
use ndarray::{array, Array2};
use optjit::optim::Adam;
use optjit::runtime::{StateDict, TensorData};
use optjit::{DType, Optimizer, Precision};

fn main() -> optjit::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "checkpoint.safetensors".into());
    save(&wide()?, &path)?;
    save(&narrow()?, &beside(&path))?;
    Ok(())
}

/// Adam with AMSGrad over f32 and f64 parameters in two groups, after two steps.
fn wide() -> optjit::Result<StateDict> {
    let graph = Adam {
        amsgrad: true,
        ..Adam::default()
    }
    .graph()?;
    let mut opt = Optimizer::new(&graph)?;
    let body = opt.add_param_group(&[])?;
    let head = opt.add_param_group(&[("lr", 1e-4)])?;
    let w = opt.add_param(body, "layer.weight", &Array2::<f32>::ones((3, 4)))?;
    let b = opt.add_param(head, "layer.bias", &array![0.5f64, 0.25, 0.0, -1.0, 2.0])?;
    opt.add_param(head, "unused", &array![1.0f32])?;
    for _ in 0..2 {
        opt.set_grad(&w, &[0.1; 12])?;
        opt.set_grad(&b, &[1.0, -1.0, 0.5, 0.0, 2.0])?;
        opt.step()?;
        opt.zero_grad();
    }
    Ok(opt.state_dict())
}

/// Adam over bf16 parameters with bf16 state and `exp_avg_sq` in f16, after two steps.
fn narrow() -> optjit::Result<StateDict> {
    let precision = Precision::state(DType::BF16).with_slot("exp_avg_sq", DType::F16);
    let mut opt = Optimizer::new(&Adam::default().graph()?)?.with_precision(precision);
    let g = opt.add_param_group(&[])?;
    let to_bf16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let emb = Array2::from_shape_vec((2, 3), to_bf16(&[0.5, -1.5, 3.0, 0.1, 0.0, -2.0]));
    let emb = opt.add_param(g, "emb.weight", &emb.expect("six values"))?;
    let bias = opt.add_param(g, "head.bias", &ndarray::Array1::from(to_bf16(&[1.0; 4])))?;
    for step in 1..=2 {
        let s = step as f32;
        opt.set_grad(&emb, &to_bf16(&[0.3 * s, -0.7, 1e-3, 12.5, -0.02 * s, 0.0]))?;
        opt.set_grad(&bias, &to_bf16(&[0.25, -0.25 * s, 4.0, 1e-2]))?;
        opt.step()?;
    }
    Ok(opt.state_dict())
}

/// The path of the second checkpoint: `-bf16` inserted before `path`'s extension.
fn beside(path: &str) -> String {
    match path.strip_suffix(".safetensors") {
        Some(stem) => format!("{stem}-bf16.safetensors"),
        None => format!("{path}-bf16"),
    }
}

/// Saves `dict` to `path` and prints its `file` line and tensor lines.
fn save(dict: &StateDict, path: &str) -> optjit::Result<()> {
    dict.save(path)?;
    println!("file {path}");
    for (index, entry) in &dict.state {
        for (slot, (shape, data)) in &entry.tensors {
            let (dtype, values): (&str, Vec<f64>) = match data {
                TensorData::F32(v) => ("F32", v.iter().map(|&x| f64::from(x)).collect()),
                TensorData::F64(v) => ("F64", v.clone()),
                TensorData::BF16(v) => ("BF16", v.iter().map(|x| x.to_f64()).collect()),
                TensorData::F16(v) => ("F16", v.iter().map(|x| x.to_f64()).collect()),
            };
            let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
            let values: Vec<String> = values.iter().map(|x| format!("{x:e}")).collect();
            println!(
                "state.{index}.{slot} {dtype} {} {}",
                shape.join(","),
                values.join(",")
            );
        }
    }
    Ok(())
}

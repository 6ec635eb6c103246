//! Writes an optimizer checkpoint (Adam with AMSGrad, two groups, f32 and f64 parameters,
//! one parameter never updated) to the path given, and prints the tensors it must contain,
//! one `name dtype shape` line each. `scripts/check_checkpoint.py` reads both and checks the
//! file with Python's `safetensors` package.
//!
//! Run with `cargo run --example checkpoint -- /tmp/ckpt.safetensors`.

use ndarray::{array, Array2};
use optjit::optim::Adam;
use optjit::runtime::TensorData;
use optjit::Optimizer;

fn main() -> optjit::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "checkpoint.safetensors".into());
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
    let dict = opt.state_dict();
    dict.save(&path)?;
    for (index, entry) in &dict.state {
        for (slot, (shape, data)) in &entry.tensors {
            let dtype = match data {
                TensorData::F32(_) => "float32",
                TensorData::F64(_) => "float64",
                TensorData::BF16(_) => "bfloat16",
                TensorData::F16(_) => "float16",
            };
            let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
            println!("state.{index}.{slot} {dtype} {}", shape.join(","));
        }
    }
    Ok(())
}

//! # optjit-candle
//!
//! Every optjit optimizer for [candle](https://github.com/huggingface/candle): a
//! `candle_nn::Optimizer` that steps each `Var`'s CPU storage in place, with what candle's
//! own optimizers lack.
//!
//! - [`OptjitOptimizer`]: built-ins (AdamW, Lion, SGD with momentum, ...), PyTorch's by
//!   constructor arguments, or `.opt` text; one engine call per group and dtype, no copies
//!   of vars, gradients or state.
//! - [`Config`] and [`ParamGroup`]: hyperparameters, groups by name pattern (no weight decay
//!   on biases and norms), gradient clipping.
//! - Schedulers: `optjit::schedule`'s, since the optimizer implements
//!   [`optjit::schedule::Hypers`].
//! - Checkpoints: [`OptjitOptimizer::state_dict`] as named candle tensors (safetensors).
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{linear, Optimizer, VarBuilder, VarMap};
//! use optjit::schedule::CosineAnnealingLR;
//! use optjit_candle::{Config, OptjitOptimizer, ParamGroup};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = linear(4, 2, vb.pp("fc"))?;
//! let lion = Config::from_text("optimizer lion(lr = 1e-4, b1 = 0.9, b2 = 0.99, weight_decay = 0) {
//!     state m = 0
//!     param = param * (1 - lr * weight_decay) - lr * sign(b1 * m + (1 - b1) * grad)
//!     m = b2 * m + (1 - b2) * grad
//! }")?
//! .lr(1e-3)
//! .hyper("weight_decay", 0.1)
//! .group(ParamGroup::matching(&["*.bias"]).hyper("weight_decay", 0.0));
//! let mut opt = OptjitOptimizer::from_varmap(&varmap, lion)?;
//! let mut sched = CosineAnnealingLR { t_max: 10, eta_min: 0.0 }.build(&mut opt)?;
//!
//! let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu)?;
//! for _ in 0..3 {
//!     let loss = model.forward(&x)?.sqr()?.mean_all()?;
//!     opt.backward_step(&loss)?;
//!     sched.step(&mut opt)?;
//! }
//! assert_eq!(opt.steps("fc.weight"), Some(3));
//! assert!(opt.learning_rate() < 1e-3); // annealed
//! let checkpoint = opt.state_dict()?;
//! assert!(checkpoint.contains_key("state.fc.weight.m"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clip;
mod config;
mod error;
mod optimizer;
mod state_dict;
mod storage;

pub use config::{Clip, Config, ParamGroup};
pub use error::{Error, Result};
pub use optimizer::OptjitOptimizer;
pub use storage::{CandleFloat, MAX_NEST, STACK_BASE, STACK_PER_LEVEL};

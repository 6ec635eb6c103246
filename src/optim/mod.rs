//! Built-in optimizers, written with the [`Builder`](crate::Builder) and following
//! `torch.optim`'s algorithms: PyTorch's argument names and defaults, numeric options as
//! runtime hyperparameters, options that change the formula's shape (`nesterov`, `amsgrad`,
//! `maximize`, momentum on/off) as choices of graph.
//!
//! State slots carry PyTorch's state names (`exp_avg`, `momentum_buffer`, ...).
//!
//! From `torch.optim`: [`Sgd`], [`Adam`], [`AdamW`], [`Rmsprop`], [`Adagrad`], [`Adadelta`],
//! [`Adamax`], [`NAdam`], [`RAdam`], [`Asgd`] and [`Rprop`], each checked against PyTorch's
//! recorded trajectories (`tests/conformance.rs`); [`from_torch`] builds one from a
//! constructor's keyword arguments.
//!
//! Beyond `torch.optim`: [`Lion`], [`Adan`], [`AdaBelief`] and [`ScheduleFreeAdamW`], each
//! following its authors' PyTorch implementation (named in its doc) the same way; [`Lamb`],
//! [`Lars`], [`NovoGrad`], [`Yogi`], [`SignSgd`] and [`AdEMAMix`] as optax defines them
//! ([`from_optax`]). [`clip_grad_norm`] fuses PyTorch's gradient clipping into any of them
//! ([`clip_by_global_norm`] optax's), [`amp()`] mixed-precision gradient unscaling and overflow
//! skipping.

mod accumulate;
mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod amp;
mod asgd;
pub mod clip;
pub mod common;
mod nadam;
mod radam;
mod rmsprop;
mod rprop;
mod sgd;
mod torch;

// Beyond torch.optim.
mod adabelief;
mod adan;
mod ademamix;
mod lamb;
mod lars;
mod lion;
mod novograd;
mod schedule_free;
mod sign_sgd;
mod yogi;

pub use accumulate::{accumulate, GRAD_SCALE};
pub use adadelta::Adadelta;
pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW};
pub use adamax::Adamax;
pub use amp::{amp, is_amp, INV_SCALE};
pub use asgd::Asgd;
pub use clip::{clip_by_global_norm, clip_grad_norm};
pub use nadam::NAdam;
pub use radam::RAdam;
pub use rmsprop::Rmsprop;
pub use rprop::Rprop;
pub use sgd::Sgd;
pub use torch::{from_optax, from_torch};

pub use adabelief::AdaBelief;
pub use adan::Adan;
pub use ademamix::AdEMAMix;
pub use lamb::Lamb;
pub use lars::Lars;
pub use lion::Lion;
pub use novograd::NovoGrad;
pub use schedule_free::ScheduleFreeAdamW;
pub use sign_sgd::SignSgd;
pub use yogi::Yogi;

use crate::Graph;

/// Names accepted by [`by_name`]: each built-in with PyTorch's defaults, plus common variants.
pub const NAMES: &[&str] = &[
    "sgd",
    "sgd_momentum",
    "sgd_nesterov",
    "adam",
    "adam_amsgrad",
    "adamw",
    "adamw_amsgrad",
    "rmsprop",
    "rmsprop_centered",
    "rmsprop_momentum",
    "rmsprop_centered_momentum",
    "adagrad",
    "adadelta",
    "adamax",
    "nadam",
    "nadamw",
    "radam",
    "radamw",
    "asgd",
    "rprop",
    "lion",
    "adan",
    "adabelief",
    "schedule_free_adamw",
    "lamb",
    "lars",
    "novograd",
    "yogi",
    "sign_sgd",
    "ademamix",
];

/// The graph of a built-in by name (see [`NAMES`]), with default options.
pub fn by_name(name: &str) -> Option<Graph> {
    let momentum = Sgd {
        momentum: 0.9,
        ..Sgd::default()
    };
    let graph = match name {
        "sgd" => Sgd::default().graph(),
        "sgd_momentum" => momentum.graph(),
        "sgd_nesterov" => Sgd {
            nesterov: true,
            ..momentum
        }
        .graph(),
        "adam" => Adam::default().graph(),
        "adam_amsgrad" => Adam {
            amsgrad: true,
            ..Adam::default()
        }
        .graph(),
        "adamw" => AdamW::default().graph(),
        "adamw_amsgrad" => AdamW {
            amsgrad: true,
            ..AdamW::default()
        }
        .graph(),
        "rmsprop" => Rmsprop::default().graph(),
        "rmsprop_centered" => Rmsprop {
            centered: true,
            ..Rmsprop::default()
        }
        .graph(),
        "rmsprop_momentum" => Rmsprop {
            momentum: 0.9,
            ..Rmsprop::default()
        }
        .graph(),
        "rmsprop_centered_momentum" => Rmsprop {
            centered: true,
            momentum: 0.9,
            ..Rmsprop::default()
        }
        .graph(),
        "adagrad" => Adagrad::default().graph(),
        "adadelta" => Adadelta::default().graph(),
        "adamax" => Adamax::default().graph(),
        "nadam" => NAdam::default().graph(),
        "nadamw" => NAdam {
            decoupled_weight_decay: true,
            ..NAdam::default()
        }
        .graph(),
        "radam" => RAdam::default().graph(),
        "radamw" => RAdam {
            decoupled_weight_decay: true,
            ..RAdam::default()
        }
        .graph(),
        "asgd" => Asgd::default().graph(),
        "rprop" => Rprop::default().graph(),
        "lion" => Lion::default().graph(),
        "adan" => Adan::default().graph(),
        "adabelief" => AdaBelief::default().graph(),
        "schedule_free_adamw" => ScheduleFreeAdamW::default().graph(),
        "lamb" => Lamb::default().graph(),
        "lars" => Lars::default().graph(),
        "novograd" => NovoGrad::default().graph(),
        "yogi" => Yogi::default().graph(),
        "sign_sgd" => SignSgd::default().graph(),
        "ademamix" => AdEMAMix::default().graph(),
        _ => return None,
    };
    Some(graph.expect("built-in defaults are valid"))
}

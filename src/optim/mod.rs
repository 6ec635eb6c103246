//! Built-in optimizers, written with the [`Builder`](crate::Builder) and following
//! `torch.optim`'s algorithms: PyTorch's argument names and defaults, numeric options as
//! runtime hyperparameters, options that change the formula's shape (`nesterov`, `amsgrad`,
//! `maximize`, momentum on/off) as choices of graph.
//!
//! State slots carry PyTorch's state names (`exp_avg`, `momentum_buffer`, ...).

mod adam;
mod common;
mod sgd;

pub use adam::{Adam, AdamW};
pub use sgd::Sgd;

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
        _ => return None,
    };
    Some(graph.expect("built-in defaults are valid"))
}

//! The adapter's errors: what a user can get wrong (devices, dtypes, duplicate vars,
//! malformed state dicts) as typed variants, the core's and candle's errors wrapped.

use candle_core::DType;

/// Why an [`crate::OptjitOptimizer`] could not be built, step, or load a state dict. Nothing
/// has changed when one is returned (see [`crate::OptjitOptimizer::try_step`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// User mistake: a var (or its gradient) lives on another device than the CPU.
    #[error("{what} of {name:?} is on {device}; optjit-candle steps CPU vars only")]
    NotCpu {
        /// `"the var"` or `"the gradient"`.
        what: &'static str,
        /// The var's name.
        name: String,
        /// Where it is (candle's `DeviceLocation`, printed).
        device: String,
    },
    /// User mistake: the var's storage is not one contiguous run of elements (a var made by
    /// candle always is; this guards against layouts candle may add).
    #[error("the var {name:?} is not contiguous in its storage; optjit-candle steps contiguous vars only")]
    NotContiguous {
        /// The var's name.
        name: String,
    },
    /// User mistake: a var of a dtype the engine does not step (it steps f32, f64, bf16 and
    /// f16).
    #[error(
        "the var {name:?} has dtype {dtype:?}; optjit-candle steps f32, f64, bf16 and f16 vars"
    )]
    UnsupportedDType {
        /// The var's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// User mistake: a gradient whose dtype differs from its var's.
    #[error("the gradient of {name:?} has dtype {grad:?}, its var {var:?}")]
    GradDTypeMismatch {
        /// The var's name.
        name: String,
        /// The var's dtype.
        var: DType,
        /// The gradient's dtype.
        grad: DType,
    },
    /// User mistake: a gradient whose shape differs from its var's.
    #[error("the gradient of {name:?} has shape {grad:?}, its var {var:?}")]
    GradShapeMismatch {
        /// The var's name.
        name: String,
        /// The var's shape.
        var: Vec<usize>,
        /// The gradient's shape.
        grad: Vec<usize>,
    },
    /// User mistake: a gradient that shares memory with a var being stepped (a `GradStore`
    /// filled by hand); stepping would read what it writes.
    #[error("the gradient of {name:?} shares memory with the var {var:?}")]
    GradAliasesVar {
        /// The var whose gradient it is.
        name: String,
        /// The var it shares memory with.
        var: String,
    },
    /// User mistake: the same var (or two vars sharing memory) given twice; candle's storage
    /// lock would deadlock on a second in-place update.
    #[error("the var {second:?} is the var {first:?} again (or shares its memory)")]
    DuplicateVar {
        /// The name it was first given.
        first: String,
        /// The name of the repeat.
        second: String,
    },
    /// User mistake: two vars with one name (state dicts are keyed by name).
    #[error("two vars are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// User mistake: the optimizer has no `lr` hyperparameter, which candle's
    /// `Optimizer::learning_rate` needs.
    #[error("the optimizer {optimizer:?} has no `lr` hyperparameter")]
    NoLearningRate {
        /// The graph's name.
        optimizer: String,
    },
    /// User mistake: an optimizer whose step must see every var at once (a skip condition,
    /// or a reduction over all parameters such as `global_sumsq`) over vars that step in
    /// several engine calls (more than one group, or vars of several dtypes). Stepping them
    /// call by call could skip one group and not another, or reduce over one group only.
    #[error(
        "the optimizer {optimizer:?} has {what}, which spans every var of a step, but its vars \
         step in {calls} engine calls (one per group and dtype); use one group and one dtype"
    )]
    SpansCalls {
        /// The graph's name.
        optimizer: String,
        /// `"a skip condition"` or `"a reduction over all parameters"`.
        what: &'static str,
        /// The number of (group, dtype) pairs the vars fall in.
        calls: usize,
    },
    /// User mistake: an option of the adapter out of its domain.
    #[error("{option} {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// User mistake: a state dict that does not fit this optimizer (a key unknown, missing,
    /// of the wrong shape or dtype); nothing was loaded.
    #[error("state dict entry {key:?}: {reason}")]
    StateDict {
        /// The offending key (or the one that is missing).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Internal bug: an invariant of the adapter broken.
    #[error("internal error of optjit-candle: {0}")]
    Internal(&'static str),
    /// Environment: the thread that nests more than [`crate::MAX_NEST`] vars' in-place ops
    /// could not be started (the system is out of threads or memory); nothing was stepped.
    #[error("could not start the thread that steps many vars: {0}")]
    Thread(std::io::Error),
    /// An error of the optimizer core, classified by [`optjit::Error::kind`]: `.opt` text that
    /// does not parse, an unknown hyperparameter or option are user mistakes, a file that
    /// cannot be read an environment error, the rest internal.
    #[error(transparent)]
    Optjit(#[from] optjit::Error),
    /// An error candle returned: reading or writing a state dict file
    /// ([`crate::OptjitOptimizer::save`] / [`crate::OptjitOptimizer::load`]: a missing file,
    /// I/O, a malformed safetensors file) is an environment or user error; anywhere else it is
    /// internal (the adapter checks what candle would refuse).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for candle_core::Error {
    /// For `candle_nn::Optimizer`, whose methods return candle's error: the message is kept,
    /// the variant is not (the inherent `try_*` methods return it).
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::wrap(other),
        }
    }
}

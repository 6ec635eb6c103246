//! The one error type of optjit.
//!
//! Each variant's doc says whose mistake it is: a *user mistake* (bad definition or bad
//! input, fix the call) or an *internal bug* (please report it; the verifier or codegen
//! caught optjit contradicting itself).

use crate::DType;

/// Everything that can go wrong in optjit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// User mistake: two hyperparameters or state slots share a name.
    #[error("the name `{name}` is defined twice")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// User mistake: a hyperparameter or slot named like a built-in symbol (`param`, `grad`,
    /// `step`).
    #[error("`{name}` is a built-in symbol and cannot name a hyperparameter or state slot")]
    ReservedName {
        /// The name.
        name: String,
    },
    /// User mistake: an optimizer name that optjit does not know.
    #[error("unknown optimizer `{name}`")]
    UnknownOptimizer {
        /// The name given.
        name: String,
    },
    /// User mistake: an option (e.g. a PyTorch keyword argument) that the optimizer does not
    /// support, or a value of the wrong type for it.
    #[error("optimizer `{optimizer}` does not support option `{option}`{detail}")]
    UnsupportedOption {
        /// The optimizer.
        optimizer: String,
        /// The option.
        option: String,
        /// Empty, or `: ` followed by what is wrong with the value.
        detail: String,
    },
    /// User mistake: a parameter handle from another optimizer, or a parameter name or index
    /// the optimizer does not have.
    #[error("unknown parameter {what}")]
    UnknownParam {
        /// The handle, name or index.
        what: String,
    },
    /// User mistake: a parameter added twice (same name) to an optimizer.
    #[error("parameter `{name}` is already in the optimizer")]
    DuplicateParam {
        /// Its name.
        name: String,
    },
    /// User mistake: a parameter group index the optimizer does not have.
    #[error("unknown parameter group {index} (the optimizer has {count})")]
    UnknownGroup {
        /// The index given.
        index: usize,
        /// How many groups there are.
        count: usize,
    },
    /// User mistake: a state dict that is malformed or does not fit the optimizer.
    #[error("cannot load the state dict: {reason}")]
    InvalidStateDict {
        /// What is wrong (every problem found, for a strict load).
        reason: String,
    },
    /// Environment: reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The system's message.
        message: String,
    },
    /// User mistake: a state slot name that the optimizer does not define.
    #[error("unknown state slot `{name}`")]
    UnknownSlot {
        /// The name asked for.
        name: String,
    },
    /// User mistake: a hyperparameter name that the optimizer does not define.
    #[error("unknown hyperparameter `{name}`")]
    UnknownHyper {
        /// The name asked for.
        name: String,
    },
    /// User mistake: the definition never assigns the new param or a state slot.
    #[error("the optimizer never sets `{output}`")]
    OutputNotSet {
        /// `param` or the state slot's name.
        output: String,
    },
    /// User mistake: a per-element value where only a per-step scalar is allowed (an operand
    /// of `pow`, `exp`, `ln`, or the new value of a scalar state slot).
    #[error("{what} must be a per-step scalar, but it depends on a per-element value")]
    ScalarRequired {
        /// Where the scalar was required, e.g. "the operand of `pow`".
        what: String,
    },
    /// User mistake: a per-step scalar where a per-element value is required (the operand
    /// of a reduction such as `sumsq`).
    #[error("{what} must be a per-element value, but it is a per-step scalar")]
    ElementRequired {
        /// Where the element value was required, e.g. "the operand of `sumsq`".
        what: String,
    },
    /// User mistake: the new value of a group state reads something that differs between
    /// the parameters of its group.
    #[error("{what} must be the same for every parameter of a group, but it reads the step count, a parameter's own state or a per-parameter value")]
    PerParameterValue {
        /// What, e.g. "the new value of group state `k`".
        what: String,
    },
    /// User mistake: optimizer state whose new value differs between parameter groups (it
    /// reads a hyperparameter or group state that differs between them); see
    /// [`crate::ir::SlotKind::Optimizer`]. The step changed nothing.
    #[error(
        "{what} differs between parameter groups {} and {}: it reads something they do not share",
        groups.0,
        groups.1
    )]
    GroupsDisagree {
        /// What, e.g. "the new value of optimizer state `t`".
        what: String,
        /// Two groups that disagree.
        groups: (usize, usize),
    },
    /// User mistake: an op applied to the wrong number of operands.
    #[error("`{op}` takes {expected} operand(s), got {actual}")]
    Arity {
        /// The op's name.
        op: &'static str,
        /// Operands it takes.
        expected: usize,
        /// Operands given.
        actual: usize,
    },
    /// User mistake: a hand-made or deserialized program whose stage is ill-formed (operands
    /// out of range or referring forward, a store to the grad, a scalar-only op per element).
    #[error("invalid program: {reason}")]
    InvalidProgram {
        /// What is wrong.
        reason: String,
    },
    /// User mistake: a program whose per-element stage has more instructions, streams or
    /// scalars than any executor accepts (`Stage::MAX_INSTRUCTIONS`, `Stage::MAX_STREAMS`,
    /// `Stage::MAX_SCALARS`); found before any code is generated.
    #[error("the program is too large: its per-element stage has {count} {what}, at most {limit} are allowed")]
    ProgramTooLarge {
        /// `instructions`, `streams` (param, grad and element state slots) or `scalars`.
        what: &'static str,
        /// How many the stage has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// User mistake: a feature this part of optjit does not offer yet (the message says
    /// what to use instead).
    #[error("not supported yet: {what}")]
    Unsupported {
        /// What, and the alternative.
        what: &'static str,
    },
    /// User mistake (in the data): `clip_grad_norm` with `error_if_nonfinite` found a NaN
    /// or infinite total norm; no gradient was changed.
    #[error("the total norm of order {norm_type} of the gradients is non-finite ({total}), so it cannot be clipped; to scale the gradients by it anyway, pass error_if_nonfinite = false")]
    NonFiniteNorm {
        /// The norm's order.
        norm_type: f64,
        /// The norm found.
        total: f64,
    },
    /// User mistake: an expression from one builder used in another.
    #[error("an expression from a different builder was used")]
    ForeignExpr,
    /// User mistake: an optimizer option outside its domain (e.g. nesterov without momentum).
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// User mistake: a parameter state that does not fit the optimizer (wrong slot count,
    /// a buffer where a scalar belongs, or the reverse).
    #[error("state slot {slot} does not fit the optimizer: {reason}")]
    StateMismatch {
        /// The slot's name, or its index when the name is unknown.
        slot: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// User mistake: a buffer's length does not match.
    #[error("{what} has length {actual}, expected {expected}")]
    LengthMismatch {
        /// Which buffer, e.g. "grad of segment 2".
        what: String,
        /// The length required.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// User mistake: two buffers overlap and at least one is written.
    #[error("{first} overlaps {second}; written buffers must not alias any other buffer")]
    Aliasing {
        /// One buffer.
        first: String,
        /// The other buffer.
        second: String,
    },
    /// User mistake: a kernel or state compiled for one dtype was given another.
    #[error("expected dtype {expected}, got {actual}")]
    DTypeMismatch {
        /// The dtype the kernel or state was made for.
        expected: DType,
        /// The dtype given.
        actual: DType,
    },
    /// User mistake: `step` called in evaluation mode (after `eval()`, before `train()`),
    /// where the parameters hold the evaluation point, not the training iterate.
    #[error("the optimizer is in evaluation mode: call train() before step()")]
    EvalMode,
    /// User mistake: a parameter's step count would overflow.
    #[error("the step count of a parameter would overflow")]
    StepOverflow,
    /// Environment: Cranelift cannot generate code for this host.
    #[error("this host is not supported by the JIT: {message}")]
    HostUnsupported {
        /// Cranelift's explanation.
        message: String,
    },
    /// Environment: memory for a call's bookkeeping (sized by its number of tensors) could
    /// not be allocated; nothing was changed.
    #[error("out of memory: cannot allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// What the memory was for.
        what: &'static str,
        /// The size requested.
        bytes: usize,
    },
    /// User mistake: optimizer text that does not parse or does not define a valid
    /// optimizer; the error shows where and what was expected.
    #[error("{0}")]
    Text(Box<crate::text::TextError>),
    /// User mistake: an optimizer, hyperparameter or state name that is not an identifier
    /// (`[A-Za-z_][A-Za-z0-9_]*`) or is a keyword of the text form.
    #[error("`{name}` is not a valid name: expected an identifier that is not a keyword")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Internal bug: a pass produced an ill-formed graph or program.
    #[error("internal error: verifier failed after pass `{pass}`: {message}")]
    Verify {
        /// The pass whose output failed.
        pass: &'static str,
        /// What the verifier found.
        message: String,
    },
    /// Internal bug: Cranelift rejected the code optjit generated.
    #[error("internal error: code generation failed: {message}")]
    Codegen {
        /// Cranelift's message.
        message: String,
    },
}

/// Whose mistake an [`Error`] is, as each variant's doc says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bad definition or bad input: fix the call.
    UserMistake,
    /// optjit contradicted itself (a verifier or Cranelift caught it): please report it.
    InternalBug,
    /// The machine or the system: a file, memory, a CPU the JIT does not support.
    Environment,
}

impl Error {
    /// Whose mistake this is.
    ///
    /// ```
    /// use optjit::{Error, ErrorKind};
    ///
    /// let e = optjit::text::parse("optimizer x() { param = nope }").unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::UserMistake);
    /// let e = Error::OutOfMemory { what: "state", bytes: 1 << 40 };
    /// assert_eq!(e.kind(), ErrorKind::Environment);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Verify { .. } | Error::Codegen { .. } => ErrorKind::InternalBug,
            Error::Io { .. } | Error::HostUnsupported { .. } | Error::OutOfMemory { .. } => {
                ErrorKind::Environment
            }
            Error::DuplicateName { .. }
            | Error::ReservedName { .. }
            | Error::UnknownOptimizer { .. }
            | Error::UnsupportedOption { .. }
            | Error::UnknownParam { .. }
            | Error::DuplicateParam { .. }
            | Error::UnknownGroup { .. }
            | Error::InvalidStateDict { .. }
            | Error::UnknownSlot { .. }
            | Error::UnknownHyper { .. }
            | Error::OutputNotSet { .. }
            | Error::ScalarRequired { .. }
            | Error::ElementRequired { .. }
            | Error::PerParameterValue { .. }
            | Error::GroupsDisagree { .. }
            | Error::Arity { .. }
            | Error::InvalidProgram { .. }
            | Error::ProgramTooLarge { .. }
            | Error::ForeignExpr
            | Error::NonFiniteNorm { .. }
            | Error::Unsupported { .. }
            | Error::InvalidOption { .. }
            | Error::StateMismatch { .. }
            | Error::LengthMismatch { .. }
            | Error::Aliasing { .. }
            | Error::DTypeMismatch { .. }
            | Error::EvalMode
            | Error::StepOverflow
            | Error::Text(_)
            | Error::InvalidName { .. } => ErrorKind::UserMistake,
        }
    }
}

/// `Result` with optjit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

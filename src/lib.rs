//! # optjit
//!
//! Deep-learning optimizers written as small expression graphs over `param`, `grad`, named
//! state and hyperparameters, fused into one pass over memory and JIT-compiled with
//! Cranelift into a 128-bit SIMD loop per dtype. A reference interpreter runs the same
//! program bit for bit, so every kernel can be checked.
//!
//! - [`Builder`] writes an optimizer like its paper; [`text`] reads and prints the same
//!   graphs as `.opt` text, loaded at run time; [`optim`] holds the built-ins.
//! - [`passes::compile`] turns the [`Graph`] into a [`Program`] (prologue + fused stage),
//!   printable at every step.
//! - [`Jit`] compiles the stage; [`interp`] runs it without code generation.
//! - [`Stepper`] applies an optimizer to caller-owned slices.
//! - [`round`] defines the bf16 and f16 storage conversions and stochastic rounding that
//!   the interpreter and the JIT share.
//!
//! ```
//! use optjit::{Builder, Stepper};
//!
//! // Adam, from its equations.
//! let b = Builder::new("my_adam");
//! let (lr, b1, b2, eps) = (b.hyper("lr", 1e-3), b.hyper("b1", 0.9), b.hyper("b2", 0.999), b.hyper("eps", 1e-8));
//! let g = b.grad();
//! let m = b1 * b.state("m", 0.0) + (1.0 - b1) * g;
//! let v = b2 * b.state("v", 0.0) + (1.0 - b2) * g * g;
//! let m_hat = m / (1.0 - b1.pow(b.step()));
//! let v_hat = v / (1.0 - b2.pow(b.step()));
//! b.set_state("m", m).unwrap();
//! b.set_state("v", v).unwrap();
//! b.set_param(b.param() - lr * m_hat / (v_hat.sqrt() + eps));
//!
//! let mut adam = Stepper::new(&b.finish().unwrap()).unwrap();
//! adam.set_hyper("lr", 0.1).unwrap(); // a runtime input: no recompile
//! let (mut param, grad) = (vec![1.0f32; 10], vec![0.5f32; 10]);
//! let mut state = adam.init_state::<f32>(param.len()).unwrap();
//! adam.step(&mut param, &grad, &mut state).unwrap();
//! assert!((param[0] - 0.9).abs() < 1e-6); // the first Adam step moves by lr
//! ```
//!
//! # Threads
//!
//! Graphs, programs, [`Jit`]s (their cache is behind a mutex), [`Kernel`]s (immutable code),
//! [`Stepper`]s, state dicts and errors are `Send + Sync`. [`Optimizer`] is `Send + Sync` too:
//! every change takes `&mut self`, so shared references only read, and step hooks need only
//! be `Send`. A [`Builder`] is `Send` but not `Sync` (its graph is in a `RefCell`: one thread
//! builds at a time), and its [`Expr`]s borrow it, so they stay on its thread.
//! `tests/send_sync.rs` checks this at compile time.

/// The README's examples, run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod conformance;
mod dtype;
mod engine;
mod error;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod optim;
pub mod passes;
pub mod program;
pub mod round;
pub mod runtime;
pub mod schedule;
mod segment;
mod stepper;
pub mod text;
pub mod transform;

pub use dtype::{DType, Element, Float, Layout};
pub use engine::Executor;
pub use error::{Error, ErrorKind, Result};
pub use ir::{Builder, Expr, Graph};
pub use jit::{Jit, JitOptions, Kernel, Target};
pub use program::Program;
pub use runtime::{GradScaler, Optimizer, Param, Precision};
pub use segment::{Elems, ElemsRef, Noise, Segment};
pub use stepper::{ParamRef, ParamSlices, ParamState, SlotValue, Stepper};

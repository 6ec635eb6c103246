//! Schedules of hyperparameters over the steps of training.
//!
//! [`graph`] holds optax's schedules as expressions of the step, compiled into the prologue.

pub mod graph;

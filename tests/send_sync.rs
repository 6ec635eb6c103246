//! Which public types cross threads, checked at compile time (a type that lost `Send` or
//! `Sync` fails to build this test). The crate docs ("Threads") say why each is what it is.

use optjit::runtime::{LoadReport, Param, StateDict};
use optjit::{Builder, Error, Graph, Jit, Kernel, Optimizer, ParamState, Program, Stepper};

fn send_and_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn the_public_types_cross_threads_as_documented() {
    // Shared freely: immutable after construction, or internally synchronised (the JIT's
    // cache is behind a mutex; kernels are immutable code).
    send_and_sync::<Graph>();
    send_and_sync::<Program>();
    send_and_sync::<Jit>();
    send_and_sync::<Kernel>();
    send_and_sync::<Stepper>();
    send_and_sync::<StateDict>();
    send_and_sync::<LoadReport>();
    send_and_sync::<ParamState<f32>>();
    send_and_sync::<Param<f64>>();
    send_and_sync::<Error>();
    // Every mutation takes `&mut self`; hooks need only be `Send`.
    send_and_sync::<Optimizer>();
    // A builder is used from one thread at a time (its graph is a `RefCell`): movable, not
    // shareable; its `Expr`s borrow it and so stay on its thread.
    send::<Builder>();
}

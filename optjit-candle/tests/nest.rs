//! The nest of in-place ops fits its stack: [`MAX_NEST`] vars on a thread of 1 MiB (half a
//! spawned thread's default; a stack overflow aborts this test), and far more on the
//! adapter's own thread.

mod common;

use candle_core::DType;
use common::{grad_store, values, var};
use optjit_candle::{Config, OptjitOptimizer, MAX_NEST};

fn sgd_over(n: usize) {
    let vars: Vec<_> = (0..n).map(|_| var(&[1.0, 2.0], DType::F32)).collect();
    let sgd = Config::new(optjit::optim::Sgd::default().graph().unwrap()).lr(1.0);
    let mut opt = OptjitOptimizer::new_named(
        vars.iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        sgd,
    )
    .unwrap();
    let refs: Vec<_> = vars.iter().collect();
    opt.try_step(&grad_store(&refs, &vec![vec![1.0, 1.0]; n]))
        .unwrap();
    assert!(vars.iter().all(|v| values(v) == [0.0, 1.0]));
}

#[test]
fn max_nest_vars_fit_in_one_mebibyte() {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| sgd_over(MAX_NEST))
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn two_thousand_vars_nest_on_a_thread_of_their_own() {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| sgd_over(2000))
        .unwrap()
        .join()
        .unwrap();
}

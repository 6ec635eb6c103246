//! The kernel cache: hyperparameter values never reach the code, so changing them never
//! recompiles; a different dtype, stage or unroll does.

use optjit::optim::{Adam, AdamW};
use optjit::{passes, DType, Jit, JitOptions, Stepper};

#[test]
fn changing_hyperparameters_never_recompiles() {
    let jit = Jit::new().unwrap();
    let mut stepper = Stepper::new(&Adam::default().graph().unwrap())
        .unwrap()
        .with_jit(jit.clone());
    let mut param = vec![1.0f32; 100];
    let grad = vec![0.25f32; 100];
    let mut state = stepper.init_state(100).unwrap();
    let mut previous = param.clone();
    for k in 0..10 {
        stepper.set_hyper("lr", 1e-3 * (k + 1) as f64).unwrap();
        stepper.set_hyper("b1", 0.8 + 0.01 * k as f64).unwrap();
        stepper.set_hyper("eps", 1e-8 * (k + 1) as f64).unwrap();
        stepper.step(&mut param, &grad, &mut state).unwrap();
        assert_ne!(param, previous, "step {k} moved the parameters");
        previous = param.clone();
    }
    assert_eq!(jit.stats().compiles, 1);

    // A new stepper whose graph differs only in hyperparameter defaults hits the cache.
    let other = Stepper::new(
        &Adam {
            lr: 0.5,
            betas: (0.5, 0.6),
            ..Adam::default()
        }
        .graph()
        .unwrap(),
    )
    .unwrap()
    .with_jit(jit.clone());
    other.step(&mut param, &grad, &mut state).unwrap();
    let stats = jit.stats();
    assert_eq!((stats.compiles, stats.hits), (1, 1));
}

#[test]
fn dtype_stage_and_unroll_are_part_of_the_key() {
    let jit = Jit::new().unwrap();
    let adam = passes::compile(&Adam::default().graph().unwrap()).unwrap();
    let adamw = passes::compile(&AdamW::default().graph().unwrap()).unwrap();
    jit.compile(&adam, DType::F32).unwrap();
    jit.compile(&adam, DType::F32).unwrap();
    assert_eq!((jit.stats().compiles, jit.stats().hits), (1, 1));
    jit.compile(&adam, DType::F64).unwrap();
    jit.compile(&adamw, DType::F32).unwrap();
    jit.compile_with(&adam, DType::F32, JitOptions { unroll: 1 })
        .unwrap();
    assert_eq!((jit.stats().compiles, jit.stats().hits), (4, 1));
    assert!(jit
        .compile_with(&adam, DType::F32, JitOptions { unroll: 3 })
        .is_err());
}

#[test]
fn kernels_outlive_their_jit() {
    let program = passes::compile(&Adam::default().graph().unwrap()).unwrap();
    let kernel = Jit::new().unwrap().compile(&program, DType::F64).unwrap();
    // The Jit is gone; the kernel keeps the code memory alive.
    let stepper = Stepper::new(&Adam::default().graph().unwrap()).unwrap();
    let mut p = vec![1.0f64; 3];
    let g = vec![1.0f64; 3];
    let mut state: optjit::ParamState<f64> = stepper.init_state(3).unwrap();
    let scalars: Vec<f64> = {
        let mut values = Vec::new();
        program.eval_prologue(&[1e-3, 0.9, 0.999, 1e-8, 0.0], 1, |_| 0.0, &mut values);
        program
            .prologue
            .kernel_scalars
            .iter()
            .map(|&k| values[k as usize])
            .collect()
    };
    let mut state_bufs: Vec<optjit::Elems<'_>> = state
        .slots
        .iter_mut()
        .map(|s| match s {
            optjit::SlotValue::Buffer(b) => b.as_mut_slice().into(),
            optjit::SlotValue::Scalar(_) => unreachable!(),
        })
        .collect();
    kernel
        .run(&mut [optjit::Segment {
            param: (&mut p).into(),
            grad: (&g).into(),
            state: &mut state_bufs,
            scalars: &scalars,
            partials: &mut [],
            noise: optjit::Noise::NONE,
        }])
        .unwrap();
    // First Adam step: p - lr * g / (|g| + eps) = 1 - 1e-3 / (1 + 1e-8).
    assert_eq!(p, vec![1.0 - 1e-3 / (1.0 + 1e-8); 3]);
}

/// The unroll factor follows the stage's kind: ×4 without division, ×2 with one, ×1 with many
/// scalars; halved once more when the main loop is specialised for two per-step conditions
/// (emitted four times), never changed by one condition or none.
#[test]
fn the_unroll_factor_follows_the_stage() {
    let unroll = |name: &str| {
        let program = passes::compile(&optjit::optim::by_name(name).unwrap()).unwrap();
        JitOptions::for_stage(&program.stage).unroll
    };
    assert_eq!(
        unroll("lion"),
        JitOptions::DEFAULT_UNROLL,
        "no division, no condition"
    );
    assert_eq!(unroll("sgd"), JitOptions::DEFAULT_UNROLL, "one condition");
    assert_eq!(
        unroll("sgd_momentum"),
        JitOptions::DEFAULT_UNROLL / 2,
        "two conditions"
    );
    assert_eq!(
        unroll("adamw"),
        JitOptions::DIVIDER_BOUND_UNROLL,
        "division, no condition"
    );
    assert_eq!(
        unroll("adam"),
        JitOptions::DIVIDER_BOUND_UNROLL,
        "division, one condition"
    );
    assert_eq!(unroll("adagrad"), 1, "division, two conditions");
    assert_eq!(unroll("radamw"), 1, "many scalars, no condition");
    assert_eq!(unroll("radam"), 1, "many scalars, two conditions");
}

/// The cache holds at most its capacity: compiling into a full cache empties it, and the
/// kernels compiled before keep running (their code memory lives as long as they do).
#[test]
fn the_cache_is_bounded_and_evicted_kernels_stay_valid() {
    let jit = Jit::new().unwrap();
    jit.set_cache_capacity(2);
    let names = ["sgd", "lion", "adam", "adamw", "rmsprop"];
    let programs: Vec<_> = names
        .iter()
        .map(|name| passes::compile(&optjit::optim::by_name(name).unwrap()).unwrap())
        .collect();
    let kernels: Vec<_> = programs
        .iter()
        .map(|p| jit.compile(p, DType::F32).unwrap())
        .collect();
    assert!(jit.cached() <= 2, "{} kernels cached", jit.cached());
    let stats = jit.stats();
    assert_eq!((stats.compiles, stats.evicted), (5, 4));
    // The first kernel, evicted twice over, runs and computes what a fresh JIT's does.
    let fresh = Jit::new()
        .unwrap()
        .compile(&programs[0], DType::F32)
        .unwrap();
    let run = |kernel: &optjit::Kernel| {
        let (mut p, g) = (vec![1.0f32; 37], vec![0.5f32; 37]);
        let scalars = vec![0.25f32; programs[0].stage.n_scalars as usize];
        let mut state: Vec<Vec<f32>> = (2..programs[0].stage.n_streams)
            .map(|_| vec![0.125f32; 37])
            .collect();
        let mut state: Vec<optjit::Elems<'_>> = state.iter_mut().map(|s| s.into()).collect();
        kernel
            .run(&mut [optjit::Segment {
                param: (&mut p).into(),
                grad: (&g).into(),
                state: &mut state,
                scalars: &scalars,
                partials: &mut [],
                noise: optjit::Noise::NONE,
            }])
            .unwrap();
        p
    };
    let ours = run(&kernels[0]);
    assert_ne!(ours, vec![1.0f32; 37], "the step moved the parameters");
    assert_eq!(ours, run(&fresh));
    // Compiling an evicted program again compiles it.
    jit.compile(&programs[0], DType::F32).unwrap();
    assert_eq!(jit.stats().compiles, 6);
}

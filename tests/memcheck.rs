//! Every built-in stepped by the JIT through the `Stepper` at every length 0..=1027 and
//! through the `Optimizer` (all those lengths in one optimizer, one and two threads, plus a
//! parameter long enough to be split between threads), and random stages at every unroll,
//! each against an interpreter, bit for bit: the chunked one for the built-ins (as exact as
//! the reference, `tests/differential.rs`, and many times faster under valgrind), the
//! reference for the random stages. Sized to run under valgrind:
//! `scripts/memcheck.sh` runs this binary under memcheck, which checks that no kernel reads or
//! writes outside its buffers and no allocation leaks or is used after free.

mod common;

use half::bf16;
use ndarray::Array1;
use optjit::{
    optim, passes, Executor, Float, Jit, JitOptions, Optimizer, Param, ParamRef, ParamState,
    Segment, Stepper,
};

const LENGTHS: std::ops::RangeInclusive<usize> = 0..=1027;

/// Long enough that two threads each take a part of it.
const THREADED_LEN: usize = 2 * optjit::runtime::GRAIN;

/// Equal bits, or both NaN.
fn same<T: Float>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64() || (x.is_nan() && y.is_nan()))
}

/// A deterministic gradient of `len` elements, different per `seed`.
fn grad<T: Float>(len: usize, seed: u64) -> Vec<T> {
    let mut rng = common::SplitMix64::new(seed);
    (0..len).map(|_| T::from_f64(rng.unit() - 0.5)).collect()
}

fn stepper_every_length<T: Float>(name: &str) {
    let graph = optim::by_name(name).unwrap();
    let jit = Stepper::new(&graph).unwrap();
    let reference = Stepper::new(&graph)
        .unwrap()
        .with_executor(Executor::Chunked);
    for len in LENGTHS {
        let mut params = [vec![T::from_f64(1.0); len], vec![T::from_f64(1.0); len]];
        let mut states = [jit.init_state(len).unwrap(), jit.init_state(len).unwrap()];
        for step in 0..2 {
            let g = grad::<T>(len, step);
            jit.step(&mut params[0], &g, &mut states[0]).unwrap();
            reference.step(&mut params[1], &g, &mut states[1]).unwrap();
        }
        assert!(
            same(&params[0], &params[1]),
            "{name} {}: length {len}",
            T::DTYPE
        );
    }
}

/// bf16 parameters and gradients with f32 state, the parameters rounded stochastically (the
/// conversions' loads and stores, the generator's words in the segment record), at the lengths
/// around every vector width and one past the unrolled loop, against the chunked interpreter.
fn stepper_bf16_lengths(name: &str) {
    let graph = optim::by_name(name).unwrap();
    let build = |executor| {
        Stepper::new(&graph)
            .unwrap()
            .with_executor(executor)
            .with_stochastic_rounding(&["param"], 7)
            .unwrap()
    };
    let (jit, reference) = (build(Executor::Jit), build(Executor::Chunked));
    for len in (0..=67).chain([1027]) {
        let mut params = [vec![bf16::ONE; len], vec![bf16::ONE; len]];
        let mut states: [ParamState<f32>; 2] =
            [jit.init_state(len).unwrap(), jit.init_state(len).unwrap()];
        for step in 0..2 {
            let g: Vec<bf16> = grad::<f32>(len, step)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            for (k, stepper) in [&jit, &reference].into_iter().enumerate() {
                let (param, state) = (&mut params[k], &mut states[k]);
                let mut one = [ParamRef {
                    param,
                    grad: &g,
                    state,
                }];
                stepper.step_many(&mut one).unwrap();
            }
        }
        let bits = |p: &[bf16]| p.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&params[0]),
            bits(&params[1]),
            "{name} bf16: length {len}"
        );
    }
}

/// Every length in one optimizer (adjacent parameters merge into segments), then the threaded
/// parameter; returns the parameters after two steps.
fn optimizer_steps<T: Float>(name: &str, executor: Executor, threads: usize) -> Vec<Vec<T>> {
    let graph = optim::by_name(name).unwrap();
    let mut opt = Optimizer::new(&graph)
        .unwrap()
        .with_executor(executor)
        .with_threads(threads);
    let group = opt.add_param_group(&[]).unwrap();
    let lengths = LENGTHS.chain([THREADED_LEN]);
    let handles: Vec<Param<T>> = lengths
        .map(|len| {
            let values = Array1::from_elem(len, T::from_f64(1.0));
            opt.add_param(group, &format!("p{len}"), &values).unwrap()
        })
        .collect();
    for step in 0..2 {
        for (k, h) in handles.iter().enumerate() {
            let len = opt.param(h).unwrap().len();
            opt.set_grad(h, &grad::<T>(len, step * 10_000 + k as u64))
                .unwrap();
        }
        opt.step().unwrap();
    }
    handles
        .iter()
        .map(|h| opt.param(h).unwrap().to_vec())
        .collect()
}

fn optimizer_every_length<T: Float>(name: &str) {
    let expected = optimizer_steps::<T>(name, Executor::Chunked, 1);
    for threads in [1, 2] {
        let got = optimizer_steps::<T>(name, Executor::Jit, threads);
        for (e, g) in expected.iter().zip(&got) {
            assert!(
                same(e, g),
                "{name} {} {threads} threads: length {}",
                T::DTYPE,
                e.len()
            );
        }
    }
}

#[test]
fn every_builtin_steps_every_length_as_the_interpreter_does() {
    for name in optim::NAMES {
        stepper_every_length::<f32>(name);
        stepper_every_length::<f64>(name);
        optimizer_every_length::<f32>(name);
        optimizer_every_length::<f64>(name);
        stepper_bf16_lengths(name);
    }
}

/// One segment's param, grad and state buffers.
type Buffers = (Vec<f32>, Vec<f32>, Vec<Vec<f32>>);

/// Random stages (tests/common's generator) at every unroll, on segments of lengths around
/// every vector width, in one call each.
#[test]
fn random_stages_run_as_the_interpreter_does_at_every_unroll() {
    let jit = Jit::new().unwrap();
    let lengths = [
        0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1027,
    ];
    for seed in 0..150 {
        let program = passes::compile(&common::random_graph(seed)).unwrap();
        let stage = &program.stage;
        let mut rng = common::SplitMix64::new(seed);
        let scalars: Vec<f32> = (0..stage.n_scalars).map(|_| rng.mixed()).collect();
        let slots = stage.n_streams as usize - 2;
        let inputs: Vec<Buffers> = lengths
            .iter()
            .map(|&len| {
                let state = (0..slots).map(|_| rng.mixed_vec(len)).collect();
                (rng.mixed_vec(len), rng.mixed_vec(len), state)
            })
            .collect();
        let run = |kernel: Option<&optjit::Kernel>| {
            let mut bufs = inputs.clone();
            {
                let mut lists: Vec<Vec<optjit::Elems<'_>>> = Vec::new();
                let mut rest = Vec::new();
                for (param, grad, state) in &mut bufs {
                    lists.push(state.iter_mut().map(|s| s.as_mut_slice().into()).collect());
                    rest.push((param.as_mut_slice(), grad.as_slice()));
                }
                let mut segments: Vec<Segment<'_, f32>> = rest
                    .into_iter()
                    .zip(&mut lists)
                    .map(|((param, grad), state)| Segment {
                        param: param.into(),
                        grad: grad.into(),
                        state,
                        scalars: &scalars,
                        partials: &mut [],
                        noise: optjit::Noise::NONE,
                    })
                    .collect();
                match kernel {
                    Some(k) => k.run(&mut segments).unwrap(),
                    None => optjit::interp::run_reference(stage, &mut segments).unwrap(),
                }
            }
            bufs
        };
        let expected = run(None);
        for unroll in [1, 2, 4, 8] {
            let kernel = jit
                .compile_with(&program, optjit::DType::F32, JitOptions { unroll })
                .unwrap();
            for (e, g) in expected.iter().zip(&run(Some(&kernel))) {
                let len = e.0.len();
                assert!(same(&e.0, &g.0), "seed {seed} unroll {unroll} len {len}");
                for (es, gs) in e.2.iter().zip(&g.2) {
                    assert!(same(es, gs), "seed {seed} unroll {unroll} len {len} state");
                }
            }
        }
    }
}

//! `optjit::bench`: every native loop, in every version this CPU runs, equals the JIT bit for
//! bit; its errors are typed and change nothing; the floor kernels compute what they say.

// The command line and `optjit::bench`/`conformance` come with the `cli` feature.
#![cfg(feature = "cli")]

mod common;

use common::SplitMix64;
use optjit::bench::floor::{self, Floor};
use optjit::bench::native::{Isa, NativeOptimizer};
use optjit::{Error, Executor, ParamState, SlotValue, Stepper};

/// Around the JIT's vector width (4 lanes) and rustc's (up to 16), and a long odd one.
const LENGTHS: [usize; 6] = [0, 1, 15, 16, 17, 1027];
/// Steps compared per run.
const STEPS: u64 = 6;

/// A value from [`SplitMix64::mixed`] below 1e6 in magnitude (±0, subnormals and tiny normals
/// included): no run of a few steps overflows, so no NaN or infinity can arise.
fn finite(rng: &mut SplitMix64) -> f32 {
    loop {
        let x = rng.mixed::<f32>();
        if x.abs() < 1e6 {
            return x;
        }
    }
}

/// Random state at step `step` for the JIT's `stepper`: second moments (`exp_avg_sq`,
/// `square_avg`) non-negative, as a run keeps them.
fn random_state(
    stepper: &Stepper,
    rng: &mut SplitMix64,
    gen: fn(&mut SplitMix64) -> f32,
    len: usize,
    step: u64,
) -> ParamState<f32> {
    let mut state = stepper.init_state::<f32>(len).unwrap();
    state.step = step;
    for (slot, value) in stepper.program().slots.iter().zip(&mut state.slots) {
        let square = slot.name.ends_with("sq") || slot.name == "square_avg";
        *value = SlotValue::Buffer(
            (0..len)
                .map(|_| if square { gen(rng).abs() } else { gen(rng) })
                .collect(),
        );
    }
    state
}

/// The first index where `a` and `b` differ in any bit, NaNs included: from finite inputs
/// every NaN is the CPU's default NaN, whichever operand order a compiler picks.
fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

/// Runs `opt` on `isa` and the JIT side by side for [`STEPS`] steps from `start` on the same
/// random inputs, asserting equal bits in parameters and state after every step. Returns how
/// many infinities and NaNs the JIT produced.
fn compare(
    opt: NativeOptimizer,
    isa: Isa,
    len: usize,
    start: u64,
    gen: fn(&mut SplitMix64) -> f32,
) -> usize {
    let stepper = Stepper::new(&opt.graph().unwrap())
        .unwrap()
        .with_executor(Executor::Jit);
    let slot_names: Vec<&str> = stepper
        .program()
        .slots
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(opt.slots(), slot_names, "{opt:?}: slot order");

    let mut rng = SplitMix64::new(0x5eed ^ (len as u64) << 8 ^ start << 20);
    let mut param: Vec<f32> = (0..len).map(|_| gen(&mut rng)).collect();
    let mut jit_param = param.clone();
    let mut jit_state = random_state(&stepper, &mut rng, gen, len, start);
    let mut state: Vec<Vec<f32>> = (0..slot_names.len())
        .map(|n| jit_state.buffer(n).unwrap().to_vec())
        .collect();
    let mut non_finite = 0;
    for step in start + 1..=start + STEPS {
        let grad: Vec<f32> = (0..len).map(|_| gen(&mut rng)).collect();
        let mut buffers: Vec<&mut [f32]> = state.iter_mut().map(|b| b.as_mut_slice()).collect();
        opt.step_with(isa, step, &mut param, &grad, &mut buffers)
            .unwrap();
        stepper.step(&mut jit_param, &grad, &mut jit_state).unwrap();
        assert_eq!(jit_state.step, step);

        let what = format!("{opt:?} on {}, n = {len}, step {step}", isa.name());
        if let Some(i) = first_difference(&param, &jit_param) {
            panic!(
                "{what}: param[{i}] = {:e}, the JIT's {:e}",
                param[i], jit_param[i]
            );
        }
        for (n, name) in slot_names.iter().enumerate() {
            let jit = jit_state.buffer(n).unwrap();
            if let Some(i) = first_difference(&state[n], jit) {
                panic!(
                    "{what}: {name}[{i}] = {:e}, the JIT's {:e}",
                    state[n][i], jit[i]
                );
            }
            non_finite += jit.iter().filter(|x| !x.is_finite()).count();
        }
        non_finite += jit_param.iter().filter(|x| !x.is_finite()).count();
    }
    non_finite
}

#[test]
fn every_native_loop_equals_the_jit_bit_for_bit() {
    let isas = Isa::available();
    assert_eq!(isas.last(), Some(&Isa::Portable));
    for opt in NativeOptimizer::ALL {
        for &isa in &isas {
            for len in LENGTHS {
                // From a fresh start (step 1 differs for SGD) and late in a run.
                for start in [0, 999] {
                    let non_finite = compare(opt, isa, len, start, finite);
                    assert_eq!(non_finite, 0, "{opt:?}: these inputs never overflow");
                }
            }
        }
    }
}

#[test]
fn huge_inputs_equal_the_jit_bit_for_bit() {
    // Values up to f32::MAX overflow into infinities within a few steps.
    let mut non_finite = 0;
    for opt in NativeOptimizer::ALL {
        for isa in Isa::available() {
            for len in LENGTHS {
                non_finite += compare(opt, isa, len, 0, |r| r.mixed());
            }
        }
    }
    assert!(non_finite > 0, "the inputs should overflow somewhere");
}

#[test]
fn isa_names_the_best_available_version() {
    assert_eq!(NativeOptimizer::isa(), Isa::best().name());
    assert_eq!(Isa::available().first(), Some(&Isa::best()));
    assert!(Isa::Portable.is_available());
    for isa in Isa::ALL {
        assert_eq!(Isa::available().contains(&isa), isa.is_available());
    }
    let bytes: Vec<usize> = NativeOptimizer::ALL
        .iter()
        .map(|o| o.bytes_per_element())
        .collect();
    assert_eq!(bytes, [28, 28, 20, 20, 20]);
}

#[test]
fn unavailable_isas_are_refused() {
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        let (mut p, g, mut m) = (vec![1.0f32; 3], vec![1.0f32; 3], vec![0.0f32; 3]);
        let err = NativeOptimizer::Lion
            .step_with(isa, 1, &mut p, &g, &mut [&mut m])
            .unwrap_err();
        assert!(matches!(err, Error::InvalidOption { option: "isa", .. }));
        assert_eq!(p, [1.0; 3]);
    }
}

#[test]
fn mismatched_inputs_are_typed_errors_and_change_nothing() {
    let (mut p, g, short) = (vec![1.0f32; 4], vec![1.0f32; 4], vec![1.0f32; 3]);
    let (mut m, mut v, mut w) = (vec![0.0f32; 4], vec![0.0f32; 4], vec![0.0f32; 4]);
    let mut v_short = vec![0.0f32; 5];
    let adam = NativeOptimizer::Adam;

    let err = adam
        .step(1, &mut p, &short, &mut [&mut m, &mut v])
        .unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            what: "grad".into(),
            expected: 4,
            actual: 3
        }
    );
    let err = adam
        .step(1, &mut p, &g, &mut [&mut m, &mut v_short])
        .unwrap_err();
    assert_eq!(
        err,
        Error::LengthMismatch {
            what: "state slot `exp_avg_sq`".into(),
            expected: 4,
            actual: 5
        }
    );
    let too_few = adam.step(1, &mut p, &g, &mut [&mut m]).unwrap_err();
    let too_many = adam
        .step(1, &mut p, &g, &mut [&mut m, &mut v, &mut w])
        .unwrap_err();
    let none = adam.step(1, &mut p, &g, &mut []).unwrap_err();
    for err in [too_few, too_many, none] {
        assert!(matches!(err, Error::StateMismatch { .. }), "{err}");
    }
    let err = adam.step(0, &mut p, &g, &mut [&mut m, &mut v]).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { option: "step", .. }));

    assert_eq!(p, [1.0; 4]);
    assert!(m.iter().chain(&v).chain(&w).all(|&x| x == 0.0));
    assert!(v_short.iter().all(|&x| x == 0.0));

    // The same length checks guard every optimizer.
    for opt in NativeOptimizer::ALL {
        let mut bufs: Vec<Vec<f32>> = vec![vec![0.0; 3]; opt.slots().len()];
        let mut state: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let err = opt.step(1, &mut p, &g, &mut state).unwrap_err();
        assert!(
            matches!(err, Error::LengthMismatch { .. }),
            "{opt:?}: {err}"
        );
    }
}

#[test]
fn copy_and_axpy_compute_their_values_on_any_thread_count() {
    let mut rng = SplitMix64::new(7);
    for len in LENGTHS.into_iter().chain([100_003]) {
        let x: Vec<f32> = (0..len).map(|_| finite(&mut rng)).collect();
        let y0: Vec<f32> = (0..len).map(|_| finite(&mut rng)).collect();
        let a = 0.7f32;
        let expected: Vec<f32> = x.iter().zip(&y0).map(|(&x, &y)| a * x + y).collect();
        for threads in [1, 2, 3] {
            let mut dst = vec![f32::NAN; len];
            floor::copy(&mut dst, &x, threads).unwrap();
            assert_eq!(
                first_difference(&dst, &x),
                None,
                "copy, n = {len}, {threads} threads"
            );

            let mut y = y0.clone();
            floor::axpy(a, &x, &mut y, threads).unwrap();
            assert_eq!(first_difference(&y, &expected), None, "axpy, n = {len}");
        }
    }
}

#[test]
fn floor_errors_and_bytes_per_element() {
    let (mut a, b) = (vec![0.0f32; 4], vec![1.0f32; 5]);
    let err = floor::copy(&mut a, &b, 1).unwrap_err();
    assert!(matches!(
        err,
        Error::LengthMismatch {
            expected: 4,
            actual: 5,
            ..
        }
    ));
    let err = floor::axpy(1.0, &b, &mut a, 2).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }));
    let err = floor::axpy(1.0, &b[..4], &mut a, 0).unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidOption {
            option: "threads",
            ..
        }
    ));
    assert_eq!(a, [0.0; 4]);

    let err = floor::read(&b, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }));
    for threads in [1, 2, 3] {
        floor::read(&b, threads).unwrap();
        floor::read(&[], threads).unwrap();
    }
    // The read pass's sum: exact here (small integers), whatever the tail.
    for len in [0, 1, 15, 16, 17, 100] {
        let x: Vec<f32> = (0..len).map(|k| (k % 7) as f32).collect();
        let exact: f32 = x.iter().map(|v| v * v).sum();
        assert_eq!(floor::sum_squares(&x), exact, "n = {len}");
    }
    assert_eq!(Floor::Read.bytes_per_element(), 4);
    assert_eq!(Floor::Copy.bytes_per_element(), 8);
    assert_eq!(Floor::Axpy.bytes_per_element(), 12);
    let rate = Floor::Axpy.bytes_per_second(1000, std::time::Duration::from_micros(1));
    assert_eq!(rate, 12e9);
}

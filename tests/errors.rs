//! Mistakes in definitions and inputs give typed errors, and a failed step changes nothing.

use optjit::optim::{Adam, Sgd};
use optjit::{Builder, Error, Executor, ParamRef, SlotValue, Stepper};

#[test]
fn builder_mistakes_are_typed() {
    // Element value where a scalar is required.
    let b = Builder::new("t");
    b.set_param(b.param() - b.grad().pow(2.0));
    assert_eq!(
        b.finish().unwrap_err(),
        Error::ScalarRequired {
            what: "the operand of `pow`".into()
        }
    );

    // Per-element value assigned to a scalar state slot.
    let b = Builder::new("t");
    let mu = b.scalar_state("mu", 1.0);
    b.set_state("mu", mu * b.grad()).unwrap();
    b.set_param(b.param());
    assert!(matches!(b.finish(), Err(Error::ScalarRequired { what }) if what.contains("`mu`")));

    // Unknown slot.
    let b = Builder::new("t");
    assert_eq!(
        b.set_state("m", b.grad()).unwrap_err(),
        Error::UnknownSlot { name: "m".into() }
    );

    // Param never set.
    let b = Builder::new("t");
    b.hyper("lr", 0.1);
    assert_eq!(
        b.finish().unwrap_err(),
        Error::OutputNotSet {
            output: "param".into()
        }
    );

    // A slot never set.
    let b = Builder::new("t");
    b.state("m", 0.0);
    b.set_param(b.param());
    assert_eq!(
        b.finish().unwrap_err(),
        Error::OutputNotSet { output: "m".into() }
    );

    // Names: duplicates and reserved words.
    let b = Builder::new("t");
    b.hyper("lr", 0.1);
    b.state("lr", 0.0);
    b.set_param(b.param());
    assert_eq!(
        b.finish().unwrap_err(),
        Error::DuplicateName { name: "lr".into() }
    );
    let b = Builder::new("t");
    b.hyper("step", 0.1);
    b.set_param(b.param());
    assert_eq!(
        b.finish().unwrap_err(),
        Error::ReservedName {
            name: "step".into()
        }
    );

    // Expressions from two builders.
    let (b1, b2) = (Builder::new("a"), Builder::new("b"));
    b1.set_param(b1.param() + b2.grad());
    assert_eq!(b1.finish().unwrap_err(), Error::ForeignExpr);

    // Invalid built-in options.
    assert!(matches!(
        Sgd {
            nesterov: true,
            ..Sgd::default()
        }
        .graph(),
        Err(Error::InvalidOption {
            option: "nesterov",
            ..
        })
    ));
}

#[test]
fn unknown_hyperparameters_are_typed() {
    let mut s = Stepper::new(&Adam::default().graph().unwrap()).unwrap();
    assert_eq!(
        s.set_hyper("beta1", 0.5).unwrap_err(),
        Error::UnknownHyper {
            name: "beta1".into()
        }
    );
    assert_eq!(
        s.hyper("momentum").unwrap_err(),
        Error::UnknownHyper {
            name: "momentum".into()
        }
    );
}

/// Runs a failing `step_many` and asserts that no parameter and no state changed.
fn assert_rejected_without_change(executor: Executor) {
    let stepper = Stepper::new(&Adam::default().graph().unwrap())
        .unwrap()
        .with_executor(executor);
    let mut p0 = vec![1.0f32; 8];
    let mut p1 = vec![2.0f32; 5];
    let g0 = vec![0.5f32; 8];
    let g1_short = vec![0.5f32; 4];
    let mut s0 = stepper.init_state(8).unwrap();
    let mut s1 = stepper.init_state(5).unwrap();
    let (p0_before, s0_before, s1_before) = (p0.clone(), s0.clone(), s1.clone());

    // The second parameter's grad is too short: the first must not be updated either.
    let err = stepper
        .step_many(&mut [
            ParamRef {
                param: &mut p0,
                grad: &g0,
                state: &mut s0,
            },
            ParamRef {
                param: &mut p1,
                grad: &g1_short,
                state: &mut s1,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 5,
                actual: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((&p0, &s0, &s1), (&p0_before, &s0_before, &s1_before));

    // State of the wrong shape: a buffer too short, a scalar where a buffer belongs, a slot
    // missing.
    let mut bad = stepper.init_state::<f32>(8).unwrap();
    bad.slots[1] = SlotValue::Buffer(vec![0.0; 3]);
    let err = stepper.step(&mut p0, &g0, &mut bad).unwrap_err();
    assert!(
        matches!(err, Error::StateMismatch { ref slot, .. } if slot == "exp_avg_sq"),
        "{err}"
    );
    bad.slots[1] = SlotValue::Scalar(0.0);
    assert!(matches!(
        stepper.step(&mut p0, &g0, &mut bad),
        Err(Error::StateMismatch { .. })
    ));
    bad.slots.pop();
    assert!(matches!(
        stepper.step(&mut p0, &g0, &mut bad),
        Err(Error::StateMismatch { .. })
    ));
    assert_eq!(bad.step, 0);
    assert_eq!(p0, p0_before);

    // Step count at its limit.
    let mut old = stepper.init_state::<f32>(8).unwrap();
    old.step = u64::MAX;
    assert_eq!(
        stepper.step(&mut p0, &g0, &mut old).unwrap_err(),
        Error::StepOverflow
    );
    assert_eq!(p0, p0_before);

    // And a valid step still works afterwards.
    stepper.step(&mut p0, &g0, &mut s0).unwrap();
    assert_ne!(p0, p0_before);
    assert_eq!(s0.step, 1);
}

#[test]
fn bad_inputs_change_nothing_with_every_executor() {
    for executor in [Executor::Jit, Executor::Reference, Executor::Eager] {
        assert_rejected_without_change(executor);
    }
}

#[test]
fn a_kernel_rejects_the_wrong_dtype_and_stream_count() {
    let graph = Adam::default().graph().unwrap();
    let stepper = Stepper::new(&graph).unwrap();
    let kernel = stepper.kernel(optjit::DType::F32).unwrap();
    let (mut p, g, mut m, mut v) = (
        vec![0.0f64; 4],
        vec![0.0f64; 4],
        vec![0.0f64; 4],
        vec![0.0f64; 4],
    );
    let scalars = vec![0.0f64; stepper.program().stage.n_scalars as usize];
    let err = kernel
        .run(&mut [optjit::Segment {
            param: (&mut p).into(),
            grad: (&g).into(),
            state: &mut [(&mut m).into(), (&mut v).into()],
            scalars: &scalars,
            partials: &mut [],
            noise: optjit::Noise::NONE,
        }])
        .unwrap_err();
    assert_eq!(
        err,
        Error::DTypeMismatch {
            expected: optjit::DType::F32,
            actual: optjit::DType::F64
        }
    );
    let kernel = stepper.kernel(optjit::DType::F64).unwrap();
    let err = kernel
        .run(&mut [optjit::Segment {
            param: (&mut p).into(),
            grad: (&g).into(),
            state: &mut [(&mut m).into()],
            scalars: &scalars,
            partials: &mut [],
            noise: optjit::Noise::NONE,
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 2,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
}

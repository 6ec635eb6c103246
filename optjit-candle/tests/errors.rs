//! Bad input gets a typed error and changes nothing: vars of other dtypes, duplicates,
//! gradients that do not fit or share a var's memory, optimizers without `lr`, bad options.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use common::{grad_store, values, var};
use optjit_candle::{Config, Error, OptjitOptimizer};

fn adamw() -> Config {
    Config::adamw(&candle_nn::ParamsAdamW::default()).unwrap()
}

fn named(vars: &[&Var]) -> Vec<(String, Var)> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| (format!("v{i}"), (*v).clone()))
        .collect()
}

#[test]
fn vars_of_other_dtypes_are_refused() {
    let ints = Var::from_tensor(&Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()).unwrap();
    let err = OptjitOptimizer::new_named(named(&[&ints]), adamw())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::UnsupportedDType {
                dtype: DType::U32,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_vars_and_names_are_refused() {
    let a = var(&[1.0], DType::F32);
    let err = OptjitOptimizer::new_named(named(&[&a, &a]), adamw())
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::DuplicateVar { first, second } if first == "v0" && second == "v1"),
        "{err}"
    );
    let b = var(&[1.0], DType::F32);
    let vars = vec![("w".to_string(), a), ("w".to_string(), b)];
    let err = OptjitOptimizer::new_named(vars, adamw()).err().unwrap();
    assert!(
        matches!(&err, Error::DuplicateName { name } if name == "w"),
        "{err}"
    );
}

#[test]
fn an_optimizer_without_lr_is_refused() {
    let graph =
        optjit::text::parse("optimizer nolr(rate = 1) {\n    param = param - rate * grad\n}")
            .unwrap();
    let err = OptjitOptimizer::new_named(vec![], Config::new(graph))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::NoLearningRate { optimizer } if optimizer == "nolr"),
        "{err}"
    );
}

#[test]
fn unknown_hyperparameters_and_bad_clips_are_refused() {
    let err = OptjitOptimizer::new_named(vec![], adamw().hyper("momentum", 0.9))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Optjit(optjit::Error::UnknownHyper { name }) if name == "momentum"),
        "{err}"
    );
    for (max_norm, norm_type) in [(1.0, 3.0), (f64::NAN, 2.0)] {
        let err = OptjitOptimizer::new_named(vec![], adamw().clip_grad_norm(max_norm, norm_type))
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
    }
}

/// One good gradient and one bad: an error, and neither var nor any state changed.
fn refused(bad: Tensor) -> Error {
    let (good, other) = (var(&[1.0, 2.0], DType::F32), var(&[3.0, 4.0], DType::F32));
    let mut opt = OptjitOptimizer::new_named(named(&[&good, &other]), adamw()).unwrap();
    let mut grads = grad_store(&[&good], &[vec![1.0, 1.0]]);
    grads.insert(other.as_tensor(), bad);
    let err = opt.try_step(&grads).err().unwrap();
    assert_eq!(
        (values(&good), values(&other)),
        (vec![1.0, 2.0], vec![3.0, 4.0])
    );
    assert_eq!((opt.steps("v0"), opt.steps("v1")), (Some(0), Some(0)));
    // candle's trait returns candle's error, with the message.
    let msg = opt.step(&grads).err().unwrap().to_string();
    assert!(msg.contains("v1"), "{msg}");
    err
}

#[test]
fn gradients_that_do_not_fit_change_nothing() {
    let f64_grad = Tensor::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
    let err = refused(f64_grad);
    assert!(
        matches!(
            err,
            Error::GradDTypeMismatch {
                var: DType::F32,
                grad: DType::F64,
                ..
            }
        ),
        "{err}"
    );
    let long = Tensor::new(&[1.0f32, 1.0, 1.0], &Device::Cpu).unwrap();
    let err = refused(long);
    assert!(
        matches!(&err, Error::GradShapeMismatch { grad, .. } if grad == &[3]),
        "{err}"
    );
}

#[test]
fn a_gradient_sharing_a_vars_memory_is_refused() {
    let (a, b) = (var(&[1.0, 2.0], DType::F32), var(&[3.0, 4.0], DType::F32));
    let mut opt = OptjitOptimizer::new_named(named(&[&a, &b]), adamw()).unwrap();
    let mut grads = grad_store(&[&a], &[vec![1.0, 1.0]]);
    // b's gradient is a's storage (a detached view: the same memory).
    grads.insert(b.as_tensor(), a.as_detached_tensor());
    let err = opt.try_step(&grads).err().unwrap();
    assert!(
        matches!(&err, Error::GradAliasesVar { name, var } if name == "v1" && var == "v0"),
        "{err}"
    );
    // A var's own storage as its gradient, too.
    let mut grads = grad_store(&[], &[]);
    grads.insert(a.as_tensor(), a.as_detached_tensor());
    let err = opt.try_step(&grads).err().unwrap();
    assert!(
        matches!(&err, Error::GradAliasesVar { name, var } if name == "v0" && var == "v0"),
        "{err}"
    );
    assert_eq!((values(&a), values(&b)), (vec![1.0, 2.0], vec![3.0, 4.0]));
}

#[test]
fn a_strided_gradient_is_read_through_a_contiguous_copy() {
    // candle's gradient of a sum over a broadcast is a broadcast (zero strides).
    let w = var(&[0.0, 0.0, 0.0], DType::F32);
    let sgd = Config::new(optjit::optim::Sgd::default().graph().unwrap()).lr(1.0);
    let mut opt = OptjitOptimizer::new_named(named(&[&w]), sgd).unwrap();
    let mut grads = grad_store(&[], &[]);
    let strided = Tensor::new(&[2.0f32], &Device::Cpu)
        .unwrap()
        .broadcast_as(3)
        .unwrap();
    assert!(!strided.is_contiguous());
    grads.insert(w.as_tensor(), strided);
    opt.try_step(&grads).unwrap();
    assert_eq!(values(&w), [-2.0, -2.0, -2.0]);
}

#[test]
fn a_step_that_must_see_every_var_is_refused_over_several_calls() {
    use optjit_candle::ParamGroup;
    let clipped = Config::from_text(include_str!("../../examples/clipped_adam.opt")).unwrap();
    let skipping = Config::new(optjit::optim::amp(adamw().graph()).unwrap());
    for (config, what) in [
        (clipped, "a reduction over all parameters"),
        (skipping, "a skip condition"),
    ] {
        // One group, one dtype: one engine call, accepted.
        let (w, b) = (var(&[1.0, 2.0], DType::F32), var(&[3.0], DType::F32));
        let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
        assert!(OptjitOptimizer::new_named(vars.clone(), config.clone()).is_ok());
        // Two groups, or two dtypes: refused, naming what spans the step.
        let grouped = config.clone().group(ParamGroup::matching(&["b"]));
        let wide = var(&[3.0], DType::F64);
        let mixed = vec![("w".to_string(), w), ("b".to_string(), wide)];
        for err in [
            OptjitOptimizer::new_named(vars, grouped).err().unwrap(),
            OptjitOptimizer::new_named(mixed, config).err().unwrap(),
        ] {
            assert!(
                matches!(&err, Error::SpansCalls { what: w, calls: 2, .. } if *w == what),
                "{err}"
            );
        }
    }
}

#[test]
fn groups_need_names_so_candles_constructor_refuses_them() {
    use optjit_candle::ParamGroup;
    let w = var(&[1.0], DType::F32);
    let config = adamw().group(ParamGroup::matching(&["*.bias"]));
    let err = <OptjitOptimizer as Optimizer>::new(vec![w.clone()], config)
        .err()
        .unwrap();
    assert!(err.to_string().contains("parameter groups"), "{err}");
    assert!(<OptjitOptimizer as Optimizer>::new(vec![w], adamw()).is_ok());
}

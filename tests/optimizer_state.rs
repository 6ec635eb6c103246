//! Optimizer state (`SlotKind::Optimizer`, `optimizer state` in the text form): one value for
//! the whole optimizer, advanced once per applied step, read by every parameter of every
//! group, the same in every group or the step fails, and kept in the state dict.

use ndarray::array;
use optjit::runtime::StateDict;
use optjit::{text, Builder, Error, Optimizer, Stepper};

/// An optimizer state counting applied steps, and a parameter moved by `lr · (count so far)`.
const COUNTER: &str = "optimizer counted(lr = 1) {
    optimizer state t = 0
    t = t + 1
    param = param - lr * t
}";

fn counter() -> Optimizer {
    Optimizer::new(&text::parse(COUNTER).unwrap()).unwrap()
}

#[test]
fn optimizer_state_advances_once_per_applied_step_for_every_group() {
    let mut opt = counter();
    let (g0, g1) = (
        opt.add_param_group(&[]).unwrap(),
        opt.add_param_group(&[("lr", 2.0)]).unwrap(),
    );
    let a = opt.add_param(g0, "a", &array![0.0f32]).unwrap();
    let b = opt.add_param(g1, "b", &array![0.0f64]).unwrap();
    // Step 1: both. Step 2: only `a`. Step 3: nobody. Step 4: only `b`.
    for (ga, gb) in [(true, true), (true, false), (false, false), (false, true)] {
        opt.zero_grad();
        if ga {
            opt.set_grad(&a, &[1.0]).unwrap();
        }
        if gb {
            opt.set_grad(&b, &[1.0]).unwrap();
        }
        assert!(opt.step().unwrap());
    }
    let dict = opt.state_dict();
    assert_eq!(dict.optimizer_state["t"], 4.0);
    // Each parameter read the optimizer's count at the steps it took part in.
    assert_eq!(opt.param(&a).unwrap(), &[-(1.0 + 2.0)]);
    assert_eq!(opt.param(&b).unwrap(), &[-2.0 * (1.0 + 4.0)]);
    // It is neither in the groups nor in the parameters' state.
    assert!(dict.param_groups.iter().all(|g| g.state.is_empty()));
    assert!(dict.state.values().all(|s| s.scalars.is_empty()));
}

#[test]
fn a_skipped_step_does_not_advance_optimizer_state() {
    let source = COUNTER.replace("t = t + 1", "t = t + 1\n    skip if global_nonfinite(grad)");
    let mut opt = Optimizer::new(&text::parse(&source).unwrap()).unwrap();
    let (g0, g1) = (
        opt.add_param_group(&[]).unwrap(),
        opt.add_param_group(&[]).unwrap(),
    );
    let a = opt.add_param(g0, "a", &array![0.0f32]).unwrap();
    let b = opt.add_param(g1, "b", &array![0.0f32]).unwrap();
    for grad in [1.0, f32::NAN, 1.0] {
        opt.set_grad(&a, &[1.0]).unwrap();
        opt.set_grad(&b, &[grad]).unwrap();
        let applied = opt.step().unwrap();
        assert_eq!(applied, !grad.is_nan());
    }
    assert_eq!(opt.state_dict().optimizer_state["t"], 2.0);
    assert_eq!(opt.param(&a).unwrap(), &[-3.0]);
}

#[test]
fn optimizer_state_that_groups_disagree_on_fails_the_step_and_changes_nothing() {
    let source = COUNTER.replace("t = t + 1", "t = t + lr");
    let mut opt = Optimizer::new(&text::parse(&source).unwrap()).unwrap();
    let (g0, g1) = (
        opt.add_param_group(&[]).unwrap(),
        opt.add_param_group(&[]).unwrap(),
    );
    let a = opt.add_param(g0, "a", &array![0.0f32]).unwrap();
    let b = opt.add_param(g1, "b", &array![0.0f32]).unwrap();
    opt.set_grad(&a, &[1.0]).unwrap();
    opt.set_grad(&b, &[1.0]).unwrap();
    assert!(opt.step().unwrap(), "the same lr in both groups");
    let before = opt.state_dict();
    opt.set_hyper(g1, "lr", 0.5).unwrap();
    let err = opt.step().unwrap_err();
    assert!(
        matches!(&err, Error::GroupsDisagree { what, groups: (0, 1) } if what.contains("`t`")),
        "{err}"
    );
    assert_eq!(err.kind(), optjit::ErrorKind::UserMistake);
    let mut after = opt.state_dict();
    after.param_groups[1].hypers.insert("lr".into(), 1.0);
    assert_eq!(after, before, "nothing changed");
    assert_eq!(opt.param(&a).unwrap(), &[-1.0]);
}

#[test]
fn optimizer_state_may_not_read_what_differs_between_parameters() {
    for new_value in ["t + step", "t + sumsq(grad)", "t + own"] {
        let source = format!(
            "optimizer o(lr = 1) {{
                optimizer state t = 0
                scalar state own = 0
                own = own
                t = {new_value}
                param = param - lr * grad
            }}"
        );
        let message = match text::parse(&source) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{new_value}: accepted"),
        };
        assert!(
            message.contains("optimizer state `t`"),
            "{new_value}: {message}"
        );
    }
    let b = Builder::new("o");
    let t = b.optimizer_state("t", 0.0);
    b.set_state("t", t + b.step()).unwrap();
    b.set_param(b.param() - b.grad());
    assert!(matches!(b.finish(), Err(Error::PerParameterValue { .. })));
    // Hyperparameters, group state and global reductions are accepted.
    let b = Builder::new("o");
    let lr = b.hyper("lr", 0.5);
    let n = b.group_state("n", 0.0);
    let t = b.optimizer_state("t", 0.0);
    let norm = b.grad().sum_squares(optjit::ir::Scope::Global);
    b.set_state("n", n + 1.0).unwrap();
    b.set_state("t", t + lr * norm + n).unwrap();
    b.set_param(b.param() - b.grad());
    assert!(b.finish().is_ok());
}

#[test]
fn optimizer_state_prints_and_parses_back() {
    let graph = text::parse(COUNTER).unwrap();
    let printed = text::print(&graph);
    assert!(printed.contains("optimizer state t = 0.0"), "{printed}");
    assert_eq!(text::parse(&printed).unwrap(), graph);
    // `optimizer` alone is still the header's keyword, not a statement.
    let bad = COUNTER.replace("optimizer state t = 0", "optimizer t = 0");
    assert!(text::parse(&bad).is_err());
}

/// Three steps of the counter over two groups; `resume` saves after the first (as bytes) and
/// continues in a fresh optimizer loaded from them. Returns the parameters' bits and the
/// final state dict.
fn run(resume: bool) -> (Vec<u64>, StateDict) {
    let make = || {
        let mut opt = counter();
        let (g0, g1) = (
            opt.add_param_group(&[]).unwrap(),
            opt.add_param_group(&[]).unwrap(),
        );
        let a = opt.add_param(g0, "a", &array![0.5f64, 1.5]).unwrap();
        let b = opt.add_param(g1, "b", &array![2.0f64]).unwrap();
        (opt, a, b)
    };
    let (mut opt, mut a, mut b) = make();
    for step in 0..3 {
        if resume && step == 1 {
            let bytes = opt.state_dict().to_bytes().unwrap();
            let params = (
                opt.param(&a).unwrap().to_vec(),
                opt.param(&b).unwrap().to_vec(),
            );
            (opt, a, b) = make();
            opt.param_mut(&a).unwrap().copy_from_slice(&params.0);
            opt.param_mut(&b).unwrap().copy_from_slice(&params.1);
            let dict = StateDict::from_bytes(&bytes).unwrap();
            assert!(opt.load_state_dict(&dict, true).unwrap().is_clean());
        }
        opt.set_grad(&a, &[1.0, -1.0]).unwrap();
        opt.set_grad(&b, &[0.25]).unwrap();
        opt.step().unwrap();
    }
    let bits = [opt.param(&a).unwrap(), opt.param(&b).unwrap()]
        .concat()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    (bits, opt.state_dict())
}

#[test]
fn optimizer_state_resumes_exactly_from_a_saved_state_dict() {
    let (straight, dict) = run(false);
    let (resumed, resumed_dict) = run(true);
    assert_eq!(dict.optimizer_state["t"], 3.0);
    assert_eq!(straight, resumed);
    assert_eq!(dict, resumed_dict);
}

#[test]
fn a_state_dict_without_the_optimizer_state_loads_only_if_not_strict() {
    let mut opt = counter();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![1.0f32]).unwrap();
    opt.set_grad(&w, &[0.5]).unwrap();
    opt.step().unwrap();
    let before = opt.state_dict();
    let mut dict = before.clone();
    dict.optimizer_state.remove("t");
    dict.optimizer_state.insert("other".into(), 7.0);
    assert!(opt.load_state_dict(&dict, true).is_err());
    assert_eq!(
        opt.state_dict(),
        before,
        "a failed strict load changes nothing"
    );
    let report = opt.load_state_dict(&dict, false).unwrap();
    assert_eq!(report.missing, ["optimizer state `t`"]);
    assert_eq!(report.unexpected, ["optimizer state `other`"]);
    assert_eq!(opt.state_dict(), before, "the missing value kept");
}

#[test]
fn a_stepper_keeps_a_copy_of_optimizer_state_per_parameter() {
    let stepper = Stepper::new(&text::parse(COUNTER).unwrap()).unwrap();
    let (mut p, mut q) = (vec![0.0f32; 3], vec![0.0f32; 2]);
    let (mut sp, mut sq) = (
        stepper.init_state::<f32>(3).unwrap(),
        stepper.init_state::<f32>(2).unwrap(),
    );
    stepper.step(&mut p, &[1.0; 3], &mut sp).unwrap();
    stepper.step(&mut p, &[1.0; 3], &mut sp).unwrap();
    stepper.step(&mut q, &[1.0; 2], &mut sq).unwrap();
    assert_eq!(sp.slots, [optjit::SlotValue::Scalar(2.0)]);
    assert_eq!(sq.slots, [optjit::SlotValue::Scalar(1.0)]);
    assert_eq!(p, [-3.0; 3]);
    assert_eq!(q, [-1.0; 2]);
}

#[test]
fn mode_graphs_may_not_change_optimizer_state() {
    let graph = text::parse(COUNTER).unwrap();
    let swap = text::parse(&COUNTER.replace("param = param - lr * t", "param = param")).unwrap();
    let err = Optimizer::new(&graph)
        .unwrap()
        .with_modes(&swap, &swap)
        .err()
        .expect("rejected");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

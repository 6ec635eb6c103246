//! Attacks on the skip condition (`skip if`, `optim::amp`) and on `GradScaler` driving fused
//! programs: NaN and −0 conditions, one poisoned tensor among groups and dtypes, hooks, mode
//! graphs, failed steps, graphs that only look like amp's. Each test is named after what it
//! catches; those marked `Regression:` pin a fixed finding (bad input never crashes and never
//! half-applies).

use optjit::optim::common::builder;
use optjit::optim::{self, Adam, ScheduleFreeAdamW, Sgd};
use optjit::transform::{chain, scale_by_adam, scale_by_lr, scale_by_trust_ratio};
use optjit::{text, Error, Executor, GradScaler, Graph, Optimizer, ParamRef, SlotValue, Stepper};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[path = "common/attack.rs"]
mod attack;

use attack::*;

// ---------------------------------------------------------------------------------------
// The skip condition
// ---------------------------------------------------------------------------------------

/// `skip if` reads its condition as `select` does: NaN skips, −0 does not; a folded constant
/// and a hyperparameter give the same answer as a value computed in the prologue, on every
/// executor.
#[test]
fn skip_if_nan_skips_and_minus_zero_does_not_on_every_executor() {
    for (condition, skips) in [
        ("nan", true),
        ("-0.0", false),
        ("0.0 * inf", true),
        ("lr * 0.0 - 0.0", false),
        ("(lr * 0) * (limit * inf)", true),
        ("nan == nan", false),
        ("nan != nan", true),
        ("-inf", true),
    ] {
        let graph = every_state(condition);
        for executor in EXECUTORS {
            let mut m = model(&graph, executor, 2);
            m.set_grads(1.0, None);
            let before = m.snapshot();
            let applied = m.opt.step().unwrap();
            assert_eq!(applied, !skips, "skip if {condition} on {executor:?}");
            if skips {
                assert!(
                    m.snapshot() == before,
                    "skip if {condition} changed something"
                );
            }
        }
    }
}

/// A per-parameter condition true for one f64 tensor of group 1 skips the whole step: no
/// parameter, element state, scalar state, step count or group state of any group or dtype
/// changes, on every executor and thread count; the next clean step applies.
#[test]
fn a_per_parameter_skip_in_one_tensor_skips_every_group_dtype_and_state() {
    let graph = every_state("maxabs(grad) > limit");
    for executor in EXECUTORS {
        for threads in [1, 2] {
            let mut m = model(&graph, executor, threads);
            m.set_grads(1.0, None);
            assert!(m.opt.step().unwrap());
            m.set_grads(1.0, Some(-1e3));
            let before = m.snapshot();
            assert!(!m.opt.step().unwrap(), "{executor:?}");
            assert!(m.snapshot() == before, "{executor:?} x{threads}");
            m.set_grads(1.0, None);
            assert!(m.opt.step().unwrap());
            assert_eq!(m.opt.state_dict().param_groups[1].state["n"], 2.0);
        }
    }
}

/// A skip condition on the *new* parameter (skip the step if it would overflow): a
/// reduction of an output, computed in a phase before the last stage. Optimizer on every
/// executor and Stepper agree; nothing is written on a skipped step.
#[test]
fn skip_on_the_new_parameter_being_non_finite_keeps_everything() {
    let source = "optimizer guarded(lr = 1) {
        state m = 0
        m = m + grad
        param = param - lr * m
        skip if global_nonfinite(param)
    }";
    let graph = parse(source);
    assert_eq!(
        text::print(&parse(&text::print(&graph))),
        text::print(&graph)
    );
    for executor in EXECUTORS {
        let mut m = model(&graph, executor, 2);
        m.set_grads(1.0, None);
        assert!(m.opt.step().unwrap(), "{executor:?}");
        // f32 overflows at lr 1e30 times gradients up to 5e30; f64 does not.
        m.opt.set_hyper_all("lr", 1e30).unwrap();
        m.set_grads(1e30, None);
        let before = m.snapshot();
        assert!(!m.opt.step().unwrap(), "{executor:?}");
        assert!(m.snapshot() == before, "{executor:?}");
    }
    let mut stepper = Stepper::new(&graph).unwrap();
    stepper.set_hyper("lr", 1e30).unwrap();
    let mut p = vec![1.0f32; 9];
    let g = vec![1e30f32; 9];
    let mut s = stepper.init_state::<f32>(9).unwrap();
    let before = (p.clone(), s.clone());
    let applied = stepper
        .step_many(&mut [ParamRef {
            param: &mut p,
            grad: &g,
            state: &mut s,
        }])
        .unwrap();
    assert!(!applied);
    assert_eq!((p, s), before);
}

/// A skip condition that holds whatever the parameters (a constant) with no parameter
/// having a gradient: the step reports "applied" and advances the group state.
#[test]
fn a_constant_skip_condition_holds_and_keeps_group_state_when_no_parameter_has_a_gradient() {
    let mut m = model(&every_state("1"), Executor::Jit, 1);
    m.set_grads(1.0, None);
    assert!(
        !m.opt.step().unwrap(),
        "skip if 1 skips a step with gradients"
    );
    m.opt.zero_grad();
    let applied = m.opt.step().unwrap();
    let n = m.opt.state_dict().param_groups[0].state["n"];
    // Regression: a skip condition that reads only group-wide values was evaluated only for
    // parameters with a gradient, so with none the step applied and group state advanced;
    // it is now evaluated per group too.
    assert_eq!(
        (applied, n),
        (false, 0.0),
        "`skip if 1` with no gradient: applied={applied}, group state n={n}"
    );
}

/// `skip if` in a train/eval swap graph would make eval() flip the mode without swapping.
/// Regression: with_modes now refuses it.
#[test]
fn a_skip_condition_in_a_mode_graph_is_refused() {
    let main =
        parse("optimizer sw(lr = 1) { state z = 0\n z = z + grad\n param = param - lr * grad }");
    let swap = parse("optimizer sw() { state z = 0\n z = z\n param = z\n skip if 1 }");
    let refused = Optimizer::new(&main).unwrap().with_modes(&swap, &swap);
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{:?}",
        refused.err()
    );
}

/// The hooks run on a skipped step (as `Optimizer::step` documents), and a pre-hook that
/// poisons a gradient makes an AMP step skip with nothing changed.
#[test]
fn a_pre_hook_that_poisons_a_gradient_makes_the_amp_step_skip() {
    let graph = optim::amp(&Adam::default().graph().unwrap()).unwrap();
    let mut m = model(&graph, Executor::Jit, 2);
    m.set_grads(1.0, None);
    assert!(m.opt.step().unwrap());
    let handle = m.p64[0];
    let (pre, post) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (pre2, post2) = (pre.clone(), post.clone());
    m.opt.register_step_pre_hook(move |opt| {
        pre2.fetch_add(1, Ordering::SeqCst);
        opt.grad_mut(&handle).unwrap()[0] = f64::INFINITY;
    });
    m.opt.register_step_post_hook(move |_| {
        post2.fetch_add(1, Ordering::SeqCst);
    });
    m.set_grads(1.0, None);
    let (params, dict) = m.snapshot();
    assert!(!m.opt.step().unwrap());
    assert_eq!(
        (pre.load(Ordering::SeqCst), post.load(Ordering::SeqCst)),
        (1, 1)
    );
    assert!(m.snapshot() == (params, dict));
}

/// Stepper: a skip condition reading group state (each ParamState's own copy) and a
/// per-parameter reduction; nothing is written when any parameter skips.
#[test]
fn the_stepper_skips_on_group_state_and_writes_nothing() {
    let graph = parse(
        "optimizer st(lr = 1) {
            group state n = 0
            n = n + 1
            param = param - lr * grad
            skip if (n >= 3) + (sum(grad) > 100)
        }",
    );
    for executor in EXECUTORS {
        let stepper = Stepper::new(&graph).unwrap().with_executor(executor);
        let (mut a, mut b) = (vec![0.0f64; 5], vec![0.0f64; 1027]);
        let (ga, gb) = (vec![1.0f64; 5], vec![0.0f64; 1027]);
        let mut sa = stepper.init_state::<f64>(5).unwrap();
        let mut sb = stepper.init_state::<f64>(1027).unwrap();
        let step = |a: &mut Vec<f64>, b: &mut Vec<f64>, sa: &mut _, sb: &mut _| {
            stepper
                .step_many(&mut [
                    ParamRef {
                        param: a,
                        grad: &ga,
                        state: sa,
                    },
                    ParamRef {
                        param: b,
                        grad: &gb,
                        state: sb,
                    },
                ])
                .unwrap()
        };
        assert!(step(&mut a, &mut b, &mut sa, &mut sb), "{executor:?}");
        assert!(step(&mut a, &mut b, &mut sa, &mut sb));
        let before = (a.clone(), b.clone(), sa.clone(), sb.clone());
        // The condition reads n's new value (3 at the third step): skipped.
        assert!(
            !step(&mut a, &mut b, &mut sa, &mut sb),
            "new n = 3: skipped"
        );
        assert_eq!((a.clone(), b.clone(), sa.clone(), sb.clone()), before);
        assert_eq!(sa.slots[0], SlotValue::Scalar(2.0));
        assert_eq!(a[0], -2.0);
    }
}

// ---------------------------------------------------------------------------------------
// GradScaler on fused (amp) programs
// ---------------------------------------------------------------------------------------

/// `GradScaler::step` on a fused program that fails (eval mode) must change nothing; it
/// sets `inv_scale` in every group first.
#[test]
fn grad_scaler_fused_step_that_fails_leaves_inv_scale_unchanged() {
    let graph = optim::amp(&Sgd::default().graph().unwrap()).unwrap();
    let mut m = model(&graph, Executor::Jit, 1);
    m.set_grads(1.0, None);
    m.opt.eval().unwrap();
    let before = m.snapshot();
    let mut scaler = GradScaler::default();
    let result = scaler.step(&mut m.opt);
    assert!(matches!(result, Err(Error::EvalMode)), "{result:?}");
    // Regression: a failed fused scaler.step left every group's inv_scale changed; the
    // scaler now sets it for its step only.
    let inv_scale = m.opt.hyper(0, "inv_scale").unwrap();
    assert_eq!(inv_scale, 1.0, "inv_scale after a failed scaler.step");
    assert!(
        m.snapshot() == before,
        "the state dict changed on a failed scaler.step"
    );
}

/// On overflow, the unfused scaler path never calls `opt.step()` (PyTorch's
/// `GradScaler.step` skips `optimizer.step()` for ordinary optimizers, hooks included),
/// while the fused path calls it, as PyTorch does with its fused optimizers (the kernel
/// skips itself): its hooks run once, unless `unscale` already found the overflow.
#[test]
fn grad_scaler_runs_hooks_on_overflow_only_when_a_fused_program_checks_it() {
    let count = |graph: &Graph, unscale_first: bool| {
        let mut m = model(graph, Executor::Jit, 1);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        m.opt.register_step_pre_hook(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
        m.set_grads(1.0, Some(f64::INFINITY));
        let before = m.snapshot();
        let mut scaler = GradScaler::default();
        if unscale_first {
            scaler.unscale(&mut m.opt).unwrap();
        }
        assert!(!scaler.step(&mut m.opt).unwrap());
        if !unscale_first {
            assert!(
                m.snapshot() == before,
                "an overflowed step changed something"
            );
        }
        scaler.update();
        assert_eq!(scaler.scale(), 32768.0);
        calls.load(Ordering::SeqCst)
    };
    let sgd = Sgd::default().graph().unwrap();
    let fused = optim::amp(&sgd).unwrap();
    assert_eq!((count(&sgd, false), count(&sgd, true)), (0, 0), "unfused");
    // Fused: the program runs (and skips itself) unless `unscale` already found the overflow.
    assert_eq!((count(&fused, false), count(&fused, true)), (1, 0), "fused");
}

/// Fused: unscale first (finite), then step, gives the bits of the fused step alone; unscale
/// or step twice is an error that changes nothing.
#[test]
fn grad_scaler_fused_after_unscale_equals_fused_without_it_bit_for_bit() {
    let graph = optim::amp(&optim::clip_grad_norm(&Adam::default().graph().unwrap(), 2.0).unwrap())
        .unwrap();
    let run = |unscale_first: bool| {
        let mut m = model(&graph, Executor::Jit, 2);
        let mut scaler = GradScaler::new(1024.0, 2.0, 0.5, 2).unwrap();
        for step in 0..5 {
            let poison = (step == 2).then_some(f64::NAN);
            m.set_grads(scaler.scale(), poison);
            if unscale_first {
                scaler.unscale(&mut m.opt).unwrap();
                assert!(scaler.unscale(&mut m.opt).is_err(), "unscale twice");
            }
            let applied = scaler.step(&mut m.opt).unwrap();
            assert_eq!(applied, step != 2);
            let before = m.snapshot();
            assert!(scaler.step(&mut m.opt).is_err(), "step twice");
            assert!(m.snapshot() == before);
            scaler.update();
        }
        (m.snapshot().0, scaler.scale())
    };
    assert_eq!(run(true), run(false));
}

/// `amp` of a graph that never reads the gradient: no skip condition, so the scaler takes
/// the unfused path; an overflowed step changes no parameter.
#[test]
fn grad_scaler_on_amp_of_a_graph_without_a_gradient_read() {
    let graph = optim::amp(&parse("optimizer decay(lr = 0.5) { param = param * lr }")).unwrap();
    assert!(graph.skip().is_none());
    let mut m = model(&graph, Executor::Jit, 1);
    m.set_grads(1.0, Some(f64::INFINITY));
    let before = m.snapshot().0;
    let mut scaler = GradScaler::default();
    assert!(!scaler.step(&mut m.opt).unwrap());
    assert_eq!(m.snapshot().0, before);
    scaler.update();
    m.set_grads(1.0, None);
    assert!(scaler.step(&mut m.opt).unwrap());
    assert_eq!(m.opt.param(&m.p64[0]).unwrap()[0], -0.5);
}

/// The scaler decides "fused" from the names alone (a skip condition and a hyperparameter
/// called inv_scale): a user graph with both, whose skip has nothing to do with overflow,
/// gets neither the in-place unscale nor the non-finite check.
#[test]
fn grad_scaler_does_not_take_a_graph_with_inv_scale_and_its_own_skip_for_amp() {
    // Skips gradient spikes (a legitimate use of `skip if`); `inv_scale` is its own knob.
    let graph = parse(
        "optimizer spiky(lr = 0.5, inv_scale = 1, limit = 1e30) {
            param = param - lr * inv_scale * grad
            skip if global_maxabs(grad) > limit
        }",
    );
    let mut m = model(&graph, Executor::Jit, 1);
    m.set_grads(1.0, Some(f64::NAN));
    let mut scaler = GradScaler::default();
    let applied = scaler.step(&mut m.opt).unwrap();
    let finite = m
        .opt
        .param(&m.p64[1])
        .unwrap()
        .iter()
        .all(|x| x.is_finite());
    // Regression: any graph with an `inv_scale` and a skip was taken for amp's, so a NaN
    // gradient was neither unscaled nor checked; `optim::is_amp` now reads the structure.
    assert!(
        !applied && finite,
        "a NaN gradient was stepped into the parameters (applied={applied})"
    );
}

/// Schedule-free AdamW under amp: an overflowed step leaves its group state (k, lr_max,
/// weight_sum) as it was, so the run equals the run without that step, bit for bit.
#[test]
fn schedule_free_with_amp_skips_without_advancing_its_group_state() {
    let sf = ScheduleFreeAdamW {
        lr: 0.05,
        warmup_steps: 2.0,
        ..ScheduleFreeAdamW::default()
    };
    let graph = optim::amp(&sf.graph().unwrap()).unwrap();
    let run = |with_overflow: bool| {
        let mut m = model(&graph, Executor::Jit, 2);
        for step in 0..4 {
            if with_overflow && step == 2 {
                m.set_grads(1.0, Some(f64::NEG_INFINITY));
                assert!(!m.opt.step().unwrap());
            }
            m.set_grads(0.5 + step as f64, None);
            assert!(m.opt.step().unwrap());
        }
        m.snapshot()
    };
    assert!(run(true) == run(false));
}

/// A LAMB chain (trust ratio: per-parameter reductions) under amp: an overflow in one tensor
/// skips every tensor, and the fused scaler run equals unscale-then-step on the chain alone.
#[test]
fn amp_of_a_trust_ratio_chain_equals_unscale_then_step() {
    let lamb = || {
        let b = builder("lamb_chain");
        let lr = b.hyper("lr", 0.01);
        let (b1, b2, eps) = (
            b.hyper("b1", 0.9),
            b.hyper("b2", 0.999),
            b.hyper("eps", 1e-6),
        );
        chain(
            &b,
            &[
                &scale_by_adam(b1, b2, eps),
                &scale_by_trust_ratio(),
                &scale_by_lr(lr),
            ],
        )
        .unwrap();
        b.finish().unwrap()
    };
    let run = |graph: &Graph| {
        let mut m = model(graph, Executor::Jit, 2);
        let mut scaler = GradScaler::new(256.0, 2.0, 0.5, 1).unwrap();
        let mut applied = Vec::new();
        for step in 0..4 {
            let poison = (step == 1).then_some(f64::INFINITY);
            m.set_grads(scaler.scale(), poison);
            applied.push(scaler.step(&mut m.opt).unwrap());
            scaler.update();
        }
        (applied, m.snapshot().0, scaler.scale())
    };
    let plain = run(&lamb());
    assert_eq!(plain.0, [true, false, true, true]);
    assert!(run(&optim::amp(&lamb()).unwrap()) == plain);
}

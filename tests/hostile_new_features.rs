//! Hostile tests of the three features of issue 12 that landed together: a graph's skip
//! condition (`skip if`, `optim::amp`, `GradScaler::step` on a fused program), composable
//! transforms (`optjit::transform`) and group state (`SlotKind::Group`).
//!
//! Each test is named after what it catches. A test that documents a finding (a behaviour
//! that breaks the project's standard: bad input never crashes and never half-applies, every
//! error typed and clear) was fixed, and its test, marked `Regression:`, pins the fix; the
//! others pin down behaviour that held under attack.

use ndarray::{array, Array1};
use optjit::optim::common::builder;
use optjit::optim::{self, Adam, ScheduleFreeAdamW, Sgd};
use optjit::runtime::StateDict;
use optjit::transform::{
    chain, clip, clip_by_global_norm, scale_by_adam, scale_by_lr, scale_by_trust_ratio, trace,
};
use optjit::{
    text, Error, Executor, GradScaler, Graph, Optimizer, Param, ParamRef, SlotValue, Stepper,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const EXECUTORS: [Executor; 4] = [
    Executor::Jit,
    Executor::Reference,
    Executor::Chunked,
    Executor::Eager,
];

fn parse(source: &str) -> Graph {
    text::parse(source).unwrap_or_else(|e| panic!("{e}\n{source}"))
}

/// Two groups, each with an f32 and an f64 tensor (lengths around the vector width).
struct Model {
    opt: Optimizer,
    p32: Vec<Param<f32>>,
    p64: Vec<Param<f64>>,
}

fn model(graph: &Graph, executor: Executor, threads: usize) -> Model {
    let mut opt = Optimizer::new(graph)
        .unwrap()
        .with_executor(executor)
        .with_threads(threads);
    let (mut p32, mut p64) = (Vec::new(), Vec::new());
    for g in 0..2 {
        opt.add_param_group(&[]).unwrap();
        let n32 = [1usize, 9000][g];
        let n64 = [17usize, 37][g];
        let v32: Array1<f32> = (0..n32).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let v64: Array1<f64> = (0..n64).map(|i| (i % 5) as f64 * 0.5 - 1.0).collect();
        p32.push(opt.add_param(g, &format!("a{g}"), &v32).unwrap());
        p64.push(opt.add_param(g, &format!("b{g}"), &v64).unwrap());
    }
    Model { opt, p32, p64 }
}

impl Model {
    /// Gradients for every tensor; `poison` replaces one element of tensor `b1` (f64, group 1).
    fn set_grads(&mut self, scale: f64, poison: Option<f64>) {
        for h in &self.p32 {
            let n = self.opt.param(h).unwrap().len();
            let g: Vec<f32> = (0..n)
                .map(|i| ((i % 11) as f32 - 5.0) * scale as f32)
                .collect();
            self.opt.set_grad(h, &g).unwrap();
        }
        for (k, h) in self.p64.iter().enumerate() {
            let n = self.opt.param(h).unwrap().len();
            let mut g: Vec<f64> = (0..n).map(|i| ((i % 3) as f64 - 1.0) * scale).collect();
            if k == 1 {
                if let Some(v) = poison {
                    g[n / 2] = v;
                }
            }
            self.opt.set_grad(h, &g).unwrap();
        }
    }

    /// Every parameter's bits, then the state dict (state, step counts, group state, hypers).
    fn snapshot(&self) -> (Vec<Vec<u64>>, Vec<u8>) {
        let mut bits: Vec<Vec<u64>> = self
            .p32
            .iter()
            .map(|h| {
                let p = self.opt.param(h).unwrap();
                p.iter().map(|x| u64::from(x.to_bits())).collect()
            })
            .collect();
        bits.extend(self.p64.iter().map(|h| {
            let p = self.opt.param(h).unwrap();
            p.iter().map(|x| x.to_bits()).collect()
        }));
        (bits, self.opt.state_dict().to_bytes().unwrap())
    }
}

/// An optimizer with every kind of state, whose step is skipped when `CONDITION` holds.
const EVERY_STATE: &str = "optimizer every(lr = 0.01, limit = 100) {
    state m = 0
    scalar state s = 0
    group state n = 0
    m = 0.9 * m + grad
    s = s + 1
    n = n + 1
    param = param - lr * n * m
    skip if CONDITION
}";

fn every_state(condition: &str) -> Graph {
    parse(&EVERY_STATE.replace("CONDITION", condition))
}

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
fn a_constant_skip_condition_still_advances_group_state_when_no_parameter_has_a_gradient() {
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
fn grad_scaler_treats_any_graph_with_inv_scale_and_a_skip_as_fused() {
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

// ---------------------------------------------------------------------------------------
// Group state
// ---------------------------------------------------------------------------------------

/// A group state fed by a global reduction over mixed f32/f64 parameters in two groups:
/// the same bits on every executor and thread count.
#[test]
fn group_state_from_a_global_reduction_is_identical_on_every_executor_and_thread_count() {
    let graph = parse(
        "optimizer g(lr = 0.001) {
            group state n = 0
            n = n + global_sumsq(grad) + global_maxabs(param)
            param = param - lr * n * grad
        }",
    );
    let run = |executor, threads| {
        let mut m = model(&graph, executor, threads);
        for step in 0..3 {
            m.set_grads(1.0 / (step + 1) as f64, None);
            assert!(m.opt.step().unwrap());
        }
        let groups: Vec<u64> = m
            .opt
            .state_dict()
            .param_groups
            .iter()
            .map(|g| g.state["n"].to_bits())
            .collect();
        (m.snapshot().0, groups)
    };
    let expected = run(Executor::Reference, 1);
    assert_eq!(
        expected.1[0], expected.1[1],
        "one global value for both groups"
    );
    for executor in EXECUTORS {
        for threads in [1, 2] {
            assert!(
                run(executor, threads) == expected,
                "{executor:?} x{threads}"
            );
        }
    }
}

/// No group, then an empty group: a step is applied (nothing to do), the empty group's
/// state advances, and the state dict round-trips through bytes.
#[test]
fn group_state_in_empty_groups_advances_and_round_trips() {
    let graph = every_state("0");
    let mut opt = Optimizer::new(&graph).unwrap();
    assert!(opt.step().unwrap(), "no group at all");
    assert!(opt.state_dict().param_groups.is_empty());
    opt.add_param_group(&[]).unwrap();
    opt.add_param_group(&[]).unwrap();
    assert!(opt.step().unwrap());
    assert!(opt.step().unwrap());
    let dict = opt.state_dict();
    assert_eq!(dict.param_groups[1].state["n"], 2.0);
    let back = StateDict::from_bytes(&dict.to_bytes().unwrap()).unwrap();
    assert_eq!(back, dict);
    let mut fresh = Optimizer::new(&graph).unwrap();
    fresh.add_param_group(&[]).unwrap();
    fresh.add_param_group(&[]).unwrap();
    assert!(fresh.load_state_dict(&back, true).unwrap().is_clean());
    assert_eq!(fresh.state_dict(), dict);
}

/// A mode graph that assigns a group state: a swap is not a step, and the group state's new
/// value would have gone nowhere. Regression: with_modes now refuses it.
#[test]
fn a_group_state_update_in_a_mode_graph_is_refused() {
    let main = parse(
        "optimizer gm(lr = 1) { group state n = 0\n scalar state s = 0\n n = n + 1\n s = s + 1\n param = param - lr * grad }",
    );
    let swap = parse(
        "optimizer gm() { group state n = 0\n scalar state s = 0\n n = n + 100\n s = s + 100\n param = param }",
    );
    let refused = Optimizer::new(&main).unwrap().with_modes(&swap, &swap);
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{:?}",
        refused.err()
    );
    // Keeping the group state (as schedule-free's swaps do) is fine.
    let keep = parse(
        "optimizer gm() { group state n = 0\n scalar state s = 0\n n = n\n s = s + 100\n param = param }",
    );
    assert!(Optimizer::new(&main)
        .unwrap()
        .with_modes(&keep, &keep)
        .is_ok());
}

/// Group state values survive to_bytes/from_bytes bit for bit (NaN payloads, −0, ±inf),
/// and load back.
#[test]
fn group_state_non_finite_values_round_trip_bit_for_bit() {
    let graph = every_state("0");
    let mut m = model(&graph, Executor::Jit, 1);
    m.set_grads(1.0, None);
    m.opt.step().unwrap();
    let mut dict = m.opt.state_dict();
    let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
    for (group, v) in dict.param_groups.iter_mut().zip([odd_nan, -0.0]) {
        *group.state.get_mut("n").unwrap() = v;
    }
    let back = StateDict::from_bytes(&dict.to_bytes().unwrap()).unwrap();
    assert_eq!(back.param_groups[0].state["n"].to_bits(), odd_nan.to_bits());
    assert_eq!(
        back.param_groups[1].state["n"].to_bits(),
        (-0.0f64).to_bits()
    );
    assert!(m.opt.load_state_dict(&back, true).unwrap().is_clean());
    let again = m.opt.state_dict();
    assert_eq!(
        again.param_groups[0].state["n"].to_bits(),
        odd_nan.to_bits()
    );
}

/// Rewrites the JSON metadata of saved state dict bytes.
fn rewrite(bytes: &[u8], edit: &dyn Fn(&str) -> String) -> Vec<u8> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let json = header.metadata().as_ref().unwrap()["optjit"].clone();
    let tensors = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let views = tensors.tensors();
    let meta = std::collections::HashMap::from([("optjit".to_string(), edit(&json))]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// A change made to a state dict.
type Edit = Box<dyn Fn(&mut StateDict)>;

/// Malformed group state in a state dict: every kind is a typed error (strict) or a report
/// (non-strict), and a failed load changes nothing.
#[test]
fn malformed_group_state_in_a_state_dict_is_an_error_and_changes_nothing() {
    let graph = every_state("0");
    let mut m = model(&graph, Executor::Jit, 1);
    m.set_grads(1.0, None);
    m.opt.step().unwrap();
    let good = m.opt.state_dict();
    let edits: Vec<(&str, Edit)> = vec![
        (
            "missing",
            Box::new(|d| {
                d.param_groups[1].state.clear();
            }),
        ),
        (
            "extra",
            Box::new(|d| {
                d.param_groups[0].state.insert("zz".into(), 1.0);
            }),
        ),
        (
            "per-parameter name",
            Box::new(|d| {
                d.param_groups[0].state.insert("s".into(), 1.0);
            }),
        ),
        (
            "element slot name",
            Box::new(|d| {
                d.param_groups[0].state.insert("m".into(), 1.0);
            }),
        ),
        (
            "in a parameter's scalars",
            Box::new(|d| {
                d.state.get_mut(&0).unwrap().scalars.insert("n".into(), 5.0);
            }),
        ),
        (
            "one group fewer",
            Box::new(|d| {
                d.param_groups.pop();
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut bad = good.clone();
        edit(&mut bad);
        let before = m.snapshot();
        let result = m.opt.load_state_dict(&bad, true);
        assert!(
            matches!(result, Err(Error::InvalidStateDict { .. })),
            "{what}: {result:?}"
        );
        assert!(
            m.snapshot() == before,
            "{what}: a failed strict load changed something"
        );
        let report = m.opt.load_state_dict(&bad, false);
        assert!(
            report.as_ref().is_ok_and(|r| !r.is_clean()) || report.is_err(),
            "{what}: non-strict {report:?}"
        );
    }
    // JSON tampering of the group state: every wrong shape is an InvalidStateDict.
    let bytes = good.to_bytes().unwrap();
    for (what, from, to) in [
        ("null", r#""state":{"n":1.0}"#, r#""state":{"n":null}"#),
        ("text", r#""state":{"n":1.0}"#, r#""state":{"n":"one"}"#),
        ("list", r#""state":{"n":1.0}"#, r#""state":{"n":[1.0]}"#),
        ("not a map", r#""state":{"n":1.0}"#, r#""state":7"#),
        (
            "nan bits not a nan",
            r#""state":{"n":1.0}"#,
            r#""state":{"n":"nan:0x0000000000000000"}"#,
        ),
        (
            "huge exponent",
            r#""state":{"n":1.0}"#,
            r#""state":{"n":1e999}"#,
        ),
    ] {
        let json_has = |bytes: &[u8]| {
            let (_, h) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
            h.metadata().as_ref().unwrap()["optjit"].contains(from)
        };
        assert!(json_has(&bytes), "{what}: the metadata holds {from}");
        let bad = rewrite(&bytes, &|j: &str| j.replacen(from, to, 1));
        let result = StateDict::from_bytes(&bad);
        assert!(
            matches!(result, Err(Error::InvalidStateDict { .. })),
            "{what}: {result:?}"
        );
    }
    // A key twice in a group's state: the `state` map refuses a duplicate key, so must this.
    let twice = rewrite(&bytes, &|j: &str| {
        j.replacen(r#""state":{"n":1.0}"#, r#""state":{"n":1.0,"n":99.0}"#, 1)
    });
    let result = StateDict::from_bytes(&twice);
    // Regression: a key given twice in a state dict's f64 maps loaded the last value; it
    // is now an InvalidStateDict error.
    assert!(
        matches!(result, Err(Error::InvalidStateDict { .. })),
        "a group state key given twice: {:?}",
        result.map(|d| d.param_groups[0].state.clone())
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

// ---------------------------------------------------------------------------------------
// The text form
// ---------------------------------------------------------------------------------------

/// Graphs with skip conditions and group state in odd places: print, parse, print again
/// gives the same text, and the parsed graph runs like the original.
#[test]
fn print_parse_print_is_stable_for_skip_and_group_state_graphs() {
    let sources = [
        // The skip reads a state's new value, its old value, or is the state itself.
        "optimizer a(lr = 1) { scalar state n = 0\n n = n + 1\n skip if n > 2\n param = param - lr * grad }",
        "optimizer a(lr = 1) { scalar state n = 0\n let old = n\n n = n + 1\n skip if old\n param = param - lr * grad }",
        "optimizer a(lr = 1) { scalar state n = 0\n skip if n\n n = n + 1\n param = param - lr * grad }",
        "optimizer a(lr = 1) { group state n = 0\n skip if n\n n = n + 1\n param = param - lr * grad }",
        "optimizer a(lr = 1) { group state n = 0\n n = n + 1\n skip if n\n param = param - lr * grad }",
        // Constants, a hyperparameter, the step.
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if 0 }",
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if nan }",
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if -0.0 }",
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if lr }",
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if step > 3 }",
        // The skip is exactly a slot's new value; a reduction of the new parameter.
        "optimizer a(lr = 1) { group state n = 0\n n = global_maxabs(grad)\n skip if n\n param = param - lr * grad }",
        "optimizer a(lr = 1) { param = param - lr * grad\n skip if nonfinite(param) }",
        "optimizer a(lr = 1) { state m = 0\n m = m + grad\n skip if global_sumsq(m) > 1\n param = param - lr * m }",
        // Group state with odd initial values, two of them reading each other.
        "optimizer a(lr = 1) { group state k = -0.0\n group state w = nan\n group state z = -inf\n k = k + 1\n w = w + k\n z = max(z, w)\n param = param - lr * k * grad }",
        // A group state fed by a reduction of a reduction.
        "optimizer a(lr = 1) { group state k = 0\n k = k + global_sum(grad * sumsq(grad))\n param = param - lr * grad }",
        // A skip as the first statement.
        "optimizer a(lr = 1) { skip if global_nonfinite(grad)\n param = param - lr * grad }",
    ];
    for source in sources {
        let graph = parse(source);
        let printed = text::print(&graph);
        let parsed = text::parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(text::print(&parsed), printed, "from:\n{source}");
        assert_eq!(parsed.skip().is_some(), graph.skip().is_some(), "{printed}");
        // Both run the same, step after step.
        let trajectory = |g: &Graph| {
            let mut m = model(g, Executor::Reference, 1);
            let applied: Vec<bool> = (0..4)
                .map(|s| {
                    m.set_grads(0.25 * (s + 1) as f64, None);
                    m.opt.step().unwrap()
                })
                .collect();
            (applied, m.snapshot())
        };
        assert!(trajectory(&graph) == trajectory(&parsed), "{printed}");
    }
}

/// Malformed `skip if` and `group state` sources are text errors, never panics.
#[test]
fn malformed_skip_and_group_state_sources_are_text_errors() {
    let bodies = [
        "skip",
        "skip if",
        "skip if\n param = param",
        "skip if if",
        "skip if grad",
        "skip if param * 0",
        "skip if 1\n skip if 1",
        "skip if sum(grad)\n skip if sum(grad)",
        "let x = skip if 1",
        "param = skip if 1",
        "skip if (1",
        "skip if 1 )",
        "group",
        "group state",
        "group state n",
        "group state n =",
        "group state n = grad",
        "group state n = lr",
        "group state n = 0",
        "group state n = 0\n n = grad",
        "group state n = 0\n n = sum(grad)",
        "group state n = 0\n n = n + step",
        "group state n = 0\n scalar state s = 0\n s = s + 1\n n = s",
        "group state n = 0\n n = global_sum(grad) * step",
        "group state n = 0\n let a = maxabs(param)\n n = a",
        "group state n = 0\n group state n = 1",
        "group state lr = 0",
        "group state step = 0",
        "group state skip = 0\n skip = 1",
        "group scalar state n = 0",
        "scalar group state n = 0",
        "group state n = 0\n n = 1\n n = 2",
    ];
    for body in bodies {
        let source = format!("optimizer bad(lr = 1) {{\n {body}\n param = param - lr * grad\n}}");
        let result = std::panic::catch_unwind(|| text::parse(&source));
        let result = result.unwrap_or_else(|_| panic!("parse panicked on:\n{source}"));
        match result {
            Err(Error::Text(e)) => assert!(!e.to_string().is_empty()),
            Err(other) => panic!("not a text error for {body:?}: {other:?}"),
            Ok(g) => {
                // Only these are valid; every other line above is a mistake.
                let valid = [
                    "group state n = 0\n n = 1\n n = 2",
                    "group state skip = 0\n skip = 1",
                ];
                assert!(
                    valid.contains(&body),
                    "accepted {body:?}:\n{}",
                    text::print(&g)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transforms
// ---------------------------------------------------------------------------------------

/// Chains in odd orders build, compile and step to the values their definitions give.
#[test]
fn odd_transform_chains_step_to_what_they_say() {
    let run = |graph: Graph, p: f64, g: f64| {
        let mut opt = Optimizer::new(&graph).unwrap();
        let group = opt.add_param_group(&[]).unwrap();
        let w = opt.add_param(group, "w", &array![p, p]).unwrap();
        opt.set_grad(&w, &[g, g]).unwrap();
        assert!(opt.step().unwrap());
        opt.param(&w).unwrap()[0]
    };
    // The empty chain adds the gradient (optax's apply_updates of the raw gradient).
    let b = builder("empty");
    chain(&b, &[]).unwrap();
    assert_eq!(run(b.finish().unwrap(), 1.0, 0.5), 1.5);
    // −lr twice: +lr²·g.
    let b = builder("twice");
    let lr = b.hyper("lr", 0.5);
    chain(&b, &[&scale_by_lr(lr), &scale_by_lr(lr)]).unwrap();
    assert_eq!(run(b.finish().unwrap(), 1.0, 1.0), 1.25);
    // Clip after Adam: the first Adam update is ±1 (m̂/√v̂ = sign), clamped to 0.25.
    let b = builder("clip_after_adam");
    let lr = b.hyper("lr", 1.0);
    let (b1, b2, eps) = (
        b.hyper("b1", 0.9),
        b.hyper("b2", 0.999),
        b.hyper("eps", 0.0),
    );
    let limit = b.hyper("limit", 0.25);
    chain(
        &b,
        &[&scale_by_adam(b1, b2, eps), &clip(limit), &scale_by_lr(lr)],
    )
    .unwrap();
    assert_eq!(run(b.finish().unwrap(), 1.0, 3.0), 0.75);
    // Trust ratio on a zero parameter and on zero gradients: ratio 1, never NaN.
    let trust = || {
        let b = builder("trust");
        let lr = b.hyper("lr", 0.5);
        chain(&b, &[&scale_by_trust_ratio(), &scale_by_lr(lr)]).unwrap();
        b.finish().unwrap()
    };
    assert_eq!(run(trust(), 0.0, 2.0), -1.0);
    assert_eq!(run(trust(), 3.0, 0.0), 3.0);
    assert_eq!(run(trust(), 0.0, 0.0), 0.0);
    // Two global-norm clips in a row (two reductions in two phases), with zero gradients.
    let b = builder("clip2");
    let (lr, max_norm) = (b.hyper("lr", 1.0), b.hyper("max_norm", 1.0));
    chain(
        &b,
        &[
            &clip_by_global_norm(max_norm),
            &clip_by_global_norm(max_norm),
            &scale_by_lr(lr),
        ],
    )
    .unwrap();
    let graph = b.finish().unwrap();
    assert_eq!(run(graph.clone(), 1.0, 0.0), 1.0);
    // ‖(3, 3)‖ = √18 > 1: clipped to norm 1 (then already within 1).
    let x = run(graph, 0.0, 3.0);
    assert!((x + 1.0 / 2f64.sqrt()).abs() < 1e-6, "{x}");
    // Trace after the learning rate: momentum of the scaled updates, −lr·g at step 1.
    let b = builder("trace_after_lr");
    let (lr, mu) = (b.hyper("lr", 0.5), b.hyper("momentum", 0.9));
    chain(&b, &[&scale_by_lr(lr), &trace(mu)]).unwrap();
    assert_eq!(run(b.finish().unwrap(), 1.0, 1.0), 0.5);
}

/// Two traces (or a trace and Adam) under one state name: DuplicateName, not a silent
/// overwrite of the first transform's state.
#[test]
fn two_transforms_sharing_a_state_name_fail_with_duplicate_name() {
    let b = builder("two_traces");
    let mu = b.hyper("momentum", 0.9);
    chain(&b, &[&trace(mu), &trace(mu)]).unwrap();
    assert!(matches!(b.finish(), Err(Error::DuplicateName { .. })));
    let b = builder("trace_into_adam");
    let (b1, b2, eps) = (
        b.hyper("b1", 0.9),
        b.hyper("b2", 0.999),
        b.hyper("eps", 1e-8),
    );
    chain(
        &b,
        &[&scale_by_adam(b1, b2, eps), &trace(b1).named("exp_avg")],
    )
    .unwrap();
    assert!(matches!(b.finish(), Err(Error::DuplicateName { .. })));
}

/// The Stepper keeps a copy of the group state in each ParamState; when every parameter
/// steps every time it must give the Optimizer's bits (schedule-free AdamW, one group).
#[test]
fn stepper_and_optimizer_agree_on_group_state_when_every_parameter_steps() {
    let sf = ScheduleFreeAdamW {
        lr: 0.1,
        warmup_steps: 3.0,
        ..ScheduleFreeAdamW::default()
    };
    let graph = sf.graph().unwrap();
    let lens = [1usize, 9, 1027];
    let init = |len: usize| -> Vec<f64> { (0..len).map(|i| (i % 5) as f64 - 2.0).collect() };
    let grad = |len: usize, s: usize| -> Vec<f64> {
        (0..len).map(|i| ((i + s) % 7) as f64 * 0.3 - 1.0).collect()
    };
    let mut opt = Optimizer::new(&graph).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let handles: Vec<Param<f64>> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            opt.add_param(g, &format!("p{k}"), &Array1::from_vec(init(len)))
                .unwrap()
        })
        .collect();
    let stepper = Stepper::new(&graph).unwrap();
    let mut params: Vec<Vec<f64>> = lens.iter().map(|&l| init(l)).collect();
    let mut states: Vec<_> = lens
        .iter()
        .map(|&l| stepper.init_state::<f64>(l).unwrap())
        .collect();
    for s in 0..5 {
        let grads: Vec<Vec<f64>> = lens.iter().map(|&l| grad(l, s)).collect();
        for (h, gr) in handles.iter().zip(&grads) {
            opt.set_grad(h, gr).unwrap();
        }
        assert!(opt.step().unwrap());
        let mut refs: Vec<ParamRef<'_, f64>> = params
            .iter_mut()
            .zip(&grads)
            .zip(&mut states)
            .map(|((param, grad), state)| ParamRef { param, grad, state })
            .collect();
        assert!(stepper.step_many(&mut refs).unwrap());
    }
    for (h, p) in handles.iter().zip(&params) {
        let o: Vec<u64> = opt.param(h).unwrap().iter().map(|x| x.to_bits()).collect();
        let s: Vec<u64> = p.iter().map(|x| x.to_bits()).collect();
        assert_eq!(o, s);
    }
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

//! Attacks on group state (`SlotKind::Group`) and on the transforms: global reductions on
//! every executor, empty groups, mode graphs, non-finite and malformed values in state dicts,
//! print/parse round trips of odd sources, odd chains of transforms. Each test is named after
//! what it catches; those marked `Regression:` pin a fixed finding.

use ndarray::{array, Array1};
use optjit::optim::common::builder;
use optjit::optim::ScheduleFreeAdamW;
use optjit::runtime::StateDict;
use optjit::transform::{
    chain, clip, clip_by_global_norm, scale_by_adam, scale_by_lr, scale_by_trust_ratio, trace,
};
use optjit::{text, Error, Executor, Graph, Optimizer, Param, ParamRef, Stepper};

#[path = "common/attack.rs"]
mod attack;

use attack::*;

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

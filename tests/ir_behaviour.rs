//! The IR's documented behaviour: op semantics, fold rules, DCE, unusual stage shapes, scalar
//! state, and the checks that keep malformed programs away from generated code.

use optjit::interp::eval_op;
use optjit::ir::GraphFlags;
use optjit::ir::Op;
use optjit::program::{verify_program, ElemArg, ElemInst};
use optjit::{passes, Builder, DType, Error, Executor, Graph, Jit, SlotValue, Stepper};

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn ops_behave_as_documented_on_edge_cases() {
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    #[rustfmt::skip]
    let cases: &[(Op, [f64; 3], f64)] = &[
        (Op::Neg, [0.0, 0.0, 0.0], -0.0),
        (Op::Abs, [-0.0, 0.0, 0.0], 0.0),
        (Op::Sqrt, [-0.0, 0.0, 0.0], -0.0),
        (Op::Sqrt, [-1.0, 0.0, 0.0], nan),
        (Op::Sign, [-0.0, 0.0, 0.0], -0.0),
        (Op::Sign, [nan, 0.0, 0.0], nan),
        (Op::Sign, [-3.0, 0.0, 0.0], -1.0),
        (Op::Exp, [-inf, 0.0, 0.0], 0.0),
        (Op::Ln, [-0.0, 0.0, 0.0], -inf),
        (Op::Cos, [0.0, 0.0, 0.0], 1.0),
        (Op::Cos, [-0.0, 0.0, 0.0], 1.0),
        (Op::Cos, [inf, 0.0, 0.0], nan),
        (Op::Cos, [-inf, 0.0, 0.0], nan),
        (Op::Cos, [nan, 0.0, 0.0], nan),
        (Op::Floor, [-0.0, 0.0, 0.0], -0.0),
        (Op::Floor, [0.0, 0.0, 0.0], 0.0),
        (Op::Floor, [0.5, 0.0, 0.0], 0.0),
        (Op::Floor, [-0.5, 0.0, 0.0], -1.0),
        (Op::Floor, [-2.0, 0.0, 0.0], -2.0),
        (Op::Floor, [2.999, 0.0, 0.0], 2.0),
        (Op::Floor, [inf, 0.0, 0.0], inf),
        (Op::Floor, [-inf, 0.0, 0.0], -inf),
        (Op::Floor, [nan, 0.0, 0.0], nan),
        (Op::Floor, [-1.5, 0.0, 0.0], -2.0),
        (Op::Add, [-0.0, -0.0, 0.0], -0.0),
        (Op::Add, [0.0, -0.0, 0.0], 0.0),
        (Op::Add, [inf, -inf, 0.0], nan),
        (Op::Sub, [-0.0, 0.0, 0.0], -0.0),
        (Op::Sub, [2.5, 2.5, 0.0], 0.0),
        (Op::Mul, [0.0, inf, 0.0], nan),
        (Op::Mul, [-0.0, 3.0, 0.0], -0.0),
        (Op::Div, [1.0, -0.0, 0.0], -inf),
        (Op::Div, [0.0, 0.0, 0.0], nan),
        (Op::Min, [-0.0, 0.0, 0.0], -0.0),
        (Op::Min, [0.0, -0.0, 0.0], -0.0),
        (Op::Min, [1.0, nan, 0.0], nan),
        (Op::Max, [-0.0, 0.0, 0.0], 0.0),
        (Op::Max, [nan, 1.0, 0.0], nan),
        (Op::Pow, [nan, 0.0, 0.0], 1.0),
        (Op::Pow, [1.0, nan, 0.0], 1.0),
        (Op::Pow, [-2.0, 0.5, 0.0], nan),
        (Op::Eq, [-0.0, 0.0, 0.0], 1.0),
        (Op::Eq, [nan, nan, 0.0], 0.0),
        (Op::Ne, [nan, nan, 0.0], 1.0),
        (Op::Lt, [nan, 1.0, 0.0], 0.0),
        (Op::Ge, [1.0, 1.0, 0.0], 1.0),
        (Op::Select, [nan, 2.0, 3.0], 2.0),
        (Op::Select, [-0.0, 2.0, 3.0], 3.0),
    ];
    for &(op, [a, b, c], expected) in cases {
        let got = eval_op(op, a, b, c);
        assert!(
            same(got, expected),
            "{}({a}, {b}, {c}) = {got}, documented {expected}",
            op.name()
        );
        let got32 = eval_op(op, a as f32, b as f32, c as f32);
        assert!(same(got32 as f64, expected), "{} in f32", op.name());
    }
}

/// The stage of `param = f(b)` as printed text.
fn stage_text(f: impl for<'b> Fn(&'b Builder) -> optjit::Expr<'b>) -> String {
    let b = Builder::new("t");
    b.set_param(f(&b));
    let program = passes::compile(&b.finish().unwrap()).unwrap();
    let text = program.display(DType::F32).to_string();
    text[text.find("stage").unwrap()..].to_string()
}

#[test]
fn fold_applies_exact_identities_only() {
    // Identities that hold for every operand: the op disappears.
    for (name, text) in [
        ("x * 1", stage_text(|b| b.grad() * 1.0)),
        ("1 * x", stage_text(|b| 1.0 * b.grad())),
        ("x / 1", stage_text(|b| b.grad() / 1.0)),
        ("x - 0", stage_text(|b| b.grad() - 0.0)),
        ("x + -0", stage_text(|b| b.grad() + -0.0)),
        ("-0 + x", stage_text(|b| -0.0 + b.grad())),
        ("--x", stage_text(|b| -(-b.grad()))),
        (
            "select(1, x, y)",
            stage_text(|b| b.select(1.0, b.grad(), b.param())),
        ),
        (
            "select(nan, x, y)",
            stage_text(|b| b.select(f64::NAN, b.grad(), b.param())),
        ),
    ] {
        assert_eq!(
            text, "stage (scalars: ):\n  param[i] <- grad[i]\n",
            "{name}"
        );
    }
    assert_eq!(
        stage_text(|b| b.select(0.0, b.grad(), b.param())),
        "stage (scalars: ):\n",
        "select(0, x, y) is y: param stays"
    );
    // Not identities: x + 0 (−0 + 0 = +0), 0 − x (−x except at 0), x · 0 (NaN, ±0).
    for (name, text, op) in [
        ("x + 0", stage_text(|b| b.grad() + 0.0), "add"),
        ("0 - x", stage_text(|b| 0.0 - b.grad()), "sub"),
        ("x * 0", stage_text(|b| b.grad() * 0.0), "mul"),
    ] {
        assert!(
            text.contains(&format!("= {op}.f32")),
            "{name} must stay: {text}"
        );
    }
    // Literal arithmetic folds, in f64, unless it gives NaN.
    let program = |f: &dyn Fn(&Builder) -> optjit::Expr<'_>| {
        let b = Builder::new("t");
        b.set_param(b.grad() + f(&b));
        passes::compile(&b.finish().unwrap())
            .unwrap()
            .display(DType::F64)
            .to_string()
    };
    assert!(program(&|b| b.constant(f64::NAN).pow(0.0)).contains("$0 = const 1.0"));
    assert!(program(&|b| b.constant(0.1) + 0.2).contains(&format!("const {:?}", 0.1 + 0.2)));
    assert!(program(&|b| b.constant(0.0) / 0.0).contains("div.f64"));
}

#[test]
fn dead_code_is_removed_and_its_hyperparameters_stay_settable() {
    let b = Builder::new("t");
    let unused = b.hyper("unused", 1.0);
    let lr = b.hyper("lr", 0.5);
    let _dead = b.grad() * unused + b.param().sqrt();
    b.set_param(b.param() - lr * b.grad());
    let graph = b.finish().unwrap();
    let (trace, program) = passes::compile_traced(&graph, DType::F32).unwrap();
    let after_dce = &trace.iter().find(|(name, _)| *name == "dce").unwrap().1;
    assert!(
        !after_dce.contains("sqrt") && !after_dce.contains("hyper unused"),
        "{after_dce}"
    );
    assert_eq!(program.stage.body.len(), 2);
    let mut s = Stepper::new(&graph).unwrap();
    s.set_hyper("unused", 3.0).unwrap();
    assert_eq!(s.hyper("unused").unwrap(), 3.0);
}

/// Runs `graph` for 3 steps with every executor on both dtypes and asserts they agree;
/// returns the f64 reference result.
fn agree(graph: &Graph) -> (Vec<f64>, optjit::ParamState<f64>) {
    let mut results = Vec::new();
    for executor in [Executor::Reference, Executor::Eager, Executor::Jit] {
        let s = Stepper::new(graph).unwrap().with_executor(executor);
        let mut p32 = vec![1.0f32, -2.0, 0.5, 3.0, 0.0];
        let mut st32 = s.init_state(5).unwrap();
        let mut p64 = vec![1.0f64, -2.0, 0.5, 3.0, 0.0];
        let mut st64 = s.init_state(5).unwrap();
        for k in 0..3 {
            let g = [0.5, -(k as f64), 2.0, 0.0, 1.0];
            s.step(&mut p64, &g, &mut st64).unwrap();
            s.step(&mut p32, &g.map(|x| x as f32), &mut st32).unwrap();
        }
        results.push((p32, st32, p64, st64));
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0], "executors differ on {}", graph.name());
    }
    let (_, _, p, st) = results.swap_remove(0);
    (p, st)
}

#[test]
fn unusual_stage_shapes_agree_across_executors() {
    // The param set to a pure per-step scalar.
    let b = Builder::new("scalar_store");
    b.set_param(b.hyper("lr", 0.25) * b.step());
    assert_eq!(agree(&b.finish().unwrap()).0, vec![0.75; 5]);
    // A state slot that copies the param, and a swap of param and state.
    let b = Builder::new("swap");
    let m = b.state("m", 7.0);
    b.set_state("m", b.param()).unwrap();
    b.set_param(m);
    let (p, st) = agree(&b.finish().unwrap());
    assert_eq!(p, vec![7.0, 7.0, 7.0, 7.0, 7.0], "three swaps from (p, 7)");
    assert_eq!(st.buffer(0).unwrap(), &[1.0, -2.0, 0.5, 3.0, 0.0]);
}

#[test]
fn scalar_state_is_carried_from_step_to_step() {
    let b = Builder::new("decaying");
    let (lr, b1) = (b.hyper("lr", 0.1), b.hyper("b1", 0.5));
    let mu = b.scalar_state("mu", 1.0);
    let mu = mu * b1;
    b.set_state("mu", mu).unwrap();
    b.set_param(b.param() - lr * mu * b.grad());
    let graph = b.finish().unwrap();
    let (_, state) = agree(&graph);
    assert_eq!(state.slots[0], SlotValue::Scalar(0.125));
    assert_eq!(state.step, 3);
    // A failed step leaves the scalar state alone.
    let s = Stepper::new(&graph).unwrap();
    let mut st = s.init_state::<f64>(2).unwrap();
    assert!(s.step(&mut [1.0, 2.0], &[1.0], &mut st).is_err());
    assert_eq!((st.slots[0].clone(), st.step), (SlotValue::Scalar(1.0), 0));
}

/// `cos` and `floor` exist on per-step scalars only, like `exp`, `ln` and `pow`: a per-element
/// operand is a typed error in the builder and in the text form, and a stage holding one is
/// rejected before code generation.
#[test]
fn cos_and_floor_of_a_per_element_value_are_typed_errors() {
    let jit = Jit::new().unwrap();
    for op in [Op::Cos, Op::Floor] {
        assert!(op.scalar_only());
        let b = Builder::new("t");
        b.set_param(b.apply(op, &[b.grad()]));
        let err = b.finish().unwrap_err();
        assert!(matches!(err, Error::ScalarRequired { .. }), "{err}");

        let text = format!("optimizer t() {{ param = {}(grad) }}", op.name());
        let err = optjit::text::parse(&text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("the argument of `{}`", op.name())),
            "{message}"
        );

        let mut bad = adam_program();
        bad.stage.body[0].op = op;
        assert!(jit.compile(&bad, DType::F32).is_err());
        assert!(verify_program(&bad, "test").is_err());
    }
}

fn adam_program() -> optjit::Program {
    passes::compile(&optjit::optim::Adam::default().graph().unwrap()).unwrap()
}

#[test]
fn malformed_stages_never_reach_generated_code() {
    let jit = Jit::new().unwrap();
    let good = adam_program();
    let mut store_to_grad = good.clone();
    store_to_grad.stage.stores.push((1, ElemArg::Value(0)));
    let mut forward_ref = good.clone();
    forward_ref.stage.body[0] = ElemInst::new(Op::Add, &[ElemArg::Value(5), ElemArg::Load(0)]);
    let mut too_few_streams = good.clone();
    too_few_streams.stage.n_streams = 1;
    let mut scalar_only = good.clone();
    scalar_only.stage.body[0].op = Op::Exp;
    // Beyond the limits: generated code would address scalars past an immediate offset.
    let mut too_many_scalars = good.clone();
    too_many_scalars.stage.n_scalars = optjit::program::Stage::MAX_SCALARS + 1;
    let last = ElemArg::Scalar(optjit::program::Stage::MAX_SCALARS);
    too_many_scalars.stage.body[0] = ElemInst::new(Op::Add, &[ElemArg::Load(1), last]);
    let mut too_many_streams = good.clone();
    too_many_streams.stage.n_streams = optjit::program::Stage::MAX_STREAMS + 1;
    let mut too_many_instructions = good.clone();
    let first = too_many_instructions.stage.body[0];
    too_many_instructions.stage.body = vec![first; optjit::program::Stage::MAX_INSTRUCTIONS + 1];
    for (name, bad) in [
        ("store to grad", &store_to_grad),
        ("forward reference", &forward_ref),
        ("too few streams", &too_few_streams),
        ("scalar-only op", &scalar_only),
        ("too many scalars", &too_many_scalars),
        ("too many streams", &too_many_streams),
        ("too many instructions", &too_many_instructions),
    ] {
        let err = jit
            .compile(bad, DType::F32)
            .err()
            .unwrap_or_else(|| panic!("{name} compiled"));
        let too_large = name.starts_with("too many ");
        assert!(
            match err {
                Error::ProgramTooLarge { what, .. } => too_large && name.ends_with(what),
                Error::InvalidProgram { .. } => !too_large,
                _ => false,
            },
            "{name}: {err}"
        );
        assert!(
            matches!(verify_program(bad, "test"), Err(Error::Verify { .. })),
            "{name}"
        );
        let (mut p, g) = (vec![0.0f32; 3], vec![0.0f32; 3]);
        let (mut m, mut v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
        let scalars = vec![0.0f32; bad.stage.n_scalars as usize];
        let mut seg = [optjit::Segment {
            param: (&mut p).into(),
            grad: (&g).into(),
            state: &mut [(&mut m).into(), (&mut v).into()],
            scalars: &scalars,
            partials: &mut [],
            noise: optjit::Noise::NONE,
        }];
        assert!(matches!(
            optjit::interp::run_reference(&bad.stage, &mut seg),
            Err(Error::InvalidProgram { .. } | Error::ProgramTooLarge { .. })
        ));
        assert!(matches!(
            optjit::interp::run_eager(&bad.stage, &mut seg),
            Err(Error::InvalidProgram { .. } | Error::ProgramTooLarge { .. })
        ));
    }
    // The JIT still works after rejecting them.
    jit.compile(&good, DType::F32).unwrap();
    assert_eq!(jit.stats().compiles, 1);
}

#[test]
fn builder_misuse_is_reported_not_panicked() {
    let b = Builder::new("t");
    let x = b.apply(Op::Add, &[b.grad()]);
    b.set_param(x);
    assert_eq!(
        b.finish().unwrap_err(),
        Error::Arity {
            op: "add",
            expected: 2,
            actual: 1
        }
    );

    let (b, other) = (Builder::new("t"), Builder::new("u"));
    let chosen = b.select(other.grad(), b.grad(), b.param());
    b.set_param(chosen * 2.0 + b.grad());
    assert_eq!(b.finish().unwrap_err(), Error::ForeignExpr);
}

#[test]
fn reciprocal_flag_turns_scalar_divisions_into_products() {
    let build = |flags: GraphFlags| {
        let b = Builder::new("t");
        b.set_flags(flags);
        let s = b.hyper("s", 3.0);
        b.set_param(b.grad() / s + b.param() / b.grad());
        b.finish().unwrap()
    };
    let plain = stage_of(&build(GraphFlags::default()));
    assert_eq!(plain.matches("= div.f32").count(), 2, "{plain}");
    let flagged = build(GraphFlags {
        reciprocal: true,
        ..GraphFlags::default()
    });
    let text = stage_of(&flagged);
    // Only the division by the per-step scalar goes; element / element stays.
    assert_eq!(text.matches("= div.f32").count(), 1, "{text}");
    assert!(text.contains("= mul.f32 grad[i], $"), "{text}");
    let (p, _) = agree(&flagged);
    let exact: Vec<f64> = [1.0f64, -2.0, 0.5, 3.0, 0.0].to_vec();
    assert_eq!(p.len(), exact.len());
}

fn stage_of(graph: &Graph) -> String {
    passes::compile(graph)
        .unwrap()
        .display(DType::F32)
        .to_string()
}

#[test]
fn fast_math_contracts_multiply_adds_within_tolerance() {
    let adam = optjit::optim::Adam {
        weight_decay: 0.01,
        ..Default::default()
    }
    .graph()
    .unwrap();
    let fast = adam.clone().with_flags(GraphFlags {
        fast_math: true,
        ..adam.flags()
    });
    let text = stage_of(&fast);
    assert!(text.matches("= fma.f32").count() >= 3, "{text}");
    assert!(!stage_of(&adam).contains("fma"));
    agree(&fast);
    // Tolerance-tested against the exact program: 20 steps on varied data.
    let (exact, contracted) = (Stepper::new(&adam).unwrap(), Stepper::new(&fast).unwrap());
    let n = 4096;
    let mut p = (vec![0.0f32; n], vec![0.0f32; n]);
    for (i, (a, b)) in p.0.iter_mut().zip(p.1.iter_mut()).enumerate() {
        *a = ((i * 37 % 101) as f32 - 50.0) * 0.013;
        *b = *a;
    }
    let (mut s0, mut s1) = (
        exact.init_state::<f32>(n).unwrap(),
        contracted.init_state::<f32>(n).unwrap(),
    );
    for k in 0..20 {
        let g: Vec<f32> = (0..n)
            .map(|i| (((i * 7 + k * 13) % 97) as f32 - 48.0) * 0.021)
            .collect();
        exact.step(&mut p.0, &g, &mut s0).unwrap();
        contracted.step(&mut p.1, &g, &mut s1).unwrap();
    }
    let mut differing = 0;
    for (a, b) in p.0.iter().zip(&p.1) {
        assert!((a - b).abs() <= 1e-7 + 1e-5 * a.abs(), "{a} vs {b}");
        differing += usize::from(a != b);
    }
    assert!(
        differing > 0,
        "fast_math changed nothing: no contraction happened"
    );
}

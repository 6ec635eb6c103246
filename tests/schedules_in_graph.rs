//! optax's schedules compiled into the prologue (`optjit::schedule::graph` and the text form's
//! schedule functions): their values against optax's formulas written out here in f64 from
//! optax's source (`optax/schedules/_schedule.py`, `_join.py`), at optax's count
//! `step − 1`; executors agree bit for bit; and a schedule adds nothing to the stage.

use ndarray::Array1;
use optjit::schedule::graph::{
    constant_schedule, cosine_decay_schedule, count, exponential_decay, join_schedules,
    linear_schedule, piecewise_constant_schedule, polynomial_schedule, value_at,
    warmup_cosine_decay_schedule,
};
use optjit::{passes, text, Builder, Error, Executor, Optimizer};
use std::f64::consts::PI;

/// A schedule built in a fresh builder.
type Schedule = dyn for<'b> Fn(&'b Builder) -> optjit::Expr<'b>;

/// The counts checked: the start, around every boundary used below, and far beyond.
fn counts() -> Vec<u64> {
    let mut c: Vec<u64> = (0..=40).collect();
    c.extend([49, 50, 51, 99, 100, 101, 109, 110, 111, 1000, 123_456]);
    c
}

/// Asserts that the schedule built by `f` equals `expected(count)` bit for bit at every count.
fn check(
    what: &str,
    f: impl for<'b> Fn(&'b Builder) -> optjit::Expr<'b>,
    expected: impl Fn(f64) -> f64,
) {
    for c in counts() {
        let got = value_at(c + 1, &f).unwrap();
        let want = expected(c as f64);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{what} at count {c}: got {got}, optax's formula gives {want}"
        );
    }
}

/// `jnp.sign`: −1, 0 or 1 (Rust's `signum` gives 1 at 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

fn clip(x: f64, lo: f64, hi: f64) -> f64 {
    x.max(lo).min(hi)
}

/// optax's polynomial_schedule (transition_steps > 0, transition_begin >= 0).
fn polynomial(c: f64, i: f64, e: f64, p: f64, t: f64, b: f64) -> f64 {
    let count = clip(c - b, 0.0, t);
    let frac = 1.0 - count / t;
    (i - e) * frac.powf(p) + e
}

/// optax's cosine_decay_schedule (decay_steps > 0).
fn cosine(c: f64, i: f64, d: f64, alpha: f64, exponent: f64) -> f64 {
    let count = c.min(d);
    let cosine_decay = 0.5 * (1.0 + (PI * count / d).cos());
    let decayed = (1.0 - alpha) * cosine_decay.powf(exponent) + alpha;
    i * decayed
}

#[test]
fn constant_is_its_value() {
    check(
        "constant",
        |b| constant_schedule(count(b), 0.375),
        |_| 0.375,
    );
}

#[test]
fn polynomial_and_linear_match_optax() {
    for (i, e, p, t, b) in [
        (1.0, 0.01, 2.0, 100.0, 5.0),
        (0.5, 2.0, 0.5, 10.0, 0.0),
        (3.0, 0.0, 3.0, 7.0, 30.0),
    ] {
        check(
            "polynomial",
            |bl| polynomial_schedule(count(bl), i, e, p, t, b),
            |c| polynomial(c, i, e, p, t, b),
        );
        check(
            "linear",
            |bl| linear_schedule(count(bl), i, e, t, b),
            |c| polynomial(c, i, e, 1.0, t, b),
        );
    }
    // optax's docstring values, and its branches: no transition, a negative begin.
    let at = |step, t, b| {
        value_at(step, |bl| {
            polynomial_schedule(count(bl), 1.0, 0.01, 2.0, t, b)
        })
        .unwrap()
    };
    assert_eq!(at(1, 100.0, 5.0), 1.0);
    assert_eq!(at(6, 100.0, 5.0), 1.0);
    assert_eq!(at(106, 100.0, 5.0), 0.01);
    assert_eq!(at(50, 0.0, 5.0), 1.0, "transition_steps <= 0: init_value");
    assert_eq!(at(50, -3.0, 5.0), 1.0);
    assert_eq!(at(1, 100.0, -7.0), 1.0, "a negative begin counts as 0");
    assert_eq!(
        at(11, 100.0, -7.0),
        polynomial(10.0, 1.0, 0.01, 2.0, 100.0, 0.0)
    );
    // Linear is exactly the interpolation at its ends and midpoint.
    let lin = |step| value_at(step, |bl| linear_schedule(count(bl), 1.0, 0.0, 4.0, 0.0)).unwrap();
    assert_eq!([lin(1), lin(3), lin(5), lin(99)], [1.0, 0.5, 0.0, 0.0]);
}

#[test]
fn cosine_decay_matches_optax() {
    for (i, d, alpha, exponent) in [
        (1.0, 100.0, 0.0, 1.0),
        (0.1, 50.0, 0.1, 2.0),
        (2.0, 7.0, 0.5, 0.5),
    ] {
        check(
            "cosine_decay",
            |b| cosine_decay_schedule(count(b), i, d, alpha, exponent),
            |c| cosine(c, i, d, alpha, exponent),
        );
    }
    // Past decay_steps the value is alpha · init, held.
    let at = |step| {
        value_at(step, |b| {
            cosine_decay_schedule(count(b), 2.0, 10.0, 0.25, 1.0)
        })
        .unwrap()
    };
    assert_eq!(at(11), at(1000));
    assert_eq!(at(1), 2.0);
}

#[test]
fn warmup_cosine_decay_matches_optax() {
    // optax: join_schedules([linear(I, P, W), cosine_decay(P, D − W, α = E / P, p)], [W]).
    let expected = |c: f64, i: f64, p: f64, w: f64, d: f64, e: f64, x: f64| {
        let alpha = if p == 0.0 { 0.0 } else { e / p };
        if c < w {
            polynomial(c, i, p, 1.0, w, 0.0)
        } else {
            cosine(c - w, p, d - w, alpha, x)
        }
    };
    for (i, p, w, d, e, x) in [
        (0.0, 1e-3, 100.0, 1000.0, 0.0, 1.0),
        (0.1, 1.0, 10.0, 110.0, 0.01, 2.0),
        (0.5, 0.0, 5.0, 50.0, 0.3, 1.0),
        (0.2, 1.0, 0.0, 40.0, 0.1, 1.0),
    ] {
        check(
            "warmup_cosine_decay",
            |b| {
                let peak = b.hyper("peak", p);
                warmup_cosine_decay_schedule(count(b), i, peak, w, d, e, x)
            },
            |c| expected(c, i, p, w, d, e, x),
        );
    }
    // The warmup's end is the peak, at count W exactly (the cosine's count 0).
    let at = |step| {
        value_at(step, |b| {
            warmup_cosine_decay_schedule(count(b), 0.0, 0.5, 10.0, 20.0, 0.0, 1.0)
        })
        .unwrap()
    };
    assert_eq!(
        [at(1), at(6), at(11), at(21), at(500)],
        [0.0, 0.25, 0.5, 0.0, 0.0]
    );
}

#[test]
fn exponential_decay_matches_optax() {
    let expected =
        |c: f64, i: f64, t: f64, rate: f64, b: f64, staircase: bool, end: Option<f64>| {
            let decreased_count = c - b;
            let mut p = decreased_count / t;
            if staircase {
                p = p.floor();
            }
            let v = if decreased_count <= 0.0 {
                i
            } else {
                i * rate.powf(p)
            };
            match end {
                Some(e) if rate < 1.0 => v.max(e),
                Some(e) => v.min(e),
                None => v,
            }
        };
    for (i, t, rate, b, staircase, end) in [
        (1.0, 10.0, 0.5, 0.0, false, None),
        (1.0, 10.0, 0.5, 0.0, true, None),
        (2.0, 3.0, 0.9, 20.0, true, Some(1.5)),
        (0.1, 7.0, 1.5, 5.0, false, Some(0.4)),
        (0.1, 7.0, 1.5, 5.0, true, None),
    ] {
        check(
            "exponential_decay",
            |bl| {
                let end = end.map(|e| bl.constant(e));
                exponential_decay(count(bl), i, t, rate, b, staircase, end)
            },
            |c| expected(c, i, t, rate, b, staircase, end),
        );
    }
    // optax's early returns: no transition or a zero rate give init_value, end ignored.
    for (t, rate) in [(0.0, 0.5), (10.0, 0.0)] {
        let v = value_at(50, |bl| {
            exponential_decay(count(bl), 3.0, t, rate, 0.0, false, Some(bl.constant(9.0)))
        })
        .unwrap();
        assert_eq!(v, 3.0);
    }
    // Staircase: constant within each interval, stepping exactly at multiples of T.
    let at = |step| {
        value_at(step, |bl| {
            exponential_decay(count(bl), 1.0, 10.0, 0.5, 0.0, true, None)
        })
        .unwrap()
    };
    assert_eq!([at(10), at(11), at(20), at(21)], [1.0, 0.5, 0.5, 0.25]);
}

#[test]
fn piecewise_constant_matches_optax() {
    let table: [(f64, f64); 3] = [(100.0, 0.1), (50.0, 0.5), (110.0, 0.0)];
    let expected = |c: f64| {
        let mut sorted = table.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut v: f64 = 2.0;
        for (threshold, scale) in sorted {
            let indicator = 0.0f64.max(sign(threshold - c));
            v = v * indicator + (1.0 - indicator) * scale * v;
        }
        v
    };
    check(
        "piecewise_constant",
        |b| piecewise_constant_schedule(count(b), 2.0, &table),
        expected,
    );
    let at = |step| value_at(step, |b| piecewise_constant_schedule(count(b), 2.0, &table)).unwrap();
    assert_eq!(
        [at(50), at(51), at(100), at(101), at(111)],
        [2.0, 1.0, 1.0, 0.1, 0.0]
    );
}

#[test]
fn joins_switch_at_boundaries_with_count_restarted() {
    let expected = |c: f64| {
        // optax: out = s0(c); for (b, s): out = where(c < b, out, s(c − b)).
        let mut out = 5.0;
        if c >= 10.0 {
            out = polynomial(c - 10.0, 1.0, 0.0, 1.0, 20.0, 0.0);
        }
        if c >= 40.0 {
            out = cosine(c - 40.0, 0.5, 60.0, 0.0, 1.0);
        }
        out
    };
    check(
        "join",
        |b| {
            let s0 = |c| constant_schedule(c, 5.0);
            let s1 = |c| linear_schedule(c, 1.0, 0.0, 20.0, 0.0);
            let s2 = |c| cosine_decay_schedule(c, 0.5, 60.0, 0.0, 1.0);
            join_schedules(count(b), &[&s0, &s1, &s2], &[10.0, 40.0])
        },
        expected,
    );
}

#[test]
fn schedule_mistakes_are_typed_errors() {
    let finish = |f: &Schedule| {
        let b = Builder::new("t");
        let lr = f(&b);
        b.set_param(b.param() - lr * b.grad());
        b.finish()
    };
    let bad = [
        finish(&|b| cosine_decay_schedule(count(b), 1.0, 0.0, 0.0, 1.0)),
        finish(&|b| warmup_cosine_decay_schedule(count(b), 0.0, 1.0, 10.0, 10.0, 0.0, 1.0)),
        finish(&|b| piecewise_constant_schedule(count(b), 1.0, &[(10.0, -0.5)])),
        finish(&|b| piecewise_constant_schedule(count(b), 1.0, &[(10.0, 0.5), (10.0, 0.1)])),
        finish(&|b| join_schedules(count(b), &[&|c| constant_schedule(c, 1.0)], &[3.0])),
    ];
    for r in bad {
        assert!(matches!(r, Err(Error::InvalidOption { .. })), "{r:?}");
    }
    let per_element = finish(&|b| linear_schedule(count(b), b.grad(), 0.0, 10.0, 0.0));
    assert!(
        matches!(per_element, Err(Error::ScalarRequired { .. })),
        "{per_element:?}"
    );
}

/// The text form's schedule functions build the same values as the Rust functions.
#[test]
fn text_schedules_match_the_builder() {
    let cases: [(&str, &Schedule); 8] = [
        ("constant(0.5)", &|b| constant_schedule(count(b), 0.5)),
        ("linear(1, lr, 20, 5)", &|b| {
            linear_schedule(count(b), 1.0, b.hyper("lr", 0.25), 20.0, 5.0)
        }),
        ("polynomial(1, 0.01, 2, 30)", &|b| {
            polynomial_schedule(count(b), 1.0, 0.01, 2.0, 30.0, 0.0)
        }),
        ("cosine_decay(lr, 50, 0.1)", &|b| {
            cosine_decay_schedule(count(b), b.hyper("lr", 0.25), 50.0, 0.1, 1.0)
        }),
        ("warmup_cosine_decay(0, lr, 10, 110, 0.01, 2)", &|b| {
            warmup_cosine_decay_schedule(count(b), 0.0, b.hyper("lr", 0.25), 10.0, 110.0, 0.01, 2.0)
        }),
        ("exponential_decay(lr, 10, 0.5, 3, 1, 0.01)", &|b| {
            let end = b.constant(0.01);
            exponential_decay(
                count(b),
                b.hyper("lr", 0.25),
                10.0,
                0.5,
                3.0,
                true,
                Some(end),
            )
        }),
        ("piecewise_constant(lr, 100, 0.1, 50, 0.5)", &|b| {
            piecewise_constant_schedule(count(b), b.hyper("lr", 0.25), &[(100.0, 0.1), (50.0, 0.5)])
        }),
        (
            "join(constant(lr), 10, linear(1, 0, 20), 40, cosine_decay(0.5, 60))",
            &|b| {
                let lr = b.hyper("lr", 0.25);
                let s0 = |_c| lr;
                let s1 = |c| linear_schedule(c, 1.0, 0.0, 20.0, 0.0);
                let s2 = |c| cosine_decay_schedule(c, 0.5, 60.0, 0.0, 1.0);
                join_schedules(count(b), &[&s0, &s1, &s2], &[10.0, 40.0])
            },
        ),
    ];
    for (call, f) in cases {
        let source = format!(
            "optimizer t(lr = 0.25) {{\n    scalar state value = 0\n    value = {call}\n    param = param\n}}\n"
        );
        let graph = text::parse(&source).unwrap_or_else(|e| panic!("{call}: {e}"));
        // The printer writes the expanded ops; they parse back to the same graph.
        assert_eq!(text::parse(&text::print(&graph)).unwrap(), graph, "{call}");
        let program = passes::compile(&graph).unwrap();
        for c in counts() {
            let mut values = Vec::new();
            program.eval_prologue(&[0.25], c + 1, |_| 0.0, &mut values);
            let got = values[program.prologue.state_updates[0].1 as usize];
            let want = value_at(c + 1, f).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{call} at count {c}");
        }
    }
}

#[test]
fn text_schedule_mistakes_are_reported_where_they_are() {
    for (call, message) in [
        (
            "linear(1, 0, lr)",
            "the `transition_steps` argument of `linear` must be a number",
        ),
        (
            "linear(grad, 0, 10)",
            "the `init_value` argument of `linear` must be a per-step scalar",
        ),
        (
            "cosine_decay(1, 0)",
            "invalid argument `decay_steps` of `cosine_decay`",
        ),
        (
            "exponential_decay(1, 10, 0.5, 0, 2)",
            "invalid argument `staircase` of `exponential_decay`",
        ),
        (
            "piecewise_constant(1, 10)",
            "`piecewise_constant` takes 3 arguments, got 2",
        ),
        ("linear(1)", "`linear` takes 3 arguments, got 1"),
        (
            "join(constant(1), lr, constant(2))",
            "a boundary of `join` must be a number",
        ),
        ("join(1, 10, constant(2))", "expected a schedule call"),
        (
            "warmup_cosine_decy(0, lr, 10, 100)",
            "did you mean `warmup_cosine_decay`?",
        ),
    ] {
        let source = format!("optimizer t(lr = 0.1) {{\n    param = param - {call} * grad\n}}\n");
        let e = text::parse(&source).unwrap_err();
        let Error::Text(t) = &e else {
            panic!("{call}: {e}")
        };
        let shown = format!("{e}\n{}", t.kind.expected());
        assert!(shown.contains(message), "{call}: {shown}");
        assert_eq!(t.line, 2, "{call}");
    }
}

#[test]
fn adam_warmup_cosine_example_parses_and_round_trips() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/adam_warmup_cosine.opt"
    );
    let graph = text::parse_file(path).unwrap();
    assert_eq!(graph.name(), "adam_warmup_cosine");
    assert_eq!(text::parse(&text::print(&graph)).unwrap(), graph);
}

/// Adam with `lr` in place of the schedule, the same text otherwise.
fn plain_adam() -> optjit::Graph {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/adam_warmup_cosine.opt"
    );
    let source = std::fs::read_to_string(path).unwrap();
    let source = source.replace("warmup_cosine_decay(0, lr, 100, 1000, 0)", "lr");
    text::parse(&source).unwrap()
}

#[test]
fn a_schedule_costs_nothing_per_element() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/adam_warmup_cosine.opt"
    );
    let scheduled = passes::compile(&text::parse_file(path).unwrap()).unwrap();
    let plain = passes::compile(&plain_adam()).unwrap();
    assert!(
        scheduled.stage.body.len() <= plain.stage.body.len(),
        "{} stage instructions with the schedule, {} without",
        scheduled.stage.body.len(),
        plain.stage.body.len()
    );
    assert!(scheduled.prologue.insts.len() > plain.prologue.insts.len());
}

/// Adam with the warmup + cosine schedule, stepped past the warmup and the decay: the JIT
/// and the reference interpreter agree bit for bit, and the schedule moved the parameters
/// (a zero learning rate at the first step, the peak at count 100).
#[test]
fn scheduled_adam_agrees_across_executors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/adam_warmup_cosine.opt"
    );
    let graph = text::parse_file(path).unwrap();
    let run = |executor| {
        let mut opt = Optimizer::new(&graph).unwrap().with_executor(executor);
        opt.add_param_group(&[("lr", 0.01)]).unwrap();
        let lens = [1usize, 3, 4, 5, 9, 37];
        let mut handles = Vec::new();
        for (k, &len) in lens.iter().enumerate() {
            let init: Array1<f32> = (0..len)
                .map(|i| ((i * 7 + k) % 13) as f32 * 0.25 - 1.5)
                .collect();
            handles.push(opt.add_param(0, &format!("p{k}"), &init).unwrap());
        }
        let mut trace = Vec::new();
        for step in 0..1005usize {
            for (k, h) in handles.iter().enumerate() {
                let len = opt.param(h).unwrap().len();
                let g: Vec<f32> = (0..len)
                    .map(|i| (((i * 5 + k + step) % 11) as f32 - 5.0) * 0.1)
                    .collect();
                opt.set_grad(h, &g).unwrap();
            }
            opt.step().unwrap();
            if [0, 1, 99, 100, 101, 500, 999, 1000, 1004].contains(&step) {
                let bits: Vec<u32> = handles
                    .iter()
                    .flat_map(|h| {
                        opt.param(h)
                            .unwrap()
                            .iter()
                            .map(|x| x.to_bits())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                trace.push(bits);
            }
        }
        trace
    };
    let jit = run(Executor::Jit);
    assert_eq!(jit, run(Executor::Reference));
    // lr_t is 0 at the first update (count 0): nothing moves; the second update moves.
    assert_ne!(jit[0], jit[1]);
    // Past update 1000 the schedule holds 0: the parameters stop.
    assert_eq!(jit[7], jit[8]);
}

//! The text form: every built-in round-trips through the printer and the parser, node for
//! node; hand-written text builds the graph its builder twin builds.

mod common;

use optjit::{optim, text, Builder, Graph};

fn round_trip(graph: &Graph) {
    let printed = text::print(graph);
    let parsed = match text::parse(&printed) {
        Ok(g) => g,
        Err(e) => panic!("{} does not parse back:\n{e}\n{printed}", graph.name()),
    };
    assert_eq!(
        &parsed, graph,
        "{printed}\nprinted graph:\n{graph}\nparsed:\n{parsed}"
    );
    assert_eq!(text::print(&parsed), printed);
}

#[test]
fn every_built_in_round_trips_node_for_node() {
    let mut bad = vec![];
    for name in optim::NAMES {
        let graph = optim::by_name(name).unwrap();
        if std::panic::catch_unwind(|| round_trip(&graph)).is_err() {
            bad.push(name);
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// Builds a graph with `body` over a builder with hyperparameters `lr` and `b1` declared first.
fn built(body: impl FnOnce(&Builder)) -> Graph {
    let b = Builder::new("t");
    b.hyper("lr", 0.1);
    b.hyper("b1", 0.9);
    body(&b);
    b.finish().unwrap()
}

#[test]
fn awkward_arena_orders_round_trip() {
    // A negated constant (not the literal −2), used beside the literal 2.
    round_trip(&built(|b| {
        let two = b.constant(2.0);
        b.set_param(b.param() * -two + b.grad() * 2.0);
    }));
    // Leaves created long before their first use, a dead value, an unused leaf.
    round_trip(&built(|b| {
        let g = b.grad();
        let p = b.param();
        let _dead = g * 3.0 + 1.0;
        let _unused = b.step();
        let m = b.state("m", 0.5);
        b.set_state("m", m + g).unwrap();
        b.set_param(p - m);
    }));
    // The param assigned before the input param is ever read; a state reads it afterwards.
    round_trip(&built(|b| {
        let m = b.state("m", 0.0);
        b.set_param(b.grad() * 2.0);
        b.set_state("m", b.param() + m).unwrap();
    }));
    // Two states swapping their values, and a state kept as it is.
    round_trip(&built(|b| {
        let x = b.state("x", 1.0);
        let y = b.state("y", 2.0);
        let z = b.state("z", 3.0);
        b.set_state("x", y).unwrap();
        b.set_state("y", x).unwrap();
        b.set_state("z", z).unwrap();
        b.set_param(b.param() + x + y);
    }));
    // One value for several outputs; outputs that are a constant, a hyperparameter, a leaf.
    round_trip(&built(|b| {
        let v = b.grad() * 0.5;
        let s = b.scalar_state("s", 0.0);
        let u = b.state("u", 0.0);
        let w = b.state("w", 0.0);
        b.set_state("s", b.step()).unwrap();
        b.set_state("u", v).unwrap();
        b.set_state("w", b.constant(-0.0)).unwrap();
        let _ = (s, u, w);
        b.set_param(v);
    }));
}

#[test]
fn every_operator_and_literal_prints_with_the_right_grouping() {
    round_trip(&built(|b| {
        let (p, g, t) = (b.param(), b.grad(), b.step());
        let base = b.constant(-2.0).pow(t).pow(2.0); // (−2 ^ t) ^ 2, left-nested
        let right = 2.0f64.pow_expr(b, t);
        let neg_pow = -(base.pow(0.5));
        let cmp = (p.lt(g)).eq(g.ge(p)) - p.ne(1.0) * g.le(t);
        let sel = b.select(
            cmp,
            p.min(g).max(f64::INFINITY),
            (g - (p - g)) / (p / (g * t)),
        );
        let fused = p.mul_add(g, f64::NAN) + (-(-p)) + p.abs().sign().sqrt();
        let scalar = (t.ln() * -t.exp()) - (t - -0.0);
        b.set_param(sel + fused * scalar + neg_pow + right + f64::NEG_INFINITY);
    }));
}

trait PowExpr {
    fn pow_expr<'b>(self, b: &'b Builder, e: optjit::Expr<'b>) -> optjit::Expr<'b>;
}

impl PowExpr for f64 {
    fn pow_expr<'b>(self, b: &'b Builder, e: optjit::Expr<'b>) -> optjit::Expr<'b> {
        b.constant(self).pow(b.constant(self).pow(e)) // right-nested: 2 ^ (2 ^ t)
    }
}

#[test]
fn a_hyperparameter_declared_late_prints_in_the_header_and_compiles_the_same() {
    let b = Builder::new("late");
    let g = b.grad();
    let lr = b.hyper("lr", 0.1);
    b.set_param(b.param() - lr * g);
    let graph = b.finish().unwrap();
    let parsed = text::parse(&text::print(&graph)).unwrap();
    assert_eq!(parsed.hypers(), graph.hypers());
    assert_eq!(
        optjit::passes::compile(&parsed)
            .unwrap()
            .display(optjit::DType::F32)
            .to_string(),
        optjit::passes::compile(&graph)
            .unwrap()
            .display(optjit::DType::F32)
            .to_string()
    );
}

#[test]
fn random_graphs_round_trip_node_for_node() {
    for seed in 0..500 {
        round_trip(&common::random_graph(seed));
    }
}

#[test]
fn graphs_after_each_pass_print_and_parse_to_the_same_program() {
    for name in optim::NAMES {
        let mut graph = optim::by_name(name).unwrap();
        for pass in optjit::passes::PIPELINE {
            graph = (pass.run)(&graph).unwrap();
            let parsed = text::parse(&text::print(&graph)).unwrap();
            let program = |g: &Graph| {
                let p = optjit::passes::compile(g).unwrap();
                p.display(optjit::DType::F64).to_string()
            };
            assert_eq!(
                program(&parsed),
                program(&graph),
                "{name} after {}",
                pass.name
            );
        }
    }
}

#[path = "../examples/custom_optimizer.rs"]
mod custom_optimizer;

#[test]
fn the_custom_optimizer_example_runs_its_assertions() {
    custom_optimizer::main().unwrap();
}

#[test]
fn every_example_opt_file_parses_compiles_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "opt") {
            let graph = text::parse_file(&path).unwrap();
            optjit::passes::compile(&graph).unwrap();
            round_trip(&graph);
            seen += 1;
        }
    }
    assert!(seen >= 3, "{seen} .opt examples");
}

#[test]
fn a_leading_byte_order_mark_is_ignored() {
    let source = "\u{feff}optimizer sgd(lr = 0.1) {\n    param = param - lr * grad\n}\n";
    let graph = text::parse(source).unwrap();
    assert_eq!(graph, text::parse(&source[3..]).unwrap());
    assert_eq!(text::parse_bytes(source.as_bytes()).unwrap(), graph);
}

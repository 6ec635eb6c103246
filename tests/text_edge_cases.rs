//! The text form at its edges: sources too large, too deep or too big a graph are refused with
//! an error at the right place; unusual but valid text (comments everywhere, `;`, CRLF, one
//! line, special literals, shadowing) keeps parsing.

mod common;

use common::text::*;
use optjit::ir::Node;
use optjit::text::{self, limits, TextErrorKind};
use std::path::Path;

// ---- limits ----

#[test]
fn too_large_sources_are_refused_from_bytes_text_and_files() {
    let too_large = TextErrorKind::TooLarge {
        bytes: limits::MAX_SOURCE_BYTES + 1,
    };
    let spaces = vec![b' '; limits::MAX_SOURCE_BYTES + 1];
    let e = unwrap_text(text::parse_bytes(&spaces), "too large");
    assert_eq!((&e.kind, e.line, e.column), (&too_large, 1, 1));
    let e = error(std::str::from_utf8(&spaces).unwrap());
    assert_eq!((&e.kind, e.line, e.column), (&too_large, 1, 1));

    // Exactly at the limit is fine.
    let mut source = String::from("optimizer t() { param = grad }\n");
    source.push_str(&"#".repeat(limits::MAX_SOURCE_BYTES - source.len()));
    assert_eq!(source.len(), limits::MAX_SOURCE_BYTES);
    parses(&source);

    // A file one byte too large (or larger: only the limit plus one byte is read).
    let name = format!("{}-text_errors_too_large.opt", std::process::id());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    source.push_str("\n\n\n");
    std::fs::write(&path, &source).unwrap();
    let e = unwrap_text(text::parse_file(&path), "a file too large");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.kind, too_large);
    assert_eq!(e.file.as_deref(), Some(path.display().to_string().as_str()));
    let message = e.to_string();
    assert!(message.starts_with("the source is too large"), "{message}");
    assert!(
        message.contains(&format!("--> {}:1:1", path.display())),
        "{message}"
    );
}

#[test]
fn too_deep_parentheses_signs_powers_and_calls() {
    // `param = ` ends at column 12; the statement's expression is the first level, so the
    // 64th opening parenthesis is the 65th level and the caret goes under the next token.
    let deep = |open: &str, n: usize, close: &str| {
        opt(&format!(
            "    param = {}grad{}",
            open.repeat(n),
            close.repeat(n)
        ))
    };
    let limit = limits::MAX_DEPTH;
    parses(&deep("(", limit - 1, ")").replace("state m = 0", ""));
    assert_error(
        &deep("(", limit, ")"),
        TextErrorKind::TooDeep,
        3,
        77,
        "grad",
    );
    assert_error(&deep("(", 200, ")"), TextErrorKind::TooDeep, 3, 77, "(");
    assert_error(&deep("-", 200, ""), TextErrorKind::TooDeep, 3, 77, "-");
    // A call is two levels (the call and its argument): the 33rd `sqrt` is too deep.
    assert_error(
        &deep("sqrt(", 40, ")"),
        TextErrorKind::TooDeep,
        3,
        13 + 32 * 5,
        "sqrt",
    );
    // `^` is right-associative: each exponent is one level deeper.
    let powers = opt(&format!("    param = grad * step{}", " ^ step".repeat(100)));
    // The 64th `^` makes the 65th level: the caret goes under its exponent, the 65th `step`.
    let column = "    param = grad * ".len() + 64 * "step ^ ".len() + 1;
    assert_error(&powers, TextErrorKind::TooDeep, 3, column, "step");
}

#[test]
fn too_many_nodes_from_many_let_lines() {
    // Each line makes a constant and a product: with `lr` and `grad`, line k + 1 has made
    // 2 + 2k nodes, so the constant of line 50 001 is one node too many.
    let mut source = String::from("optimizer t(lr = 0.1) {\n");
    for k in 1..=50_000 {
        source.push_str(&format!("let a=grad*{k}\n"));
    }
    source.push_str("param = a\n}\n");
    assert!(source.len() < limits::MAX_SOURCE_BYTES);
    assert_error(&source, TextErrorKind::TooManyNodes, 50_001, 12, "50000");
    // One line fewer is within the limit.
    let fewer = source.replace("let a=grad*50000\n", "");
    assert_eq!(parses(&fewer).nodes().len(), limits::MAX_NODES);
}

/// Regression: hyperparameters were not counted against the node limit, so a header of
/// `MAX_NODES + 1` of them and a body that made no node gave a graph over the limit. (It
/// also took half a minute while each new name was compared with every earlier one.)
#[test]
fn hyperparameters_alone_could_exceed_the_node_limit() {
    let names: Vec<String> = (0..=limits::MAX_NODES).map(|i| format!("h{i:x}")).collect();
    let header: Vec<String> = names.iter().map(|name| format!("{name}=0")).collect();
    let source = format!("optimizer t({}) {{ param = h0 }}", header.join(","));
    assert!(source.len() < limits::MAX_SOURCE_BYTES);
    let last = names.last().unwrap();
    let column = source.find(&format!(",{last}=")).unwrap() + 2;
    assert_error(&source, TextErrorKind::TooManyNodes, 1, column, last);
}

// ---- valid edge cases ----

#[test]
fn comments_everywhere() {
    let commented = "# header comment\n\
        optimizer # after the keyword\n\
        t # name\n\
        ( # open\n\
        lr # name\n\
        = # equals\n\
        0.1 # default\n\
        ) # close\n\
        { # body\n\
        #\n\
        param#no space\n\
        =param-lr*grad#none here either\n\
        } # the end, without a final line break";
    let plain = "optimizer t(lr = 0.1) { param = param - lr * grad }";
    assert_eq!(parses(commented), parses(plain));
}

#[test]
fn semicolons_and_a_whole_optimizer_on_one_line() {
    let lion = parses(&example("lion.opt"));
    // Comments removed, every line joined with spaces, `;` between some statements and
    // doubled after others.
    let one_line: String = example("lion.opt")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!one_line.contains('\n'));
    assert_eq!(parses(&one_line), lion);
    let semicolons = one_line
        .replace("state m = 0", "state m = 0;")
        .replace(" m = b2", ";; m = b2")
        .replace(" }", "; }");
    assert!(semicolons.contains(";;"));
    assert_eq!(parses(&semicolons), lion);
}

#[test]
fn crlf_line_endings_parse_and_errors_show_the_line_without_its_cr() {
    for name in ["lion.opt", "adabelief.opt", "signsgd.opt"] {
        let lf = example(name);
        let crlf = lf.replace('\n', "\r\n");
        assert_eq!(parses(&crlf), parses(&lf), "{name}");
    }
    let e = error("optimizer t() {\r\n    param = grad @\r\n}\r\n");
    assert_at(&e, 2, 18, "@");
    assert_eq!(e.source_line, "    param = grad @");
}

/// Regression: with CRLF line endings, a span running onto the next line counted the `\r`
/// in its width, so the caret ran one column past the shown line.
#[test]
fn crlf_caret_of_a_span_over_two_lines_counted_the_cr() {
    let e = error("optimizer t() {\r\n    param = exp(grad\r\n        + 1)\r\n}\r\n");
    assert_eq!(
        e.kind,
        TextErrorKind::ScalarRequired {
            what: "the argument of `exp`".into()
        }
    );
    assert_at(&e, 2, 17, "grad");
    assert!(
        e.to_string()
            .contains("\n  |                 ^^^^ expected"),
        "{e}"
    );
}

#[test]
fn inf_nan_and_negative_zero_literals() {
    let graph = parses(
        "optimizer t(a = inf, b = -inf, c = nan, d = -0.0, e = 0.0, f = 1e308, g = .5) {\n\
             state m = -nan\n\
             scalar state s = -0.0\n\
             s = s * -0.0 + s * 0.0\n\
             m = m + -inf\n\
             param = param * nan + 4.9e-324\n\
         }",
    );
    let defaults: Vec<u64> = graph.hypers().iter().map(|h| h.default.to_bits()).collect();
    let expected: Vec<u64> = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -0.0,
        0.0,
        1e308,
        0.5,
    ]
    .iter()
    .map(|v| v.to_bits())
    .collect();
    assert_eq!(defaults, expected);
    assert_eq!(graph.slots()[0].init.to_bits(), (-f64::NAN).to_bits());
    assert_eq!(graph.slots()[1].init.to_bits(), (-0.0f64).to_bits());
    let constants: Vec<u64> = graph
        .nodes()
        .iter()
        .filter_map(|n| match n {
            Node::Const(c) => Some(c.value().to_bits()),
            _ => None,
        })
        .collect();
    // −0.0 and 0.0 stay two constants.
    for v in [-0.0, 0.0, f64::NEG_INFINITY, f64::NAN, 4.9e-324] {
        assert!(constants.contains(&f64::to_bits(v)), "{v} in {constants:?}");
    }
}

#[test]
fn let_shadows_an_earlier_let() {
    let shadowed = parses("optimizer t() { let x = grad  let x = x * 2  param = x }");
    let direct = parses("optimizer t() { param = grad * 2 }");
    assert_eq!(shadowed, direct);
}

#[test]
fn a_state_kept_as_it_is_counts_as_updated() {
    let kept = parses("optimizer t() { state m = 1  m = m  param = param - m }");
    assert_eq!(kept.slots().len(), 1);
    assert_eq!(kept.node(kept.outputs()[1]), Node::State(0));
    let e = error("optimizer t() { state m = 1  param = param - m }");
    assert_eq!(
        e.kind,
        TextErrorKind::MissingStateUpdate { name: "m".into() }
    );
}

/// Regression: a misspelled name was compared with every name in scope by full edit
/// distance, so a long hyperparameter name and a long unknown name (within the size limit)
/// took minutes.
#[test]
fn long_unknown_names_were_compared_in_quadratic_time() {
    let long = "a".repeat(300_000);
    let typo = format!("{}b", "a".repeat(299_999));
    let source = format!("optimizer t({long} = 1) {{\n    param = {typo}\n}}\n");
    let e = error(&source);
    assert!(
        matches!(&e.kind, TextErrorKind::UnknownName { name, suggestion: None } if *name == typo),
        "{:?}",
        e.kind
    );
    // The message shows a window of the line around the caret, not 300,000 characters.
    let message = e.to_string();
    assert!(
        message.lines().all(|l| l.chars().count() < 400),
        "{}",
        message.len()
    );
    let caret_line = message.lines().last().unwrap();
    let shown_line = message.lines().nth(3).unwrap();
    // The caret, counted in characters, stands under the first letter of the name.
    let caret = caret_line.chars().position(|c| c == '^').unwrap();
    let under: String = shown_line.chars().skip(caret - 2).take(3).collect();
    assert_eq!(under, "= a", "{shown_line}\n{caret_line}");
}

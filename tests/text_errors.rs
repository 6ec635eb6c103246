//! Malformed optimizer text: one test per error kind, each checking that the caret sits under
//! the offending text; valid edge cases that must keep parsing; and one snapshot holding the
//! message of every file in `tests/data/bad_opt/`, a set of plausible user mistakes.

use optjit::ir::Node;
use optjit::text::{self, limits, TextError, TextErrorKind};
use optjit::{Error, Graph};
use std::path::Path;

/// The text error `source` fails with.
fn error(source: &str) -> TextError {
    unwrap_text(text::parse(source), source)
}

fn unwrap_text(result: optjit::Result<Graph>, source: &str) -> TextError {
    match result {
        Err(Error::Text(e)) => *e,
        Err(other) => panic!("not a text error: {other}\n{source}"),
        Ok(graph) => panic!("parsed, but should not have:\n{source}\n{graph}"),
    }
}

/// An optimizer with hyperparameters `lr` and `b1` and a state `m`; `body` starts on line 3.
fn opt(body: &str) -> String {
    format!("optimizer t(lr = 0.1, b1 = 0.9) {{\n    state m = 0\n{body}\n}}\n")
}

/// The text under the caret: `width` characters of the line from `column`.
fn pointed(e: &TextError) -> String {
    e.source_line
        .chars()
        .skip(e.column - 1)
        .take(e.width)
        .collect()
}

/// Asserts that `e` is on `line` with its caret under exactly `text`, starting at `column`.
#[track_caller]
fn assert_at(e: &TextError, line: usize, column: usize, text: &str) {
    assert_eq!(
        (e.line, e.column, e.width, pointed(e).as_str()),
        (line, column, text.chars().count(), text),
        "\n{e}"
    );
}

/// Asserts that `source` fails with `kind`, on `line` with the caret under `text` at `column`.
#[track_caller]
fn assert_error(source: &str, kind: TextErrorKind, line: usize, column: usize, text: &str) {
    let e = error(source);
    assert_eq!(e.kind, kind, "\n{e}");
    assert_at(&e, line, column, text);
}

fn parses(source: &str) -> Graph {
    match text::parse(source) {
        Ok(graph) => graph,
        Err(e) => panic!("{e}\n{source}"),
    }
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn unexpected(found: &str, expected: &str) -> TextErrorKind {
    TextErrorKind::Unexpected {
        found: found.into(),
        expected: expected.into(),
    }
}

// ---- one test per error kind ----

#[test]
fn invalid_utf8_points_where_the_valid_text_ends() {
    let source = b"optimizer t(lr = 0.1) {\n    param = param - lr * gr\xffad\n}\n";
    let e = unwrap_text(text::parse_bytes(source), "invalid UTF-8");
    assert_eq!(e.kind, TextErrorKind::InvalidUtf8);
    assert_eq!((e.line, e.column, e.width), (2, 28, 1), "\n{e}");
    assert_eq!(e.source_line, "    param = param - lr * gr");

    // Inside a comment too; the column counts characters, not bytes (`é` is two bytes).
    let source = b"# caf\xc3\xa9 \xe9t\xe9\noptimizer t() { param = grad }";
    let e = unwrap_text(text::parse_bytes(source), "invalid UTF-8 in a comment");
    assert_eq!(e.kind, TextErrorKind::InvalidUtf8);
    assert_eq!(
        (e.line, e.column, e.source_line.as_str()),
        (1, 8, "# café ")
    );

    // A multi-byte sequence cut off by the end of the source.
    let e = unwrap_text(text::parse_bytes(b"optimizer \xe2\x82"), "truncated");
    assert_eq!(
        (e.kind, e.line, e.column),
        (TextErrorKind::InvalidUtf8, 1, 11)
    );
}

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
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("text_errors_too_large.opt");
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

#[test]
fn unexpected_characters() {
    let at = opt("    param = param @ grad");
    let found = |c| TextErrorKind::UnexpectedChar { found: c };
    assert_error(&at, found('@'), 3, 19, "@");
    assert_error(&opt("    param = grad ! m"), found('!'), 3, 18, "!");
    // A tab is one column; the column and caret count characters, not bytes.
    assert_error(&opt("\tlet λ = 1"), found('λ'), 3, 6, "λ");
    assert_error(
        &opt("    let x = 1 # ok\n    let é = 2"),
        found('é'),
        4,
        9,
        "é",
    );
}

#[test]
fn bad_numbers_are_one_token_under_the_caret() {
    for bad in [
        "1e", "1e+", "1e999", "2x", "1.2.3", "0x10", "1e5e5", "3_000",
    ] {
        let source = opt(&format!("    param = param - {bad} * grad"));
        let kind = TextErrorKind::BadNumber { text: bad.into() };
        assert_error(&source, kind, 3, 21, bad);
    }
    // In a header default as well.
    let kind = TextErrorKind::BadNumber { text: "1e-".into() };
    assert_error("optimizer t(lr = 1e-) {}", kind, 1, 18, "1e-");
}

#[test]
fn unexpected_tokens_say_what_was_expected() {
    let statement = "a statement: `let`, `state`, `flags` or an assignment";
    let expression = "an expression: a name, a number, `-`, `(` or a function call";
    let cases: [(&str, TextErrorKind, usize, usize, &str); 12] = [
        (
            "",
            unexpected("end of file", "`optimizer NAME(...) { ... }`"),
            1,
            1,
            "",
        ),
        (
            "optimise t() {}",
            unexpected("`optimise`", "`optimizer NAME(...) { ... }`"),
            1,
            1,
            "optimise",
        ),
        (
            "optimizer 2() {}",
            unexpected("a number", "the optimizer's name"),
            1,
            11,
            "2",
        ),
        (
            "optimizer t(lr 1) {}",
            unexpected("a number", "`=` and the hyperparameter's default"),
            1,
            16,
            "1",
        ),
        (
            "optimizer t(lr = b1) {}",
            unexpected("`b1`", "a number, `inf` or `nan`"),
            1,
            18,
            "b1",
        ),
        (
            "optimizer t(a = 1 b = 2) {}",
            unexpected("`b`", "`,` or `)`"),
            1,
            19,
            "b",
        ),
        (
            "optimizer t() { param = (grad }",
            unexpected("`}`", "`)`"),
            1,
            31,
            "}",
        ),
        (
            "optimizer t() { param = grad +\n}",
            unexpected("`}`", expression),
            2,
            1,
            "}",
        ),
        (
            "optimizer t() { param += grad }",
            unexpected("`+`", "`=` after the name being assigned"),
            1,
            23,
            "+",
        ),
        (
            "optimizer t() { = grad }",
            unexpected("`=`", statement),
            1,
            17,
            "=",
        ),
        (
            "optimizer t() { param = grad } }",
            unexpected("`}`", "end of file after the optimizer's `}`"),
            1,
            32,
            "}",
        ),
        (
            "optimizer t() { scalar m = 0 }",
            unexpected("`m`", "`state` after `scalar`"),
            1,
            24,
            "m",
        ),
    ];
    for (source, kind, line, column, text) in cases {
        let e = error(source);
        assert_eq!(e.kind, kind, "\n{e}");
        if text.is_empty() {
            assert_eq!((e.line, e.column, e.width), (line, column, 1), "\n{e}");
        } else {
            assert_at(&e, line, column, text);
        }
    }
    // A missing `}`: the caret goes after the last token, where the body should close.
    let e = error("optimizer t() {\n    param = grad\n\n# the end\n");
    assert_eq!(e.kind, unexpected("end of file", "a statement or `}`"));
    assert_eq!((e.line, e.column, e.width), (2, 17, 1), "\n{e}");
    assert_eq!(e.source_line, "    param = grad");
    // Keywords are not statements and not names.
    assert_error(
        &opt("    inf = 1"),
        unexpected("`inf`", "a statement"),
        3,
        5,
        "inf",
    );
    assert_error(
        &opt("    let state = 1"),
        unexpected("`state`", "a name after `let`"),
        3,
        9,
        "state",
    );
}

/// Regression: a token missing at the end of a line was reported at the next token, on the
/// next line: `state m` without `= 0` showed the statement after it, a `(` never closed
/// showed the `}` below it. Now the caret goes right after the name, number or `)` that
/// ends the line; a token that starts something new on its line is still shown itself.
#[test]
fn a_token_missing_at_the_end_of_a_line_was_reported_on_the_next_line() {
    let after = |source: &str, found: &str, expected: &str, line, column| {
        let e = error(source);
        assert_eq!(e.kind, unexpected(found, expected), "\n{e}");
        assert_eq!((e.line, e.column, e.width), (line, column, 1), "\n{e}");
    };
    let init = "`=` and the state's initial value";
    after(
        &opt("    state v\n    v = grad"),
        "`v` on line 4",
        init,
        3,
        12,
    );
    after(
        &opt("    state v  # no init\n"),
        "`}` on line 5",
        init,
        3,
        12,
    );
    after(
        &opt("    m = (grad + m\n    m = m"),
        "`m` on line 4",
        "`)`",
        3,
        18,
    );
    after(
        &opt("    m = min(m, 2\n}"),
        "`}` on line 4",
        "`,` or `)`",
        3,
        17,
    );
    let header = "optimizer t(lr = 1)\n    param = grad\n}";
    let body = "`{` and the optimizer's body";
    after(header, "`param` on line 2", body, 1, 20);
    let header = "optimizer t(lr = 1\n    b1 = 2) {}";
    after(header, "`b1` on line 2", "`,` or `)`", 1, 19);
    after(
        &opt("    scalar\n    m = 1"),
        "`m` on line 4",
        "`state` after `scalar`",
        3,
        11,
    );

    // After an operator, a comma or an opening bracket the next token is shown.
    let expression = "an expression: a name, a number, `-`, `(` or a function call";
    assert_error(
        &opt("    m = m +\n"),
        unexpected("`}`", expression),
        5,
        1,
        "}",
    );
    let header = "optimizer t(lr = 1,\n    2 = 3) {}";
    let name = "a hyperparameter name or `)`";
    assert_error(header, unexpected("a number", name), 2, 5, "2");
    // So is a token that cannot start a statement, or anything after the closing `}`.
    let statement = "a statement: `let`, `state`, `flags` or an assignment";
    let source = opt("    m = m\n    2 = m");
    assert_error(&source, unexpected("a number", statement), 4, 5, "2");
    let trailing = "optimizer t() { param = grad }\nx";
    let end = "end of file after the optimizer's `}`";
    assert_error(trailing, unexpected("`x`", end), 2, 1, "x");
}

#[test]
fn unknown_names() {
    let kind = |name: &str| TextErrorKind::UnknownName {
        name: name.into(),
        suggestion: None,
    };
    // A near miss of a name in scope is suggested.
    let typo = TextErrorKind::UnknownName {
        name: "mm".into(),
        suggestion: Some("m".into()),
    };
    assert_error(&opt("    m = mm * b1"), typo, 3, 9, "mm");
    assert_error(&opt("    m = zzz * b1"), kind("zzz"), 3, 9, "zzz");
    // Not yet declared: names are in scope from their declaration on.
    let late = opt("    param = param - lr * v\n    state v = 0");
    assert_error(&late, kind("v"), 3, 26, "v");
    // A keyword in an expression.
    assert_error(&opt("    param = state"), kind("state"), 3, 13, "state");
    // An assignment to a name nobody declared.
    assert_error(&opt("    v = grad"), kind("v"), 3, 5, "v");
}

#[test]
fn unknown_functions() {
    let kind = |name: &str, suggestion: Option<&str>| TextErrorKind::UnknownFunction {
        name: name.into(),
        suggestion: suggestion.map(String::from),
    };
    assert_error(
        &opt("    m = sqr(m)"),
        kind("sqr", Some("sqrt")),
        3,
        9,
        "sqr",
    );
    assert_error(&opt("    m = lr(2)"), kind("lr", Some("ln")), 3, 9, "lr");
    assert_error(
        &opt("    m = Sqrt(m)"),
        kind("Sqrt", Some("sqrt")),
        3,
        9,
        "Sqrt",
    );
    assert_error(&opt("    m = lerp(m)"), kind("lerp", None), 3, 9, "lerp");
}

#[test]
fn arity_errors_cover_the_whole_call() {
    let kind = |function: &str, expected, actual| TextErrorKind::Arity {
        function: function.into(),
        expected,
        actual,
    };
    assert_error(&opt("    m = min(m)"), kind("min", 2, 1), 3, 9, "min(m)");
    assert_error(&opt("    m = sqrt()"), kind("sqrt", 1, 0), 3, 9, "sqrt()");
    assert_error(
        &opt("    m = abs(m, grad)"),
        kind("abs", 1, 2),
        3,
        9,
        "abs(m, grad)",
    );
    assert_error(
        &opt("    m = select(m, grad)"),
        kind("select", 3, 2),
        3,
        9,
        "select(m, grad)",
    );
    assert_error(
        &opt("    m = max(m, m, m)"),
        kind("max", 2, 3),
        3,
        9,
        "max(m, m, m)",
    );
    let e = error(&opt("    m = fma(m,\n        grad)"));
    assert_eq!(e.kind, kind("fma", 3, 2));
    // The caret stops at the end of the line where the call starts.
    assert_at(&e, 3, 9, "fma(m,");
}

/// Regression: past three arguments the parser stopped reading them and reported
/// "unexpected `d`, expected `)`" instead of the arity.
#[test]
fn four_arguments_were_an_unexpected_token_not_an_arity_error() {
    let kind = |function: &str, expected, actual| TextErrorKind::Arity {
        function: function.into(),
        expected,
        actual,
    };
    let call = "fma(m, grad, m, grad)";
    assert_error(
        &opt(&format!("    m = {call}")),
        kind("fma", 3, 4),
        3,
        9,
        call,
    );
    let call = "min(m, grad, m, grad, 1, 2)";
    assert_error(
        &opt(&format!("    m = {call}")),
        kind("min", 2, 6),
        3,
        9,
        call,
    );
}

#[test]
fn not_assignable_hyperparameters_grad_step_and_let_names() {
    let kind = |name: &str, what| TextErrorKind::NotAssignable {
        name: name.into(),
        what,
    };
    assert_error(
        &opt("    lr = 0.1"),
        kind("lr", "a hyperparameter"),
        3,
        5,
        "lr",
    );
    assert_error(
        &opt("    grad = 0"),
        kind("grad", "the gradient"),
        3,
        5,
        "grad",
    );
    assert_error(
        &opt("    step = 1"),
        kind("step", "the step count"),
        3,
        5,
        "step",
    );
    let let_name = "a `let` name (write `let` again to rebind it)";
    assert_error(
        &opt("    let c = m\n    c = grad"),
        kind("c", let_name),
        4,
        5,
        "c",
    );
}

#[test]
fn redefined_names() {
    let kind = |name: &str, what| TextErrorKind::Redefined {
        name: name.into(),
        what,
    };
    assert_error(&opt("    state m = 1"), kind("m", "a state"), 3, 11, "m");
    assert_error(
        &opt("    scalar state b1 = 1"),
        kind("b1", "a hyperparameter"),
        3,
        18,
        "b1",
    );
    assert_error(
        &opt("    let lr = 1"),
        kind("lr", "a hyperparameter"),
        3,
        9,
        "lr",
    );
    assert_error(&opt("    let m = grad"), kind("m", "a state"), 3, 9, "m");
    assert_error(
        &opt("    state grad = 0"),
        kind("grad", "the gradient"),
        3,
        11,
        "grad",
    );
    assert_error(
        &opt("    let step = 0"),
        kind("step", "the step count"),
        3,
        9,
        "step",
    );
    assert_error(
        &opt("    let c = 1\n    state c = 0"),
        kind("c", "a `let` name"),
        4,
        11,
        "c",
    );
    assert_error(
        "optimizer t(lr = 1, b1 = 2, lr = 3) {}",
        kind("lr", "a hyperparameter"),
        1,
        29,
        "lr",
    );
    assert_error(
        "optimizer t(param = 1) {}",
        kind("param", "the parameter"),
        1,
        13,
        "param",
    );
}

#[test]
fn missing_param_update_points_at_the_closing_brace() {
    let source = "optimizer t(lr = 0.1) {\n    state m = 0\n    m = m + grad\n}";
    assert_error(source, TextErrorKind::MissingParamUpdate, 4, 1, "}");
    assert_error(
        "optimizer t() {}",
        TextErrorKind::MissingParamUpdate,
        1,
        16,
        "}",
    );
}

#[test]
fn missing_state_update_points_at_the_declaration() {
    let kind = |name: &str| TextErrorKind::MissingStateUpdate { name: name.into() };
    // `m` is read but never assigned; `v` is assigned.
    let source = opt("    state v = 0\n    v = m\n    param = param - lr * v");
    assert_error(&source, kind("m"), 2, 11, "m");
    let source = opt("    m = m\n    scalar state mu = 1\n    param = param * mu");
    assert_error(&source, kind("mu"), 4, 18, "mu");
}

#[test]
fn scalar_required_for_powers_exp_ln_and_scalar_state() {
    let kind = |what: &str| TextErrorKind::ScalarRequired { what: what.into() };
    let base = "the base of `^`";
    let exponent = "the exponent of `^`";
    assert_error(&opt("    m = grad ^ 2"), kind(base), 3, 9, "grad");
    assert_error(
        &opt("    m = (m + grad) ^ 2"),
        kind(base),
        3,
        9,
        "(m + grad)",
    );
    assert_error(&opt("    m = 2 ^ -grad"), kind(exponent), 3, 13, "-grad");
    assert_error(
        &opt("    m = b1 ^ (step * m)"),
        kind(exponent),
        3,
        14,
        "(step * m)",
    );
    assert_error(
        &opt("    m = exp(grad)"),
        kind("the argument of `exp`"),
        3,
        13,
        "grad",
    );
    assert_error(
        &opt("    m = ln(lr * m)"),
        kind("the argument of `ln`"),
        3,
        12,
        "lr * m",
    );
    // A scalar state may only take a scalar value; the caret covers the whole value.
    let source = "optimizer t(lr = 0.1) {\n\
                  \x20   scalar state mu = 1\n\
                  \x20   mu = mu * grad + 1\n\
                  \x20   param = grad\n\
                  }";
    assert_error(
        source,
        kind("the new value of scalar state `mu`"),
        3,
        10,
        "mu * grad + 1",
    );
    // Scalars are fine: hyperparameters, step, scalar state, literals.
    parses(
        "optimizer t(lr = 0.1) {
             scalar state mu = 1
             mu = mu * lr ^ step + exp(ln(2))
             param = grad * mu
         }",
    );
}

/// Regression: `pow(grad, 2)` was reported as "the base of `^`", an operator the text does
/// not contain.
#[test]
fn pow_called_with_grad_was_reported_as_the_base_of_caret() {
    let kind = |what: &str| TextErrorKind::ScalarRequired { what: what.into() };
    let first = kind("the first argument of `pow`");
    assert_error(&opt("    m = pow(grad, 2)"), first, 3, 13, "grad");
    let second = kind("the second argument of `pow`");
    assert_error(&opt("    m = pow(2, m * lr)"), second, 3, 16, "m * lr");
    let e = error(&opt("    m = pow(grad, 2)"));
    assert!(
        e.to_string()
            .starts_with("the first argument of `pow` must be"),
        "{e}"
    );
}

#[test]
fn chained_comparisons_point_at_the_second_operator() {
    let kind = TextErrorKind::ChainedComparison;
    assert_error(&opt("    m = grad < m < lr"), kind.clone(), 3, 18, "<");
    assert_error(&opt("    m = grad == m != lr"), kind.clone(), 3, 19, "!=");
    assert_error(&opt("    m = 0 <= m + 1 >= 2"), kind, 3, 20, ">=");
    // Parenthesised, they are fine.
    parses(&opt(
        "    m = (grad < m) < lr\n    param = (0 <= m) * (m >= 2)",
    ));
}

#[test]
fn bad_flags_unknown_repeated_or_a_second_flags_line() {
    let kind = |name: &str| TextErrorKind::BadFlag { name: name.into() };
    assert_error(
        &opt("    flags reciprocal, bogus"),
        kind("bogus"),
        3,
        23,
        "bogus",
    );
    assert_error(
        &opt("    flags fast_math, fast_math"),
        kind("fast_math"),
        3,
        22,
        "fast_math",
    );
    assert_error(
        &opt("    flags fast_math\n    flags reciprocal"),
        kind("flags"),
        4,
        5,
        "flags",
    );
    // Nothing after `flags`: the caret goes right after it.
    let e = error(&opt("    flags"));
    assert_eq!(e.kind, unexpected("`}` on line 4", "a flag name"));
    assert_eq!((e.line, e.column, e.width), (3, 10, 1), "\n{e}");
}

/// Regression: a second `flags` line was reported as "unknown or repeated flag `flags`",
/// as if `flags` were a flag name.
#[test]
fn a_second_flags_line_was_called_an_unknown_flag_named_flags() {
    let e = error(&opt("    flags fast_math\n    flags reciprocal"));
    assert_eq!(
        e.kind,
        TextErrorKind::BadFlag {
            name: "flags".into()
        }
    );
    let message = e.to_string();
    assert!(message.starts_with("`flags` is given twice\n"), "{message}");
    assert!(
        message.ends_with("^^^^^ expected one `flags` line listing every flag"),
        "{message}"
    );
    // A real flag keeps the general message.
    let e = error(&opt("    flags fast_math, fast_math"));
    assert!(
        e.to_string()
            .starts_with("unknown or repeated flag `fast_math`"),
        "{e}"
    );
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

// ---- messages of the bad files ----

/// Every `.opt` file in `tests/data/bad_opt/`, by name.
fn bad_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad_opt");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".opt"))
        .collect();
    names.sort();
    names
}

#[test]
fn bad_file_messages() {
    // `cargo test` runs from the package root, so the relative path names the file.
    assert_eq!(
        std::env::current_dir().unwrap().canonicalize().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .canonicalize()
            .unwrap(),
        "run from the package root"
    );
    let names = bad_files();
    assert!(names.len() >= 12, "{names:?}");
    let mut all = String::new();
    for name in names {
        let path = format!("tests/data/bad_opt/{name}");
        let e = unwrap_text(text::parse_file(&path), &path);
        assert_eq!(e.file.as_deref(), Some(path.as_str()));
        all.push_str(&format!("== {name} ==\n{e}\n\n"));
    }
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("text_errors__bad_opt_messages", all);
    });
}

//! Malformed optimizer text: one test per error kind, each checking that the caret sits under
//! the offending text, and one snapshot holding the message of every file in
//! `tests/data/bad_opt/`, a set of plausible user mistakes. The limits (size, depth, nodes) and
//! valid edge cases are in `text_edge_cases.rs`.

mod common;

use common::text::*;
use optjit::text::{self, TextErrorKind};
use std::path::Path;

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
    let statement = "a statement: `let`, `state`, `flags`, `skip if` or an assignment";
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
    let statement = "a statement: `let`, `state`, `flags`, `skip if` or an assignment";
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

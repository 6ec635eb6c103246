//! Random and hostile optimizer text: random bytes, random characters, token soups, mutated
//! examples and random well-formed programs never make the parser panic; an error always
//! points inside the source; and whatever parses prints to text that parses back to the same
//! graph, node for node.
//!
//! Random programs that parse also compile, and their JIT kernel matches the reference
//! interpreter bit for bit.
//!
//! The runs are deterministic (a fixed seed per property) and persist nothing.

mod common;

use optjit::text::{self, TextError, TextErrorKind};
use optjit::{Error, Executor, Graph, SlotValue, Stepper};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::RngSeed;
use std::path::Path;

/// 1024 cases from a fixed seed per property. `FUZZ_CASES` and `FUZZ_SEED` make longer or
/// other searches: `FUZZ_CASES=100000 FUZZ_SEED=7 cargo test --release --test text_fuzz`.
fn config(seed: u64) -> ProptestConfig {
    let env =
        |name: &str, default: u64| std::env::var(name).map_or(default, |v| v.parse().expect(name));
    ProptestConfig {
        cases: u32::try_from(env("FUZZ_CASES", 1024)).expect("FUZZ_CASES"),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed ^ env("FUZZ_SEED", 0)),
        ..ProptestConfig::default()
    }
}

/// Checks what parsing `source` gave: a graph that round-trips, or a text error that lies
/// inside the source. Any other error, or a panic, fails the property.
fn check(source: &str, result: optjit::Result<Graph>) -> Result<(), TestCaseError> {
    match result {
        Ok(graph) => round_trips(&graph),
        Err(Error::Text(e)) => inside(source, &e),
        Err(other) => Err(TestCaseError::fail(format!("not a text error: {other}"))),
    }
}

fn check_text(source: &str) -> Result<(), TestCaseError> {
    check(source, text::parse(source))
}

fn check_bytes(source: &[u8]) -> Result<(), TestCaseError> {
    let result = text::parse_bytes(source);
    // An invalid UTF-8 error points into the valid prefix: check against that.
    let valid = match std::str::from_utf8(source) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&source[..e.valid_up_to()]).unwrap(),
    };
    check(valid, result)
}

/// The error's line is a line of `source` (after a leading byte-order mark), shown as it is (without a CRLF's `\r`), and its
/// caret starts within the line or just after its end.
fn inside(source: &str, e: &TextError) -> Result<(), TestCaseError> {
    if let TextErrorKind::TooLarge { .. } = e.kind {
        return Err(TestCaseError::fail("the inputs are small"));
    }
    // A leading byte-order mark is dropped before parsing.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let lines: Vec<&str> = source.split('\n').collect();
    prop_assert!(
        e.line >= 1 && e.line <= lines.len(),
        "line {}:\n{e}",
        e.line
    );
    let line = lines[e.line - 1];
    prop_assert_eq!(&e.source_line, line.trim_end_matches('\r'), "{}", e);
    let chars = line.chars().count();
    prop_assert!(
        e.column >= 1 && e.column <= chars + 1,
        "column {}:\n{e}",
        e.column
    );
    prop_assert!(e.width >= 1, "{}", e);
    prop_assert!(
        e.column - 1 + e.width <= chars.max(e.column),
        "width {}:\n{e}",
        e.width
    );
    // The message renders (and does not panic).
    prop_assert!(e.to_string().lines().count() == 5, "{}", e);
    Ok(())
}

/// The printed text parses back to an equal graph, and printing that graph gives
/// the same text.
fn round_trips(graph: &Graph) -> Result<(), TestCaseError> {
    let printed = text::print(graph);
    let parsed = match text::parse(&printed) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("the printed text does not parse:\n{e}\n{printed}");
            return Err(TestCaseError::fail(message));
        }
    };
    prop_assert!(
        &parsed == graph,
        "printed:\n{}\ngraph:\n{}\nparsed back:\n{}",
        printed,
        graph,
        parsed
    );
    prop_assert_eq!(text::print(&parsed), printed);
    Ok(())
}

// ---- the vocabulary of the text form ----

const KEYWORDS: [&str; 9] = [
    "optimizer",
    "let",
    "state",
    "scalar",
    "flags",
    "reciprocal",
    "fast_math",
    "inf",
    "nan",
];
const NAMES: [&str; 6] = ["param", "grad", "step", "lr", "m", "x"];
const NUMBERS: [&str; 10] = [
    "0", "1", "2", "0.5", "-0.0", "1e308", "1e-8", "5e-324", ".5", "1e",
];
const PUNCTS: [&str; 20] = [
    "(", ")", "{", "}", ",", ";", "=", "+", "-", "*", "/", "^", "==", "!=", "<", "<=", ">", ">=",
    "#", "\n",
];
const FUNCTIONS: [&str; 12] = [
    "sqrt", "abs", "sign", "exp", "ln", "cos", "floor", "min", "max", "pow", "select", "fma",
];

fn token() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        1 => select(&KEYWORDS[..]),
        3 => select(&NAMES[..]),
        2 => select(&NUMBERS[..]),
        4 => select(&PUNCTS[..]),
        1 => select(&FUNCTIONS[..]),
    ]
}

/// Tokens joined mostly by spaces, sometimes by nothing (so neighbours merge: `1` `e`, `<`
/// `=`), a line break, a CRLF or a tab.
fn soup() -> impl Strategy<Value = String> {
    let separator = select(&[" ", " ", " ", "", "\n", "\r\n", "\t"][..]);
    let length = prop_oneof![0..6usize, 0..60usize];
    let parts =
        length.prop_flat_map(move |n| prop::collection::vec((token(), separator.clone()), n));
    parts.prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(token, separator)| [token, separator])
            .collect()
    })
}

/// A soup alone, as an optimizer's body, or between declarations and assignments that make
/// a valid optimizer when the soup is a valid run of statements.
fn wrapped_soup() -> impl Strategy<Value = String> {
    (soup(), 0..3usize).prop_map(|(soup, wrapper)| match wrapper {
        0 => soup,
        1 => format!("optimizer t(lr = 1) {{ {soup} }}"),
        _ => format!(
            "optimizer t(lr = 1, b1 = 0.9) {{\n    state m = 0\n    let x = grad\n{soup}\n    \
             m = m\n    param = param\n}}"
        ),
    })
}

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    ["lion.opt", "adabelief.opt", "signsgd.opt"]
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(name)).unwrap())
        .collect()
}

/// The pieces of `source`: names and numbers, operators, and single other characters
/// (spaces, line breaks, comment text), so that a token can be dropped or replaced whole.
fn pieces(source: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len())
        } else if ["==", "!=", "<=", ">="].iter().any(|p| rest.starts_with(p)) {
            2
        } else {
            c.len_utf8()
        };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// One random edit of one example, at the byte or the token level.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteByte(usize),
    InsertByte(usize, u8),
    ReplaceByte(usize, u8),
    DeleteToken(usize),
    InsertToken(usize, &'static str),
    ReplaceToken(usize, &'static str),
    SwapTokens(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteByte),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::ReplaceByte(i, b)),
        any::<usize>().prop_map(Mutation::DeleteToken),
        (any::<usize>(), token()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        (any::<usize>(), token()).prop_map(|(i, t)| Mutation::ReplaceToken(i, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::SwapTokens(i, j)),
    ]
}

fn mutate(source: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = source.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::DeleteByte(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Mutation::InsertByte(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::ReplaceByte(i, b) if !bytes.is_empty() => bytes[i % n] = b,
            Mutation::DeleteByte(_) | Mutation::ReplaceByte(..) => {}
            _ => {
                // Token edits work on text; after a byte edit broke UTF-8, edit it lossily.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut pieces: Vec<&str> = pieces(&text);
                let tokens: Vec<usize> = (0..pieces.len())
                    .filter(|&i| !pieces[i].trim().is_empty())
                    .collect();
                if tokens.is_empty() {
                    continue;
                }
                let pick = |i: usize| tokens[i % tokens.len()];
                match *m {
                    Mutation::DeleteToken(i) => pieces[pick(i)] = "",
                    Mutation::InsertToken(i, t) => pieces.insert(pick(i), t),
                    Mutation::ReplaceToken(i, t) => pieces[pick(i)] = t,
                    Mutation::SwapTokens(i, j) => pieces.swap(pick(i), pick(j)),
                    _ => unreachable!(),
                }
                bytes = pieces.concat().into_bytes();
            }
        }
    }
    bytes
}

// ---- random well-formed programs ----

/// A literal as a program would write it, with the awkward ones often.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["0", "1", "2", "0.5", "0.9", "1e-8", "3"][..]).prop_map(String::from),
        select(&["-0.0", "0.0", "inf", "-inf", "nan", "-nan", "1e308", "5e-324", "-2"][..])
            .prop_map(String::from),
    ]
}

/// The scalar names of [`program`], and before `y` is first defined.
const SCALARS: [&str; 5] = ["lr", "b1", "step", "s", "y"];
const SCALARS_BEFORE_Y: [&str; 4] = ["lr", "b1", "step", "s"];
/// The per-element names of [`program`], and before `x` is first defined.
const ELEMENTS: [&str; 4] = ["param", "grad", "m", "x"];
const ELEMENTS_BEFORE_X: [&str; 3] = ["param", "grad", "m"];

const SCALAR_INFIX: [&str; 5] = ["+", "-", "*", "/", "^"];
const ELEMENT_INFIX: [&str; 4] = ["+", "-", "*", "/"];
/// Always parenthesised: comparisons do not chain.
const COMPARISONS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

/// A per-step scalar expression over the scalar `names`.
fn scalar_expr(names: &'static [&'static str], depth: u32) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => select(names).prop_map(String::from),
        2 => literal(),
    ];
    leaf.prop_recursive(depth, 24, 3, |inner| {
        prop_oneof![
            4 => (inner.clone(), select(&SCALAR_INFIX[..]), inner.clone(), any::<bool>())
                .prop_map(|(a, op, b, parens)| infix(&a, op, &b, parens)),
            1 => (inner.clone(), select(&COMPARISONS[..]), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            2 => (select(&["sqrt", "abs", "sign", "exp", "ln", "cos", "floor"][..]), inner.clone())
                .prop_map(|(f, a)| format!("{f}({a})")),
            1 => (select(&["min", "max", "pow"][..]), inner.clone(), inner.clone())
                .prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            1 => (select(&["select", "fma"][..]), inner.clone(), inner.clone(), inner)
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
        ]
    })
}

/// A per-element expression over the element `names` and scalar expressions, with every op
/// that is not scalar-only.
fn element_expr(names: &'static [&'static str], depth: u32) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => select(names).prop_map(String::from),
        1 => scalar_expr(&SCALARS, depth.min(1)),
    ];
    leaf.prop_recursive(depth, 24, 3, |inner| {
        prop_oneof![
            4 => (inner.clone(), select(&ELEMENT_INFIX[..]), inner.clone(), any::<bool>())
                .prop_map(|(a, op, b, parens)| infix(&a, op, &b, parens)),
            1 => (inner.clone(), select(&COMPARISONS[..]), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => (select(&["sqrt", "abs", "sign"][..]), inner.clone())
                .prop_map(|(f, a)| format!("{f}({a})")),
            1 => (select(&["min", "max"][..]), inner.clone(), inner.clone())
                .prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            1 => (select(&["select", "fma"][..]), inner.clone(), inner.clone(), inner)
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
        ]
    })
}

/// `a op b`, parenthesised or not: unparenthesised, the parse regroups it by precedence,
/// which is just another program.
fn infix(a: &str, op: &str, b: &str, parens: bool) -> String {
    if parens {
        format!("({a} {op} {b})")
    } else {
        format!("{a} {op} {b}")
    }
}

fn statement(depth: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        element_expr(&ELEMENTS, depth).prop_map(|e| format!("let x = {e}")),
        scalar_expr(&SCALARS, depth).prop_map(|e| format!("let y = {e}")),
        element_expr(&ELEMENTS, depth).prop_map(|e| format!("param = {e}")),
        element_expr(&ELEMENTS, depth).prop_map(|e| format!("m = {e}")),
        scalar_expr(&SCALARS, depth).prop_map(|e| format!("s = {e}")),
        element_expr(&ELEMENTS, depth).prop_map(|e| format!("let z = {e}")),
    ]
}

/// A random optimizer with hyperparameters `lr` and `b1`, states `m` and scalar `s`, `let`
/// names `x` (per element) and `y` (scalar), flags, and statements in a random order: either
/// a few with deep expressions, or many with shallow ones (where `x` and `y` start as the
/// hyperparameters, so that `param`, `grad` and `step` are first read late).
fn program() -> impl Strategy<Value = String> {
    let deep = (
        element_expr(&ELEMENTS_BEFORE_X, 3),
        scalar_expr(&SCALARS_BEFORE_Y, 3),
        prop::collection::vec(statement(3), 0..8),
    );
    let shallow = (
        Just("b1".to_string()),
        Just("lr".to_string()),
        prop::collection::vec(statement(1), 0..12),
    );
    let body = prop_oneof![deep, shallow];
    let flags = select(&["", "flags reciprocal", "flags fast_math, reciprocal"][..]);
    let defaults = (literal(), literal(), literal(), literal());
    let ends = (any::<bool>(), any::<bool>(), any::<bool>());
    (flags, defaults, body, ends).prop_map(|(flags, (lr, b1, m0, s0), (x, y, statements), ends)| {
        let mut lines = vec![
            flags.to_string(),
            format!("state m = {m0}"),
            format!("scalar state s = {s0}"),
            format!("let y = {y}"),
            format!("let x = {x}"),
        ];
        lines.extend(statements);
        // Every output is assigned: by a random statement, or else (or also) at the end.
        let (end_m, end_s, end_param) = ends;
        for (end, target, last) in [
            (end_m, "m", "m = m"),
            (end_s, "s", "s = s"),
            (end_param, "param", "param = param"),
        ] {
            let assigned = lines.iter().any(|l| l.starts_with(&format!("{target} = ")));
            if end || !assigned {
                lines.push(last.to_string());
            }
        }
        format!(
            "optimizer t(lr = {lr}, b1 = {b1}) {{\n    {}\n}}\n",
            lines.join("\n    ")
        )
    })
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_bytes(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(2))]

    #[test]
    fn random_characters_never_panic(
        chars in prop::collection::vec(
            select(&[
                'a', 'e', 'x', '_', '0', '1', '9', '.', '+', '-', '*', '/', '^', '(', ')', '{',
                '}', ',', ';', '=', '<', '>', '!', '#', ' ', '\n', '\r', '\t', 'é', 'λ', '\u{0}',
                '\u{feff}', '@',
            ][..]),
            0..300,
        )
    ) {
        let source: String = chars.into_iter().collect();
        check_text(&source)?;
    }
}

proptest! {
    #![proptest_config(config(3))]

    #[test]
    fn token_soups_never_panic(source in wrapped_soup()) {
        check_text(&source)?;
    }
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn mutated_examples_never_panic(
        which in 0..3usize,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = mutate(&examples()[which], &mutations);
        check_bytes(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(5))]

    #[test]
    fn random_programs_round_trip(source in program()) {
        let result = text::parse(&source);
        check(&source, result)?;
    }
}

/// Two steps of `graph` on `len` seeded mixed f32 inputs with `executor`: the params and
/// every state slot, NaNs made canonical.
fn two_steps(graph: &Graph, executor: Executor, len: usize) -> Vec<Vec<u32>> {
    let stepper = Stepper::new(graph).unwrap().with_executor(executor);
    let mut rng = common::SplitMix64::new(len as u64);
    let mut param: Vec<f32> = (0..len).map(|_| rng.mixed()).collect();
    let grad: Vec<f32> = (0..len).map(|_| rng.mixed()).collect();
    let mut state = stepper.init_state::<f32>(len).unwrap();
    for _ in 0..2 {
        stepper.step(&mut param, &grad, &mut state).unwrap();
    }
    let bits = |v: &[f32]| -> Vec<u32> {
        v.iter()
            .map(|x| {
                if x.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    x.to_bits()
                }
            })
            .collect()
    };
    let mut out = vec![bits(&param)];
    for slot in &state.slots {
        out.push(match slot {
            SlotValue::Buffer(b) => bits(b),
            SlotValue::Scalar(x) => vec![x.to_bits() as u32, (x.to_bits() >> 32) as u32],
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256.min(config(7).cases), ..config(7) })]

    #[test]
    fn random_programs_compile_and_the_jit_matches_the_interpreter(source in program()) {
        if let Ok(graph) = text::parse(&source) {
            // Lengths around the vector width and the unrolled loop.
            for len in [1, 7, 19] {
                let jit = two_steps(&graph, Executor::Jit, len);
                let reference = two_steps(&graph, Executor::Reference, len);
                prop_assert_eq!(jit, reference, "{}", source);
            }
        }
    }
}

/// The generators are worth their time only if they reach the printer: count what parses.
#[test]
fn the_generators_produce_programs_that_parse() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    // A fixed seed whatever FUZZ_SEED says: the minimums below are about these 200 draws.
    let mut runner = TestRunner::new(ProptestConfig {
        rng_seed: RngSeed::Fixed(6),
        ..config(6)
    });
    let mut count = |strategy: BoxedStrategy<String>| {
        (0..200)
            .filter(|_| {
                let source = strategy.new_tree(&mut runner).unwrap().current();
                text::parse(&source).is_ok()
            })
            .count()
    };
    let programs = count(program().boxed());
    let soups = count(wrapped_soup().boxed());
    let mutated = count(
        (0..3usize, prop::collection::vec(mutation(), 1..2))
            .prop_map(|(which, m)| {
                String::from_utf8_lossy(&mutate(&examples()[which], &m)).into_owned()
            })
            .boxed(),
    );
    assert!(programs >= 100, "{programs} of 200 random programs parse");
    assert!(soups >= 5, "{soups} of 200 token soups parse");
    assert!(mutated >= 20, "{mutated} of 200 mutated examples parse");
}

#[test]
fn the_examples_round_trip_and_pieces_cover_them() {
    for source in examples() {
        assert_eq!(pieces(&source).concat(), source);
        let graph = text::parse(&source).unwrap();
        round_trips(&graph).unwrap();
    }
}

// ---- printer bugs found by the properties above (with more cases than they run here) ----

fn round_trips_text(source: &str) {
    let graph = text::parse(source).unwrap();
    if let Err(e) = round_trips(&graph) {
        panic!("{source}\n{e}");
    }
}

/// Regression: the old param was saved (`let t0 = param`) before the statement whose reading
/// first creates it, so the reparsed arena held `param` before `grad`. Found with
/// `FUZZ_CASES=20000 FUZZ_SEED=100`, shrunk by hand.
#[test]
fn printer_saves_the_old_param_before_its_first_read() {
    round_trips_text("optimizer t() { let x = grad * param  let d = sqrt(param)  param = x }");
}

/// Regression: 33 signs parse (34 levels) but printed as `-(-(...))`, two levels each: 67
/// levels, more than [`text::limits::MAX_DEPTH`], so the printed text did not parse.
#[test]
fn printer_nests_negations_deeper_than_the_parser_accepts() {
    round_trips_text(&format!(
        "optimizer t() {{ param = {}grad }}",
        "-".repeat(33)
    ));
}

/// Regression: single-use `let`s were written inline, however many: 66 of them, each a
/// subtraction, printed as one expression 66 parentheses deep.
#[test]
fn printer_inlines_a_chain_of_lets_deeper_than_the_parser_accepts() {
    let mut source = String::from("optimizer t() {\n    let a = grad * 2\n");
    for _ in 0..65 {
        source.push_str("    let a = grad - a\n");
    }
    source.push_str("    param = a\n}\n");
    round_trips_text(&source);
}

/// Regression: the printer recursed once per inlined operand, so a sum of 2000 terms (15 KB
/// of text, which parses without trouble) overflowed a test thread's stack.
#[test]
fn printer_overflows_the_stack_on_a_long_sum() {
    let terms: Vec<String> = (1..2000).map(|i| i.to_string()).collect();
    round_trips_text(&format!(
        "optimizer t() {{ param = grad + {} }}",
        terms.join(" + ")
    ));
}

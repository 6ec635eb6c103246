//! Hostile inputs: `.opt` sources within every text limit (`optjit::text::limits`) that are
//! as expensive as such a source can be to compile, and a few just beyond the stage limits.
//! `tests/hostile.rs` checks each with `optjit check` in a child process;
//! `cargo run --release --example hostile_inputs -- DIR` writes them as files for measuring.

use std::fmt::Write;

/// What `optjit check` must do with a hostile source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Compiles.
    Accepted,
    /// Fails with an error whose message contains this text.
    Rejected(&'static str),
}

/// One hostile source.
pub struct Case {
    /// File stem, e.g. `states_2000`.
    pub name: String,
    /// The `.opt` source.
    pub source: String,
    /// What `optjit check` does with it.
    pub expect: Expect,
}

/// Every hostile case, in increasing order of cost within each kind.
pub fn cases() -> Vec<Case> {
    let max = optjit::program::Stage::MAX_INSTRUCTIONS;
    let mut cases = Vec::new();
    let mut add = |name: &str, source: String, expect| {
        cases.push(Case {
            name: name.into(),
            source,
            expect,
        })
    };
    // Issue 11's reports: states took 13.7 s (2,000) and 63 s (4,000) to compile; 30,000
    // constants 84 s; 99,000 terms 6.3 s.
    add("states_2000", states(2_000), Expect::Accepted);
    add("states_4000", states(4_000), Expect::Accepted);
    add(
        "states_12000",
        states(12_000),
        Expect::Rejected("12002 streams"),
    );
    add(
        "constants_30000",
        constants(30_000),
        Expect::Rejected("instructions"),
    );
    add(
        "terms_99000",
        terms(99_000),
        Expect::Rejected("instructions"),
    );
    // The most of each thing the stage limits accept.
    add("terms_max", terms(max - 1), Expect::Accepted);
    add("hypers_16000", hypers(16_000), Expect::Accepted);
    add("live_10000", live(10_000), Expect::Accepted);
    add("signs_max", nested("sign", max), Expect::Accepted);
    add("sqrts_max", nested("sqrt", max), Expect::Accepted);
    // The text limits: the most nodes the parser builds, then one statement too many.
    add(
        "sqrts_nodes",
        nested("sqrt", optjit::text::limits::MAX_NODES),
        Expect::Rejected("instructions"),
    );
    add(
        "hypers_40000",
        hypers(40_000),
        Expect::Rejected("smaller optimizer"),
    );
    cases
}

/// `n` states, each a decaying sum of gradients, all added into the update (issue 11's first
/// report: 2,000 states compiled in 13.7 s, 4,000 in 63 s).
pub fn states(n: usize) -> String {
    let mut s = String::from("optimizer states(lr = 0.1, b = 0.9) {\n");
    for i in 0..n {
        writeln!(s, "    state s{i} = 0").unwrap();
    }
    for i in 0..n {
        writeln!(s, "    s{i} = b * s{i} + grad").unwrap();
    }
    s.push_str("    param = param - lr * (s0");
    for i in 1..n {
        write!(s, " + s{i}").unwrap();
    }
    s.push_str(")\n}\n");
    s
}

/// One statement adding `grad` times each of `n` distinct constants.
pub fn constants(n: usize) -> String {
    let mut s = String::from("optimizer constants() {\n    param = param");
    for i in 0..n {
        write!(s, " + grad * {i}.5").unwrap();
    }
    s.push_str("\n}\n");
    s
}

/// One statement adding `lr * grad` `n` times.
pub fn terms(n: usize) -> String {
    let mut s = String::from("optimizer terms(lr = 0.1) {\n    param = param");
    for _ in 0..n {
        s.push_str(" + grad*lr");
    }
    s.push_str("\n}\n");
    s
}

/// `n` hyperparameters, each scaling the gradient once: `n` distinct scalars in the kernel.
pub fn hypers(n: usize) -> String {
    let mut s = String::from("optimizer hypers(");
    for i in 0..n {
        write!(s, "{}h{i} = 1", if i == 0 { "" } else { ", " }).unwrap();
    }
    s.push_str(") {\n    param = param");
    for i in 0..n {
        write!(s, " + h{i}*grad").unwrap();
    }
    s.push_str("\n}\n");
    s
}

/// `n` values computed before any is used, then summed in reverse: all `n` live at once, the
/// most a register allocator can be asked to hold.
pub fn live(n: usize) -> String {
    let mut s = String::from("optimizer live() {\n");
    for i in 0..n {
        writeln!(s, "    let v{i} = sqrt(grad + {i})").unwrap();
    }
    s.push_str("    param = param");
    for i in (0..n).rev() {
        write!(s, " + v{i}").unwrap();
    }
    s.push_str("\n}\n");
    s
}

/// Statements of `op` nested 30 deep (a call is two of the parser's 64 levels), repeated
/// until the stage has about `instructions` instructions or the source reaches its limit.
pub fn nested(op: &str, instructions: usize) -> String {
    let depth = 30;
    let mut line = String::from("    param = ");
    for _ in 0..depth {
        write!(line, "{op}(").unwrap();
    }
    line.push_str("param * grad");
    for _ in 0..depth {
        line.push(')');
    }
    line.push('\n');
    // Each statement is `depth` ops and the multiplication.
    let statements = instructions / (depth + 1);
    let mut s = format!("optimizer nested_{op}() {{\n");
    let limit = optjit::text::limits::MAX_SOURCE_BYTES - 8;
    for _ in 0..statements {
        if s.len() + line.len() > limit {
            break;
        }
        s.push_str(&line);
    }
    s.push_str("}\n");
    s
}

//! Helpers shared by the integration tests: a seeded generator of mixed-magnitude inputs and
//! state lookup by slot name.

// Each test crate compiles this module and uses its own subset of it.
#![allow(dead_code)]

pub mod hostile;
pub mod text;

use optjit::ir::Op;
use optjit::{Builder, DType, Float, Graph, Stepper};

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny seeded generator, so that tests are
/// deterministic without a `rand` dependency.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant for test inputs).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A finite value of `T` with a random sign: usually of magnitude in `[1e-6, 1e2)`
    /// (log-uniform), one time in eight an edge case of `T`: ±0, a subnormal, a tiny normal
    /// or a huge value (within a factor 256 of the largest finite one).
    pub fn mixed<T: Float>(&mut self) -> T {
        let (min_positive, max) = match T::DTYPE {
            DType::F32 => (f32::MIN_POSITIVE as f64, f32::MAX as f64),
            DType::F64 => (f64::MIN_POSITIVE, f64::MAX),
            d => panic!("no Float has dtype {d}"),
        };
        let magnitude = if self.below(8) != 0 {
            10f64.powf(8.0 * self.unit() - 6.0)
        } else {
            match self.below(4) {
                0 => 0.0,
                1 => min_positive * self.unit(),
                2 => min_positive * (1u64 << self.below(20)) as f64,
                _ => max * (0.5 + 0.5 * self.unit()) / (1u64 << self.below(8)) as f64,
            }
        };
        let value = T::from_f64(magnitude);
        if self.below(2) == 0 {
            -value
        } else {
            value
        }
    }

    /// `len` values from [`SplitMix64::mixed`].
    pub fn mixed_vec<T: Float>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| self.mixed()).collect()
    }
}

/// Index into `stepper.program().slots` (and so into `ParamState::slots`) of the state slot
/// called `name`.
pub fn slot_index(stepper: &Stepper, name: &str) -> Option<usize> {
    stepper.program().slots.iter().position(|s| s.name == name)
}

/// The first `max` failure lines, indented, and how many more there are: the body of a
/// failing test's message.
pub fn failure_report(failures: &[String], max: usize) -> String {
    let mut message: String = failures
        .iter()
        .take(max)
        .map(|l| format!("  {l}\n"))
        .collect();
    if failures.len() > max {
        message.push_str(&format!("  ... and {} more\n", failures.len() - max));
    }
    message
}

/// What one run of the `optjit` binary did.
pub struct Run {
    /// Exit status (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs the `optjit` binary with `args` in the directory `dir`.
#[cfg(feature = "cli")]
pub fn run_optjit(dir: &std::path::Path, args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_optjit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// A random graph: leaves, states, constants and operations created in a random order
/// (with dead values and late leaves), outputs set at random points, some more than once.
pub fn random_graph(seed: u64) -> Graph {
    let mut rng = SplitMix64::new(seed);
    let b = Builder::new("random");
    // Each value with whether it is a per-step scalar.
    let mut pool = vec![(b.hyper("lr", 0.1), true), (b.hyper("b1", 0.9), true)];
    let mut slots: Vec<(String, bool, bool)> = Vec::new(); // name, scalar, assigned
    let mut param_set = false;
    let constants = [0.0, -0.0, 1.0, -2.0, 0.5, 1e-8, f64::INFINITY, f64::NAN];
    for _ in 0..(5 + rng.below(40)) {
        let pick = |rng: &mut SplitMix64| pool[rng.below(pool.len() as u64) as usize];
        match rng.below(10) {
            0 => {
                let leaf = rng.below(3);
                pool.push(([b.param(), b.grad(), b.step()][leaf as usize], leaf == 2));
            }
            1 if slots.len() < 4 => {
                let name = format!("s{}", slots.len());
                let scalar = rng.below(3) == 0;
                let init = constants[rng.below(8) as usize];
                let value = if scalar {
                    b.scalar_state(&name, init)
                } else {
                    b.state(&name, init)
                };
                pool.push((value, scalar));
                slots.push((name, scalar, false));
            }
            2 => pool.push((b.constant(constants[rng.below(8) as usize]), true)),
            3 if !slots.is_empty() => {
                let slot = rng.below(slots.len() as u64) as usize;
                let (value, scalar) = pick(&mut rng);
                if scalar || !slots[slot].1 {
                    b.set_state(&slots[slot].0, value).unwrap();
                    slots[slot].2 = true;
                }
            }
            4 => {
                b.set_param(pick(&mut rng).0);
                param_set = true;
            }
            _ => {
                let op = Op::ALL[rng.below(Op::ALL.len() as u64) as usize];
                let mut args: Vec<_> = (0..op.arity()).map(|_| pick(&mut rng)).collect();
                if op.scalar_only() && args.iter().any(|a| !a.1) {
                    args = vec![(b.step(), true); op.arity()];
                }
                let scalar = args.iter().all(|a| a.1);
                let exprs: Vec<_> = args.iter().map(|a| a.0).collect();
                pool.push((b.apply(op, &exprs), scalar));
            }
        }
    }
    if !param_set {
        b.set_param(pool.last().unwrap().0);
    }
    for (name, _, assigned) in &slots {
        if !assigned {
            b.set_state(name, b.step()).unwrap();
        }
    }
    b.finish().unwrap()
}

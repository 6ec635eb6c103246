//! optjit against textbook loops: `torch.optim`'s single-tensor SGD, Adam and AdamW written as
//! plain Rust loops, compared bit for bit (NaNs canonicalised) on seeded random inputs of mixed
//! magnitudes, in f32 and f64, on every executor.
//!
//! The loops follow `_single_tensor_sgd` and `_single_tensor_adam` in the operation order
//! optjit documents in `src/optim`. Scalar coefficients (bias corrections, step size, `1 - β`,
//! `1 - lr·λ`, ...) are Python floats there, so here they are computed in f64 and rounded to the
//! element type once, where they meet element values; element math is in the element type.
//!
//! Where optjit's documented order departs from torch's, the loops follow optjit:
//! - `exp_avg.lerp_(g, 1 − β₁)` is `m + (1 − β₁)·(g − m)`, torch's formula for weights below
//!   0.5; for β₁ ≤ 0.5 torch switches to `g − (g − m)·β₁`. All β₁ here are above 0.5.

mod common;

use common::{slot_index, SplitMix64};
use optjit::optim::{Adam, AdamW, Sgd};
use optjit::{Executor, Float, ParamRef, ParamState, Stepper};

/// Lengths of the parameters updated together by one `step_many` call: around the 128-bit
/// vector widths (4 × f32, 2 × f64) and the unrolled main loop, and one long parameter.
const LENGTHS: [usize; 12] = [0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 17, 1027];

const STEPS: u64 = 6;

const EXECUTORS: [Executor; 3] = [Executor::Jit, Executor::Reference, Executor::Eager];

/// Failure lines printed in full; the rest are counted.
const MAX_REPORTED: usize = 40;

#[test]
fn sgd_matches_textbook_bit_for_bit() {
    let sgd = Sgd::default();
    check_all(&[
        ("plain", Options::Sgd(Sgd { lr: 0.1, ..sgd })),
        (
            "weight_decay maximize",
            Options::Sgd(Sgd {
                lr: 0.05,
                weight_decay: 0.01,
                maximize: true,
                ..sgd
            }),
        ),
        (
            "momentum",
            Options::Sgd(Sgd {
                lr: 0.1,
                momentum: 0.9,
                ..sgd
            }),
        ),
        (
            "momentum dampening weight_decay",
            Options::Sgd(Sgd {
                lr: 0.03,
                momentum: 0.8,
                dampening: 0.25,
                weight_decay: 1e-3,
                ..sgd
            }),
        ),
        (
            "momentum dampening weight_decay maximize",
            Options::Sgd(Sgd {
                lr: 0.01,
                momentum: 0.95,
                // 1 − 0.09 rounded once to f32 differs from 1 − 0.09f32 in f32.
                dampening: 0.09,
                weight_decay: 0.1,
                maximize: true,
                ..sgd
            }),
        ),
        (
            "nesterov weight_decay",
            Options::Sgd(Sgd {
                lr: 0.02,
                momentum: 0.9,
                weight_decay: 0.05,
                nesterov: true,
                ..sgd
            }),
        ),
        (
            "nesterov maximize",
            Options::Sgd(Sgd {
                lr: 0.1,
                momentum: 0.7,
                nesterov: true,
                maximize: true,
                ..sgd
            }),
        ),
    ]);
}

#[test]
fn adam_matches_textbook_bit_for_bit() {
    let adam = Adam::default();
    check_all(&[
        ("default", Options::Adam(adam)),
        (
            "lr betas eps",
            Options::Adam(Adam {
                lr: 0.05,
                betas: (0.8, 0.95),
                eps: 1e-6,
                ..adam
            }),
        ),
        (
            "weight_decay",
            Options::Adam(Adam {
                weight_decay: 0.1,
                ..adam
            }),
        ),
        (
            "maximize",
            Options::Adam(Adam {
                maximize: true,
                ..adam
            }),
        ),
        (
            "amsgrad",
            Options::Adam(Adam {
                amsgrad: true,
                ..adam
            }),
        ),
        (
            "amsgrad maximize weight_decay",
            Options::Adam(Adam {
                lr: 0.01,
                weight_decay: 0.02,
                amsgrad: true,
                maximize: true,
                ..adam
            }),
        ),
    ]);
}

#[test]
fn adamw_matches_textbook_bit_for_bit() {
    let adamw = AdamW::default();
    check_all(&[
        ("default", Options::AdamW(adamw)),
        (
            "amsgrad",
            Options::AdamW(AdamW {
                lr: 0.01,
                amsgrad: true,
                ..adamw
            }),
        ),
        (
            "maximize weight_decay",
            Options::AdamW(AdamW {
                // 1 − lr·λ rounded once to f32 differs from 1 − lr·λ computed in f32.
                lr: 0.03,
                weight_decay: 0.76,
                maximize: true,
                ..adamw
            }),
        ),
        (
            "amsgrad maximize no weight_decay",
            Options::AdamW(AdamW {
                weight_decay: 0.0,
                amsgrad: true,
                maximize: true,
                ..adamw
            }),
        ),
    ]);
}

/// A built-in with its options: the optjit graph and the textbook loop come from the same
/// values.
#[derive(Clone, Copy, Debug)]
enum Options {
    Sgd(Sgd),
    Adam(Adam),
    AdamW(AdamW),
}

impl Options {
    fn stepper(&self) -> Stepper {
        let graph = match self {
            Options::Sgd(o) => o.graph(),
            Options::Adam(o) => o.graph(),
            Options::AdamW(o) => o.graph(),
        };
        Stepper::new(&graph.expect("valid options")).expect("compiles")
    }

    fn lr(&self) -> f64 {
        match self {
            Options::Sgd(o) => o.lr,
            Options::Adam(o) => o.lr,
            Options::AdamW(o) => o.lr,
        }
    }

    fn with_lr(self, lr: f64) -> Options {
        match self {
            Options::Sgd(o) => Options::Sgd(Sgd { lr, ..o }),
            Options::Adam(o) => Options::Adam(Adam { lr, ..o }),
            Options::AdamW(o) => Options::AdamW(AdamW { lr, ..o }),
        }
    }

    /// The per-parameter state torch keeps, by its names (besides `step`).
    fn state_names(&self) -> Vec<&'static str> {
        let adam = |amsgrad: bool| {
            let mut names = vec!["exp_avg", "exp_avg_sq"];
            if amsgrad {
                names.push("max_exp_avg_sq");
            }
            names
        };
        match self {
            Options::Sgd(o) if o.momentum != 0.0 => vec!["momentum_buffer"],
            Options::Sgd(_) => vec![],
            Options::Adam(o) => adam(o.amsgrad),
            Options::AdamW(o) => adam(o.amsgrad),
        }
    }

    /// One textbook step of one tensor.
    fn step<T: Float>(&self, t: &mut Tensor<T>, grad: &[T]) {
        match self {
            Options::Sgd(o) => sgd(o, t, grad),
            Options::Adam(o) => adam(o, false, t, grad),
            Options::AdamW(o) => {
                let o = Adam {
                    lr: o.lr,
                    betas: o.betas,
                    eps: o.eps,
                    weight_decay: o.weight_decay,
                    amsgrad: o.amsgrad,
                    maximize: o.maximize,
                };
                adam(&o, true, t, grad)
            }
        }
    }
}

/// One parameter of the textbook loops and its state, under torch's names.
struct Tensor<T> {
    param: Vec<T>,
    step: u64,
    /// Created by the first step, as in torch.
    momentum_buffer: Option<Vec<T>>,
    exp_avg: Vec<T>,
    exp_avg_sq: Vec<T>,
    max_exp_avg_sq: Vec<T>,
}

impl<T: Float> Tensor<T> {
    fn new(param: Vec<T>) -> Tensor<T> {
        let zeros = vec![T::ZERO; param.len()];
        Tensor {
            param,
            step: 0,
            momentum_buffer: None,
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros.clone(),
            max_exp_avg_sq: zeros,
        }
    }

    fn state(&self, name: &str) -> Option<&[T]> {
        match name {
            "momentum_buffer" => self.momentum_buffer.as_deref(),
            "exp_avg" => Some(&self.exp_avg),
            "exp_avg_sq" => Some(&self.exp_avg_sq),
            "max_exp_avg_sq" => Some(&self.max_exp_avg_sq),
            _ => None,
        }
    }
}

/// `torch.optim.SGD`, single tensor:
///
/// ```text
/// g ← −∇ if maximize else ∇
/// g ← g + λ·θ
/// b ← g at the first step, else μ·b + (1 − τ)·g      (with momentum μ ≠ 0)
/// g ← g + μ·b if nesterov else b                     (with momentum)
/// θ ← θ − γ·g
/// ```
///
/// The docs' pseudo-code applies `maximize` at the end (`θ ← θ + γ·g`), which differs from
/// the implementation when λ ≠ 0; this follows the implementation, as optjit does.
fn sgd<T: Float>(o: &Sgd, t: &mut Tensor<T>, grad: &[T]) {
    let lr = T::from_f64(o.lr);
    let weight_decay = T::from_f64(o.weight_decay);
    let momentum = T::from_f64(o.momentum);
    let one_minus_dampening = T::from_f64(1.0 - o.dampening);
    let Tensor {
        param,
        step,
        momentum_buffer,
        ..
    } = t;
    *step += 1;
    let first = momentum_buffer.is_none();
    let mut buf = (o.momentum != 0.0)
        .then(|| momentum_buffer.get_or_insert_with(|| vec![T::ZERO; param.len()]));
    for (i, p) in param.iter_mut().enumerate() {
        let mut g = if o.maximize { -grad[i] } else { grad[i] };
        if o.weight_decay != 0.0 {
            g = g + weight_decay * *p;
        }
        if let Some(buf) = buf.as_mut() {
            buf[i] = if first {
                g
            } else {
                momentum * buf[i] + one_minus_dampening * g
            };
            g = if o.nesterov {
                g + momentum * buf[i]
            } else {
                buf[i]
            };
        }
        *p = *p - lr * g;
    }
}

/// `torch.optim.Adam` (`decoupled`: `AdamW`), single tensor:
///
/// ```text
/// θ ← θ·(1 − γλ)                            (AdamW)
/// g ← −∇ if maximize else ∇
/// g ← g + λ·θ                               (Adam)
/// m ← m + (1 − β₁)·(g − m)                  exp_avg.lerp_(g, 1 − β₁)
/// v ← β₂·v + ((1 − β₂)·g)·g                 exp_avg_sq.mul_(β₂).addcmul_(g, g, value=1 − β₂)
/// v̂ ← max(v̂, v) if amsgrad else v
/// denom ← √v̂ / √(1 − β₂ᵗ) + ε
/// θ ← θ − ((γ / (1 − β₁ᵗ))·m) / denom       param.addcdiv_(m, denom, value=−step_size)
/// ```
fn adam<T: Float>(o: &Adam, decoupled: bool, t: &mut Tensor<T>, grad: &[T]) {
    t.step += 1;
    let step = t.step as f64;
    let (beta1, beta2) = o.betas;
    // Python floats; `**` between floats is C's `pow`.
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = T::from_f64(o.lr / bias_correction1);
    // The built-ins divide by per-step scalars through their reciprocal (GraphFlags::reciprocal).
    let inv_bias_correction2_sqrt = T::from_f64(1.0 / bias_correction2.sqrt());
    let decay = T::from_f64(1.0 - o.lr * o.weight_decay);
    let weight_decay = T::from_f64(o.weight_decay);
    let one_minus_beta1 = T::from_f64(1.0 - beta1);
    let one_minus_beta2 = T::from_f64(1.0 - beta2);
    let beta2 = T::from_f64(beta2);
    let eps = T::from_f64(o.eps);
    for (i, &grad) in grad.iter().enumerate() {
        let mut p = t.param[i];
        let mut g = if o.maximize { -grad } else { grad };
        if decoupled {
            p = p * decay;
        } else if o.weight_decay != 0.0 {
            g = g + weight_decay * p;
        }
        let m = t.exp_avg[i] + one_minus_beta1 * (g - t.exp_avg[i]);
        let v = beta2 * t.exp_avg_sq[i] + (one_minus_beta2 * g) * g;
        t.exp_avg[i] = m;
        t.exp_avg_sq[i] = v;
        let v_hat = if o.amsgrad {
            t.max_exp_avg_sq[i] = maximum(t.max_exp_avg_sq[i], v);
            t.max_exp_avg_sq[i]
        } else {
            v
        };
        let denom = v_hat.sqrt() * inv_bias_correction2_sqrt + eps;
        t.param[i] = p - (step_size * m) / denom;
    }
}

/// `torch.maximum`: NaN if either operand is NaN, `+0` over `-0`.
fn maximum<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if a > b || (a == b && !a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// Equal bits, or both NaN (payloads are not specified).
fn same<T: Float>(a: T, b: T) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits_u64() == b.to_bits_u64()
}

/// Runs every configuration in f32 and f64 on every executor; fails listing every mismatch.
fn check_all(configs: &[(&str, Options)]) {
    let mut failures = Vec::new();
    for (n, &(name, options)) in configs.iter().enumerate() {
        let seed = 0x5EED_0000 + n as u64;
        for executor in EXECUTORS {
            let label = |dtype: &str| format!("{name} {dtype} [{executor:?}]");
            check::<f32>(&label("f32"), options, executor, seed, &mut failures);
            check::<f64>(&label("f64"), options, executor, seed, &mut failures);
        }
    }
    let message = common::failure_report(&failures, MAX_REPORTED);
    assert!(
        failures.is_empty(),
        "{} differences from the textbook loops:\n{message}",
        failures.len()
    );
}

/// Runs `STEPS` steps of optjit and of the textbook loop side by side from the same random
/// parameters and gradients, comparing parameters, state and step counts after every step.
///
/// The learning rate halves from step 4 on (a runtime hyperparameter change), and tensor `j`
/// gets no gradient in step `s` when `(j + s) % 4 == 0`, so step counts differ between the
/// tensors of one `step_many` call.
fn check<T: Float>(
    label: &str,
    options: Options,
    executor: Executor,
    seed: u64,
    failures: &mut Vec<String>,
) {
    let mut stepper = options.stepper().with_executor(executor);
    let mut slots: Vec<&str> = stepper
        .program()
        .slots
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    slots.sort_unstable();
    let mut expected_slots = options.state_names();
    expected_slots.sort_unstable();
    assert_eq!(slots, expected_slots, "{label}: state slots");

    let mut rng = SplitMix64::new(seed);
    let initial: Vec<Vec<T>> = LENGTHS.iter().map(|&n| rng.mixed_vec(n)).collect();
    let mut params = initial.clone();
    let mut states: Vec<ParamState<T>> = params
        .iter()
        .map(|p| stepper.init_state(p.len()).unwrap())
        .collect();
    let mut textbook: Vec<Tensor<T>> = initial.iter().cloned().map(Tensor::new).collect();

    for s in 1..=STEPS {
        let lr = if s >= 4 {
            options.lr() / 2.0
        } else {
            options.lr()
        };
        stepper
            .set_hyper("lr", lr)
            .expect("every built-in has an lr");
        let options = options.with_lr(lr);
        let grads: Vec<Vec<T>> = LENGTHS.iter().map(|&n| rng.mixed_vec(n)).collect();
        let active = |j: usize| !(j as u64 + s).is_multiple_of(4);

        let mut batch: Vec<ParamRef<'_, T>> = params
            .iter_mut()
            .zip(states.iter_mut())
            .zip(&grads)
            .enumerate()
            .filter(|(j, _)| active(*j))
            .map(|(_, ((param, state), grad))| ParamRef { param, grad, state })
            .collect();
        stepper.step_many(&mut batch).expect("step_many");
        for (j, (t, grad)) in textbook.iter_mut().zip(&grads).enumerate() {
            if active(j) {
                options.step(t, grad);
            }
        }

        for (j, ((param, state), t)) in params.iter().zip(&states).zip(&textbook).enumerate() {
            let at = format!("{label} step {s} tensor {j} (len {})", LENGTHS[j]);
            if state.step != t.step {
                failures.push(format!(
                    "{at}: step count {}, textbook {}",
                    state.step, t.step
                ));
            }
            compare(&format!("{at} param"), param, &t.param, failures);
            if t.step == 0 {
                continue; // torch has no state yet; optjit holds its initial values
            }
            for name in &expected_slots {
                let n = slot_index(&stepper, name).expect("checked above");
                let actual = state.buffer(n).expect("element slot");
                let expected = t.state(name).expect("created by the first step");
                compare(&format!("{at} {name}"), actual, expected, failures);
            }
        }
    }

    // Guard against a vacuous pass: most values stay finite and most parameters moved.
    let all: Vec<(T, T)> = initial
        .iter()
        .flatten()
        .copied()
        .zip(params.iter().flatten().copied())
        .collect();
    let finite = all.iter().filter(|(_, p)| p.to_f64().is_finite()).count();
    let moved = all.iter().filter(|(p0, p)| !same(*p0, *p)).count();
    assert!(
        finite * 10 >= all.len() * 9,
        "{label}: only {finite} of {} parameter values finite",
        all.len()
    );
    assert!(
        moved * 2 >= all.len(),
        "{label}: only {moved} of {} parameter values moved",
        all.len()
    );
}

/// Pushes one line per element whose bits differ (NaNs compare equal).
fn compare<T: Float>(at: &str, actual: &[T], expected: &[T], failures: &mut Vec<String>) {
    assert_eq!(actual.len(), expected.len(), "{at}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if !same(a, e) {
            failures.push(format!(
                "{at}[{i}]: textbook {e:?} ({:#x}), optjit {a:?} ({:#x})",
                e.to_bits_u64(),
                a.to_bits_u64()
            ));
        }
    }
}

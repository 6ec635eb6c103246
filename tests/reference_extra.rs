//! optjit against textbook loops for the optimizers beyond `torch.optim`: Lion, Adan,
//! AdaBelief and schedule-free AdamW, each written as a plain Rust loop from its authors'
//! PyTorch implementation (named in `src/optim`), compared bit for bit (NaNs canonicalised) on
//! seeded random inputs of mixed magnitudes, in f32 and f64, on every executor.
//!
//! Scalar coefficients are Python floats in the references, so here they are computed in f64
//! and rounded to the element type once, where they meet element values; element math is in
//! the element type, in the references' operation order. Where that order is written
//! differently but gives the same bits (`p.add_(u, alpha=−lr)` is `p − lr·u`), the loops keep
//! the reference's form. The one departure, following optjit's documented order: Adan's
//! difference is `g − g₋`, where the reference forms `(0 − g₋) + g` and so can give `+0`
//! where optjit gives `−0`.
//!
//! Schedule-free AdamW's `eval()`/`train()` swaps are checked bit for bit against the same
//! formulas, with the state untouched, and the round trip `y → x → y` is asserted to restore
//! `y` to within a few ulps of `max(|y|, |z|)`: 3.4 for β₁ = 0.9, from a first-order rounding
//! bound ([`round_trip_ulps`]). Relative to `|y|` alone no bound holds: `x = y + (1 − 1/β₁)(z − y)`
//! cancels.

mod common;
#[path = "reference_extra/textbook.rs"]
mod textbook;

use common::{slot_index, SplitMix64};
use optjit::optim::{self, AdaBelief, Adan, Lion, ScheduleFreeAdamW};
use optjit::{DType, Executor, Float, ParamRef, ParamState, SlotValue, Stepper};
use textbook::{torch_lerp, Tensor};

/// Lengths of the parameters updated together by one `step_many` call: around the 128-bit
/// vector widths (4 × f32, 2 × f64) and the unrolled main loop, and one long parameter.
const LENGTHS: [usize; 11] = [0, 1, 2, 3, 4, 5, 7, 8, 9, 17, 1027];

/// Enough for AdaBelief's rectification to switch from SGD steps to adaptive ones (ρ ≥ 5 from
/// the sixth step of a parameter).
const STEPS: usize = 10;

/// The learning rate of step `s` is `lr · LR[s − 1]`: a drop, a rise above the start (a new
/// `lr_max` for schedule-free), back.
const LR: [f64; STEPS] = [1.0, 1.0, 1.0, 0.5, 0.5, 2.0, 2.0, 1.0, 0.25, 1.0];

/// Zero for the first steps: schedule-free's `weight_sum` stays 0 and `c` is 0.
const LR_ZERO_FIRST: [f64; STEPS] = [0.0, 0.0, 1.0, 1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0];

const EXECUTORS: [Executor; 3] = [Executor::Jit, Executor::Reference, Executor::Eager];

/// Where the inputs come from.
#[derive(Clone, Copy, Debug)]
enum Inputs {
    /// [`SplitMix64::mixed`]: finite values of mixed magnitudes, some ±0, subnormal or huge.
    Mixed,
    /// Half of them IEEE specials (±0, ±inf, NaN, the smallest subnormal, ±MAX, ±1): NaN and
    /// the sign of zero must come out as the reference's.
    Specials,
}

impl Inputs {
    fn vec<T: Float>(self, rng: &mut SplitMix64, len: usize) -> Vec<T> {
        let (tiny, max) = match T::DTYPE {
            DType::F32 => (f32::from_bits(1) as f64, f32::MAX as f64),
            DType::F64 => (f64::from_bits(1), f64::MAX),
            d => panic!("no Float has dtype {d}"),
        };
        let specials = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            tiny,
            -tiny,
            max,
            -max,
            1.0,
            -1.0,
        ];
        (0..len)
            .map(|_| match self {
                Inputs::Specials if rng.below(2) == 0 => {
                    T::from_f64(specials[rng.below(specials.len() as u64) as usize])
                }
                _ => rng.mixed(),
            })
            .collect()
    }
}

/// Failure lines printed in full; the rest are counted.
const MAX_REPORTED: usize = 40;

#[test]
fn lion_matches_textbook_bit_for_bit() {
    let lion = Lion::default();
    check_all(&[
        ("default", Options::Lion(lion), LR),
        (
            "lr betas weight_decay",
            Options::Lion(Lion {
                // 1 − lr·λ rounded once to f32 differs from 1 − lr·λ computed in f32.
                lr: 0.03,
                betas: (0.95, 0.98),
                weight_decay: 0.76,
                ..lion
            }),
            LR,
        ),
        (
            "maximize weight_decay",
            Options::Lion(Lion {
                lr: 3e-3,
                weight_decay: 0.1,
                maximize: true,
                ..lion
            }),
            LR,
        ),
    ]);
}

#[test]
fn adan_matches_textbook_bit_for_bit() {
    let adan = Adan::default();
    check_all(&[
        ("default", Options::Adan(adan), LR),
        (
            "no_prox",
            Options::Adan(Adan {
                lr: 0.01,
                no_prox: true,
                ..adan
            }),
            LR,
        ),
        (
            "lr betas eps maximize no weight_decay",
            Options::Adan(Adan {
                lr: 0.05,
                betas: (0.9, 0.8, 0.95),
                eps: 1e-6,
                weight_decay: 0.0,
                maximize: true,
                ..adan
            }),
            LR,
        ),
        (
            "no_prox maximize weight_decay",
            Options::Adan(Adan {
                lr: 0.03,
                weight_decay: 0.3,
                no_prox: true,
                maximize: true,
                ..adan
            }),
            LR,
        ),
    ]);
}

#[test]
fn adabelief_matches_textbook_bit_for_bit() {
    let adabelief = AdaBelief::default();
    check_all(&[
        (
            "default (rectify, decoupled)",
            Options::AdaBelief(adabelief),
            LR,
        ),
        (
            "no rectify weight_decay",
            Options::AdaBelief(AdaBelief {
                lr: 0.01,
                weight_decay: 0.05,
                rectify: false,
                ..adabelief
            }),
            LR,
        ),
        (
            "amsgrad no rectify eps",
            Options::AdaBelief(AdaBelief {
                eps: 1e-8,
                weight_decay: 0.01,
                amsgrad: true,
                rectify: false,
                ..adabelief
            }),
            LR,
        ),
        (
            "amsgrad rectify fixed_decay",
            Options::AdaBelief(AdaBelief {
                lr: 0.02,
                weight_decay: 0.01,
                amsgrad: true,
                fixed_decay: true,
                ..adabelief
            }),
            LR,
        ),
        (
            "L2 no rectify maximize",
            Options::AdaBelief(AdaBelief {
                weight_decay: 0.05,
                weight_decouple: false,
                rectify: false,
                maximize: true,
                ..adabelief
            }),
            LR,
        ),
        (
            "L2 rectify not degenerated_to_sgd",
            Options::AdaBelief(AdaBelief {
                lr: 0.01,
                betas: (0.8, 0.9),
                weight_decay: 0.1,
                weight_decouple: false,
                degenerated_to_sgd: false,
                ..adabelief
            }),
            LR,
        ),
    ]);
}

#[test]
fn schedule_free_adamw_matches_textbook_bit_for_bit() {
    let sf = ScheduleFreeAdamW::default();
    check_all(&[
        ("default", Options::ScheduleFree(sf), LR),
        (
            "weight_decay warmup_steps",
            Options::ScheduleFree(ScheduleFreeAdamW {
                lr: 0.01,
                weight_decay: 0.05,
                warmup_steps: 3.0,
                ..sf
            }),
            LR,
        ),
        (
            "r weight_lr_power maximize",
            Options::ScheduleFree(ScheduleFreeAdamW {
                lr: 0.02,
                r: 0.5,
                weight_lr_power: 1.5,
                maximize: true,
                ..sf
            }),
            LR,
        ),
        (
            "inner_momentum betas weight_decay",
            Options::ScheduleFree(ScheduleFreeAdamW {
                betas: (0.95, 0.99),
                weight_decay: 0.01,
                inner_momentum: 0.9,
                ..sf
            }),
            LR,
        ),
        ("lr zero at first", Options::ScheduleFree(sf), LR_ZERO_FIRST),
        (
            // The swaps' weights 1 − 1/β₁ = −1 and 1 − β₁ = 0.5 take lerp's second formula.
            "b1 0.5",
            Options::ScheduleFree(ScheduleFreeAdamW {
                betas: (0.5, 0.999),
                ..sf
            }),
            LR,
        ),
    ]);
}

#[test]
fn registered_by_name_with_default_options() {
    let expected = [
        ("lion", Lion::default().graph()),
        ("adan", Adan::default().graph()),
        ("adabelief", AdaBelief::default().graph()),
        ("schedule_free_adamw", ScheduleFreeAdamW::default().graph()),
    ];
    for (name, graph) in expected {
        assert!(optim::NAMES.contains(&name), "{name} missing from NAMES");
        assert_eq!(optim::by_name(name), Some(graph.unwrap()), "{name}");
    }
}

#[test]
fn schedule_free_swap_graphs_share_the_step_graphs_state() {
    for inner_momentum in [0.0, 0.9] {
        let sf = ScheduleFreeAdamW {
            inner_momentum,
            ..Default::default()
        };
        let program = |graph: optjit::Result<optjit::Graph>| {
            optjit::passes::compile(&graph.unwrap()).unwrap()
        };
        let step = program(sf.graph());
        for swap in [program(sf.eval_graph()), program(sf.train_graph())] {
            assert_eq!(swap.slots, step.slots, "{}", swap.name);
            // The swaps write the parameter only.
            assert!(swap.prologue.state_updates.is_empty(), "{}", swap.name);
            assert_eq!(swap.stage.stores.len(), 1, "{}", swap.name);
            assert_eq!(swap.hypers.len(), 1, "{}: only b1", swap.name);
        }
    }
}

/// An optimizer with its options: the optjit graph and the textbook loop come from the same
/// values.
#[derive(Clone, Copy, Debug)]
enum Options {
    Lion(Lion),
    Adan(Adan),
    AdaBelief(AdaBelief),
    ScheduleFree(ScheduleFreeAdamW),
}

impl Options {
    fn stepper(&self) -> Stepper {
        let graph = match self {
            Options::Lion(o) => o.graph(),
            Options::Adan(o) => o.graph(),
            Options::AdaBelief(o) => o.graph(),
            Options::ScheduleFree(o) => o.graph(),
        };
        Stepper::new(&graph.expect("valid options")).expect("compiles")
    }

    fn lr(&self) -> f64 {
        match self {
            Options::Lion(o) => o.lr,
            Options::Adan(o) => o.lr,
            Options::AdaBelief(o) => o.lr,
            Options::ScheduleFree(o) => o.lr,
        }
    }

    fn with_lr(self, lr: f64) -> Options {
        match self {
            Options::Lion(o) => Options::Lion(Lion { lr, ..o }),
            Options::Adan(o) => Options::Adan(Adan { lr, ..o }),
            Options::AdaBelief(o) => Options::AdaBelief(AdaBelief { lr, ..o }),
            Options::ScheduleFree(o) => Options::ScheduleFree(ScheduleFreeAdamW { lr, ..o }),
        }
    }

    /// The per-element state the reference keeps, by optjit's slot names.
    fn buffer_names(&self) -> Vec<&'static str> {
        match self {
            Options::Lion(_) => vec!["exp_avg"],
            Options::Adan(_) => vec!["exp_avg", "exp_avg_diff", "exp_avg_sq", "pre_grad"],
            Options::AdaBelief(o) if o.amsgrad => {
                vec!["exp_avg", "exp_avg_var", "max_exp_avg_var"]
            }
            Options::AdaBelief(_) => vec!["exp_avg", "exp_avg_var"],
            Options::ScheduleFree(o) if o.inner_momentum != 0.0 => {
                vec!["z", "exp_avg_sq", "exp_avg"]
            }
            Options::ScheduleFree(_) => vec!["z", "exp_avg_sq"],
        }
    }

    /// The scalar state (the reference's group scalars; a `Stepper`'s `ParamState` holds
    /// its own copy).
    fn scalar_names(&self) -> Vec<&'static str> {
        match self {
            Options::ScheduleFree(_) => vec!["lr_max", "weight_sum"],
            _ => vec![],
        }
    }

    /// Scalar state counting the steps taken (schedule-free's group `k`): the textbook's
    /// step count.
    fn counter_names(&self) -> Vec<&'static str> {
        match self {
            Options::ScheduleFree(_) => vec!["k"],
            _ => vec![],
        }
    }

    /// One textbook step of one tensor.
    fn step<T: Float>(&self, t: &mut Tensor<T>, grad: &[T]) {
        match self {
            Options::Lion(o) => textbook::lion(o, t, grad),
            Options::Adan(o) => textbook::adan(o, t, grad),
            Options::AdaBelief(o) => textbook::adabelief(o, t, grad),
            Options::ScheduleFree(o) => textbook::schedule_free(o, t, grad),
        }
    }
}

/// Equal bits, or both NaN (payloads are not specified).
fn same<T: Float>(a: T, b: T) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits_u64() == b.to_bits_u64()
}

/// Runs every configuration in f32 and f64 on every executor; fails listing every mismatch.
fn check_all(configs: &[(&str, Options, [f64; STEPS])]) {
    let mut failures = Vec::new();
    for (n, &(name, options, lr)) in configs.iter().enumerate() {
        let seed = 0xE7_0000 + n as u64;
        for executor in EXECUTORS {
            for inputs in [Inputs::Mixed, Inputs::Specials] {
                let label = |dtype: &str| format!("{name} {dtype} {inputs:?} [{executor:?}]");
                let run = Run {
                    options,
                    lr,
                    inputs,
                    executor,
                    seed,
                };
                check::<f32>(&label("f32"), run, &mut failures);
                check::<f64>(&label("f64"), run, &mut failures);
            }
        }
    }
    let message = common::failure_report(&failures, MAX_REPORTED);
    assert!(
        failures.is_empty(),
        "{} differences from the textbook loops:\n{message}",
        failures.len()
    );
}

/// One run of [`check`].
#[derive(Clone, Copy)]
struct Run {
    options: Options,
    /// The learning rate's factor at each step.
    lr: [f64; STEPS],
    inputs: Inputs,
    executor: Executor,
    seed: u64,
}

/// Runs `STEPS` steps of optjit and of the textbook loop side by side from the same random
/// parameters and gradients, comparing parameters, state and step counts after every step;
/// then, for schedule-free, the eval/train swaps.
///
/// Tensor `j` gets no gradient in step `s` when `(j + s) % 4 == 0`, so step counts differ
/// between the tensors of one `step_many` call.
fn check<T: Float>(label: &str, run: Run, failures: &mut Vec<String>) {
    let Run {
        options,
        lr: lr_factors,
        inputs,
        executor,
        seed,
    } = run;
    let mut stepper = options.stepper().with_executor(executor);
    let mut slots: Vec<&str> = stepper
        .program()
        .slots
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    slots.sort_unstable();
    let buffer_names = options.buffer_names();
    let scalar_names = options.scalar_names();
    let counter_names = options.counter_names();
    let mut expected_slots: Vec<&str> = buffer_names
        .iter()
        .chain(&scalar_names)
        .chain(&counter_names)
        .copied()
        .collect();
    expected_slots.sort_unstable();
    assert_eq!(slots, expected_slots, "{label}: state slots");

    let mut rng = SplitMix64::new(seed);
    let initial: Vec<Vec<T>> = LENGTHS.iter().map(|&n| inputs.vec(&mut rng, n)).collect();
    let mut params = initial.clone();
    let mut states: Vec<ParamState<T>> = params
        .iter()
        .map(|p| stepper.init_state(p.len()).unwrap())
        .collect();
    let mut textbook: Vec<Tensor<T>> = initial.iter().cloned().map(Tensor::new).collect();

    for s in 1..=STEPS {
        let lr = options.lr() * lr_factors[s - 1];
        stepper
            .set_hyper("lr", lr)
            .expect("every optimizer has an lr");
        let options = options.with_lr(lr);
        let grads: Vec<Vec<T>> = LENGTHS.iter().map(|&n| inputs.vec(&mut rng, n)).collect();
        let active = |j: usize| !(j + s).is_multiple_of(4);

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
                continue; // the reference has no state yet; optjit holds its initial values
            }
            for name in &buffer_names {
                let n = slot_index(&stepper, name).expect("checked above");
                let actual = state.buffer(n).expect("element slot");
                let expected = t.slot(name).expect("created by the first step");
                compare(&format!("{at} {name}"), actual, &expected, failures);
            }
            for name in &scalar_names {
                let n = slot_index(&stepper, name).expect("checked above");
                let SlotValue::Scalar(actual) = state.slots[n] else {
                    panic!("{at}: {name} is not a scalar slot");
                };
                compare(
                    &format!("{at} {name}"),
                    &[actual],
                    &[t.scalar(name)],
                    failures,
                );
            }
            for name in &counter_names {
                let n = slot_index(&stepper, name).expect("checked above");
                let SlotValue::Scalar(actual) = state.slots[n] else {
                    panic!("{at}: {name} is not a scalar slot");
                };
                compare(
                    &format!("{at} {name}"),
                    &[actual],
                    &[t.step as f64],
                    failures,
                );
            }
        }
    }

    if let Options::ScheduleFree(o) = options {
        check_swaps(label, &o, run, params.clone(), states, &textbook, failures);
    }
    if let Inputs::Specials = inputs {
        return; // NaN spreads: the guards are for finite inputs
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

/// Schedule-free's `eval()` then `train()`: bit for bit against the reference's lerps, state
/// untouched, a parameter never stepped untouched, and `y` restored within 4 ulps of
/// `max(|y|, |z|)`.
fn check_swaps<T: Float>(
    label: &str,
    o: &ScheduleFreeAdamW,
    run: Run,
    mut params: Vec<Vec<T>>,
    mut states: Vec<ParamState<T>>,
    textbook: &[Tensor<T>],
    failures: &mut Vec<String>,
) {
    let executor = run.executor;
    let eval = Stepper::new(&o.eval_graph().unwrap())
        .unwrap()
        .with_executor(executor);
    let train = Stepper::new(&o.train_graph().unwrap())
        .unwrap()
        .with_executor(executor);
    let beta1 = o.betas.0;
    // A parameter that never had a gradient: the reference has no `z` for it and skips it.
    let never_stepped: Vec<T> = SplitMix64::new(7).mixed_vec(9);
    params.push(never_stepped.clone());
    states.push(eval.init_state(never_stepped.len()).unwrap());
    let before = states.clone();
    let z = |j: usize| textbook.get(j).and_then(|t| t.buffers.get("z"));
    let swap = |stepper: &Stepper, params: &mut Vec<Vec<T>>, states: &mut Vec<ParamState<T>>| {
        let grads: Vec<Vec<T>> = params.iter().map(|p| vec![T::ZERO; p.len()]).collect();
        let steps: Vec<u64> = states.iter().map(|s| s.step).collect();
        let mut batch: Vec<ParamRef<'_, T>> = params
            .iter_mut()
            .zip(states.iter_mut())
            .zip(&grads)
            .map(|((param, state), grad)| ParamRef { param, grad, state })
            .collect();
        stepper.step_many(&mut batch).expect("swap");
        // A swap is not an update: the runtime will not count it.
        for (state, step) in states.iter_mut().zip(steps) {
            state.step = step;
        }
    };

    let ys = params.clone();
    swap(&eval, &mut params, &mut states);
    let xs = params.clone();
    swap(&train, &mut params, &mut states);
    let mut checked = 0;
    let mut total = 0;
    for (j, ((y, x), y2)) in ys.iter().zip(&xs).zip(&params).enumerate() {
        let at = format!("{label} swap tensor {j} (len {})", y.len());
        let (expected_x, expected_y2): (Vec<T>, Vec<T>) = match z(j) {
            Some(z) => y
                .iter()
                .zip(z)
                .map(|(&y, &z)| {
                    let x = torch_lerp(y, z, 1.0 - 1.0 / beta1);
                    (x, torch_lerp(x, z, 1.0 - beta1))
                })
                .unzip(),
            None => (y.clone(), y.clone()),
        };
        compare(&format!("{at} eval x"), x, &expected_x, failures);
        compare(&format!("{at} train y"), y2, &expected_y2, failures);
        for (k, (a, b)) in states[j].slots.iter().zip(&before[j].slots).enumerate() {
            let same_slot = match (a, b) {
                (SlotValue::Buffer(a), SlotValue::Buffer(b)) => {
                    a.iter().zip(b).all(|(&a, &b)| same(a, b))
                }
                (SlotValue::Scalar(a), SlotValue::Scalar(b)) => same(*a, *b),
                _ => false,
            };
            if !same_slot {
                failures.push(format!("{at}: the swaps changed slot {k}"));
            }
        }
        let Some(z) = z(j) else { continue };
        // |y' − y| ≤ K ulps of max(|y|, |z|), where nothing overflows.
        let ulps = round_trip_ulps(beta1);
        let (epsilon, tiny, max) = match T::DTYPE {
            DType::F32 => (
                f32::EPSILON as f64,
                f32::from_bits(1) as f64,
                f32::MAX as f64,
            ),
            DType::F64 => (f64::EPSILON, f64::from_bits(1), f64::MAX),
            d => panic!("no Float has dtype {d}"),
        };
        for (i, ((&y, &y2), &z)) in y.iter().zip(y2).zip(z).enumerate() {
            let (y, y2, z) = (y.to_f64(), y2.to_f64(), z.to_f64());
            let scale = y.abs().max(z.abs());
            total += 1;
            if scale.is_nan() || scale >= max / 8.0 {
                continue;
            }
            checked += 1;
            let bound = ulps * epsilon * scale + 8.0 * tiny;
            let within = (y2 - y).abs() <= bound; // false for NaN
            if !within {
                failures.push(format!(
                    "{at}[{i}]: y {y:e}, z {z:e}: round trip gives {y2:e}, off by more \
                     than {ulps:.1} ulps of max(|y|, |z|)"
                ));
            }
        }
    }
    // With finite inputs, nearly every round trip is checked.
    let finite = matches!(run.inputs, Inputs::Mixed);
    assert!(
        !finite || checked * 10 >= total * 9,
        "{label}: only {checked} of {total} round trips checked"
    );
}

/// The error bound of the swaps' round trip `y → x → y`, in units of `ε·max(|y|, |z|)` (ε the
/// machine epsilon): a first-order bound, doubled for the higher-order terms.
///
/// Each rounding errs by at most `ε/2` of its result. Eval rounds its weight, `z − y`, their
/// product and `x`; train the same with `z − x`. With `M = max(|y|, |z|)`: `|z − y| ≤ 2M`,
/// the moving term of a lerp of weight `w` is `a·|end − start|` with `a = |w|` for `|w| < 0.5`
/// and `|1 − w|` otherwise (PyTorch's two formulas), `|x| ≤ (1 + 2|w₁|)M`,
/// `|z − x| ≤ 2(1 + |w₁|)M`, and an error in `x` reaches `y` multiplied by `β₁`. For β₁ = 0.9
/// this gives 3.4 ulps.
fn round_trip_ulps(beta1: f64) -> f64 {
    let (w1, w2) = (1.0 - 1.0 / beta1, 1.0 - beta1);
    let moving = |w: f64| {
        if w.abs() < 0.5 {
            w.abs()
        } else {
            (1.0 - w).abs()
        }
    };
    let x = 3.0 * moving(w1) * 2.0 + (1.0 + 2.0 * w1.abs());
    let y = 3.0 * moving(w2) * 2.0 * (1.0 + w1.abs()) + 1.0;
    // In units of ε/2, doubled: the same number in units of ε.
    beta1 * x + y
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

//! Mixed precision through the runtime: an [`Optimizer`] with a [`Precision`], the
//! [`Stepper`] with the same dtypes, and state dicts of narrow slots.
//!
//! - Adam, AdamW, SGD-momentum and Lion, in five storage combinations (all f32; bf16 params
//!   and grads with f32 state; all bf16; f16 params with f32 state; f32 params with bf16
//!   state), on both executors: the optimizer, `Stepper::step_many` and an independent
//!   reference agree bit for bit. The reference steps f32 copies of the widened values with
//!   the f32 reference interpreter, one parameter at a time, and rounds every stored stream
//!   to its dtype with `half` after each step. Parameters of lengths 1, 7, 33 and 1000 sit in
//!   two groups of different learning rates; one gets its first gradient late and one skips
//!   a step (its state untouched).
//! - Stochastic rounding through the optimizer: the same bits on one or two threads (a
//!   200,000-element parameter cut between them) and in a twin optimizer, other bits with
//!   another seed, and the same bits after a state-dict round trip mid-training.
//! - State dicts: each slot saved in its storage dtype (read back with the `safetensors`
//!   crate), cast on load as PyTorch's `.to()` casts (f32 to bf16 to nearest even, bf16 to
//!   f32 exactly, f64 to bf16 or f16 through f32).
//! - Errors: an unknown slot, mixed compute types, stochastic rounding of a wide stream, a
//!   state buffer asked for in another dtype; each leaves the optimizer (or the stepper's
//!   buffers) unchanged.

mod common;

use common::SplitMix64;
use half::{bf16, f16};
use ndarray::Array1;
use optjit::optim::{Adam, AdamW, Lion, Sgd};
use optjit::runtime::{StateDict, TensorData};
use optjit::{
    DType, Element, ElemsRef, Error, Executor, Graph, Optimizer, Param, ParamRef, ParamState,
    Precision, SlotValue, Stepper,
};
use std::sync::OnceLock;

/// Steps every differential run takes.
const STEPS: usize = 4;

/// The learning rate of each of the two groups.
const GROUP_LR: [f64; 2] = [0.05, 0.01];

/// Every parameter of the differential runs: (group, name, length).
const PARAMS: [(usize, &str, usize); 4] = [(0, "a", 1), (0, "b", 33), (1, "c", 7), (1, "d", 1000)];

/// Which parameters have a gradient at each step: `c` none at the first (it gets its state
/// late), `b` none at the third (skipped: its values, state and step count stay).
const HAS_GRAD: [[bool; 4]; STEPS] = [
    [true, true, false, true],
    [true, true, true, true],
    [true, false, true, true],
    [true, true, true, true],
];

/// The built-ins under test, with non-default decays so that every term of the update runs.
fn optimizers() -> Vec<(&'static str, Graph)> {
    let sgd = Sgd {
        momentum: 0.9,
        weight_decay: 1e-2,
        ..Sgd::default()
    };
    let lion = Lion {
        weight_decay: 0.1,
        ..Lion::default()
    };
    vec![
        ("adam", Adam::default().graph().unwrap()),
        ("adamw", AdamW::default().graph().unwrap()),
        ("sgd_momentum", sgd.graph().unwrap()),
        ("lion", lion.graph().unwrap()),
    ]
}

/// A value of magnitude in `[1e-5, 1]` (log-uniform; f16 subnormals included) with a random
/// sign, one time in sixteen ±0; rounded to `T`.
fn value<T: Element>(rng: &mut SplitMix64) -> T {
    let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
    if rng.below(16) == 0 {
        return T::from_f64(sign * 0.0);
    }
    T::from_f64(sign * 10f64.powf(5.0 * rng.unit() - 5.0))
}

fn values<T: Element>(rng: &mut SplitMix64, len: usize) -> Vec<T> {
    (0..len).map(|_| value(rng)).collect()
}

/// The initial values of the parameters and their gradient at each step (`grads[step][i]`).
struct Inputs<P> {
    init: Vec<Vec<P>>,
    grads: Vec<Vec<Vec<P>>>,
}

impl<P: Element> Inputs<P> {
    fn new(seed: u64, lengths: &[usize]) -> Inputs<P> {
        let mut rng = SplitMix64::new(seed);
        let mut all = || lengths.iter().map(|&n| values(&mut rng, n)).collect();
        Inputs {
            init: all(),
            grads: (0..STEPS).map(|_| all()).collect(),
        }
    }
}

/// What a run leaves of one parameter: its values' bits, its step count, and the dtype and
/// bits of each element slot (none before its first update).
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    name: String,
    param: Vec<u64>,
    step: u64,
    slots: Vec<(String, DType, Vec<u64>)>,
}

fn bits<T: Element>(values: &[T]) -> Vec<u64> {
    values.iter().map(|x| x.to_bits_u64()).collect()
}

fn elems_bits(elems: ElemsRef<'_>) -> (DType, Vec<u64>) {
    let bits = match elems {
        ElemsRef::F32(s) => bits(s),
        ElemsRef::F64(s) => bits(s),
        ElemsRef::BF16(s) => bits(s),
        ElemsRef::F16(s) => bits(s),
    };
    (elems.dtype(), bits)
}

/// The names of the program's element slots, in slot order.
fn element_slots(graph: &Graph) -> Vec<String> {
    let program = Stepper::new(graph).unwrap().program().clone();
    let slots = program.element_slots();
    slots.map(|s| program.slots[s].name.clone()).collect()
}

/// Parameter `handle` of `opt` as an [`Outcome`].
fn outcome<P: Element>(opt: &Optimizer, handle: &Param<P>, slots: &[String]) -> Outcome {
    let states = slots.iter().filter_map(|name| {
        let elems = opt.state_elems(handle, name).unwrap()?;
        let (dtype, bits) = elems_bits(elems);
        Some((name.clone(), dtype, bits))
    });
    Outcome {
        name: opt.params_info()[handle.index()].name.clone(),
        param: bits(opt.param(handle).unwrap()),
        step: opt.param_step(handle).unwrap(),
        slots: states.collect(),
    }
}

/// Panics with the first element whose bits differ (or the lengths, if they differ).
fn assert_bits<T: Element>(what: &str, expected: &[T], got: &[T]) {
    let (e, g) = (bits(expected), bits(got));
    if let Some(k) = (0..e.len()).find(|&k| e.get(k) != g.get(k)) {
        panic!(
            "{what}: [{k}]: expected {:?} ({:#x}), got {:?}",
            expected[k],
            e[k],
            got.get(k)
        );
    }
    assert_eq!(e.len(), g.len(), "{what}: length");
}

/// Panics with the first difference between two runs' outcomes.
fn assert_same(what: &str, expected: &[Outcome], got: &[Outcome]) {
    assert_eq!(expected.len(), got.len(), "{what}: parameter count");
    for (e, g) in expected.iter().zip(got) {
        let name = &e.name;
        assert_eq!(e.step, g.step, "{what}: step count of `{name}`");
        let mut streams = vec![("param", &e.param, &g.param)];
        assert_eq!(e.slots.len(), g.slots.len(), "{what}: slots of `{name}`");
        for (es, gs) in e.slots.iter().zip(&g.slots) {
            assert_eq!((&es.0, es.1), (&gs.0, gs.1), "{what}: slot of `{name}`");
            streams.push((es.0.as_str(), &es.2, &gs.2));
        }
        for (stream, eb, gb) in streams {
            if let Some(k) = (0..eb.len()).find(|&k| eb.get(k) != gb.get(k)) {
                panic!(
                    "{what}: `{name}`.{stream}[{k}]: expected bits {:#x}, got {:x?}",
                    eb[k],
                    gb.get(k)
                );
            }
            assert_eq!(eb.len(), gb.len(), "{what}: length of `{name}`.{stream}");
        }
    }
}

/// Runs [`HAS_GRAD`] through an optimizer storing as `precision` says, checking after each
/// step that the parameters without a gradient kept their values, state and step count.
fn run_optimizer<P: Element>(
    graph: &Graph,
    precision: &Precision,
    executor: Executor,
    inputs: &Inputs<P>,
) -> Vec<Outcome> {
    let slots = element_slots(graph);
    let mut opt = Optimizer::new(graph)
        .unwrap()
        .with_executor(executor)
        .with_precision(precision.clone());
    for lr in GROUP_LR {
        opt.add_param_group(&[("lr", lr)]).unwrap();
    }
    let handles: Vec<Param<P>> = PARAMS
        .iter()
        .zip(&inputs.init)
        .map(|(&(group, name, _), init)| {
            let init = Array1::from(init.clone());
            opt.add_param(group, name, &init).unwrap()
        })
        .collect();
    for (step, has) in HAS_GRAD.iter().enumerate() {
        opt.zero_grad();
        let skipped: Vec<(usize, Outcome)> = (0..PARAMS.len())
            .filter(|&i| !has[i])
            .map(|i| (i, outcome(&opt, &handles[i], &slots)))
            .collect();
        for (i, h) in handles.iter().enumerate().filter(|(i, _)| has[*i]) {
            opt.set_grad(h, &inputs.grads[step][i]).unwrap();
        }
        assert!(opt.step().unwrap(), "the built-ins never skip a step");
        for (i, before) in skipped {
            let after = outcome(&opt, &handles[i], &slots);
            assert_eq!(
                after, before,
                "step {step} touched a parameter without gradient"
            );
        }
    }
    handles.iter().map(|h| outcome(&opt, h, &slots)).collect()
}

/// [`ParamState`] as the element slots of an [`Outcome`] (none before the first update).
fn state_slots<S: Element>(
    state: &ParamState<S>,
    names: &[String],
) -> Vec<(String, DType, Vec<u64>)> {
    if state.step == 0 {
        return Vec::new();
    }
    let buffers = state.slots.iter().filter_map(|s| match s {
        SlotValue::Buffer(b) => Some(bits(b)),
        SlotValue::Scalar(_) => None,
    });
    let named = names.iter().zip(buffers);
    named.map(|(n, b)| (n.clone(), S::DTYPE, b)).collect()
}

/// Runs [`HAS_GRAD`] through `Stepper::step_many`, one call per group with its learning rate.
fn run_stepper<P: Element, S: Element>(
    graph: &Graph,
    executor: Executor,
    inputs: &Inputs<P>,
) -> Vec<Outcome> {
    let names = element_slots(graph);
    let mut stepper = Stepper::new(graph).unwrap().with_executor(executor);
    let mut params = inputs.init.clone();
    let mut states: Vec<ParamState<S>> = (PARAMS.iter())
        .map(|&(_, _, len)| stepper.init_state(len).unwrap())
        .collect();
    for (step, has) in HAS_GRAD.iter().enumerate() {
        for (group, lr) in GROUP_LR.into_iter().enumerate() {
            stepper.set_hyper("lr", lr).unwrap();
            let mut refs: Vec<ParamRef<'_, P, S>> = (params.iter_mut().zip(&mut states))
                .enumerate()
                .filter(|&(i, _)| has[i] && PARAMS[i].0 == group)
                .map(|(i, (param, state))| ParamRef {
                    param,
                    grad: &inputs.grads[step][i],
                    state,
                })
                .collect();
            assert!(stepper.step_many(&mut refs).unwrap());
        }
    }
    (PARAMS.iter().zip(params).zip(&states))
        .map(|((&(_, name, _), param), state)| Outcome {
            name: name.to_string(),
            param: bits(&param),
            step: state.step,
            slots: state_slots(state, &names),
        })
        .collect()
}

/// `x` stored as `T`: rounded to nearest even by `half`'s `from_f32` (then converted to `T`
/// exactly), or kept as is for f32. Not `T::from_f64`: `half`'s f64 to bf16 conversion
/// truncates the f64 to its top 32 bits before rounding, so an f32 just above a halfway
/// point of bf16 by its last 3 bits rounds as the halfway point.
fn narrow<T: Element>(x: f32) -> T {
    let exact = match T::DTYPE {
        DType::BF16 => bf16::from_f32(x).to_f64(),
        DType::F16 => f16::from_f32(x).to_f64(),
        _ => f64::from(x),
    };
    T::from_f64(exact)
}

fn widen<T: Element>(x: T) -> f32 {
    x.to_f64() as f32
}

/// The reference semantics of mixed precision: every stream widened to f32, each parameter
/// stepped alone in f32 by the reference interpreter, then each stored stream rounded to its
/// dtype (params and grads `P`, state `S`) before the next step.
fn run_reference<P: Element, S: Element>(graph: &Graph, inputs: &Inputs<P>) -> Vec<Outcome> {
    let names = element_slots(graph);
    let mut stepper = Stepper::new(graph)
        .unwrap()
        .with_executor(Executor::Reference);
    let mut params: Vec<Vec<f32>> = (inputs.init.iter())
        .map(|p| p.iter().map(|&x| widen(x)).collect())
        .collect();
    let mut states: Vec<ParamState<f32>> = (PARAMS.iter())
        .map(|&(_, _, len)| stepper.init_state(len).unwrap())
        .collect();
    for (step, has) in HAS_GRAD.iter().enumerate() {
        for i in (0..PARAMS.len()).filter(|&i| has[i]) {
            stepper.set_hyper("lr", GROUP_LR[PARAMS[i].0]).unwrap();
            let grad: Vec<f32> = inputs.grads[step][i].iter().map(|&g| widen(g)).collect();
            let (param, state) = (&mut params[i], &mut states[i]);
            stepper.step(param, &grad, state).unwrap();
            for x in param.iter_mut() {
                *x = widen(narrow::<P>(*x));
            }
            for slot in &mut state.slots {
                if let SlotValue::Buffer(b) = slot {
                    b.iter_mut().for_each(|x| *x = widen(narrow::<S>(*x)));
                }
            }
        }
    }
    let outcomes = PARAMS.iter().zip(&params).zip(&states);
    outcomes
        .map(|((&(_, name, _), param), state)| {
            let narrowed: Vec<P> = param.iter().map(|&x| narrow(x)).collect();
            let slots = state.slots.iter().map(|s| match s {
                SlotValue::Buffer(b) => SlotValue::Buffer(b.iter().map(|&x| narrow(x)).collect()),
                SlotValue::Scalar(v) => SlotValue::Scalar(*v),
            });
            let state: ParamState<S> = ParamState {
                step: state.step,
                slots: slots.collect(),
            };
            Outcome {
                name: name.to_string(),
                param: bits(&narrowed),
                step: state.step,
                slots: state_slots(&state, &names),
            }
        })
        .collect()
}

/// One storage combination of one optimizer: params and grads as `P`, state as `S`.
fn check_storage<P: Element, S: Element>(name: &str, graph: &Graph, seed: u64) {
    let what = format!("{name}, {:?} params, {:?} state", P::DTYPE, S::DTYPE);
    // The parameter's own dtype when the state has it: Precision's default.
    let precision = match S::DTYPE == P::DTYPE {
        true => Precision::default(),
        false => Precision::state(S::DTYPE),
    };
    let lengths: Vec<usize> = PARAMS.iter().map(|p| p.2).collect();
    let inputs = Inputs::<P>::new(seed, &lengths);
    let expected = run_reference::<P, S>(graph, &inputs);
    for (e, init) in expected.iter().zip(&inputs.init) {
        assert_ne!(e.param, bits(init), "{what}: `{}` never moved", e.name);
    }
    for executor in [Executor::Jit, Executor::Reference] {
        let what = format!("{what}, {executor:?}");
        let optimizer = run_optimizer(graph, &precision, executor, &inputs);
        assert_same(&format!("{what}: optimizer"), &expected, &optimizer);
        let stepper = run_stepper::<P, S>(graph, executor, &inputs);
        assert_same(&format!("{what}: stepper"), &expected, &stepper);
    }
}

#[test]
fn optimizer_stepper_and_rounded_f32_reference_agree_in_every_storage_combination() {
    for (k, (name, graph)) in optimizers().into_iter().enumerate() {
        let seed = 100 * k as u64;
        check_storage::<f32, f32>(name, &graph, seed);
        check_storage::<bf16, f32>(name, &graph, seed + 1);
        check_storage::<bf16, bf16>(name, &graph, seed + 2);
        check_storage::<f16, f32>(name, &graph, seed + 3);
        check_storage::<f32, bf16>(name, &graph, seed + 4);
    }
}

/// The parameters of the stochastic-rounding runs: (group, name, length); their gradients
/// follow [`HAS_GRAD`]. `big` has more than twice `optjit::runtime::GRAIN` elements, so
/// that two threads cut it between them.
const SR_PARAMS: [(usize, &str, usize); 4] = [
    (0, "big", 200_000),
    (0, "small", 33),
    (1, "other", 1000),
    (1, "mixed", 7),
];

/// The bf16 inputs of the stochastic-rounding runs (made once: they are big).
fn sr_inputs() -> &'static Inputs<bf16> {
    static INPUTS: OnceLock<Inputs<bf16>> = OnceLock::new();
    INPUTS.get_or_init(|| Inputs::new(7, &SR_PARAMS.map(|p| p.2)))
}

/// Adam over [`SR_PARAMS`] (bf16, starting from `init`) on at most `threads` threads: state
/// in bf16 with stochastic rounding of `param` and `exp_avg` from `seed` (to nearest when
/// `None`); `mixed`, added last, has f32 state and only `param` stochastic (a second store
/// in its group).
fn sr_optimizer(
    threads: usize,
    seed: Option<u64>,
    init: &[Vec<bf16>],
) -> (Optimizer, Vec<Param<bf16>>) {
    let rounding = |precision: Precision, streams: &[&str]| match seed {
        Some(seed) => precision.with_stochastic_rounding(streams, seed),
        None => precision,
    };
    let mut opt = Optimizer::new(&Adam::default().graph().unwrap())
        .unwrap()
        .with_threads(threads)
        .with_precision(rounding(Precision::default(), &["param", "exp_avg"]));
    for lr in GROUP_LR {
        opt.add_param_group(&[("lr", lr)]).unwrap();
    }
    let mut handles = Vec::new();
    for (&(group, name, _), init) in SR_PARAMS.iter().zip(init) {
        if name == "mixed" {
            opt.set_precision(rounding(Precision::state(DType::F32), &["param"]));
        }
        let init = Array1::from(init.clone());
        handles.push(opt.add_param(group, name, &init).unwrap());
    }
    (opt, handles)
}

/// Steps `steps` of [`HAS_GRAD`] with the gradients of [`sr_inputs`].
fn sr_steps(opt: &mut Optimizer, handles: &[Param<bf16>], steps: std::ops::Range<usize>) {
    let grads = &sr_inputs().grads;
    for step in steps {
        opt.zero_grad();
        for (i, h) in handles
            .iter()
            .enumerate()
            .filter(|(i, _)| HAS_GRAD[step][*i])
        {
            opt.set_grad(h, &grads[step][i]).unwrap();
        }
        assert!(opt.step().unwrap());
    }
}

fn sr_outcomes(opt: &Optimizer, handles: &[Param<bf16>]) -> Vec<Outcome> {
    let slots = element_slots(&Adam::default().graph().unwrap());
    handles.iter().map(|h| outcome(opt, h, &slots)).collect()
}

/// Every step of [`sr_optimizer`] from the initial values.
fn sr_run(threads: usize, seed: Option<u64>) -> Vec<Outcome> {
    let (mut opt, handles) = sr_optimizer(threads, seed, &sr_inputs().init);
    sr_steps(&mut opt, &handles, 0..STEPS);
    sr_outcomes(&opt, &handles)
}

#[test]
fn stochastic_rounding_gives_the_same_bits_on_one_or_two_threads_and_in_a_twin() {
    let one = sr_run(1, Some(42));
    let two = sr_run(2, Some(42));
    assert_same("one thread, then two", &one, &two);
    let twin = sr_run(2, Some(42));
    assert_same("a twin optimizer", &two, &twin);
}

#[test]
fn another_seed_or_nearest_rounding_changes_only_the_stochastic_streams() {
    let base = sr_run(2, Some(42));
    for (what, other) in [
        ("seed 43", sr_run(2, Some(43))),
        ("nearest", sr_run(2, None)),
    ] {
        for (a, b) in base.iter().zip(&other) {
            let name = &a.name;
            assert_ne!(a.param, b.param, "{what}: `{name}`.param");
            for (sa, sb) in a.slots.iter().zip(&b.slots) {
                let slot = &sa.0;
                // Adam's moments depend on the gradients only: they differ when stored
                // stochastically, else not at all.
                if slot == "exp_avg" && name != "mixed" {
                    assert_ne!(sa.2, sb.2, "{what}: `{name}`.{slot}");
                } else {
                    assert_eq!(sa.2, sb.2, "{what}: `{name}`.{slot}");
                }
            }
        }
    }
}

/// The outcomes of [`STEPS`] uninterrupted steps, and of the same steps with a state-dict
/// round trip (bytes) into a fresh optimizer after the second: the fresh one is built the
/// same way, from the parameters' values then (a state dict holds no parameters).
fn round_trip_mid_training(seed: Option<u64>) -> (Vec<Outcome>, Vec<Outcome>) {
    let inputs = sr_inputs();
    let (mut straight, handles) = sr_optimizer(2, seed, &inputs.init);
    sr_steps(&mut straight, &handles, 0..STEPS);
    let expected = sr_outcomes(&straight, &handles);
    let (mut first, handles) = sr_optimizer(2, seed, &inputs.init);
    sr_steps(&mut first, &handles, 0..2);
    let bytes = first.state_dict().to_bytes().unwrap();
    let now: Vec<Vec<bf16>> = (handles.iter())
        .map(|h| first.param(h).unwrap().to_vec())
        .collect();
    let (mut resumed, handles) = sr_optimizer(2, seed, &now);
    let dict = StateDict::from_bytes(&bytes).unwrap();
    assert!(resumed.load_state_dict(&dict, true).unwrap().is_clean());
    sr_steps(&mut resumed, &handles, 2..STEPS);
    (expected, sr_outcomes(&resumed, &handles))
}

#[test]
fn a_state_dict_round_trip_mid_training_changes_no_bit_of_bf16_state() {
    let (straight, resumed) = round_trip_mid_training(None);
    assert_same("resumed from a state dict", &straight, &resumed);
}

/// The generator's key counts the optimizer's applied steps (see `optjit::round::step_key`):
/// a resumed optimizer must go on from the saved count, not from 0.
#[test]
fn a_state_dict_round_trip_mid_training_continues_the_stochastic_rounding() {
    let (straight, resumed) = round_trip_mid_training(Some(42));
    assert_same("resumed from a state dict", &straight, &resumed);
}

/// Checks that the tensors of parameter `handle` (state-dict index `index`) in `file` have
/// the dtypes `expected` (by slot), the parameter's shape, and the bits of its state.
fn check_saved<P: Element>(
    file: &safetensors::SafeTensors<'_>,
    opt: &Optimizer,
    handle: &Param<P>,
    index: usize,
    expected: &[(&str, safetensors::Dtype)],
) {
    let shape = &opt.params_info()[handle.index()].shape;
    for &(slot, dtype) in expected {
        let name = format!("state.{index}.{slot}");
        let tensor = file.tensor(&name).unwrap();
        assert_eq!(tensor.dtype(), dtype, "{name}");
        assert_eq!(tensor.shape(), shape.as_slice(), "{name}");
        let (stored, bits) = elems_bits(opt.state_elems(handle, slot).unwrap().unwrap());
        let bytes: Vec<u8> = (bits.iter())
            .flat_map(|b| b.to_le_bytes()[..stored.size()].to_vec())
            .collect();
        assert_eq!(tensor.data(), bytes.as_slice(), "{name}: bytes");
    }
}

#[test]
fn each_slot_is_saved_in_its_storage_dtype() {
    use safetensors::Dtype;
    let graph = Adam {
        amsgrad: true,
        ..Adam::default()
    }
    .graph()
    .unwrap();
    let precision = Precision::state(DType::BF16).with_slot("exp_avg_sq", DType::F32);
    let mut opt = Optimizer::new(&graph).unwrap().with_precision(precision);
    let g = opt.add_param_group(&[]).unwrap();
    let mut rng = SplitMix64::new(11);
    let w_init = ndarray::Array2::from_shape_vec((3, 5), values::<bf16>(&mut rng, 15));
    let w = opt.add_param(g, "w", &w_init.unwrap()).unwrap();
    opt.set_precision(Precision::state(DType::F16));
    let v = opt
        .add_param(g, "v", &Array1::from(values::<f32>(&mut rng, 6)))
        .unwrap();
    opt.set_precision(Precision::default());
    let u = opt
        .add_param(g, "u", &Array1::from(values::<f64>(&mut rng, 4)))
        .unwrap();
    for _ in 0..2 {
        opt.set_grad(&w, &values(&mut rng, 15)).unwrap();
        opt.set_grad(&v, &values(&mut rng, 6)).unwrap();
        opt.set_grad(&u, &values(&mut rng, 4)).unwrap();
        opt.step().unwrap();
    }
    let bytes = opt.state_dict().to_bytes().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), 9, "three slots of three parameters");
    let (bf, f32_, f16_, f64_) = (Dtype::BF16, Dtype::F32, Dtype::F16, Dtype::F64);
    let slots = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
    check_saved(
        &file,
        &opt,
        &w,
        0,
        &[(slots[0], bf), (slots[1], f32_), (slots[2], bf)],
    );
    check_saved(&file, &opt, &v, 1, &slots.map(|s| (s, f16_)));
    check_saved(&file, &opt, &u, 2, &slots.map(|s| (s, f64_)));
    let back = StateDict::from_bytes(&bytes).unwrap();
    assert_eq!(back, opt.state_dict(), "read back in each slot's dtype");
}

/// An Adam optimizer with one f32 parameter `w` of 40 elements, its state stored as
/// `precision` says.
fn adam_w(precision: Precision) -> (Optimizer, Param<f32>) {
    let mut opt = Optimizer::new(&Adam::default().graph().unwrap())
        .unwrap()
        .with_precision(precision);
    let g = opt.add_param_group(&[]).unwrap();
    let init = Array1::from(values::<f32>(&mut SplitMix64::new(3), 40));
    let w = opt.add_param(g, "w", &init).unwrap();
    (opt, w)
}

/// The values of tensor `slot` of parameter 0 of `dict`.
fn slot_data<'a>(dict: &'a mut StateDict, slot: &str) -> &'a mut TensorData {
    let entry = dict.state.get_mut(&0).expect("parameter 0 has state");
    &mut entry.tensors.get_mut(slot).expect("a saved slot").1
}

#[test]
fn loading_f32_state_into_bf16_slots_rounds_to_nearest_even_and_back_widens_exactly() {
    let (mut wide, w) = adam_w(Precision::default());
    let mut rng = SplitMix64::new(5);
    for _ in 0..2 {
        wide.set_grad(&w, &values(&mut rng, 40)).unwrap();
        wide.step().unwrap();
    }
    let mut dict = wide.state_dict();
    // Ties of the narrowing: 1 + 2^-8 and its negative go to the even 1 below, 1 + 3·2^-8
    // to the even 1 + 2^-6 above; 1 + 2^-8 + 2^-23 (above the tie by the f32's last bit)
    // goes up, to 1 + 2^-7.
    let TensorData::F32(exp_avg) = slot_data(&mut dict, "exp_avg") else {
        panic!("f32 state is saved as f32");
    };
    let tie = 1.0 + 2f32.powi(-8);
    let ties = [
        tie,
        1.0 + 3.0 * 2f32.powi(-8),
        -tie,
        f32::from_bits(tie.to_bits() + 1),
    ];
    exp_avg[..4].copy_from_slice(&ties);
    let (mut narrow, n) = adam_w(Precision::state(DType::BF16));
    assert!(narrow.load_state_dict(&dict, true).unwrap().is_clean());
    assert_eq!(narrow.param_step(&n).unwrap(), 2);
    let loaded: Vec<Vec<bf16>> = ["exp_avg", "exp_avg_sq"]
        .iter()
        .map(|slot| match narrow.state_elems(&n, slot).unwrap() {
            Some(ElemsRef::BF16(got)) => got.to_vec(),
            other => panic!("{slot} is stored as bf16, not {other:?}"),
        })
        .collect();
    let nearest = [0x3F80, 0x3F82, 0xBF80, 0x3F81].map(bf16::from_bits);
    assert_bits(
        "ties to even, the rest to nearest",
        &nearest,
        &loaded[0][..4],
    );
    for (slot, got) in ["exp_avg", "exp_avg_sq"].iter().zip(&loaded) {
        let TensorData::F32(saved) = slot_data(&mut dict, slot).clone() else {
            unreachable!("checked above");
        };
        assert!(
            saved.iter().any(|&x| bf16::from_f32(x).to_f32() != x),
            "{slot}: some value must round"
        );
        let expected: Vec<bf16> = saved.iter().map(|&x| bf16::from_f32(x)).collect();
        assert_bits(&format!("{slot}: rounded to nearest even"), &expected, got);
    }
    // Back: the bf16 state saved as BF16 and loaded into f32 slots, exactly.
    let narrow_dict = narrow.state_dict();
    let (mut back, b) = adam_w(Precision::default());
    assert!(back.load_state_dict(&narrow_dict, true).unwrap().is_clean());
    for (slot, narrowed) in ["exp_avg", "exp_avg_sq"].iter().zip(&loaded) {
        let got = back.state_buffer(&b, slot).unwrap().unwrap();
        let widened: Vec<f32> = narrowed.iter().map(|x| x.to_f32()).collect();
        assert_bits(&format!("{slot}: widened exactly"), &widened, got);
    }
}

#[test]
fn f64_state_loads_into_bf16_and_f16_slots_through_f32_as_pytorch_casts() {
    let mut wide = Optimizer::new(&Adam::default().graph().unwrap()).unwrap();
    let g = wide.add_param_group(&[]).unwrap();
    let init = Array1::from(values::<f64>(&mut SplitMix64::new(3), 40));
    let w = wide.add_param(g, "w", &init).unwrap();
    wide.set_grad(&w, &values(&mut SplitMix64::new(4), 40))
        .unwrap();
    wide.step().unwrap();
    let mut dict = wide.state_dict();
    // Just above a halfway point of bf16 (1 + 2^-8) and of f16 (1 + 2^-11): rounded
    // directly they go up; rounded to f32 first they become the halfway point, which goes
    // to the even neighbour below, 1.
    let above_bf16 = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let above_f16 = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    for (above, halfway) in [(above_bf16, 2f64.powi(-8)), (above_f16, 2f64.powi(-11))] {
        assert!(above > 1.0 + halfway, "above the halfway point");
        assert_eq!(
            f64::from(above as f32),
            1.0 + halfway,
            "f32 makes it the halfway point"
        );
    }
    let TensorData::F64(exp_avg) = slot_data(&mut dict, "exp_avg") else {
        panic!("f64 state is saved as f64");
    };
    exp_avg[..2].copy_from_slice(&[above_bf16, -above_bf16]);
    let TensorData::F64(exp_avg_sq) = slot_data(&mut dict, "exp_avg_sq") else {
        panic!("f64 state is saved as f64");
    };
    exp_avg_sq[0] = above_f16;
    let precision = Precision::state(DType::BF16).with_slot("exp_avg_sq", DType::F16);
    let (mut narrow, n) = adam_w(precision);
    assert!(narrow.load_state_dict(&dict, true).unwrap().is_clean());
    let Some(ElemsRef::BF16(exp_avg)) = narrow.state_elems(&n, "exp_avg").unwrap() else {
        panic!("exp_avg is stored as bf16");
    };
    let Some(ElemsRef::F16(exp_avg_sq)) = narrow.state_elems(&n, "exp_avg_sq").unwrap() else {
        panic!("exp_avg_sq is stored as f16");
    };
    assert_eq!(bits(&exp_avg[..2]), [0x3F80, 0xBF80], "bf16 through f32");
    assert_eq!(exp_avg_sq[0].to_bits(), 0x3C00, "f16 through f32");
    let TensorData::F64(saved) = slot_data(&mut dict, "exp_avg").clone() else {
        unreachable!("checked above");
    };
    let through_f32: Vec<bf16> = saved.iter().map(|&x| bf16::from_f32(x as f32)).collect();
    assert_bits("exp_avg: through f32", &through_f32, exp_avg);
}

/// The names of `opt`'s parameters and the bits of parameter `w`'s values and state.
fn snapshot(opt: &Optimizer, w: &Param<bf16>) -> (Vec<String>, Outcome) {
    let names = opt.params_info().iter().map(|p| p.name.clone()).collect();
    let slots = element_slots(&Adam::default().graph().unwrap());
    (names, outcome(opt, w, &slots))
}

#[test]
fn precision_mistakes_fail_at_add_param_and_change_nothing() {
    let graph = Adam::default().graph().unwrap();
    let build = || {
        let mut opt = Optimizer::new(&graph).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let w = opt
            .add_param(g, "w", &Array1::from(vec![bf16::ONE; 5]))
            .unwrap();
        opt.set_grad(&w, &[bf16::from_f32(0.5); 5]).unwrap();
        opt.step().unwrap();
        (opt, w)
    };
    let (mut opt, w) = build();
    let before = snapshot(&opt, &w);
    let f32s = Array1::from(vec![1.0f32; 3]);
    let bf16s = Array1::from(vec![bf16::ONE; 3]);
    let f64s = Array1::from(vec![1.0f64; 3]);
    let mistakes: Vec<(&str, Precision, Result<(), Error>)> = vec![
        {
            let p = Precision::state(DType::F32).with_slot("nope", DType::BF16);
            opt.set_precision(p.clone());
            ("an unknown slot", p, opt.add_param(0, "x", &f32s).map(drop))
        },
        {
            let p = Precision::default().with_stochastic_rounding(&["nope"], 1);
            opt.set_precision(p.clone());
            (
                "an unknown stochastic stream",
                p,
                opt.add_param(0, "x", &bf16s).map(drop),
            )
        },
        {
            let p = Precision::state(DType::F32);
            opt.set_precision(p.clone());
            (
                "f64 params, f32 state",
                p,
                opt.add_param(0, "x", &f64s).map(drop),
            )
        },
        {
            let p = Precision::state(DType::BF16);
            opt.set_precision(p.clone());
            (
                "f64 params, bf16 state",
                p,
                opt.add_param(0, "x", &f64s).map(drop),
            )
        },
        {
            let p = Precision::default().with_stochastic_rounding(&["param"], 1);
            opt.set_precision(p.clone());
            (
                "stochastic f32 params",
                p,
                opt.add_param(0, "x", &f32s).map(drop),
            )
        },
        {
            let p = Precision::state(DType::F32).with_stochastic_rounding(&["exp_avg"], 1);
            opt.set_precision(p.clone());
            (
                "a stochastic f32 slot",
                p,
                opt.add_param(0, "x", &bf16s).map(drop),
            )
        },
    ];
    let expected: [fn(&Error) -> bool; 6] = [
        |e| matches!(e, Error::UnknownSlot { name } if name == "nope"),
        |e| matches!(e, Error::UnknownSlot { name } if name == "nope"),
        |e| matches!(e, Error::DTypeMismatch { .. }),
        |e| matches!(e, Error::DTypeMismatch { .. }),
        |e| matches!(e, Error::InvalidOption { .. }),
        |e| matches!(e, Error::InvalidOption { .. }),
    ];
    for ((what, precision, result), ok) in mistakes.into_iter().zip(expected) {
        match result {
            Err(e) => assert!(ok(&e), "{what} ({precision:?}): wrong error {e:?}"),
            Ok(()) => panic!("{what} ({precision:?}) was accepted"),
        }
    }
    assert_eq!(
        snapshot(&opt, &w),
        before,
        "a failed add_param changed the optimizer"
    );
    // Nothing was registered: the name is free, and the next step is a clean optimizer's.
    opt.set_precision(Precision::default());
    opt.add_param(0, "x", &bf16s).unwrap();
    let (mut clean, c) = build();
    clean.add_param(0, "x", &bf16s).unwrap();
    for (o, h) in [(&mut opt, w), (&mut clean, c)] {
        o.set_grad(&h, &[bf16::from_f32(-0.25); 5]).unwrap();
        o.step().unwrap();
    }
    assert_eq!(snapshot(&opt, &w), snapshot(&clean, &c));
}

#[test]
fn a_state_buffer_asked_for_in_another_dtype_fails_with_dtype_mismatch() {
    let (mut opt, w) = adam_w(Precision::state(DType::BF16));
    // The slot's dtype is known before the state exists: the same error.
    assert!(matches!(
        opt.state_buffer(&w, "exp_avg"),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(
        opt.state_elems(&w, "exp_avg").unwrap().is_none(),
        "no state yet"
    );
    opt.set_grad(&w, &[0.5; 40]).unwrap();
    opt.step().unwrap();
    let err = opt.state_buffer(&w, "exp_avg").unwrap_err();
    assert!(
        matches!(
            err,
            Error::DTypeMismatch {
                expected: DType::F32,
                actual: DType::BF16
            }
        ),
        "{err:?}"
    );
    let elems = opt.state_elems(&w, "exp_avg").unwrap().unwrap();
    assert_eq!(elems.dtype(), DType::BF16, "the slot is there, in bf16");
}

/// `Stepper::step_many` on `P` params with `S` state, expected to fail with
/// `DTypeMismatch` before touching any buffer.
fn refuses_mixed_compute<P: Element, S: Element>() {
    let stepper = Stepper::new(&Adam::default().graph().unwrap()).unwrap();
    let mut param = vec![P::from_f64(1.0); 5];
    let grad = vec![P::from_f64(0.5); 5];
    let mut state = stepper.init_state::<S>(5).unwrap();
    if let Some(SlotValue::Buffer(b)) = state.slots.first_mut() {
        b.fill(S::from_f64(0.25));
    }
    let (param0, state0) = (param.clone(), state.clone());
    let mut refs = [ParamRef {
        param: &mut param,
        grad: &grad,
        state: &mut state,
    }];
    let err = stepper.step_many(&mut refs).unwrap_err();
    let what = format!("{:?} params, {:?} state", P::DTYPE, S::DTYPE);
    assert!(
        matches!(err, Error::DTypeMismatch { .. }),
        "{what}: {err:?}"
    );
    assert_eq!((param, state), (param0, state0), "{what}: buffers changed");
}

#[test]
fn the_stepper_refuses_f64_with_f32_or_narrow_buffers_untouched() {
    refuses_mixed_compute::<f64, f32>();
    refuses_mixed_compute::<f64, bf16>();
    refuses_mixed_compute::<f32, f64>();
    refuses_mixed_compute::<bf16, f64>();
}

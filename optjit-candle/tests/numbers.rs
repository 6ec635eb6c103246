//! The adapter's numbers: candle's AdamW within tolerance, the core's Stepper bit for bit on
//! every dtype and awkward lengths, in place, one engine call for many vars, groups,
//! clipping and schedulers.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use common::{address, grad_store, values, var, Rng, LENGTHS};
use half::{bf16, f16};
use optjit::{Element, ParamRef, ParamState, Stepper};
use optjit_candle::{Config, OptjitOptimizer, ParamGroup, MAX_NEST};

/// A two-layer MLP over vars given in the order w1, b1, w2, b2.
struct Mlp(Vec<Var>);

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let v = &self.0;
        let h = x
            .matmul(v[0].as_tensor())?
            .broadcast_add(v[1].as_tensor())?
            .relu()?;
        h.matmul(v[2].as_tensor())?.broadcast_add(v[3].as_tensor())
    }
}

fn mlp(seed: u64) -> Mlp {
    let mut rng = Rng(seed);
    let shapes: [&[usize]; 4] = [&[16, 32], &[32], &[32, 4], &[4]];
    Mlp(shapes
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            let vals: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 0.3).collect();
            Var::from_vec(vals, *s, &Device::Cpu).unwrap()
        })
        .collect())
}

fn clone_vars(m: &Mlp) -> Mlp {
    Mlp(m
        .0
        .iter()
        .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
        .collect())
}

fn loss(m: &Mlp, x: &Tensor, y: &Tensor) -> Tensor {
    (m.forward(x).unwrap() - y)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
}

#[test]
fn adamw_matches_candles_adamw() {
    let mut rng = Rng(7);
    let x = Tensor::new(
        (0..64 * 16)
            .map(|_| rng.uniform() as f32)
            .collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
    .reshape((64, 16))
    .unwrap();
    let y = Tensor::new(
        (0..64 * 4)
            .map(|_| rng.uniform() as f32)
            .collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
    .reshape((64, 4))
    .unwrap();
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..Default::default()
    };
    let theirs = mlp(1);
    let ours = clone_vars(&theirs);
    let mut candle_opt = candle_nn::AdamW::new(theirs.0.clone(), params.clone()).unwrap();
    let mut opt = OptjitOptimizer::new(ours.0.clone(), Config::adamw(&params).unwrap()).unwrap();
    let (mut first, mut last) = (0.0, 0.0);
    let (mut worst_loss, mut worst_param) = (0.0f32, 0.0f64);
    for step in 0..100 {
        let (a, b) = (loss(&theirs, &x, &y), loss(&ours, &x, &y));
        let (a, b) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        worst_loss = worst_loss.max((a - b).abs() / a.abs());
        if step == 0 {
            first = a;
        }
        last = a;
        candle_opt.backward_step(&loss(&theirs, &x, &y)).unwrap();
        opt.backward_step(&loss(&ours, &x, &y)).unwrap();
        for (t, o) in theirs.0.iter().zip(&ours.0) {
            for (p, q) in values(t).iter().zip(values(o)) {
                worst_param = worst_param.max((p - q).abs() / p.abs().max(1e-2));
            }
        }
    }
    // candle orders AdamW's arithmetic otherwise (m̂ / (√v̂ + ε) from bias-corrected
    // moments, PyTorch's (m / bc1) / (√v / √bc2 + ε)): a few ulps a step, which 100 steps of
    // training grow to about 2e-6 of the loss and 3e-5 of a weight here.
    assert!(
        worst_loss < 1e-4,
        "losses differ by {worst_loss:e} (relative)"
    );
    assert!(
        worst_param < 1e-4,
        "weights differ by {worst_param:e} (relative)"
    );
    assert!(
        last < 0.5 * first,
        "training went somewhere: {first} -> {last}"
    );
}

/// Steps `n_steps` of `graph` over vars of `T` with the awkward lengths, through the adapter
/// and through a Stepper on copies: the same bits.
fn same_bits_as_the_stepper<T: Element>(dtype: DType, graph: &optjit::Graph) {
    let mut rng = Rng(T::DTYPE as u64 + 11);
    let inits: Vec<Vec<f64>> = LENGTHS.iter().map(|&n| rng.awkward(n)).collect();
    let vars: Vec<Var> = inits.iter().map(|v| var(v, dtype)).collect();
    let before: Vec<usize> = vars.iter().map(address).collect();
    let mut opt = OptjitOptimizer::new(vars.clone(), Config::new(graph.clone()).lr(1e-2)).unwrap();
    let mut stepper = Stepper::new(graph).unwrap();
    stepper.set_hyper("lr", 1e-2).unwrap();
    let mut params: Vec<Vec<T>> = inits
        .iter()
        .map(|v| v.iter().map(|&x| T::from_f64(x)).collect())
        .collect();
    let mut states: Vec<ParamState<T>> = params
        .iter()
        .map(|p| stepper.init_state(p.len()).unwrap())
        .collect();
    for _ in 0..3 {
        let grads: Vec<Vec<f64>> = LENGTHS.iter().map(|&n| rng.awkward(n)).collect();
        let refs: Vec<&Var> = vars.iter().collect();
        assert!(opt.try_step(&grad_store(&refs, &grads)).unwrap());
        let grads: Vec<Vec<T>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| T::from_f64(x)).collect())
            .collect();
        let mut refs: Vec<ParamRef<'_, T>> = params
            .iter_mut()
            .zip(&grads)
            .zip(&mut states)
            .map(|((param, grad), state)| ParamRef { param, grad, state })
            .collect();
        stepper.step_many(&mut refs).unwrap();
    }
    for ((v, p), addr) in vars.iter().zip(&params).zip(before) {
        let got = values(v);
        let want: Vec<f64> = p.iter().map(|x| x.to_f64()).collect();
        let bits = |xs: &[f64]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{dtype:?}, {} elements", p.len());
        assert_eq!(address(v), addr, "updated in place");
    }
}

#[test]
fn every_dtype_steps_as_the_core_does() {
    for graph in [
        optjit::optim::AdamW::default().graph().unwrap(),
        optjit::text::parse_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lion.opt"))
            .unwrap(),
    ] {
        same_bits_as_the_stepper::<f32>(DType::F32, &graph);
        same_bits_as_the_stepper::<f64>(DType::F64, &graph);
        same_bits_as_the_stepper::<bf16>(DType::BF16, &graph);
        same_bits_as_the_stepper::<f16>(DType::F16, &graph);
    }
}

#[test]
fn vars_are_updated_in_place() {
    let w = var(&[1.0, 2.0, 3.0], DType::F32);
    let (ptr, id) = (address(&w), w.id());
    let mut opt = OptjitOptimizer::new(
        vec![w.clone()],
        Config::new(optjit::optim::Sgd::default().graph().unwrap()).lr(0.5),
    )
    .unwrap();
    opt.step(&grad_store(&[&w], &[vec![2.0, 2.0, 2.0]]))
        .unwrap();
    assert_eq!(values(&w), [0.0, 1.0, 2.0]);
    assert_eq!(address(&w), ptr, "the same storage, written in place");
    assert_eq!(w.id(), id);
}

/// An optimizer whose update divides by the global norm of all gradients of the engine call:
/// stepped over more vars than nest on one thread, each var's update tells whether the
/// call saw every gradient.
#[test]
fn many_vars_are_one_engine_call() {
    let graph = optjit::text::parse(
        "optimizer normalized(lr = 1) {\n    param = param - lr * grad / sqrt(global_sumsq(grad))\n}",
    )
    .unwrap();
    let n = 3 * MAX_NEST + 5;
    let vars: Vec<Var> = (0..n).map(|_| var(&[0.0; 3], DType::F32)).collect();
    let mut opt = OptjitOptimizer::new(vars.clone(), Config::new(graph)).unwrap();
    let refs: Vec<&Var> = vars.iter().collect();
    opt.try_step(&grad_store(&refs, &vec![vec![1.0; 3]; n]))
        .unwrap();
    let want = -1.0 / ((3 * n) as f64).sqrt();
    for v in &vars {
        for x in values(v) {
            assert!(
                (x - want).abs() < 1e-6,
                "{x} vs {want}: the norm spans every var"
            );
        }
    }
}

#[test]
fn vars_without_a_gradient_keep_values_and_state() {
    let (a, b) = (var(&[1.0], DType::F32), var(&[1.0], DType::F32));
    let mut opt = OptjitOptimizer::new(
        vec![a.clone(), b.clone()],
        Config::adamw(&ParamsAdamW::default()).unwrap(),
    )
    .unwrap();
    opt.try_step(&grad_store(&[&a], &[vec![1.0]])).unwrap();
    assert_eq!(values(&b), [1.0]);
    assert_eq!((opt.steps("0"), opt.steps("1")), (Some(1), Some(0)));
    assert_ne!(values(&a), [1.0]);
}

#[test]
fn groups_by_name_pattern() {
    let varmap = candle_nn::VarMap::new();
    for name in ["fc.weight", "fc.bias", "norm.weight"] {
        let init = candle_nn::Init::Const(1.0);
        varmap.get(1, name, init, DType::F32, &Device::Cpu).unwrap();
    }
    let config = Config::adamw(&ParamsAdamW {
        lr: 0.1,
        weight_decay: 0.5,
        ..Default::default()
    })
    .unwrap()
    .group(ParamGroup::matching(&["*.bias", "norm.*"]).hyper("weight_decay", 0.0));
    let mut opt = OptjitOptimizer::from_varmap(&varmap, config).unwrap();
    assert_eq!(opt.group_of("fc.weight"), Some(0));
    assert_eq!(opt.group_of("fc.bias"), Some(1));
    assert_eq!(opt.group_of("norm.weight"), Some(1));
    let vars: Vec<Var> = ["fc.weight", "fc.bias", "norm.weight"]
        .iter()
        .map(|n| varmap.data().lock().unwrap()[*n].clone())
        .collect();
    let refs: Vec<&Var> = vars.iter().collect();
    // A zero gradient: only weight decay moves a var.
    opt.try_step(&grad_store(&refs, &[vec![0.0], vec![0.0], vec![0.0]]))
        .unwrap();
    assert!(
        (values(&vars[0])[0] - 0.95).abs() < 1e-7,
        "decayed by lr * weight_decay"
    );
    assert_eq!(values(&vars[1]), [1.0]);
    assert_eq!(values(&vars[2]), [1.0]);
    // candle's set_learning_rate sets every group's.
    opt.set_learning_rate(0.25);
    use optjit::schedule::Hypers;
    assert_eq!(
        (opt.hyper(0, "lr").unwrap(), opt.hyper(1, "lr").unwrap()),
        (0.25, 0.25)
    );
    assert_eq!(opt.learning_rate(), 0.25);
}

#[test]
fn clipping_reads_gradients_scaled_to_the_norm() {
    let sgd = || Config::new(optjit::optim::Sgd::default().graph().unwrap()).lr(1.0);
    let (a, b) = (var(&[0.0, 0.0], DType::F32), var(&[0.0], DType::F32));
    let mut opt =
        OptjitOptimizer::new(vec![a.clone(), b.clone()], sgd().clip_grad_norm(1.0, 2.0)).unwrap();
    let grads = [vec![3.0, 4.0], vec![12.0]];
    opt.try_step(&grad_store(&[&a, &b], &grads)).unwrap();
    assert_eq!(opt.last_grad_norm(), Some(13.0));
    let coef = (1.0f64 / (13.0 + 1e-6)) as f32;
    assert_eq!(values(&a), [f64::from(-3.0 * coef), f64::from(-4.0 * coef)]);
    assert_eq!(values(&b), [f64::from(-12.0 * coef)]);
    // Below the bound the gradient goes through unchanged.
    let c = var(&[0.0], DType::F32);
    let mut opt =
        OptjitOptimizer::new(vec![c.clone()], sgd().clip_grad_norm(100.0, f64::INFINITY)).unwrap();
    opt.try_step(&grad_store(&[&c], &[vec![-2.0]])).unwrap();
    assert_eq!(values(&c), [2.0]);
}

#[test]
fn schedulers_drive_the_learning_rate() {
    use optjit::schedule::{CosineAnnealingLR, StepLR};
    let w = var(&[0.0], DType::F32);
    let sgd = Config::new(optjit::optim::Sgd::default().graph().unwrap()).lr(0.1);
    let mut opt = OptjitOptimizer::new(vec![w.clone()], sgd).unwrap();
    let mut sched = StepLR {
        step_size: 2,
        gamma: 0.5,
    }
    .build(&mut opt)
    .unwrap();
    let mut lrs = vec![opt.learning_rate()];
    for _ in 0..4 {
        opt.step(&grad_store(&[&w], &[vec![1.0]])).unwrap();
        sched.step(&mut opt).unwrap();
        lrs.push(opt.learning_rate());
    }
    assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05, 0.025]);
    assert!(
        (values(&w)[0] + 0.3).abs() < 1e-7,
        "stepped by 0.1, 0.1, 0.05, 0.05"
    );
    let mut cosine = CosineAnnealingLR {
        t_max: 4,
        eta_min: 0.0,
    }
    .build(&mut opt)
    .unwrap();
    for _ in 0..4 {
        cosine.step(&mut opt).unwrap();
    }
    assert!(opt.learning_rate().abs() < 1e-12, "annealed to eta_min");
}

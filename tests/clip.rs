//! Gradient clipping: `Optimizer::clip_grad_norm`/`clip_grad_value` against PyTorch's
//! recorded `clip_grad_norm_`/`clip_grad_value_` (tests/data/clip, from PyTorch 2.15; README
//! there), and the fused clip (`optim::clip_grad_norm`) against clipping then stepping, bit
//! for bit; optax's variant (`optim::clip_by_global_norm`) on the cases where the two differ
//! (its trajectories are in tests/optax.rs).

use ndarray::Array1;
use optjit::optim::{self, Adam, Sgd};
use optjit::{Error, Float, Optimizer, Param};
use serde_json::Value;
use std::path::Path;

fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) => match s.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            "nan" => f64::NAN,
            other => panic!("unknown number {other}"),
        },
        v => v.as_f64().expect("a number"),
    }
}

fn tensors(v: &Value) -> Vec<Vec<f64>> {
    let list = v.as_array().expect("a list of tensors");
    list.iter()
        .map(|t| t.as_array().expect("a tensor").iter().map(number).collect())
        .collect()
}

/// Within `ulps` units in the last place of `T` (NaN matches NaN, infinities themselves).
fn close<T: Float>(ours: T, theirs: f64, ulps: f64) -> bool {
    let theirs = T::from_f64(theirs).to_f64();
    let ours = ours.to_f64();
    if theirs.is_nan() || ours.is_nan() {
        return theirs.is_nan() && ours.is_nan();
    }
    if theirs.is_infinite() || ours.is_infinite() {
        return theirs == ours;
    }
    let eps = match T::DTYPE {
        optjit::DType::F32 => f32::EPSILON as f64,
        optjit::DType::F64 => f64::EPSILON,
        d => panic!("no Float has dtype {d}"),
    };
    (ours - theirs).abs() <= ulps * eps * theirs.abs().max(f64::MIN_POSITIVE)
}

/// An SGD optimizer holding `grads` as the gradients of as many parameters.
fn with_grads<T: Float>(grads: &[Vec<f64>]) -> (Optimizer, Vec<Param<T>>) {
    let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
    let group = opt.add_param_group(&[]).unwrap();
    let handles = grads
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let zeros = Array1::from_elem(g.len(), T::ZERO);
            let h = opt.add_param(group, &format!("p{k}"), &zeros).unwrap();
            let g: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
            opt.set_grad(&h, &g).unwrap();
            h
        })
        .collect();
    (opt, handles)
}

fn grads_of<T: Float>(opt: &Optimizer, handles: &[Param<T>]) -> Vec<Vec<T>> {
    handles
        .iter()
        .map(|h| opt.grad(h).unwrap().unwrap().to_vec())
        .collect()
}

fn check_norm_case<T: Float>(case: &Value, name: &str) {
    let kwargs = &case["kwargs"];
    let (max_norm, norm_type) = (number(&kwargs["max_norm"]), number(&kwargs["norm_type"]));
    let error_if_nonfinite = kwargs["error_if_nonfinite"].as_bool().unwrap();
    let grads = tensors(&case["grads"]);
    let (mut opt, handles) = with_grads::<T>(&grads);
    let before = grads_of(&opt, &handles);
    let result = opt.clip_grad_norm(max_norm, norm_type, error_if_nonfinite);
    if case.get("raises").is_some() {
        assert!(
            matches!(result, Err(Error::NonFiniteNorm { .. })),
            "{name}: {result:?}"
        );
        let after = grads_of(&opt, &handles);
        let same = |a: &[T], b: &[T]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64())
        };
        assert!(
            before.iter().zip(&after).all(|(a, b)| same(a, b)),
            "{name}: grads changed"
        );
        return;
    }
    let total = result.unwrap();
    // The total norm: torch sums per tensor in its own order and in the grad dtype.
    assert!(
        close(T::from_f64(total), number(&case["total_norm"]), 8.0),
        "{name}: total {total} vs {}",
        case["total_norm"]
    );
    // Each clipped gradient: torch's coefficient is computed in the grad dtype, ours in f64
    // and rounded once, so it may differ by an ulp or two (README: `clip_coef`).
    let expected = tensors(&case["clipped_grads"]);
    for (k, (ours, theirs)) in grads_of(&opt, &handles).iter().zip(&expected).enumerate() {
        for (j, (&o, &t)) in ours.iter().zip(theirs).enumerate() {
            assert!(close(o, t, 4.0), "{name}: grad {k}[{j}]: {o:?} vs {t}");
            if !t.is_nan() {
                let sign = o.to_f64().is_sign_negative();
                assert_eq!(sign, t.is_sign_negative(), "{name}: sign of {k}[{j}]");
            }
        }
    }
}

fn cases(prefix: &str) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect()
}

#[test]
fn clip_grad_norm_matches_pytorch() {
    let cases = cases("clip_grad_norm.");
    assert_eq!(cases.len(), 26);
    for (name, case) in &cases {
        match case["dtype"].as_str().unwrap() {
            "float32" => check_norm_case::<f32>(case, name),
            _ => check_norm_case::<f64>(case, name),
        }
    }
}

fn check_value_case<T: Float>(case: &Value, name: &str) {
    let grads = tensors(&case["grads"]);
    let (mut opt, handles) = with_grads::<T>(&grads);
    opt.clip_grad_value(number(&case["kwargs"]["clip_value"]));
    let expected = tensors(&case["clipped_grads"]);
    for (ours, theirs) in grads_of(&opt, &handles).iter().zip(&expected) {
        let theirs: Vec<T> = theirs.iter().map(|&x| T::from_f64(x)).collect();
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits_u64() == b.to_bits_u64() || a.is_nan() && b.is_nan()),
            "{name}"
        );
    }
}

#[test]
fn clip_grad_value_matches_pytorch_exactly() {
    let cases = cases("clip_grad_value.");
    assert_eq!(cases.len(), 4);
    for (name, case) in &cases {
        match case["dtype"].as_str().unwrap() {
            "float32" => check_value_case::<f32>(case, name),
            _ => check_value_case::<f64>(case, name),
        }
    }
}

/// Parameters of both dtypes in two groups, stepped three times by `opt` after `before_step`.
fn run(mut opt: Optimizer, max_norm: f64, before_step: impl Fn(&mut Optimizer)) -> Vec<Vec<f64>> {
    for g in 0..2 {
        opt.add_param_group(&[("lr", 0.01 * (g + 1) as f64)])
            .unwrap();
    }
    if opt.program().hyper_index("max_norm").is_some() {
        for g in 0..2 {
            opt.set_hyper(g, "max_norm", max_norm).unwrap();
        }
    }
    let lens = [37, 5, 9000, 129];
    let mut h32 = Vec::new();
    let mut h64 = Vec::new();
    for (k, &len) in lens.iter().enumerate() {
        let values: Vec<f64> = (0..len)
            .map(|i| ((i * 7 + k) % 13) as f64 * 0.25 - 1.5)
            .collect();
        if k % 2 == 0 {
            let v: Array1<f32> = values.iter().map(|&x| x as f32).collect();
            h32.push(opt.add_param(k % 2, &format!("p{k}"), &v).unwrap());
        } else {
            h64.push(
                opt.add_param(k % 2, &format!("p{k}"), &Array1::from_vec(values))
                    .unwrap(),
            );
        }
    }
    for step in 0..3 {
        for (k, h) in h32.iter().enumerate() {
            let len = opt.param(h).unwrap().len();
            let g: Vec<f32> = (0..len)
                .map(|i| ((i * 5 + k + step) % 11) as f32 - 5.0)
                .collect();
            opt.set_grad(h, &g).unwrap();
        }
        for (k, h) in h64.iter().enumerate() {
            let len = opt.param(h).unwrap().len();
            let g: Vec<f64> = (0..len)
                .map(|i| ((i * 3 + k + step) % 7) as f64 - 3.5)
                .collect();
            opt.set_grad(h, &g).unwrap();
        }
        before_step(&mut opt);
        opt.step().unwrap();
    }
    let mut out: Vec<Vec<f64>> = h32
        .iter()
        .map(|h| {
            opt.param(h)
                .unwrap()
                .iter()
                .map(|&x| f64::from(x))
                .collect()
        })
        .collect();
    out.extend(h64.iter().map(|h| opt.param(h).unwrap().to_vec()));
    out
}

#[test]
fn a_fused_clip_equals_clipping_then_stepping_bit_for_bit() {
    for norm_type in [1.0, 2.0, f64::INFINITY] {
        for max_norm in [0.5, 1e6] {
            let adam = Adam::default().graph().unwrap();
            let fused = Optimizer::new(&optim::clip_grad_norm(&adam, norm_type).unwrap()).unwrap();
            let plain = Optimizer::new(&adam).unwrap();
            let a = run(fused, max_norm, |_| {});
            let b = run(plain, max_norm, |opt| {
                opt.clip_grad_norm(max_norm, norm_type, false).unwrap();
            });
            assert_eq!(a, b, "norm {norm_type}, max_norm {max_norm}");
        }
    }
    // Other norm types are the host's alone.
    let adam = Adam::default().graph().unwrap();
    assert!(matches!(
        optim::clip_grad_norm(&adam, 3.0),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn clip_grad_value_clamps_as_torch_clamp_for_any_bound() {
    let (mut opt, handles) = with_grads::<f32>(&[vec![-5.0, 0.5, 5.0, -0.0]]);
    // A negative bound: torch.clamp(min = 1, max = -1) gives -1 everywhere.
    opt.clip_grad_value(-1.0);
    assert_eq!(grads_of(&opt, &handles)[0], vec![-1.0f32; 4]);
    let (mut opt, handles) = with_grads::<f32>(&[vec![-5.0, 0.5]]);
    opt.clip_grad_value(f64::NAN);
    assert!(grads_of(&opt, &handles)[0].iter().all(|g| g.is_nan()));
}

#[test]
fn the_norm_of_no_gradient_is_zero() {
    let (mut opt, handles) = with_grads::<f32>(&[vec![1.0, 2.0]]);
    opt.zero_grad(); // set to none: no parameter has a gradient
    for norm_type in [1.0, 2.0, f64::INFINITY, f64::NEG_INFINITY, 0.0, 3.0] {
        let total = opt.grad_norm(norm_type).unwrap();
        assert_eq!(
            total.to_bits(),
            0.0f64.to_bits(),
            "norm {norm_type}: {total}"
        );
    }
    assert_eq!(
        opt.clip_grad_norm(1.0, f64::NEG_INFINITY, true).unwrap(),
        0.0
    );
    assert!(opt.grad(&handles[0]).unwrap().is_none());
    // Zero-length and all-zero gradients: +0, not the sums' -0.
    let (opt, _) = with_grads::<f64>(&[vec![], vec![-0.0, 0.0]]);
    assert_eq!(opt.grad_norm(2.0).unwrap().to_bits(), 0.0f64.to_bits());
}

/// The gradients SGD (lr 1, from 0) sees after `clip` at `max_norm`: `-θ` after one step.
fn clipped_grads<T: Float>(
    clip: impl Fn(&optjit::Graph, f64) -> optjit::Graph,
    max_norm: f64,
    grads: &[Vec<f64>],
) -> Vec<Vec<T>> {
    let sgd = Sgd {
        lr: 1.0,
        ..Sgd::default()
    };
    let mut opt = Optimizer::new(&clip(&sgd.graph().unwrap(), max_norm)).unwrap();
    let group = opt.add_param_group(&[("max_norm", max_norm)]).unwrap();
    let handles: Vec<Param<T>> = grads
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let zeros = Array1::from_elem(g.len(), T::ZERO);
            let h = opt.add_param(group, &format!("p{k}"), &zeros).unwrap();
            let g: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
            opt.set_grad(&h, &g).unwrap();
            h
        })
        .collect();
    opt.step().unwrap();
    handles
        .iter()
        .map(|h| {
            let theta = opt.param(h).unwrap();
            theta.iter().map(|&x| T::from_f64(-x.to_f64())).collect()
        })
        .collect()
}

fn optax_clip(graph: &optjit::Graph, max_norm: f64) -> optjit::Graph {
    optim::clip_by_global_norm(graph, max_norm).unwrap()
}

fn torch_clip(graph: &optjit::Graph, _: f64) -> optjit::Graph {
    optim::clip_grad_norm(graph, 2.0).unwrap()
}

/// A global norm of exactly `max_norm` is not below it: optax scales by `max_norm / n = 1`,
/// which keeps every bit, where PyTorch's `max_norm / (n + 1e-6)` shrinks the gradient.
#[test]
fn optax_clip_keeps_a_gradient_at_exactly_max_norm() {
    let grads = [vec![3.0], vec![-4.0, 0.0]];
    let optax = clipped_grads::<f64>(optax_clip, 5.0, &grads);
    assert_eq!(optax, [vec![3.0], vec![-4.0, 0.0]]);
    let torch = clipped_grads::<f64>(torch_clip, 5.0, &grads);
    assert!(torch[0][0] < 3.0 && torch[1][0] > -4.0, "{torch:?}");
    let optax = clipped_grads::<f32>(optax_clip, 5.0, &grads);
    assert_eq!(optax, [vec![3.0f32], vec![-4.0, 0.0]]);
}

/// Below `max_norm` the gradient is untouched; above it, its global norm (over every
/// parameter) becomes `max_norm`; a NaN norm makes every gradient NaN.
#[test]
fn optax_clip_scales_only_norms_not_below_max_norm() {
    let grads = [vec![3.0, 0.0], vec![-4.0], vec![12.0]];
    // Norm 13: below 13.5, so untouched.
    let kept = clipped_grads::<f64>(optax_clip, 13.5, &grads);
    assert_eq!(kept, [vec![3.0, 0.0], vec![-4.0], vec![12.0]]);
    // Scaled by 1/13 to a norm of 1, within an ulp of optax's `(g / 13) · 1` per element.
    let scaled = clipped_grads::<f64>(optax_clip, 1.0, &grads);
    for (ours, g) in scaled.iter().flatten().zip(grads.iter().flatten()) {
        assert!((ours - g / 13.0).abs() <= f64::EPSILON * (g / 13.0).abs());
    }
    let norm: f64 = scaled.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() <= 2.0 * f64::EPSILON, "{norm}");
    let nan = clipped_grads::<f32>(optax_clip, 1.0, &[vec![f64::NAN], vec![1.0, 0.0]]);
    assert!(nan.iter().flatten().all(|g| g.is_nan()), "{nan:?}");
}

/// As `clip_grad_norm`: clipping after AMP would take the norm of the scaled gradients.
#[test]
fn optax_clip_refuses_a_graph_with_a_skip_condition() {
    let amp = optim::amp(&Adam::default().graph().unwrap()).unwrap();
    assert!(matches!(
        optim::clip_by_global_norm(&amp, 1.0),
        Err(Error::Unsupported { .. })
    ));
    let clipped = optim::clip_by_global_norm(&Adam::default().graph().unwrap(), 1.0).unwrap();
    optim::amp(&clipped).unwrap();
}

//! Optax-style composition (`optjit::transform`): chains equal to the built-ins compile to
//! the built-ins' programs; the reducing transforms (global-norm clipping, trust ratio) give
//! the same bits as the built-in and fused forms; and the text form writes LAMB and clipped
//! Adam (examples/*.opt) with the built-ins' trajectories.

use ndarray::Array1;
use optjit::optim::common::builder;
use optjit::optim::{self, Adam, AdamW, Lamb, Sgd};
use optjit::passes::compile;
use optjit::transform::{
    add_decayed_weights, chain, clip, clip_by_global_norm, clip_grad_norm, decay_weights,
    map_updates, scale, scale_by_adam, scale_by_lr, scale_by_sign, scale_by_trust_ratio, trace,
    Chained, Updates,
};
use optjit::{text, Builder, Error, Graph, Optimizer};

/// Adam's signature as the built-in declares it: lr, b1, b2, eps, weight_decay.
fn adam_chain(name: &str, decoupled: bool, amsgrad: bool) -> Graph {
    let b = builder(name);
    let lr = b.hyper("lr", 1e-3);
    let b1 = b.hyper("b1", 0.9);
    let b2 = b.hyper("b2", 0.999);
    let eps = b.hyper("eps", 1e-8);
    let wd = b.hyper("weight_decay", if decoupled { 1e-2 } else { 0.0 });
    let mut adam = scale_by_adam(b1, b2, eps);
    if amsgrad {
        adam = adam.amsgrad();
    }
    match decoupled {
        true => chain(&b, &[&decay_weights(lr, wd), &adam, &scale_by_lr(lr)]),
        false => chain(&b, &[&add_decayed_weights(wd), &adam, &scale_by_lr(lr)]),
    }
    .unwrap();
    b.finish().unwrap()
}

fn sgd_chain(name: &str, nesterov: bool) -> Graph {
    let b = builder(name);
    let lr = b.hyper("lr", 0.01);
    let wd = b.hyper("weight_decay", 0.0);
    let momentum = b.hyper("momentum", 0.9);
    let dampening = b.hyper("dampening", 0.0);
    let mut momentum = trace(momentum).dampening(dampening);
    if nesterov {
        momentum = momentum.nesterov();
    }
    chain(&b, &[&add_decayed_weights(wd), &momentum, &scale_by_lr(lr)]).unwrap();
    b.finish().unwrap()
}

#[test]
fn chains_equal_to_built_ins_compile_to_the_built_ins_programs() {
    let sgd = |nesterov| Sgd {
        lr: 0.01,
        momentum: 0.9,
        nesterov,
        ..Sgd::default()
    };
    let adam = |amsgrad| Adam {
        amsgrad,
        ..Adam::default()
    };
    let adamw = |amsgrad| AdamW {
        amsgrad,
        ..AdamW::default()
    };
    let cases = [
        (adam_chain("adam", false, false), adam(false).graph()),
        (adam_chain("adam_amsgrad", false, true), adam(true).graph()),
        (adam_chain("adamw", true, false), adamw(false).graph()),
        (adam_chain("adamw_amsgrad", true, true), adamw(true).graph()),
        (sgd_chain("sgd", false), sgd(false).graph()),
        (sgd_chain("sgd_nesterov", true), sgd(true).graph()),
    ];
    for (chained, built_in) in cases {
        let built_in = built_in.unwrap();
        let name = built_in.name().to_string();
        assert_eq!(chained, built_in, "{name}: the same graph");
        assert_eq!(
            compile(&chained).unwrap(),
            compile(&built_in).unwrap(),
            "{name}"
        );
    }
}

/// Three tensors (37, 5 and 129 elements) in one group, stepped `steps` times with
/// deterministic gradients; returns the parameters' bits.
fn trajectory(graph: &Graph, hypers: &[(&str, f64)], steps: usize) -> Vec<Vec<u32>> {
    let mut opt = Optimizer::new(graph).unwrap();
    let g = opt.add_param_group(hypers).unwrap();
    let handles: Vec<_> = [37usize, 5, 129]
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let v: Array1<f32> = (0..len)
                .map(|i| ((i * 7 + k) % 13) as f32 * 0.25 - 1.5)
                .collect();
            opt.add_param(g, &format!("p{k}"), &v).unwrap()
        })
        .collect();
    for step in 0..steps {
        for (k, h) in handles.iter().enumerate() {
            let len = opt.param(h).unwrap().len();
            let grad: Vec<f32> = (0..len)
                .map(|i| (((i * 5 + k * 3 + step) % 11) as f32 - 5.0) * 0.5)
                .collect();
            opt.set_grad(h, &grad).unwrap();
        }
        opt.step().unwrap();
    }
    handles
        .iter()
        .map(|h| opt.param(h).unwrap().iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn global_norm_clips_in_a_chain_equal_the_fused_clips() {
    let clipped_sgd = |optax: bool| {
        let b = builder("sgd");
        let lr = b.hyper("lr", 0.1);
        let max_norm = b.hyper("max_norm", 1.0);
        match optax {
            true => chain(&b, &[&clip_by_global_norm(max_norm), &scale_by_lr(lr)]),
            false => chain(&b, &[&clip_grad_norm(max_norm), &scale_by_lr(lr)]),
        }
        .unwrap();
        b.finish().unwrap()
    };
    let chained = clipped_sgd(false);
    let plain = {
        let b = builder("sgd");
        let lr = b.hyper("lr", 0.1);
        b.set_param(b.param() - lr * b.grad());
        b.finish().unwrap()
    };
    let fused = optim::clip_grad_norm(&plain, 2.0).unwrap();
    let fused_optax = optim::clip_by_global_norm(&plain, 1.0).unwrap();
    for max_norm in [0.5, 1e6] {
        let hypers = [("max_norm", max_norm)];
        assert_eq!(
            trajectory(&chained, &hypers, 4),
            trajectory(&fused, &hypers, 4),
            "PyTorch's, max_norm {max_norm}"
        );
        let optax = trajectory(&clipped_sgd(true), &hypers, 4);
        assert_eq!(
            optax,
            trajectory(&fused_optax, &hypers, 4),
            "optax's, max_norm {max_norm}"
        );
        // The two clips differ where they clip (the 1e-6), and agree where they do not.
        assert_eq!(optax == trajectory(&chained, &hypers, 4), max_norm > 1e3);
    }
}

#[test]
fn a_lamb_chain_keeps_its_trust_ratios_per_tensor() {
    // optax's LAMB with optjit's transforms (Adam's direction as torch computes it): on a
    // flat buffer of three tensors, each tensor moves as it would alone.
    let lamb = || {
        let b = builder("lamb");
        let lr = b.hyper("lr", 0.01);
        let (b1, b2, eps) = (
            b.hyper("b1", 0.9),
            b.hyper("b2", 0.999),
            b.hyper("eps", 1e-6),
        );
        let wd = b.hyper("weight_decay", 0.01);
        {
            let adam = scale_by_adam(b1, b2, eps);
            let decay = map_updates(move |_: &Builder, param, u| u + wd * param);
            chain(
                &b,
                &[&adam, &decay, &scale_by_trust_ratio(), &scale_by_lr(lr)],
            )
            .unwrap();
        }
        b.finish().unwrap()
    };
    let graph = lamb();
    let together = trajectory(&graph, &[], 3);
    // Each tensor alone: the same gradients, the same bits.
    for (k, expected) in together.iter().enumerate() {
        let mut opt = Optimizer::new(&graph).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let len = expected.len();
        let v: Array1<f32> = (0..len)
            .map(|i| ((i * 7 + k) % 13) as f32 * 0.25 - 1.5)
            .collect();
        let h = opt.add_param(g, "alone", &v).unwrap();
        for step in 0..3 {
            let grad: Vec<f32> = (0..len)
                .map(|i| (((i * 5 + k * 3 + step) % 11) as f32 - 5.0) * 0.5)
                .collect();
            opt.set_grad(&h, &grad).unwrap();
            opt.step().unwrap();
        }
        let alone: Vec<u32> = opt.param(&h).unwrap().iter().map(|x| x.to_bits()).collect();
        assert_eq!(&alone, expected, "tensor {k}");
    }
}

#[test]
fn elementwise_transforms_do_what_they_say() {
    // sign, clamp, scale: θ − lr · 0.5 · clamp(sign(g)·3, −1, 1) moves every element by
    // lr/2 against its gradient's sign, and not at all where the gradient is 0.
    let b = builder("t");
    let lr = b.hyper("lr", 0.25);
    let limit = b.hyper("limit", 1.0);
    let three = b.constant(3.0);
    let half = b.constant(0.5);
    chain(
        &b,
        &[
            &scale_by_sign(),
            &map_updates(move |_: &Builder, _, u| u * three),
            &clip(limit),
            &scale(half),
            &scale_by_lr(lr),
        ],
    )
    .unwrap();
    let mut opt = Optimizer::new(&b.finish().unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt
        .add_param(g, "w", &ndarray::array![1.0f64, 1.0, 1.0])
        .unwrap();
    opt.set_grad(&w, &[-7.0, 0.0, 0.001]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.param(&w).unwrap(), &[1.125, 1.0, 0.875]);
}

#[test]
fn two_stateful_transforms_need_their_own_names() {
    let two_adams = |rename: bool| {
        let b = Builder::new("twice");
        let (b1, b2, eps) = (
            b.hyper("b1", 0.9),
            b.hyper("b2", 0.999),
            b.hyper("eps", 1e-8),
        );
        let second = match rename {
            true => scale_by_adam(b1, b2, eps).named(["mu", "nu", "nu_max"]),
            false => scale_by_adam(b1, b2, eps),
        };
        let first = scale_by_adam(b1, b2, eps);
        chain(&b, &[&first, &second])?;
        b.finish()
    };
    assert!(matches!(two_adams(false), Err(Error::DuplicateName { .. })));
    let graph = two_adams(true).unwrap();
    let names: Vec<&str> = graph.slots().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["exp_avg", "exp_avg_sq", "mu", "nu"]);
}

/// A custom transform as a plain function: halves the updates.
fn halve<'b>(b: &'b Builder, c: Chained<'b>) -> optjit::Result<Chained<'b>> {
    let half = c.updates.value(b) * 0.5;
    Ok(Chained {
        param: c.param,
        updates: Updates::new(half),
    })
}

#[test]
fn a_function_is_a_transform() {
    let b = Builder::new("halved");
    let lr = b.hyper("lr", 1.0);
    chain(&b, &[&halve, &scale_by_lr(lr)]).unwrap();
    let mut opt = Optimizer::new(&b.finish().unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![1.0f32]).unwrap();
    opt.set_grad(&w, &[0.5]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.param(&w).unwrap(), &[0.75]);
}

#[test]
fn the_text_form_writes_lamb_and_clipped_adam_as_the_built_ins_compute_them() {
    let example = |name: &str| {
        let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        text::parse_file(path).unwrap()
    };
    let hypers = [("weight_decay", 0.01), ("lr", 0.01)];
    assert_eq!(
        trajectory(&example("lamb.opt"), &hypers, 4),
        trajectory(&Lamb::default().graph().unwrap(), &hypers, 4),
        "LAMB"
    );
    let clipped = optim::clip_grad_norm(&Adam::default().graph().unwrap(), 2.0).unwrap();
    for max_norm in [0.5, 1e6] {
        let hypers = [("max_norm", max_norm), ("lr", 0.01)];
        assert_eq!(
            trajectory(&example("clipped_adam.opt"), &hypers, 4),
            trajectory(&clipped, &hypers, 4),
            "clipped Adam, max_norm {max_norm}"
        );
    }
}

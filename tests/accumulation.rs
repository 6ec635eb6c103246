//! Gradient accumulation (`optim::accumulate` + `runtime::GradAccumulation`): a window of k
//! micro-batches steps once, on the mean (or sum) of their gradients, the division fused
//! into the step; parameters reached by only some micro-batches, windows cut short, and a
//! checkpoint inside a window.

use ndarray::Array1;
use optjit::optim::{accumulate, Adam, Sgd};
use optjit::runtime::GradAccumulation;
use optjit::{Error, Optimizer, Param};

/// Adam over an f32 parameter `a` (group 0), an f64 parameter `b` (group 1) and an f32
/// parameter `c` that no micro-batch reaches; with the accumulation rewrite or without.
fn adam(accumulated: bool) -> (Optimizer, Param<f32>, Param<f64>, Param<f32>) {
    let graph = Adam {
        lr: 0.1,
        ..Adam::default()
    }
    .graph()
    .unwrap();
    let graph = match accumulated {
        true => accumulate(&graph).unwrap(),
        false => graph,
    };
    let mut opt = Optimizer::new(&graph).unwrap();
    let (g0, g1) = (
        opt.add_param_group(&[]).unwrap(),
        opt.add_param_group(&[("lr", 0.05)]).unwrap(),
    );
    let a = opt
        .add_param(g0, "a", &Array1::from_elem(5, 1.0f32))
        .unwrap();
    let b = opt
        .add_param(g1, "b", &Array1::from_elem(3, -1.0f64))
        .unwrap();
    let c = opt
        .add_param(g0, "c", &Array1::from_elem(2, 0.5f32))
        .unwrap();
    (opt, a, b, c)
}

/// Micro-batch `m`'s gradients: `a` always, `b` only in even micro-batches.
fn grads(m: usize) -> (Vec<f32>, Option<Vec<f64>>) {
    let a = (0..5)
        .map(|j| (j as f32 - 2.0) * 0.3 + m as f32 * 0.7)
        .collect();
    let b = m
        .is_multiple_of(2)
        .then(|| (0..3).map(|j| j as f64 * 0.01 - m as f64).collect());
    (a, b)
}

/// The window's gradients summed as autograd sums them, in micro-batch order.
fn summed(ms: std::ops::Range<usize>) -> (Vec<f32>, Option<Vec<f64>>) {
    let (mut a, mut b) = (vec![0.0f32; 5], None::<Vec<f64>>);
    for m in ms {
        let (ga, gb) = grads(m);
        a.iter_mut().zip(&ga).for_each(|(x, g)| *x += g);
        if let Some(gb) = gb {
            let acc = b.get_or_insert_with(|| vec![0.0; 3]);
            acc.iter_mut().zip(&gb).for_each(|(x, g)| *x += g);
        }
    }
    (a, b)
}

/// Adds micro-batch `m`'s gradients to `a` and `b`, and records it; whether it stepped.
fn feed(
    opt: &mut Optimizer,
    acc: &mut GradAccumulation,
    (a, b): (Param<f32>, Param<f64>),
    m: usize,
) -> Option<bool> {
    let (ga, gb) = grads(m);
    opt.grad_mut(&a)
        .unwrap()
        .iter_mut()
        .zip(&ga)
        .for_each(|(x, g)| *x += g);
    if let Some(gb) = gb {
        opt.grad_mut(&b)
            .unwrap()
            .iter_mut()
            .zip(&gb)
            .for_each(|(x, g)| *x += g);
    }
    acc.micro_step(opt).unwrap()
}

/// Runs micro-batches `0..n` through an accumulation of `every` (flushing at the end);
/// returns the parameters' bits.
fn accumulated(n: usize, every: u64, mean: bool) -> (Vec<u32>, Vec<u64>, Vec<u32>) {
    let (mut opt, a, b, c) = adam(true);
    let mut acc = GradAccumulation::new(every, mean).unwrap();
    for m in 0..n {
        let stepped = feed(&mut opt, &mut acc, (a, b), m);
        assert_eq!(
            stepped.is_some(),
            (m as u64 + 1).is_multiple_of(every),
            "micro-batch {m}"
        );
    }
    acc.flush(&mut opt).unwrap();
    bits(&opt, a, b, c)
}

fn bits(
    opt: &Optimizer,
    a: Param<f32>,
    b: Param<f64>,
    c: Param<f32>,
) -> (Vec<u32>, Vec<u64>, Vec<u32>) {
    (
        opt.param(&a).unwrap().iter().map(|x| x.to_bits()).collect(),
        opt.param(&b).unwrap().iter().map(|x| x.to_bits()).collect(),
        opt.param(&c).unwrap().iter().map(|x| x.to_bits()).collect(),
    )
}

/// The same windows stepped by a plain Adam on gradients averaged (or summed) on the host:
/// the sum times `1/count` rounded to the element type, as the fused step computes it.
fn by_hand(windows: &[std::ops::Range<usize>], mean: bool) -> (Vec<u32>, Vec<u64>, Vec<u32>) {
    let (mut opt, a, b, c) = adam(false);
    for w in windows {
        let (sa, sb) = summed(w.clone());
        let k = w.len() as f64;
        let scale = if mean { 1.0 / k } else { 1.0 };
        let ga: Vec<f32> = sa.iter().map(|g| g * scale as f32).collect();
        opt.zero_grad();
        opt.set_grad(&a, &ga).unwrap();
        if let Some(sb) = sb {
            let gb: Vec<f64> = sb.iter().map(|g| g * scale).collect();
            opt.set_grad(&b, &gb).unwrap();
        }
        opt.step().unwrap();
    }
    bits(&opt, a, b, c)
}

#[test]
fn a_window_steps_once_on_the_mean_or_sum_of_its_micro_batches() {
    // Three full windows of 3 (parameter `b` reached by some micro-batches of each).
    let windows = [0..3, 3..6, 6..9];
    assert_eq!(accumulated(9, 3, true), by_hand(&windows, true));
    assert_eq!(accumulated(9, 3, false), by_hand(&windows, false));
    // Parameter `c`, never reached, never moved.
    assert_eq!(accumulated(9, 3, true).2, [0.5f32.to_bits(); 2]);
    // A window of 4 cut short at 2 by flush: its mean divides by 2.
    assert_eq!(accumulated(6, 4, true), by_hand(&[0..4, 4..6], true));
    // One micro-batch per step is the plain optimizer.
    assert_eq!(
        accumulated(4, 1, true),
        by_hand(&[0..1, 1..2, 2..3, 3..4], true)
    );
}

#[test]
fn a_checkpoint_inside_a_window_resumes_exactly() {
    let straight = accumulated(8, 4, true);
    // Stop after micro-batch 5 (one step done, two of the next window in the gradients):
    // save the optimizer, its gradients and the accumulation; resume in fresh objects.
    let (mut opt, a, b, c) = adam(true);
    let mut acc = GradAccumulation::new(4, true).unwrap();
    for m in 0..6 {
        feed(&mut opt, &mut acc, (a, b), m);
    }
    let mut dict = opt.state_dict();
    dict.put("accumulation", &acc.state_dict()).unwrap();
    let dict = optjit::runtime::StateDict::from_bytes(&dict.to_bytes().unwrap()).unwrap();
    let params = (
        opt.param(&a).unwrap().to_vec(),
        opt.param(&b).unwrap().to_vec(),
    );
    let window = (
        opt.grad(&a).unwrap().map(<[f32]>::to_vec),
        opt.grad(&b).unwrap().map(<[f64]>::to_vec),
    );
    let (mut opt2, a2, b2, c2) = adam(true);
    opt2.load_state_dict(&dict, true).unwrap();
    opt2.param_mut(&a2).unwrap().copy_from_slice(&params.0);
    opt2.param_mut(&b2).unwrap().copy_from_slice(&params.1);
    opt2.set_grad(&a2, &window.0.unwrap()).unwrap();
    opt2.set_grad(&b2, &window.1.unwrap()).unwrap();
    let mut acc2 = GradAccumulation::new(1, false).unwrap();
    acc2.load_state_dict(&dict.get("accumulation").unwrap().unwrap())
        .unwrap();
    assert_eq!(acc2.count(), 2);
    for m in 6..8 {
        feed(&mut opt2, &mut acc2, (a2, b2), m);
    }
    acc2.flush(&mut opt2).unwrap();
    assert_eq!(bits(&opt2, a2, b2, c2), straight);
    assert_eq!(bits(&opt, a, b, c).2, straight.2);
}

#[test]
fn misuse_is_a_typed_error_and_changes_nothing() {
    assert!(matches!(
        GradAccumulation::new(0, true),
        Err(Error::InvalidOption { .. })
    ));
    // A program without the rewrite: no grad_scale to set.
    let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt
        .add_param(g, "w", &Array1::from_elem(2, 1.0f32))
        .unwrap();
    opt.set_grad(&w, &[1.0, 1.0]).unwrap();
    let mut acc = GradAccumulation::new(1, true).unwrap();
    assert!(matches!(
        acc.micro_step(&mut opt),
        Err(Error::UnknownHyper { .. })
    ));
    assert_eq!(
        (acc.count(), opt.param(&w).unwrap()),
        (0, &[1.0f32, 1.0][..])
    );
    // A state past its window.
    let bad = optjit::runtime::AccumulationState {
        every: 2,
        mean: true,
        count: 2,
    };
    assert!(matches!(
        acc.load_state_dict(&bad),
        Err(Error::InvalidStateDict { .. })
    ));
    assert_eq!(acc, GradAccumulation::new(1, true).unwrap());
}

/// Clipped Adam with accumulation and a warmup + cosine scheduler stepped after every
/// optimizer step: `n` micro-batches, checkpointed (optimizer, scheduler and accumulation in
/// one file) after `resume_at` of them, a window boundary, and resumed in fresh objects.
fn full_loop(n: usize, resume_at: Option<usize>) -> Vec<u32> {
    use optjit::schedule::{CosineAnnealingLR, LinearLR, Scheduler};
    let make = || {
        let graph = Adam::default().graph().unwrap();
        let graph = optjit::optim::clip_grad_norm(&graph, 2.0).unwrap();
        let mut opt = Optimizer::new(&accumulate(&graph).unwrap()).unwrap();
        let g = opt
            .add_param_group(&[("lr", 0.1), ("max_norm", 0.5)])
            .unwrap();
        let w = opt
            .add_param(g, "w", &Array1::from_elem(6, 1.0f32))
            .unwrap();
        let warmup = LinearLR {
            start_factor: 0.2,
            end_factor: 1.0,
            total_iters: 3,
        };
        let cosine = CosineAnnealingLR {
            t_max: 10,
            eta_min: 0.0,
        };
        let parts = vec![
            warmup.build(&mut opt).unwrap(),
            cosine.build(&mut opt).unwrap(),
        ];
        let sched = Scheduler::sequential(&mut opt, parts, &[3]).unwrap();
        (opt, w, sched, GradAccumulation::new(3, true).unwrap())
    };
    let (mut opt, mut w, mut sched, mut acc) = make();
    for m in 0..n {
        if Some(m) == resume_at {
            let mut dict = opt.state_dict();
            dict.put("scheduler", &sched.state_dict()).unwrap();
            dict.put("accumulation", &acc.state_dict()).unwrap();
            let bytes = dict.to_bytes().unwrap();
            let weights = opt.param(&w).unwrap().to_vec();
            (opt, w, sched, acc) = make();
            let dict = optjit::runtime::StateDict::from_bytes(&bytes).unwrap();
            opt.load_state_dict(&dict, true).unwrap();
            opt.param_mut(&w).unwrap().copy_from_slice(&weights);
            sched
                .load_state_dict(&dict.get("scheduler").unwrap().unwrap(), &mut opt)
                .unwrap();
            acc.load_state_dict(&dict.get("accumulation").unwrap().unwrap())
                .unwrap();
        }
        let grad: Vec<f32> = (0..6)
            .map(|j| (j as f32 - 2.5) * (m as f32 + 1.0))
            .collect();
        opt.grad_mut(&w)
            .unwrap()
            .iter_mut()
            .zip(&grad)
            .for_each(|(x, g)| *x += g);
        if acc.micro_step(&mut opt).unwrap().is_some() {
            sched.step(&mut opt).unwrap();
        }
    }
    opt.param(&w).unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_resumed_run_with_schedulers_clipping_and_accumulation_is_bit_identical() {
    let straight = full_loop(30, None);
    for at in [3, 9, 15, 27] {
        assert_eq!(
            full_loop(30, Some(at)),
            straight,
            "resumed at micro-batch {at}"
        );
    }
    assert_ne!(straight, full_loop(0, None), "the run moved the weights");
}

//! The optimizer runtime's PyTorch semantics: groups and per-group hyperparameters, lazy
//! state, skipped parameters, zero_grad, closures, hooks, threads, and typed errors that
//! change nothing.

use ndarray::{array, Array1};
use optjit::optim::{Adam, Sgd};
use optjit::runtime::Param;
use optjit::{Error, Executor, Jit, Optimizer, Stepper};
use std::sync::{Arc, Mutex};

fn sgd(lr: f64) -> Optimizer {
    Optimizer::new(
        &Sgd {
            lr,
            momentum: 0.5,
            ..Sgd::default()
        }
        .graph()
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn groups_have_their_own_hyperparameters_and_changing_them_never_recompiles() {
    let jit = Jit::new().unwrap();
    let mut opt = sgd(0.1).with_jit(jit.clone());
    let g0 = opt.add_param_group(&[]).unwrap();
    let g1 = opt.add_param_group(&[("lr", 0.01)]).unwrap();
    let a = opt.add_param(g0, "a", &array![1.0f32, 1.0]).unwrap();
    let b = opt.add_param(g1, "b", &array![1.0f32, 1.0]).unwrap();
    assert_eq!(opt.hyper(g0, "lr").unwrap(), 0.1);
    assert_eq!(opt.hyper(g1, "lr").unwrap(), 0.01);
    assert_eq!(opt.hyper(g1, "momentum").unwrap(), 0.5);
    opt.set_grad(&a, &[1.0, 2.0]).unwrap();
    opt.set_grad(&b, &[1.0, 2.0]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.param(&a).unwrap(), &[0.9, 0.8]);
    assert_eq!(opt.param(&b).unwrap(), &[0.99, 0.98]);
    opt.set_hyper(g1, "lr", 1.0).unwrap();
    opt.set_hyper_all("momentum", 0.0).unwrap();
    opt.step().unwrap();
    // momentum 0: buffer = g; b moves by lr · g.
    assert_eq!(opt.param(&b).unwrap(), &[0.99 - 1.0, 0.98 - 2.0]);
    assert_eq!(jit.stats().compiles, 1);
}

#[test]
fn parameters_without_grad_are_skipped_state_and_step_untouched() {
    let mut opt = Optimizer::new(&Adam::default().graph().unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let a = opt.add_param(g, "a", &array![1.0f64, 2.0, 3.0]).unwrap();
    let b = opt.add_param(g, "b", &array![[1.0f64], [2.0]]).unwrap();
    opt.set_grad(&a, &[0.1, 0.2, 0.3]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.param_step(&a).unwrap(), 1);
    assert_eq!(opt.param_step(&b).unwrap(), 0);
    assert!(
        opt.state_buffer(&b, "exp_avg").unwrap().is_none(),
        "state is created lazily"
    );
    assert_eq!(opt.param(&b).unwrap(), &[1.0, 2.0]);
    // Now b gets a grad and a does not (set to none).
    opt.zero_grad();
    opt.grad_mut(&b).unwrap()[1] = 1.0;
    let a_before = opt.param(&a).unwrap().to_vec();
    let m_before = opt.state_buffer(&a, "exp_avg").unwrap().unwrap().to_vec();
    opt.step().unwrap();
    assert_eq!(opt.param(&a).unwrap(), a_before.as_slice());
    assert_eq!(
        opt.state_buffer(&a, "exp_avg").unwrap().unwrap(),
        m_before.as_slice()
    );
    assert_eq!(
        (opt.param_step(&a).unwrap(), opt.param_step(&b).unwrap()),
        (1, 1)
    );
    // The grad created by grad_mut started at zero: element 0 of b did not move.
    assert_eq!(opt.param(&b).unwrap()[0], 1.0);
    assert_ne!(opt.param(&b).unwrap()[1], 2.0);
}

#[test]
fn zero_grad_sets_to_none_or_to_zero() {
    let mut opt = sgd(0.1);
    let g = opt.add_param_group(&[]).unwrap();
    let a = opt.add_param(g, "a", &array![1.0f32]).unwrap();
    let b = opt.add_param(g, "b", &array![1.0f32]).unwrap();
    opt.set_grad(&a, &[3.0]).unwrap();
    opt.zero_grad_with(false);
    assert_eq!(opt.grad(&a).unwrap(), Some(&[0.0f32][..]));
    assert_eq!(opt.grad(&b).unwrap(), None, "a missing grad stays missing");
    opt.step().unwrap();
    assert_eq!(
        opt.param_step(&a).unwrap(),
        1,
        "a zero grad still counts as a grad"
    );
    assert_eq!(opt.param_step(&b).unwrap(), 0);
    opt.zero_grad();
    assert_eq!(opt.grad(&a).unwrap(), None);
}

#[test]
fn closure_runs_once_before_the_step_and_hooks_run_around_it() {
    let mut opt = sgd(0.5);
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![2.0f64]).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (pre, post) = (log.clone(), log.clone());
    let pre_id = opt.register_step_pre_hook(move |_| pre.lock().unwrap().push("pre"));
    opt.register_step_post_hook(move |_| post.lock().unwrap().push("post"));
    let closure_log = log.clone();
    let loss = opt
        .step_with_closure(|opt| {
            closure_log.lock().unwrap().push("closure");
            let x = opt.param(&w)?[0];
            opt.set_grad(&w, &[2.0 * x])?; // d/dx x²
            Ok(x * x)
        })
        .unwrap();
    assert_eq!(loss, 4.0);
    assert_eq!(opt.param(&w).unwrap(), &[0.0]);
    assert_eq!(*log.lock().unwrap(), vec!["closure", "pre", "post"]);
    assert!(opt.remove_hook(pre_id));
    assert!(!opt.remove_hook(pre_id));
    opt.step().unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["closure", "pre", "post", "post"]);
}

/// Regression: a panicking hook used to take every other hook with it (the list was taken
/// out for the pass and put back only if all hooks returned).
#[test]
fn a_panicking_hook_leaves_every_hook_registered() {
    for panic_in_post in [false, true] {
        let mut opt = sgd(0.5);
        let g = opt.add_param_group(&[]).unwrap();
        let w = opt.add_param(g, "w", &array![2.0f64]).unwrap();
        opt.set_grad(&w, &[1.0]).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(Mutex::new(true));
        let (a, b, c) = (log.clone(), log.clone(), log.clone());
        let fire = armed.clone();
        opt.register_step_pre_hook(move |_| a.lock().unwrap().push("a"));
        let bomb = move |_: &mut Optimizer| {
            b.lock().unwrap().push("b");
            if std::mem::take(&mut *fire.lock().unwrap()) {
                panic!("hook b fails once");
            }
        };
        let b_id = match panic_in_post {
            false => opt.register_step_pre_hook(bomb),
            true => opt.register_step_post_hook(bomb),
        };
        opt.register_step_post_hook(move |_| c.lock().unwrap().push("c"));
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| opt.step()));
        assert!(step.is_err(), "the hook's panic reaches the caller");
        log.lock().unwrap().clear();
        opt.step().unwrap();
        let all = vec!["a", "b", "c"];
        assert_eq!(
            *log.lock().unwrap(),
            all,
            "panic in a post-hook: {panic_in_post}"
        );
        assert!(
            opt.remove_hook(b_id),
            "the panicking hook is still registered"
        );
    }
}

/// Regression: a hook could not remove itself (nor, so, any hook running at the time), as
/// PyTorch's handles can.
#[test]
fn hooks_remove_themselves_and_others_from_inside() {
    let mut opt = sgd(0.5);
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![2.0f64]).unwrap();
    opt.set_grad(&w, &[1.0]).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let ids: Arc<Mutex<Vec<optjit::runtime::HookId>>> = Arc::new(Mutex::new(Vec::new()));
    let (a_log, a_ids) = (log.clone(), ids.clone());
    // `a` removes itself and `c`, which comes after it: neither runs again, not even `c` in
    // this step. `b` stays.
    let a = opt.register_step_pre_hook(move |opt| {
        a_log.lock().unwrap().push("a");
        let ids = a_ids.lock().unwrap().clone();
        assert!(opt.remove_hook(ids[0]), "a removes itself");
        assert!(opt.remove_hook(ids[2]), "a removes c");
        assert!(!opt.remove_hook(ids[2]));
    });
    let b_log = log.clone();
    let b = opt.register_step_pre_hook(move |_| b_log.lock().unwrap().push("b"));
    let c_log = log.clone();
    let c = opt.register_step_pre_hook(move |_| c_log.lock().unwrap().push("c"));
    ids.lock().unwrap().extend([a, b, c]);
    opt.step().unwrap();
    opt.step().unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["a", "b", "b"]);
    assert!(!opt.remove_hook(a) && !opt.remove_hook(c));
    assert!(opt.remove_hook(b));
}

#[test]
fn split_gives_params_and_grads_together() {
    let mut opt = sgd(0.1);
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt
        .add_param(g, "w", &array![[1.0f32, 2.0], [3.0, 4.0]])
        .unwrap();
    let b = opt.add_param(g, "b", &array![0.5f32, 0.5]).unwrap();
    {
        let (params, mut grads) = opt.split::<f32>();
        let wv = params.view(&w).unwrap();
        assert_eq!(wv.shape(), &[2, 2]);
        grads.view_mut(&w).unwrap().assign(&(&wv * 2.0));
        grads
            .get_mut(&b)
            .unwrap()
            .copy_from_slice(params.get(&b).unwrap());
    }
    assert_eq!(opt.grad(&w).unwrap().unwrap(), &[2.0, 4.0, 6.0, 8.0]);
    assert_eq!(opt.grad(&b).unwrap().unwrap(), &[0.5, 0.5]);
}

#[test]
fn bad_handles_names_and_lengths_are_typed_errors_and_change_nothing() {
    let mut opt = sgd(0.1);
    let mut other = sgd(0.1);
    let g = opt.add_param_group(&[]).unwrap();
    let og = other.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![1.0f32, 2.0]).unwrap();
    let foreign: Param<f32> = other.add_param(og, "x", &array![1.0f32]).unwrap();
    assert!(matches!(
        opt.param(&foreign),
        Err(Error::UnknownParam { .. })
    ));
    assert!(matches!(
        opt.set_grad(&foreign, &[1.0]),
        Err(Error::UnknownParam { .. })
    ));
    assert_eq!(
        opt.add_param(g, "w", &array![1.0f32]).unwrap_err(),
        Error::DuplicateParam { name: "w".into() }
    );
    // Across groups too: a parameter lives in one group only.
    let g1 = opt.add_param_group(&[("lr", 0.5)]).unwrap();
    assert_eq!(
        opt.add_param(g1, "w", &array![1.0f64]).unwrap_err(),
        Error::DuplicateParam { name: "w".into() }
    );
    assert_eq!(opt.group_params(g1).unwrap().len(), 0);
    assert_eq!(
        opt.add_param(7, "z", &array![1.0f32]).unwrap_err(),
        Error::UnknownGroup { index: 7, count: 2 }
    );
    assert!(matches!(
        opt.add_param_group(&[("betas", 0.1)]),
        Err(Error::UnknownHyper { .. })
    ));
    assert_eq!(opt.num_groups(), 2);
    let err = opt.set_grad(&w, &[1.0, 2.0, 3.0]).unwrap_err();
    assert!(matches!(
        err,
        Error::LengthMismatch {
            expected: 2,
            actual: 3,
            ..
        }
    ));
    assert_eq!(
        opt.grad(&w).unwrap(),
        None,
        "a rejected grad is not half set"
    );
    assert!(matches!(
        opt.set_hyper(0, "nope", 1.0),
        Err(Error::UnknownHyper { .. })
    ));
    assert!(matches!(
        opt.hyper(3, "lr"),
        Err(Error::UnknownGroup { .. })
    ));
}

/// One big parameter (several threads' worth of work) and many small ones: every executor,
/// one thread and all threads, bit for bit.
#[test]
fn threads_and_executors_agree_bit_for_bit() {
    let graph = Adam {
        weight_decay: 0.01,
        ..Adam::default()
    }
    .graph()
    .unwrap();
    let sizes = [200_000usize, 1, 3, 17, 40_000, 5];
    let run = |executor: Executor, threads: usize| {
        let mut opt = Optimizer::new(&graph)
            .unwrap()
            .with_executor(executor)
            .with_threads(threads);
        let g = opt.add_param_group(&[]).unwrap();
        let handles: Vec<Param<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let values = Array1::from_shape_fn(n, |i| ((i * 7 + k) % 13) as f32 - 6.0);
                opt.add_param(g, &format!("p{k}"), &values).unwrap()
            })
            .collect();
        for step in 0..3 {
            for (k, h) in handles.iter().enumerate() {
                if step == 1 && k == 2 {
                    continue;
                }
                let grad: Vec<f32> = (0..sizes[k])
                    .map(|i| ((i * 3 + step) % 11) as f32 * 0.1 - 0.5)
                    .collect();
                opt.set_grad(h, &grad).unwrap();
            }
            opt.step().unwrap();
            opt.zero_grad();
        }
        handles
            .iter()
            .map(|h| opt.param(h).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    let reference = run(Executor::Reference, 1);
    for (executor, threads) in [
        (Executor::Jit, 1),
        (Executor::Jit, 2),
        (Executor::Jit, 3),
        (Executor::Eager, 2),
        (Executor::Chunked, 1),
        (Executor::Chunked, 2),
    ] {
        let got = run(executor, threads);
        for (k, (r, g)) in reference.iter().zip(&got).enumerate() {
            let same = r.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{executor:?} with {threads} threads differs on parameter {k}"
            );
        }
    }
}

/// The Stepper (caller-owned buffers) and the Optimizer (owned buffers) compute the same.
#[test]
fn stepper_and_optimizer_agree() {
    let graph = Adam::default().graph().unwrap();
    let stepper = Stepper::new(&graph).unwrap();
    let mut param = vec![0.5f64, -0.25, 3.0];
    let mut state = stepper.init_state(3).unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let h = opt.add_param(g, "p", &Array1::from(param.clone())).unwrap();
    for k in 0..4 {
        let grad = [0.1 * k as f64, -1.0, 2.5];
        stepper.step(&mut param, &grad, &mut state).unwrap();
        opt.set_grad(&h, &grad).unwrap();
        opt.step().unwrap();
    }
    assert_eq!(opt.param(&h).unwrap(), param.as_slice());
    assert_eq!(
        opt.state_buffer(&h, "exp_avg_sq").unwrap().unwrap(),
        state.buffer(1).unwrap()
    );
}

/// Schedule-free AdamW's train/eval swaps through the runtime equal the same graphs run by
/// hand with the Stepper, and stepping in eval mode is refused without changing anything.
#[test]
fn eval_and_train_modes_run_their_graphs_without_counting_a_step() {
    use optjit::optim::ScheduleFreeAdamW;
    let sf = ScheduleFreeAdamW {
        lr: 0.05,
        ..ScheduleFreeAdamW::default()
    };
    let (graph, train, eval) = (
        sf.graph().unwrap(),
        sf.train_graph().unwrap(),
        sf.eval_graph().unwrap(),
    );
    let mut opt = Optimizer::new(&graph)
        .unwrap()
        .with_modes(&train, &eval)
        .unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![1.0f32, -2.0, 0.5]).unwrap();
    let never = opt.add_param(g, "never", &array![3.0f32]).unwrap();
    let stepper = Stepper::new(&graph).unwrap();
    let (mut p, mut state) = (vec![1.0f32, -2.0, 0.5], stepper.init_state(3).unwrap());
    for k in 0..4 {
        let grad = [0.5, -1.0 + k as f32, 2.0];
        opt.set_grad(&w, &grad).unwrap();
        opt.step().unwrap();
        stepper.step(&mut p, &grad, &mut state).unwrap();
    }
    assert_eq!(opt.param(&w).unwrap(), p.as_slice());

    opt.eval().unwrap();
    let by_hand = |graph: &optjit::Graph, p: &mut Vec<f32>, state: &mut optjit::ParamState<f32>| {
        let step = state.step;
        Stepper::new(graph)
            .unwrap()
            .step(p, &[0.0; 3], state)
            .unwrap();
        state.step = step;
    };
    by_hand(&eval, &mut p, &mut state);
    assert_eq!(opt.param(&w).unwrap(), p.as_slice(), "eval moved w to x");
    assert_eq!(
        opt.param(&never).unwrap(),
        &[3.0],
        "a parameter without state stays"
    );
    assert_eq!(opt.param_step(&w).unwrap(), 4, "a swap is not a step");
    assert!(!opt.is_training());
    opt.eval().unwrap();
    assert_eq!(
        opt.param(&w).unwrap(),
        p.as_slice(),
        "eval twice swaps once"
    );

    opt.set_grad(&w, &[1.0, 1.0, 1.0]).unwrap();
    assert_eq!(opt.step().unwrap_err(), Error::EvalMode);
    assert_eq!(opt.param(&w).unwrap(), p.as_slice());

    opt.train().unwrap();
    by_hand(&train, &mut p, &mut state);
    assert_eq!(
        opt.param(&w).unwrap(),
        p.as_slice(),
        "train moved w back to y"
    );
    opt.step().unwrap();
    assert_eq!(opt.param_step(&w).unwrap(), 5);

    // Mode graphs must fit the optimizer's state.
    let adam = Adam::default().graph().unwrap();
    assert!(matches!(
        Optimizer::new(&graph).unwrap().with_modes(&adam, &eval),
        Err(Error::StateMismatch { .. })
    ));
}

/// Many small parameters, some skipping steps (so their step counts and scalar state differ),
/// merged into few segments by the runtime: each equals the same parameter stepped alone.
/// SGD-momentum (whose scalars differ only at the first step) and Lion (whose scalars never
/// depend on the step) merge parameters at different steps into one segment.
#[test]
fn merged_segments_equal_parameters_stepped_one_by_one() {
    for graph in [
        optjit::optim::NAdam::default().graph().unwrap(),
        Adam {
            weight_decay: 0.1,
            ..Adam::default()
        }
        .graph()
        .unwrap(),
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::default()
        }
        .graph()
        .unwrap(),
        optjit::optim::Lion::default().graph().unwrap(),
    ] {
        let stepper = Stepper::new(&graph).unwrap();
        let mut opt = Optimizer::new(&graph).unwrap();
        let groups = [
            opt.add_param_group(&[]).unwrap(),
            opt.add_param_group(&[("lr", 0.01)]).unwrap(),
        ];
        let sizes: Vec<usize> = (0..60).map(|k| 1 + (k * 37) % 50).collect();
        let mut alone: Vec<(Vec<f64>, optjit::ParamState<f64>)> = Vec::new();
        let mut handles = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let values: Vec<f64> = (0..n).map(|i| ((i + k) % 7) as f64 - 3.0).collect();
            handles.push(
                opt.add_param(
                    groups[k % 2],
                    &format!("p{k}"),
                    &Array1::from(values.clone()),
                )
                .unwrap(),
            );
            alone.push((values, stepper.init_state(n).unwrap()));
        }
        let mut lone = Stepper::new(&graph).unwrap();
        for step in 0..5 {
            opt.zero_grad();
            for (k, h) in handles.iter().enumerate() {
                if (k + step) % 4 == 0 {
                    continue; // skipped this step
                }
                let grad: Vec<f64> = (0..sizes[k])
                    .map(|i| ((i * 3 + k + step) % 5) as f64 * 0.2 - 0.4)
                    .collect();
                opt.set_grad(h, &grad).unwrap();
                lone.set_hyper(
                    "lr",
                    if k % 2 == 0 {
                        stepper.hyper("lr").unwrap()
                    } else {
                        0.01
                    },
                )
                .unwrap();
                let (p, s) = &mut alone[k];
                lone.step(p, &grad, s).unwrap();
            }
            opt.step().unwrap();
        }
        for (k, h) in handles.iter().enumerate() {
            assert_eq!(
                opt.param(h).unwrap(),
                alone[k].0.as_slice(),
                "{} parameter {k}",
                graph.name()
            );
            assert_eq!(opt.param_step(h).unwrap(), alone[k].1.step);
        }
    }
}

/// `Stepper::step_many` with parameters big enough to be cut over threads (several pieces per
/// parameter, pieces of one parameter in different batches), skipped parameters and empty
/// ones, on pools of 2, 3 and 5 threads: bit for bit the reference interpreter's result.
#[test]
fn stepper_cuts_big_parameters_over_threads_bit_for_bit() {
    use optjit::runtime::GRAIN;
    use optjit::{ParamRef, ParamState};
    let g = GRAIN;
    let lens = [2 * g + 5, 3, 0, g + 17, g - 1, g + 1];
    fn run<T: optjit::Float>(stepper: &Stepper, lens: &[usize], steps: usize) -> Vec<Vec<T>> {
        let value = |i: usize, k: usize| T::from_f64(((i * 7 + k) % 13) as f64 * 0.25 - 1.5);
        let mut params: Vec<Vec<T>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| value(i, k)).collect())
            .collect();
        let grads: Vec<Vec<T>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| value(i + 3, k + 1)).collect())
            .collect();
        let mut states: Vec<ParamState<T>> = lens
            .iter()
            .map(|&n| stepper.init_state(n).unwrap())
            .collect();
        for step in 0..steps {
            // Parameter 3 skips the second step.
            let mut refs: Vec<ParamRef<'_, T>> = params
                .iter_mut()
                .zip(&grads)
                .zip(&mut states)
                .enumerate()
                .filter(|(k, _)| !(step == 1 && *k == 3))
                .map(|(_, ((param, grad), state))| ParamRef { param, grad, state })
                .collect();
            stepper.step_many(&mut refs).unwrap();
        }
        params
    }
    let graphs = [
        Adam::default().graph().unwrap(),
        Sgd {
            lr: 0.1,
            ..Sgd::default()
        }
        .graph()
        .unwrap(),
    ];
    for graph in &graphs {
        let reference = Stepper::new(graph)
            .unwrap()
            .with_executor(Executor::Reference);
        let expected32 = run::<f32>(&reference, &lens, 3);
        let expected64 = run::<f64>(&reference, &lens, 3);
        for threads in [2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let jit = Stepper::new(graph).unwrap();
            let (got32, got64) =
                pool.install(|| (run::<f32>(&jit, &lens, 3), run::<f64>(&jit, &lens, 3)));
            let bits32 =
                |v: &[Vec<f32>]| v.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let bits64 =
                |v: &[Vec<f64>]| v.concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits32(&got32),
                bits32(&expected32),
                "{} f32, {threads} threads",
                graph.name()
            );
            assert_eq!(
                bits64(&got64),
                bits64(&expected64),
                "{} f64, {threads} threads",
                graph.name()
            );
        }
    }
}

/// Parameters a step apart whose kernel scalars agree share a block (and a segment), but each
/// keeps its own scalar state: a counter that depends on the step and feeds nothing back.
#[test]
fn shared_blocks_keep_each_parameters_scalar_state() {
    let graph = optjit::text::parse(
        "optimizer counted(lr = 0.1) {
            scalar state count = 0
            state m = 0
            count = count * 2 + step
            m = 0.5 * m + grad
            param = param - lr * m
        }",
    )
    .unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
    let stepper = Stepper::new(&graph).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let mut alone = Vec::new();
    let handles: Vec<Param<f32>> = (0..6)
        .map(|k| {
            let values = Array1::from_elem(20, k as f32);
            alone.push((values.to_vec(), stepper.init_state::<f32>(20).unwrap()));
            opt.add_param(g, &format!("p{k}"), &values).unwrap()
        })
        .collect();
    let grad = [0.5f32; 20];
    for step in 0..4 {
        opt.zero_grad();
        for (k, h) in handles.iter().enumerate() {
            // Odd parameters skip the second step: from then on they are one step behind.
            if step == 1 && k % 2 == 1 {
                continue;
            }
            opt.set_grad(h, &grad).unwrap();
            let (p, s) = &mut alone[k];
            stepper.step(p, &grad, s).unwrap();
        }
        opt.step().unwrap();
    }
    let dict = opt.state_dict();
    for (k, h) in handles.iter().enumerate() {
        let (p, s) = &alone[k];
        assert_eq!(opt.param(h).unwrap(), p.as_slice(), "parameter {k}");
        let entry = &dict.state[&k];
        assert_eq!(entry.step, s.step, "parameter {k}");
        let count = match s.slots[0] {
            optjit::SlotValue::Scalar(c) => c,
            optjit::SlotValue::Buffer(_) => unreachable!("count is a scalar slot"),
        };
        assert_eq!(entry.scalars["count"], count, "parameter {k}");
    }
    // The two step counts give two different counters.
    assert_ne!(
        dict.state[&0].scalars["count"],
        dict.state[&1].scalars["count"]
    );
}

/// Regression: a parameter too big for memory aborted the process (allocation failure) or
/// panicked (capacity overflow). Sizes beyond the address space fail whatever the OS's
/// overcommit policy, with a typed error and nothing changed.
#[test]
fn a_parameter_too_big_for_memory_is_a_typed_error() {
    let mut opt = sgd(0.5);
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![1.0f64, 2.0]).unwrap();
    opt.set_grad(&w, &[1.0, 1.0]).unwrap();
    opt.step().unwrap();
    let before = opt.state_dict();
    let one = ndarray::arr0(0.5f64);
    for len in [1usize << 46, 1 << 62, isize::MAX as usize] {
        let huge = one.broadcast(len).unwrap();
        match opt.add_param(g, "huge", &huge) {
            Err(Error::OutOfMemory { .. }) => {}
            other => panic!("{len} elements: {other:?}"),
        }
        assert_eq!(opt.state_dict(), before, "{len}: nothing changed");
    }
    // The optimizer still works, and the name is free.
    let v = opt.add_param(g, "huge", &array![3.0f64]).unwrap();
    opt.set_grad(&v, &[1.0]).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.param(&w).unwrap().len(), 2);
}

/// Regression: `Stepper::init_state` panicked (capacity overflow) on a length no memory holds.
#[test]
fn state_too_big_for_memory_is_a_typed_error() {
    let stepper = Stepper::new(&Adam::default().graph().unwrap()).unwrap();
    for len in [1usize << 62, usize::MAX] {
        assert!(matches!(
            stepper.init_state::<f32>(len),
            Err(Error::OutOfMemory { .. })
        ));
    }
    assert_eq!(stepper.init_state::<f32>(3).unwrap().step, 0);
}

/// `Stepper::step_many` shares prologue runs and scalar blocks between parameters with the
/// same inputs: over parameters at different steps, with scalar states that differ only in
/// the sign of zero or below f32's resolution, it gives each parameter the bits that stepping
/// it alone gives.
#[test]
fn stepper_shares_prologues_only_between_equal_inputs() {
    // `1 / s` is +inf or -inf for s = ±0; `s` advances by an amount f32 cannot see.
    let source = "optimizer o(lr = 0.1) {
        scalar state s = 0
        let r = 1 / s
        s = s * 0.5 + 1e-12
        param = param - lr * grad * min(r, 1) * (1 + s)
    }";
    let graphs = [
        optjit::text::parse(source).unwrap(),
        optjit::optim::Adam::default().graph().unwrap(),
    ];
    for graph in graphs {
        let stepper = Stepper::new(&graph).unwrap();
        let scalar = graph.slots().iter().position(|s| s.name == "s");
        let lens = [5usize, 17, 5, 33, 1, 17];
        let fresh = |k: usize| {
            let mut state = stepper.init_state::<f32>(lens[k]).unwrap();
            state.step = [0, 3, 0, 3, 7, 0][k];
            if let Some(n) = scalar {
                let values = [0.0, 1e-12, -0.0, 1.1e-12, -0.0, 0.0];
                state.slots[n] = optjit::SlotValue::Scalar(values[k]);
            }
            state
        };
        let param =
            |k: usize| -> Vec<f32> { (0..lens[k]).map(|j| (j + k) as f32 * 0.25).collect() };
        let grad =
            |k: usize| -> Vec<f32> { (0..lens[k]).map(|j| 0.5 - (j * k) as f32 * 0.125).collect() };
        // One by one.
        let mut alone: Vec<(Vec<f32>, optjit::ParamState<f32>)> = Vec::new();
        for k in 0..lens.len() {
            let (mut p, mut s) = (param(k), fresh(k));
            for _ in 0..3 {
                stepper.step(&mut p, &grad(k), &mut s).unwrap();
            }
            alone.push((p, s));
        }
        // Together.
        let mut params: Vec<Vec<f32>> = (0..lens.len()).map(param).collect();
        let grads: Vec<Vec<f32>> = (0..lens.len()).map(grad).collect();
        let mut states: Vec<optjit::ParamState<f32>> = (0..lens.len()).map(fresh).collect();
        for _ in 0..3 {
            let mut refs: Vec<optjit::ParamRef<'_, f32>> = params
                .iter_mut()
                .zip(&grads)
                .zip(&mut states)
                .map(|((param, grad), state)| optjit::ParamRef { param, grad, state })
                .collect();
            stepper.step_many(&mut refs).unwrap();
        }
        for (k, (p, s)) in alone.iter().enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&params[k]), bits(p), "{}: parameter {k}", graph.name());
            assert_eq!(&states[k], s, "{}: state of {k}", graph.name());
        }
    }
}

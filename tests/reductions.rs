//! Reductions and phases: written in the builder and the text form, split into phases by the
//! compiler, printed, and run by the `Stepper` with every executor and thread count to the
//! same bits as the definition in `optjit::ir::reduce` applied by hand.

mod common;

use optjit::ir::reduce::{self, ReduceOp, BLOCK};
use optjit::ir::Scope;
use optjit::{passes, text, DType, Executor, Float, ParamRef, Stepper};

/// SGD on gradients clipped to a global L2 norm of `max_norm`, as `clip_grad_norm_` does it.
const CLIPPED_SGD: &str = "\
optimizer clipped_sgd(lr = 0.1, max_norm = 1) {
    let norm = sqrt(global_sumsq(grad))
    let coef = min(max_norm / (norm + 1e-6), 1)
    param = param - lr * (grad * coef)
}
";

/// A LAMB-like trust ratio: each tensor's step scaled by its own norms.
const TRUSTED_SGD: &str = "\
optimizer trusted_sgd(lr = 0.1) {
    let ratio = sqrt(sumsq(param)) / sqrt(sumsq(grad))
    param = param - lr * ratio * grad
}
";

#[test]
fn reductions_round_trip_through_the_text_form() {
    for source in [CLIPPED_SGD, TRUSTED_SGD] {
        let graph = text::parse(source).unwrap();
        assert_eq!(
            text::parse(&text::print(&graph)).unwrap(),
            graph,
            "{source}"
        );
    }
    // Every op and scope parses; a scalar operand is an error at its place.
    for op in ReduceOp::ALL {
        for prefix in ["", "global_"] {
            let source = format!(
                "optimizer t() {{\n    param = param - {prefix}{}(grad)\n}}\n",
                op.name()
            );
            let graph = text::parse(&source).unwrap();
            assert_eq!(text::parse(&text::print(&graph)).unwrap(), graph);
        }
    }
    let e = common::text::error("optimizer t(lr = 1) {\n    param = param - sumsq(lr)\n}\n");
    assert!(e.to_string().contains("per-element"), "{e}");
    assert_eq!(common::text::pointed(&e), "lr");
}

#[test]
fn a_reduction_splits_the_program_into_phases() {
    let program = passes::compile(&text::parse(CLIPPED_SGD).unwrap()).unwrap();
    assert_eq!(program.phases.len(), 1);
    let phase = &program.phases[0];
    assert_eq!(phase.scopes, [Scope::Global]);
    assert!(phase.stage.stores.is_empty() && phase.stage.body.len() <= 1);
    // Nothing after the norm runs before the phase; the last stage reads the coefficient.
    let printed = program.display(DType::F32).to_string();
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("clipped_sgd_program", printed);
    });
    // Two levels of reductions: two phases.
    let nested = "optimizer t() {\n    param = param - sum(grad * sum(grad))\n}\n";
    let program = passes::compile(&text::parse(nested).unwrap()).unwrap();
    assert_eq!(program.phases.len(), 2);
}

/// Gradients full of awkward values, lengths around the lanes and the block.
fn inputs<T: Float>(lens: &[usize], seed: u64) -> Vec<(Vec<T>, Vec<T>)> {
    let mut rng = common::SplitMix64::new(seed);
    lens.iter()
        .map(|&len| (rng.mixed_vec(len), rng.mixed_vec(len)))
        .collect()
}

/// `source` stepped once over `inputs` with `executor` on a pool of `threads` threads.
fn step<T: Float>(
    source: &str,
    inputs: &[(Vec<T>, Vec<T>)],
    executor: Executor,
    threads: usize,
) -> Vec<Vec<T>> {
    let stepper = Stepper::new(&text::parse(source).unwrap())
        .unwrap()
        .with_executor(executor);
    let mut params: Vec<Vec<T>> = inputs.iter().map(|(p, _)| p.clone()).collect();
    let mut states: Vec<_> = params
        .iter()
        .map(|p| stepper.init_state::<T>(p.len()).unwrap())
        .collect();
    let mut refs: Vec<ParamRef<'_, T>> = params
        .iter_mut()
        .zip(inputs)
        .zip(&mut states)
        .map(|((param, (_, grad)), state)| ParamRef { param, grad, state })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| stepper.step_many(&mut refs)).unwrap();
    drop(refs);
    params
}

fn same<T: Float>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64() || (x.is_nan() && y.is_nan()))
}

fn check_executors_and_threads<T: Float>() {
    let lens = [0, 1, 15, 16, 17, 37, BLOCK - 1, BLOCK, 3 * BLOCK + 5, 5];
    for source in [CLIPPED_SGD, TRUSTED_SGD] {
        let data = inputs::<T>(&lens, 7);
        let expected = step(source, &data, Executor::Reference, 1);
        for executor in [
            Executor::Jit,
            Executor::Chunked,
            Executor::Eager,
            Executor::Reference,
        ] {
            for threads in [1, 2, 3] {
                let got = step(source, &data, executor, threads);
                for (k, (e, g)) in expected.iter().zip(&got).enumerate() {
                    assert!(
                        same(e, g),
                        "{} {executor:?} {threads} threads: parameter {k}",
                        T::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
fn every_executor_and_thread_count_gives_the_same_bits() {
    check_executors_and_threads::<f32>();
    check_executors_and_threads::<f64>();
}

/// Every reduction op, per parameter and global, of a computed value full of special values:
/// the JIT, every interpreter and every thread count agree bit for bit.
#[test]
fn every_reduction_op_agrees_across_executors() {
    let lens = [0, 1, 3, 8, 16, 17, 33, 100, BLOCK + 17, 5];
    for op in ReduceOp::ALL {
        for prefix in ["", "global_"] {
            let source = format!(
                "optimizer t(lr = 0.5) {{\n    param = param - lr * grad * {prefix}{}(grad - param)\n}}\n",
                op.name()
            );
            for seed in 0..3 {
                let data32 = inputs::<f32>(&lens, seed);
                let data64 = inputs::<f64>(&lens, seed);
                let expected32 = step(&source, &data32, Executor::Reference, 1);
                let expected64 = step(&source, &data64, Executor::Reference, 1);
                for executor in [Executor::Jit, Executor::Chunked, Executor::Eager] {
                    for threads in [1, 2] {
                        let got32 = step(&source, &data32, executor, threads);
                        let got64 = step(&source, &data64, executor, threads);
                        for k in 0..lens.len() {
                            let what = format!("{source} {executor:?} {threads} seed {seed} #{k}");
                            assert!(same(&expected32[k], &got32[k]), "f32 {what}");
                            assert!(same(&expected64[k], &got64[k]), "f64 {what}");
                        }
                    }
                }
            }
        }
    }
}

/// The clipped step by hand: the definition's per-tensor sums, combined in parameter order,
/// then the scalar code in f64 and the update in `T`.
fn clipped_by_hand<T: Float>(data: &[(Vec<T>, Vec<T>)], lr: f64, max_norm: f64) -> Vec<Vec<T>> {
    let op = ReduceOp::SumSquares;
    let total = reduce::combine_all(op, data.iter().map(|(_, g)| reduce::reduce(op, g)));
    let coef = (max_norm / (total.sqrt() + 1e-6)).min(1.0);
    let (lr, coef) = (T::from_f64(lr), T::from_f64(coef));
    data.iter()
        .map(|(p, g)| {
            p.iter()
                .zip(g)
                .map(|(&p, &g)| p - lr * (g * coef))
                .collect()
        })
        .collect()
}

/// Parameters and gradients of moderate size (finite norms, a clip that acts).
fn moderate(lens: &[usize]) -> Vec<(Vec<f32>, Vec<f32>)> {
    lens.iter()
        .enumerate()
        .map(|(k, &len)| {
            let p = (0..len)
                .map(|i| ((i * 7 + k) % 13) as f32 * 0.25 - 1.5)
                .collect();
            let g = (0..len)
                .map(|i| ((i * 5 + k) % 11) as f32 * 0.125 - 0.625)
                .collect();
            (p, g)
        })
        .collect()
}

#[test]
fn a_global_clip_equals_the_definition_applied_by_hand() {
    // Moderate values, so that the clip is neither a no-op nor degenerate.
    let data = moderate(&[37, 5, 2 * BLOCK + 129]);
    let got = step(CLIPPED_SGD, &data, Executor::Jit, 2);
    let expected = clipped_by_hand(&data, 0.1, 1.0);
    assert_eq!(got, expected);
    assert_ne!(got[0], data[0].0, "the step moved the parameters");
}

#[test]
fn a_per_parameter_reduction_never_mixes_parameters() {
    // Stepped together or one at a time: the same, since each ratio is its own tensor's.
    let data = inputs::<f32>(&[40, BLOCK + 3, 7], 3);
    let together = step(TRUSTED_SGD, &data, Executor::Jit, 2);
    for (k, one) in data.iter().enumerate() {
        let alone = step(TRUSTED_SGD, std::slice::from_ref(one), Executor::Jit, 2);
        assert!(same(&together[k], &alone[0]), "parameter {k}");
    }
    // Whereas the global clip over all three differs from clipping each alone.
    let data = moderate(&[40, BLOCK + 3, 7]);
    let clipped = step(CLIPPED_SGD, &data, Executor::Jit, 1);
    let alone = step(CLIPPED_SGD, &data[1..2], Executor::Jit, 1);
    assert!(!same(&clipped[1], &alone[0]));
}

/// `source` in an `Optimizer`: each of `data` a parameter of group `k % groups`
/// (`lr` 0.1 for group 0, 0.05 for group 1), those with `Some` grad stepped once on
/// `threads` threads; returns every parameter after.
fn optimizer_step(
    source: &str,
    data: &[(Vec<f32>, Option<Vec<f32>>)],
    groups: usize,
    threads: usize,
) -> Vec<Vec<f32>> {
    let mut opt = optjit::Optimizer::new(&text::parse(source).unwrap())
        .unwrap()
        .with_threads(threads);
    for g in 0..groups {
        opt.add_param_group(&[("lr", 0.1 / (g + 1) as f64)])
            .unwrap();
    }
    let handles: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(k, (p, _))| {
            let values = ndarray::Array1::from_vec(p.clone());
            opt.add_param(k % groups, &format!("p{k}"), &values)
                .unwrap()
        })
        .collect();
    for (h, (_, g)) in handles.iter().zip(data) {
        if let Some(g) = g {
            opt.set_grad(h, g).unwrap();
        }
    }
    opt.step().unwrap();
    handles
        .iter()
        .map(|h| opt.param(h).unwrap().to_vec())
        .collect()
}

#[test]
fn the_optimizer_clips_over_every_group_and_skips_what_has_no_grad() {
    let lens = [37, 5, 2 * BLOCK + 129, 300, 11];
    let data = moderate(&lens);
    // Parameter 3 has no gradient: skipped, and outside the norm.
    let with_grads: Vec<(Vec<f32>, Option<Vec<f32>>)> = data
        .iter()
        .enumerate()
        .map(|(k, (p, g))| (p.clone(), (k != 3).then(|| g.clone())))
        .collect();
    let expected = {
        let stepped: Vec<(Vec<f32>, Vec<f32>)> = data
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != 3)
            .map(|(_, d)| d.clone())
            .collect();
        let op = ReduceOp::SumSquares;
        let total = reduce::combine_all(op, stepped.iter().map(|(_, g)| reduce::reduce(op, g)));
        let coef = <f32 as optjit::Element>::from_f64((1.0 / (total.sqrt() + 1e-6)).min(1.0));
        data.iter()
            .enumerate()
            .map(|(k, (p, g))| match k {
                3 => p.clone(),
                _ => {
                    let lr = (0.1 / (k % 2 + 1) as f64) as f32;
                    p.iter()
                        .zip(g)
                        .map(|(&p, &g)| p - lr * (g * coef))
                        .collect()
                }
            })
            .collect::<Vec<Vec<f32>>>()
    };
    for threads in [1, 2, 3] {
        let got = optimizer_step(CLIPPED_SGD, &with_grads, 2, threads);
        assert_eq!(got, expected, "{threads} threads");
    }
}

#[test]
fn reductions_split_between_threads_give_the_same_bits() {
    // More than two grains in all, so that the phases' work is cut between threads, also
    // inside a parameter (at block boundaries).
    let data = inputs::<f32>(&[16 * BLOCK, 70_001, 3 * BLOCK + 5, 0], 11);
    for source in [CLIPPED_SGD, TRUSTED_SGD] {
        let expected = step(source, &data, Executor::Jit, 1);
        for (executor, threads) in [
            (Executor::Jit, 2),
            (Executor::Jit, 3),
            (Executor::Chunked, 2),
        ] {
            let got = step(source, &data, executor, threads);
            for (k, (e, g)) in expected.iter().zip(&got).enumerate() {
                assert!(same(e, g), "{executor:?} {threads} threads: parameter {k}");
            }
        }
    }
}

#[test]
fn the_optimizer_keeps_per_parameter_reductions_apart_in_merged_segments() {
    // Small neighbours share one segment in the last stage; each ratio is still its own.
    let data = moderate(&[3, 40, 17, BLOCK + 3, 8]);
    let with_grads: Vec<(Vec<f32>, Option<Vec<f32>>)> = data
        .iter()
        .map(|(p, g)| (p.clone(), Some(g.clone())))
        .collect();
    let got = optimizer_step(TRUSTED_SGD, &with_grads, 1, 2);
    for (k, one) in data.iter().enumerate() {
        let alone = step(TRUSTED_SGD, std::slice::from_ref(one), Executor::Jit, 1);
        assert_eq!(got[k], alone[0], "parameter {k}");
    }
}

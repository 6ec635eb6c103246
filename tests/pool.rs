//! The thread pools of a step: optjit's pinned pool gives the rayon pool's results bit for
//! bit (parameters and state), on sizes around multiples of the grain and on more batches
//! than it has threads; several optimizers stepping at once on different threads, or from
//! inside rayon's own pool, finish; and the pinned workers are each on a CPU of their own
//! when the OS allows pinning (on this project's machines it does).

mod common;

use common::SplitMix64;
use ndarray::Array1;
use optjit::optim::Adam;
use optjit::runtime::{PoolKind, GRAIN};
use optjit::{Executor, Optimizer, Param};
use std::sync::mpsc;
use std::time::Duration;

/// Bit patterns of every parameter and of both Adam state buffers, parameter by parameter.
type Snapshot = Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>;

/// Adam (with weight decay, so the parameter feeds the update) over tensors of `lens`
/// elements, seeded mixed-magnitude values and gradients (±0, subnormals, huge and tiny),
/// `steps` steps with fresh gradients each, on `threads` threads of `pool`.
fn run(
    pool: PoolKind,
    threads: usize,
    lens: &[usize],
    steps: usize,
    executor: Executor,
) -> Snapshot {
    let adam = Adam {
        lr: 1e-2,
        weight_decay: 1e-2,
        ..Adam::default()
    };
    let mut opt = Optimizer::new(&adam.graph().unwrap())
        .unwrap()
        .with_executor(executor)
        .with_threads(threads)
        .with_pool(pool);
    let g = opt.add_param_group(&[]).unwrap();
    let mut rng = SplitMix64::new(0x9001 + lens.iter().sum::<usize>() as u64);
    let handles: Vec<Param<f32>> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let values = Array1::from_vec(rng.mixed_vec::<f32>(len));
            opt.add_param(g, &format!("p{k}"), &values).unwrap()
        })
        .collect();
    for _ in 0..steps {
        for h in &handles {
            let grad = rng.mixed_vec::<f32>(opt.param(h).unwrap().len());
            opt.set_grad(h, &grad).unwrap();
        }
        opt.step().unwrap();
    }
    let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    handles
        .iter()
        .map(|h| {
            let state = |name| bits(opt.state_buffer(h, name).unwrap().unwrap());
            (
                bits(opt.param(h).unwrap()),
                state("exp_avg"),
                state("exp_avg_sq"),
            )
        })
        .collect()
}

/// Asserts that two snapshots agree bit for bit, naming the first parameter that differs.
fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.0 == y.0, "{what}: parameter {k} differs");
        assert!(x.1 == y.1, "{what}: exp_avg of parameter {k} differs");
        assert!(x.2 == y.2, "{what}: exp_avg_sq of parameter {k} differs");
    }
}

/// Runs `f` on a thread of its own and fails if it has not finished in five minutes (a
/// deadlock), instead of hanging the test run; a panic in `f` fails the test.
fn finishes<F: FnOnce() + Send + 'static>(what: &str, f: F) {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(300)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not finished after 5 minutes"),
    }
}

#[test]
fn pinned_pool_matches_rayon_bit_for_bit_around_grain_multiples() {
    // The pinned pool really runs (it falls back to rayon's if its threads cannot start,
    // which would make the comparison below vacuous).
    assert!(PoolKind::Pinned.is_running());
    let g = GRAIN;
    // One tensor at sizes where the batch count changes (below 2·GRAIN: one batch), and cuts
    // that fall inside a 64-byte block or on one.
    for len in [g - 1, 2 * g - 1, 2 * g, 2 * g + 1, 3 * g + 17, 4 * g + 5] {
        let rayon = run(PoolKind::Rayon, 2, &[len], 3, Executor::Jit);
        let pinned = run(PoolKind::Pinned, 2, &[len], 3, Executor::Jit);
        assert_same(&rayon, &pinned, &format!("one tensor of {len}"));
    }
}

#[test]
fn pinned_pool_matches_rayon_on_many_tensors_and_more_batches_than_threads() {
    let g = GRAIN;
    // Tensors that straddle the batch cuts, and tiny ones between them.
    let lens = [g + 3, 1, 0, 1027, 2 * g - 15, 17, g / 2 + 1, 2 * g + 33];
    let reference = run(PoolKind::Rayon, 1, &lens, 3, Executor::Jit);
    for threads in [2, 3, 5] {
        for pool in [PoolKind::Rayon, PoolKind::Pinned] {
            let got = run(pool, threads, &lens, 3, Executor::Jit);
            assert_same(&reference, &got, &format!("{pool:?} on {threads} threads"));
        }
    }
}

#[test]
fn pinned_pool_runs_the_interpreters_too() {
    let lens = [2 * GRAIN + 9, 100];
    let rayon = run(PoolKind::Rayon, 2, &lens, 2, Executor::Chunked);
    let pinned = run(PoolKind::Pinned, 2, &lens, 2, Executor::Chunked);
    assert_same(&rayon, &pinned, "chunked interpreter");
}

#[test]
fn optimizers_stepping_at_once_on_different_threads_finish_with_the_same_results() {
    let lens = [2 * GRAIN + 1, 5, GRAIN + 64];
    let expected = run(PoolKind::Rayon, 2, &lens, 4, Executor::Jit);
    finishes("four callers at once", move || {
        std::thread::scope(|s| {
            let callers: Vec<_> = [
                PoolKind::Pinned,
                PoolKind::Pinned,
                PoolKind::Rayon,
                PoolKind::Pinned,
            ]
            .into_iter()
            .map(|pool| s.spawn(move || (pool, run(pool, 2, &lens, 4, Executor::Jit))))
            .collect();
            for caller in callers {
                let (pool, got) = caller.join().unwrap();
                assert_same(&expected, &got, &format!("{pool:?}, concurrent"));
            }
        });
    });
}

#[test]
fn optimizers_stepping_from_inside_rayons_pool_finish() {
    use rayon::prelude::*;
    let lens = [3 * GRAIN + 7];
    let expected = run(PoolKind::Rayon, 2, &lens, 2, Executor::Jit);
    finishes("steps inside rayon's pool", move || {
        let results: Vec<Snapshot> = (0..4)
            .into_par_iter()
            .map(|k| {
                let pool = [PoolKind::Pinned, PoolKind::Rayon][k % 2];
                run(pool, 2, &lens, 2, Executor::Jit)
            })
            .collect();
        for got in &results {
            assert_same(&expected, got, "inside rayon's pool");
        }
    });
}

#[test]
fn pinned_workers_are_each_on_a_cpu_of_their_own_when_the_os_allows() {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = PoolKind::Pinned.worker_cpus();
    assert!(PoolKind::Pinned.is_running());
    assert_eq!(PoolKind::Pinned.max_threads(), workers.len());
    assert_eq!(workers.len(), allowed.len().min(quota).max(1));
    for cpus in &workers {
        // Pinned to one CPU the process may use, or (pinning refused) left on all of them.
        assert!(
            (cpus.len() == 1 && allowed.contains(&cpus[0])) || *cpus == allowed,
            "worker on {cpus:?}, process allowed {allowed:?}"
        );
    }
    let mut pinned: Vec<usize> = workers
        .iter()
        .filter(|cpus| cpus.len() == 1)
        .map(|cpus| cpus[0])
        .collect();
    let count = pinned.len();
    // Where the OS allows pinning (a mask of several CPUs), every worker took it.
    // (The probe pins this test's own thread, which ends with the test.)
    let pinning_allowed = allowed.len() > 1
        && core_affinity::set_for_current(core_affinity::CoreId { id: allowed[0] });
    if pinning_allowed {
        assert_eq!(
            count,
            workers.len(),
            "some worker was not pinned: {workers:?}"
        );
    }
    pinned.sort();
    pinned.dedup();
    assert_eq!(
        pinned.len(),
        count,
        "two workers pinned to one CPU: {workers:?}"
    );
}

//! The thread pools a step can run on: rayon's global pool, or optjit's own pinned pool —
//! persistent workers, one per CPU this process may use, each pinned to its CPU.
//!
//! Both are rayon schedulers: the batches of a step are posted to the pool, its workers run
//! them (stealing from each other when one is late), and the calling thread sleeps until the
//! last one is done. They differ in the threads: the global pool's float wherever the OS puts
//! them, the pinned pool's stay on one CPU each, so two of them never share a core and a
//! batch never migrates mid-run. Idle workers spin briefly, then park (rayon's sleep
//! protocol): an idle optimizer costs no CPU time.
//!
//! Why the pinned pool is built on rayon's machinery rather than on `std` alone: a step's
//! batches borrow the optimizer's buffers, and a persistent thread can only be handed
//! `'static` work. Crossing that gap means erasing a lifetime and proving, by waiting, that
//! the borrow outlives the work — `unsafe` code, which the house keeps in `jit/abi.rs`.
//! Rayon's `install` is that proof, already written and tested; the pool around it is
//! configured here: its size, its threads' names and their pinning (through `core_affinity`,
//! whose API is safe).
//!
//! Why the caller sleeps instead of running a batch itself (N−1 pinned workers + the caller
//! was measured too, see BENCHMARKS.md): the calling thread is the application's and is not
//! pinned, so the OS is free to run it on a pinned worker's CPU, and then the two take turns
//! on one core; a caller that has finished its batch cannot steal the worker's either. Its
//! best steps at 2^17–2^20 elements were up to 40 % slower than rayon's. Pinning the caller
//! fixed that, but a library must not change the application's thread for good.
//!
//! ```
//! use optjit::runtime::PoolKind;
//!
//! let workers = PoolKind::Pinned.worker_cpus();
//! assert!(PoolKind::Pinned.is_running());
//! // Each worker reports the CPUs it may run on: one each where pinning took effect.
//! assert_eq!(workers.len(), PoolKind::Pinned.max_threads());
//! ```

use std::sync::OnceLock;

/// The threads a step runs on (see [`crate::Optimizer::with_pool`]). Results are identical
/// on every pool, bit for bit: the batches are the same, only the threads running them differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Rayon's global pool (shared with the rest of the process): one thread per core, not
    /// pinned.
    #[default]
    Rayon,
    /// optjit's own pool, started at its first use: one worker per CPU the first thread to
    /// use it may run on (so an application that pins that thread to one CPU gets one worker),
    /// each pinned to its CPU where the OS allows (unpinned otherwise, see
    /// [`PoolKind::worker_cpus`]). The calling thread is never pinned. Not the default: on
    /// the development machine it measured the same as rayon's pool within the noise
    /// (BENCHMARKS.md, "Thread pool"), and pinning is a process-wide policy best chosen by
    /// whoever knows what else runs on the machine.
    Pinned,
}

impl PoolKind {
    /// The most threads a step can run on at once: the pool's workers.
    pub fn max_threads(self) -> usize {
        match self.pool() {
            Some(pool) => pool.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// The CPUs each worker of the pool may run on, as the OS reports them: one CPU per
    /// worker where pinning took effect (`[[0], [1]]` on two cores), every allowed CPU where it
    /// did not. Starts the pinned pool if it is not running yet.
    pub fn worker_cpus(self) -> Vec<Vec<usize>> {
        let cpus = |_: rayon::BroadcastContext<'_>| allowed_cpus();
        match self.pool() {
            Some(pool) => pool.broadcast(cpus),
            None => rayon::broadcast(cpus),
        }
    }

    /// Whether steps on this pool run on its own threads: always for rayon's; for the pinned
    /// one, unless its threads could not be spawned (steps then run on rayon's pool, with the
    /// same results). Starts the pinned pool if it is not running yet.
    pub fn is_running(self) -> bool {
        self == PoolKind::Rayon || self.pool().is_some()
    }

    /// The pool to `install` a step's batches on; `None` for rayon's global pool (also when
    /// the pinned pool's threads could not be spawned: steps then run on the global pool,
    /// with the same results).
    pub(crate) fn pool(self) -> Option<&'static rayon::ThreadPool> {
        static PINNED: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
        match self {
            PoolKind::Rayon => None,
            PoolKind::Pinned => PINNED.get_or_init(start_pinned).as_ref(),
        }
    }
}

/// How a step is parallelised: at most `count` threads of `pool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Threads {
    /// At most this many batches (at least 1).
    pub(crate) count: usize,
    /// The pool that runs them.
    pub(crate) pool: PoolKind,
}

/// The CPUs the calling thread may run on (empty if the OS does not say).
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Starts one worker per CPU the calling thread may run on (at most the available
/// parallelism, which also counts cgroup CPU quotas), worker `i` pinned to the `i`-th of them.
fn start_pinned() -> Option<rayon::ThreadPool> {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cpus.len().min(quota).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("optjit-pinned-{i}"))
        .start_handler(move |i| {
            if let Some(&cpu) = cpus.get(i) {
                // A refusal (a sandbox, a cgroup) leaves the worker unpinned: correct, only
                // without the pinning; `PoolKind::worker_cpus` shows which happened.
                core_affinity::set_for_current(cpu);
            }
        })
        .build()
        .ok()
}

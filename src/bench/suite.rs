//! The benchmark suite behind `optjit bench`: every implementation of a set of optimizers at a
//! set of sizes and thread counts, in one process, with the bandwidth floor and the
//! handwritten native loops (for the CPU's best instruction set, and for the portable 128-bit
//! baseline the JIT's vectors match) measured in the same run; plus many small tensors against
//! one big one, and compile times. Every record says which instruction set it ran and what
//! the host has.
//!
//! Times are medians of repeated steps. Ratios are what to read: absolute times drift with
//! the machine's load.

use super::floor::{self, Floor};
use super::many::{alternated, many_small, Layout, ROUNDS};
use super::native::{Isa, NativeOptimizer};
use crate::runtime::store::AlignedBuf;
use crate::{optim, DType, Element, Executor, Graph, Jit, Optimizer, Precision, Result, Target};
use ndarray::Array1;
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An implementation the suite measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// The Cranelift kernel through [`Optimizer::step`].
    Jit,
    /// The reference interpreter through [`Optimizer::step`].
    Interp,
    /// The chunked interpreter through [`Optimizer::step`].
    Chunked,
    /// The eager evaluator through [`Optimizer::step`].
    Eager,
    /// The handwritten loop compiled for the best instruction set of this CPU
    /// ([`NativeOptimizer::step`], [`Isa::best`]).
    Native,
    /// The same handwritten loop compiled for the portable baseline ([`Isa::Portable`]: SSE2
    /// on x86-64, 128-bit vectors like the JIT's): the same IEEE operations at the same
    /// vector width, so the JIT's ratio to it is code quality alone.
    Native128,
    /// `dst = src`: the bandwidth floor.
    Copy,
    /// `y = a·x + y`: the bandwidth floor.
    Axpy,
    /// `Σ x²` over one stream, reading only: what an extra read-only pass costs (a clip's
    /// norm pass is one); not part of the floor.
    Read,
    /// The JIT with gradient clipping to a global 2-norm fused into the optimizer
    /// ([`optim::clip_grad_norm`]): a read-only pass over the gradients, then the step.
    ClipFused,
    /// The same clip unfused: [`Optimizer::clip_grad_norm`] (a norm pass and a scale pass
    /// over the gradients), then the JIT's step.
    ClipUnfused,
    /// Mixed-precision scaling and the clip fused ([`optim::amp`] over
    /// [`optim::clip_grad_norm`]): one read-only pass (the norm of the unscaled gradients
    /// and the non-finite check), then the step, the gradients unscaled in registers.
    AmpClipFused,
    /// The same unfused, as PyTorch's `GradScaler` runs it: unscale in place (a check and a
    /// scale pass), clip (a norm pass and a scale pass), then the step.
    AmpClipUnfused,
}

impl Impl {
    /// The instruction set a handwritten loop runs with: the CPU's best for `native`, the
    /// portable baseline for `native128`; `None` for the others.
    fn native_isa(self) -> Option<Isa> {
        match self {
            Impl::Native => Some(Isa::best()),
            Impl::Native128 => Some(Isa::Portable),
            _ => None,
        }
    }

    /// Every implementation that `--impl` names, in table order.
    pub const NAMED: [Impl; 13] = [
        Impl::Jit,
        Impl::Native,
        Impl::Native128,
        Impl::Chunked,
        Impl::Eager,
        Impl::Interp,
        Impl::Copy,
        Impl::Axpy,
        Impl::Read,
        Impl::ClipFused,
        Impl::ClipUnfused,
        Impl::AmpClipFused,
        Impl::AmpClipUnfused,
    ];

    /// The implementations of the full suite, in table order: all but the read pass and the
    /// clipped ones (`--impl` names them).
    pub const ALL: &'static [Impl] = Impl::NAMED.split_at(8).0;

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Jit => "jit",
            Impl::Interp => "interp",
            Impl::Chunked => "chunked",
            Impl::Eager => "eager",
            Impl::Native => "native",
            Impl::Native128 => "native128",
            Impl::Copy => "copy",
            Impl::Axpy => "axpy",
            Impl::Read => "read",
            Impl::ClipFused => "clip_fused",
            Impl::ClipUnfused => "clip_unfused",
            Impl::AmpClipFused => "amp_clip_fused",
            Impl::AmpClipUnfused => "amp_clip_unfused",
        }
    }

    fn executor(self) -> Option<Executor> {
        match self {
            Impl::Jit => Some(Executor::Jit),
            Impl::Interp => Some(Executor::Reference),
            Impl::Chunked => Some(Executor::Chunked),
            Impl::Eager => Some(Executor::Eager),
            _ => None,
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Config {
    /// Optimizers: built-in names (see [`optim::NAMES`]) or `(name, graph)` pairs.
    pub optimizers: Vec<(String, Graph)>,
    /// Element counts of the single tensor.
    pub sizes: Vec<usize>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Implementations.
    pub impls: Vec<Impl>,
    /// The interpreters (slow) only run up to this size.
    pub interp_max: usize,
    /// Many small tensors: `(count, elements each)`, against one tensor of the same total.
    pub many_small: Option<(usize, usize)>,
    /// Measure compile times.
    pub compile: bool,
    /// Repeat each measurement for at least this long (and at least 3 times).
    pub min_time: Duration,
    /// The instruction set the JIT compiles for (must run on this host): [`Target::Host`],
    /// or a named x86-64 class to measure its code on a machine that has more.
    pub target: Target,
    /// How the optimizers (the JIT, the interpreters, the clip and many-tensor runs) store
    /// their streams; the handwritten loops and the floors are f32.
    pub storage: Storage,
}

/// How a benchmarked optimizer stores its streams: the parameters (and gradients), the
/// element state, and whether stores to bf16 and f16 streams round stochastically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    /// The parameters' and gradients' dtype.
    pub param: DType,
    /// Every element state slot's dtype.
    pub state: DType,
    /// Stochastic rounding of every bf16 or f16 stream the step writes.
    pub stochastic: bool,
}

impl Storage {
    /// Everything f32.
    pub const F32: Storage = Storage {
        param: DType::F32,
        state: DType::F32,
        stochastic: false,
    };

    /// `PARAM[:STATE][~]`: e.g. `bf16` (everything bf16), `bf16:f32` (bf16 params and
    /// gradients, f32 state), `bf16~` (stochastic rounding).
    pub fn parse(text: &str) -> std::result::Result<Storage, String> {
        let (dtypes, stochastic) = match text.strip_suffix('~') {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let dtype = |name: &str| {
            DType::from_name(name).ok_or_else(|| {
                format!("unknown dtype `{name}` in `{text}` (expected f32, f64, bf16 or f16)")
            })
        };
        let (param, state) = match dtypes.split_once(':') {
            Some((p, s)) => (dtype(p)?, dtype(s)?),
            None => (dtype(dtypes)?, dtype(dtypes)?),
        };
        if param.compute() != state.compute() {
            return Err(format!("`{text}`: f64 goes with f64 only"));
        }
        Ok(Storage {
            param,
            state,
            stochastic,
        })
    }

    /// The form [`Storage::parse`] reads, shortest: `f32`, `bf16:f32`, `bf16~`.
    pub fn label(&self) -> String {
        let mut label = self.param.name().to_string();
        if self.state != self.param {
            label = format!("{label}:{}", self.state);
        }
        if self.stochastic {
            label.push('~');
        }
        label
    }

    /// The optimizer precision that stores `graph`'s streams so.
    fn precision(&self, graph: &Graph) -> Result<Precision> {
        let mut precision = Precision::state(self.state);
        if self.stochastic {
            let program = crate::passes::compile(graph)?;
            let mut names: Vec<String> = Vec::new();
            if self.param.is_narrow() {
                names.push("param".to_string());
            }
            if self.state.is_narrow() {
                let slots = program
                    .element_slots()
                    .map(|s| program.slots[s].name.clone());
                names.extend(slots);
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            precision = precision.with_stochastic_rounding(&names, 0x5EED);
        }
        Ok(precision)
    }
}

impl Config {
    /// The full suite: Adam, AdamW, SGD-momentum, Lion and RMSprop at 2^12 … 2^26 elements,
    /// on 1 thread and all, every implementation, 10,000 × 1,000 tensors, compile times.
    pub fn full(all_threads: usize) -> Result<Config> {
        let optimizers = ["adam", "adamw", "sgd_momentum", "lion", "rmsprop"]
            .iter()
            .map(|n| Ok((n.to_string(), optim::by_name(n).expect("a built-in"))))
            .collect::<Result<Vec<_>>>()?;
        let mut threads = vec![1];
        if all_threads > 1 {
            threads.push(all_threads);
        }
        Ok(Config {
            optimizers,
            sizes: [12, 16, 20, 24, 26].iter().map(|&l| 1usize << l).collect(),
            threads,
            impls: Impl::ALL.to_vec(),
            interp_max: 1 << 24,
            many_small: Some((10_000, 1_000)),
            compile: true,
            min_time: Duration::from_millis(200),
            target: Target::Host,
            storage: Storage::F32,
        })
    }
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// Optimizer name (`copy`/`axpy` rows carry the optimizer they are the floor for).
    pub optimizer: String,
    /// Implementation: `jit`, `interp`, `chunked`, `eager`, `native`, `native128`, `copy`,
    /// `axpy`; `compile_cold` / `compile_hit` (then `ns_per_elem` is the time per compile) or
    /// `step_overhead` (the whole `Optimizer::step` of one 16-element tensor).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// The instruction set the code ran with: for `native` the [`Isa`] it was compiled for
    /// (`avx512`, `avx2`, `portable`), for `native128` `portable` (SSE2 on x86-64), for the
    /// JIT's records (`jit`, compile times, step overhead) [`Jit::isa_name`] of the JIT that
    /// compiled them (`x86_64 sse3 … avx2 fma …`); `None` for the interpreters and the floor.
    pub isa: Option<String>,
    /// Elements per step (all tensors together).
    pub n: usize,
    /// Number of tensors.
    pub tensors: usize,
    /// Threads used.
    pub threads: usize,
    /// How the measured code stored its streams, as [`Storage::label`] writes it: `f32`,
    /// `bf16`, `bf16:f32` (params:state), `bf16~` (stochastic rounding).
    pub dtype: String,
    /// The host's SIMD features, detected at run time ([`host_features`]).
    pub host: String,
    /// Median time per element and step, in nanoseconds.
    pub ns_per_elem: f64,
    /// Bytes moved per second at the optimizer's byte count per element (the floor rows at
    /// their own), in GB/s.
    pub gbps: f64,
    /// GB/s over the best floor (copy or axpy) at the same size and threads.
    pub of_floor: Option<f64>,
    /// JIT rows only: the JIT's time over the `native128` loop's at the same size and threads
    /// (below 1: the JIT is faster). Note the direction: the inverse of `vs_native`'s, so that
    /// it reads as the issue's targets do ("JIT ≤ 1.05× the 128-bit loop").
    pub vs_native128: Option<f64>,
    /// Speed relative to the native loop at the same size and threads (above 1: faster).
    pub vs_native: Option<f64>,
    /// Many small tensors only, which layout they were stepped in: `shared` (all at the same
    /// step) or `staggered` (every other tensor one step ahead). Absent from every other
    /// record, the one big tensor they are compared with included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<&'static str>,
}

impl Record {
    /// A step of `n` elements in `tensors` tensors on `threads` threads that took `time` and
    /// moves `bytes` per element.
    fn step(
        optimizer: &str,
        implementation: &str,
        (n, tensors, threads): (usize, usize, usize),
        time: Duration,
        bytes: usize,
    ) -> Record {
        Record {
            optimizer: optimizer.to_string(),
            implementation: implementation.to_string(),
            isa: None,
            n,
            tensors,
            threads,
            dtype: DType::F32.name().to_string(),
            host: host_features().to_string(),
            ns_per_elem: ns_per_elem(time, n),
            gbps: (bytes * n) as f64 / time.as_secs_f64() / 1e9,
            of_floor: None,
            vs_native128: None,
            vs_native: None,
            steps: None,
        }
    }

    /// The record with [`Record::isa`] set to `isa`.
    fn with_isa(self, isa: Option<&str>) -> Record {
        Record {
            isa: isa.map(str::to_string),
            ..self
        }
    }

    /// A duration that is not per element (compile, fixed cost), in `ns_per_elem`.
    fn duration(optimizer: &str, implementation: &str, time: Duration) -> Record {
        Record {
            ns_per_elem: time.as_secs_f64() * 1e9,
            gbps: 0.0,
            ..Record::step(optimizer, implementation, (1, 1, 1), time, 0)
        }
    }
}

/// The host's SIMD features, detected at run time, space-separated: on x86-64 those of
/// `sse4.2 avx avx2 fma f16c avx512f avx512vl avx512bw avx512dq` the CPU has (and the OS
/// enabled); elsewhere the architecture's name (`aarch64`).
pub fn host_features() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let found = [
                ("sse4.2", is_x86_feature_detected!("sse4.2")),
                ("avx", is_x86_feature_detected!("avx")),
                ("avx2", is_x86_feature_detected!("avx2")),
                ("fma", is_x86_feature_detected!("fma")),
                ("f16c", is_x86_feature_detected!("f16c")),
                ("avx512f", is_x86_feature_detected!("avx512f")),
                ("avx512vl", is_x86_feature_detected!("avx512vl")),
                ("avx512bw", is_x86_feature_detected!("avx512bw")),
                ("avx512dq", is_x86_feature_detected!("avx512dq")),
            ];
            let names: Vec<&str> = found.iter().filter(|(_, f)| *f).map(|(n, _)| *n).collect();
            names.join(" ")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            std::env::consts::ARCH.to_string()
        }
    })
}

/// Bytes a step of `graph` moves per element at f32: every stream loaded or stored, 4 bytes
/// per access.
pub fn bytes_per_element(graph: &Graph) -> Result<usize> {
    bytes_per_element_in(graph, Storage::F32)
}

/// Bytes a step of `graph` moves per element with its streams stored as `storage` says:
/// every stream loaded or stored, at its element size per access.
pub fn bytes_per_element_in(graph: &Graph, storage: Storage) -> Result<usize> {
    let program = crate::passes::compile(graph)?;
    let stage = &program.stage;
    let mut loaded = vec![false; stage.n_streams as usize];
    let operands = stage
        .body
        .iter()
        .flat_map(|i| i.args())
        .chain(stage.stores.iter().map(|(_, v)| v));
    for a in operands {
        if let crate::program::ElemArg::Load(s) = a {
            loaded[*s as usize] = true;
        }
    }
    let size = |s: usize| match s {
        0 | 1 => storage.param.size(),
        _ => storage.state.size(),
    };
    let bytes = |accessed: &[bool]| -> usize {
        (accessed.iter().enumerate())
            .filter(|(_, &a)| a)
            .map(|(s, _)| size(s))
            .sum()
    };
    // Each phase before the last reads its streams once more.
    let phases: usize = program
        .phases
        .iter()
        .map(|phase| {
            let mut read = vec![false; phase.stage.n_streams as usize];
            let operands = phase.stage.body.iter().flat_map(|i| i.args());
            for a in operands.chain(phase.stage.results()) {
                if let crate::program::ElemArg::Load(s) = a {
                    read[*s as usize] = true;
                }
            }
            bytes(&read)
        })
        .sum();
    let stored: usize = stage.stores.iter().map(|(s, _)| size(*s as usize)).sum();
    Ok(bytes(&loaded) + stored + phases)
}

/// Median duration of `f`, repeated for at least `min_time` and 3 times (1 time when one run
/// takes longer than `min_time`), after one warm-up call.
pub(super) fn median(min_time: Duration, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    let runs = if start.elapsed() > min_time { 1 } else { 3 };
    timed(min_time, runs, f)
}

/// Median duration of `f`, called at least `runs` times and for at least `min_time` (but no
/// more than 1000 times once `runs` are done), without a warm-up call.
pub(super) fn timed(
    min_time: Duration,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < runs || (started.elapsed() < min_time && times.len() < 1000) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    Ok(middle(times))
}

/// The median of `times` (the upper one of an even count); `times` is not empty.
pub(super) fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ns_per_elem(t: Duration, n: usize) -> f64 {
    t.as_secs_f64() * 1e9 / n as f64
}

/// An optimizer over `tensors` tensors of `each` elements stored as `storage` says, with
/// gradients set, ready to step, compiling with `jit` if `executor` is the JIT.
pub(super) fn optimizer(
    graph: &Graph,
    (executor, jit): (Executor, &Jit),
    threads: usize,
    (tensors, each): (usize, usize),
    storage: Storage,
) -> Result<Optimizer> {
    fn fill<T: Element>(opt: &mut Optimizer, tensors: usize, each: usize) -> Result<()> {
        let g = opt.add_param_group(&[])?;
        let values = Array1::from_shape_fn(each, |i| T::from_f64(value(i)));
        let grad: Vec<T> = (0..each).map(|i| T::from_f64(gradient(i))).collect();
        for t in 0..tensors {
            let h = opt.add_param(g, &format!("p{t}"), &values)?;
            opt.set_grad(&h, &grad)?;
        }
        Ok(())
    }
    let mut opt = Optimizer::new(graph)?
        .with_executor(executor)
        .with_jit(jit.clone())
        .with_threads(threads)
        .with_precision(storage.precision(graph)?);
    match storage.param {
        DType::F32 => fill::<f32>(&mut opt, tensors, each)?,
        DType::F64 => fill::<f64>(&mut opt, tensors, each)?,
        DType::BF16 => fill::<half::bf16>(&mut opt, tensors, each)?,
        DType::F16 => fill::<half::f16>(&mut opt, tensors, each)?,
    }
    Ok(opt)
}

/// The benchmark's parameter value at element `i`.
fn value(i: usize) -> f64 {
    ((i % 1000) as f64 - 500.0) * 1e-3
}

/// The benchmark's gradient at element `i`.
pub(super) fn gradient(i: usize) -> f64 {
    ((i % 997) as f64 - 498.0) * 1e-3
}

/// Runs the suite, calling `progress(done, total, what)` before each measurement.
pub fn run(config: &Config, mut progress: impl FnMut(usize, usize, &str)) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let per_point = config.impls.len();
    // Many small tensors: three layouts, each timed once a round.
    let total = config.optimizers.len() * config.sizes.len() * config.threads.len() * per_point
        + usize::from(config.many_small.is_some()) * config.optimizers.len() * 3 * ROUNDS
        + usize::from(config.compile) * config.optimizers.len();
    let mut done = 0;
    // One JIT for every JIT record, so that its ISA is the one they ran.
    let jit = match config.target {
        Target::Host => Jit::global()?,
        target => Jit::for_target(target)?,
    };
    let jit_isa = jit.isa_name();
    let isa = |imp: Impl| match imp {
        Impl::Jit => Some(jit_isa.as_str()),
        _ => imp.native_isa().map(Isa::name),
    };
    let stored = config.storage;
    for (name, graph) in &config.optimizers {
        // The handwritten loops move f32; the optimizer rows their storage's bytes.
        let (f32_bytes, bytes) = (
            bytes_per_element(graph)?,
            bytes_per_element_in(graph, stored)?,
        );
        // The handwritten loop of a built-in, only for that very graph (an `.opt` file may
        // use a built-in's name for other maths).
        let native = NativeOptimizer::ALL
            .into_iter()
            .find(|o| o.name() == name)
            .filter(|_| optim::by_name(name).as_ref() == Some(graph));
        for &n in &config.sizes {
            for &threads in &config.threads {
                let mut point: Vec<Record> = Vec::new();
                for &imp in &config.impls {
                    progress(
                        done,
                        total,
                        &format!("{name} {} n={n} threads={threads}", imp.name()),
                    );
                    done += 1;
                    // The floors and handwritten loops are f32; the rest stored as configured.
                    let dtype = match imp {
                        Impl::Copy | Impl::Axpy | Impl::Read | Impl::Native | Impl::Native128 => {
                            Storage::F32
                        }
                        _ => stored,
                    };
                    let record = |time: Duration, bytes: usize| Record {
                        dtype: dtype.label(),
                        ..Record::step(name, imp.name(), (n, 1, threads), time, bytes)
                            .with_isa(isa(imp))
                    };
                    let time = match imp {
                        Impl::Copy => {
                            let (mut dst, src) = (stream(n, 0.0, 0)?, stream(n, 1.0, 1)?);
                            let (dst, src) = (dst.as_mut_slice(), src.as_slice());
                            Some((
                                measured(config, || floor::copy(dst, src, threads))?,
                                Floor::Copy.bytes_per_element(),
                            ))
                        }
                        Impl::Axpy => {
                            let (x, mut y) = (stream(n, 1.0, 1)?, stream(n, 0.5, 0)?);
                            let (x, y) = (x.as_slice(), y.as_mut_slice());
                            Some((
                                measured(config, || floor::axpy(1e-3, x, y, threads))?,
                                Floor::Axpy.bytes_per_element(),
                            ))
                        }
                        Impl::Read => {
                            let x = stream(n, 0.5, 1)?;
                            let x = x.as_slice();
                            Some((
                                measured(config, || floor::read(x, threads))?,
                                Floor::Read.bytes_per_element(),
                            ))
                        }
                        Impl::Native | Impl::Native128 => match (native, imp.native_isa()) {
                            (Some(native), Some(on)) => {
                                Some((native_time(config, (native, on), n, threads)?, f32_bytes))
                            }
                            _ => None,
                        },
                        Impl::ClipFused => {
                            let clipped = optim::clip_grad_norm(graph, 2.0)?;
                            let bytes = bytes_per_element_in(&clipped, stored)?;
                            let mut opt = optimizer(
                                &clipped,
                                (Executor::Jit, &jit),
                                threads,
                                (1, n),
                                config.storage,
                            )?;
                            Some((median(config.min_time, || opt.step().map(drop))?, bytes))
                        }
                        Impl::ClipUnfused => {
                            let mut opt = optimizer(
                                graph,
                                (Executor::Jit, &jit),
                                threads,
                                (1, n),
                                config.storage,
                            )?;
                            // A norm pass (read) and a scale pass (read and write) more.
                            let step = || {
                                opt.clip_grad_norm(1.0, 2.0, false)?;
                                opt.step().map(drop)
                            };
                            Some((median(config.min_time, step)?, bytes + 12))
                        }
                        Impl::AmpClipFused => {
                            let fused = optim::amp(&optim::clip_grad_norm(graph, 2.0)?)?;
                            let bytes = bytes_per_element_in(&fused, stored)?;
                            let mut opt = optimizer(
                                &fused,
                                (Executor::Jit, &jit),
                                threads,
                                (1, n),
                                config.storage,
                            )?;
                            let mut scaler = crate::GradScaler::new(1.0, 2.0, 0.5, 1 << 40)?;
                            let step = || {
                                scaler.step(&mut opt)?;
                                scaler.update();
                                Ok(())
                            };
                            Some((median(config.min_time, step)?, bytes))
                        }
                        Impl::AmpClipUnfused => {
                            let mut opt = optimizer(
                                graph,
                                (Executor::Jit, &jit),
                                threads,
                                (1, n),
                                config.storage,
                            )?;
                            let mut scaler = crate::GradScaler::new(1.0, 2.0, 0.5, 1 << 40)?;
                            // A check pass (read), an unscale pass (read and write), the
                            // clip's norm (read) and scale (read and write) passes more.
                            let step = || {
                                scaler.unscale(&mut opt)?;
                                opt.clip_grad_norm(1.0, 2.0, false)?;
                                scaler.step(&mut opt)?;
                                scaler.update();
                                Ok(())
                            };
                            Some((median(config.min_time, step)?, bytes + 24))
                        }
                        _ if n > config.interp_max && imp != Impl::Jit => None,
                        _ => {
                            let executor = imp.executor().expect("an executor");
                            let mut opt = optimizer(
                                graph,
                                (executor, &jit),
                                threads,
                                (1, n),
                                config.storage,
                            )?;
                            Some((median(config.min_time, || opt.step().map(drop))?, bytes))
                        }
                    };
                    if let Some((time, bytes)) = time {
                        point.push(record(time, bytes));
                    }
                }
                annotate(&mut point);
                records.extend(point);
            }
        }
        if let Some((count, each)) = config.many_small {
            let threads = *config.threads.iter().max().unwrap_or(&1);
            progress(done, total, &format!("{name} jit {count} tensors: setup"));
            let mut layouts = many_small(graph, &jit, threads, (count, each), stored)?;
            let labels: Vec<String> = layouts.iter().map(Layout::label).collect();
            let mut steps: Vec<_> = layouts
                .iter_mut()
                .map(|l| move || l.opt.step().map(drop))
                .collect();
            let times = alternated(config.min_time, &mut steps, |round, i| {
                let what = format!("{name} jit {} round {}/{ROUNDS}", labels[i], round + 1);
                progress(done, total, &what);
                done += 1;
            })?;
            for (layout, time) in layouts.iter().zip(times) {
                let point = (count * each, layout.tensors, threads);
                records.push(Record {
                    steps: layout.steps,
                    dtype: stored.label(),
                    ..Record::step(name, "jit", point, time, bytes).with_isa(isa(Impl::Jit))
                });
            }
        }
        if config.compile {
            progress(done, total, &format!("{name} compile"));
            done += 1;
            records.extend(compile_times(name, graph, config.target)?);
            // The fixed cost of a step: one tensor of 16 elements, one thread.
            let mut opt = optimizer(graph, (Executor::Jit, &jit), 1, (1, 16), config.storage)?;
            let t = median(config.min_time, || opt.step().map(drop))?;
            records.push(Record::duration(name, "step_overhead", t).with_isa(isa(Impl::Jit)));
        }
    }
    progress(total, total, "done");
    Ok(records)
}

/// A floor measurement: the floor functions time themselves (excluding thread start).
fn measured(config: &Config, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut best = Vec::new();
    let started = Instant::now();
    f()?;
    while best.len() < 3 || (started.elapsed() < config.min_time && best.len() < 1000) {
        best.push(f()?);
    }
    Ok(middle(best))
}

/// Stream `k` of `n` elements set to `value`, laid out as the flat store lays out its own
/// (aligned, staggered by stream, on huge pages where the OS allows), so that the floor and
/// native loops run on the same kind of memory as the JIT.
fn stream(n: usize, value: f32, k: usize) -> Result<AlignedBuf<f32>> {
    AlignedBuf::filled(n, value, k, true)
}

/// The native loop compiled for `isa` on `threads` threads of rayon's pool, each on its share
/// of the tensor.
fn native_time(
    config: &Config,
    (native, isa): (NativeOptimizer, Isa),
    n: usize,
    threads: usize,
) -> Result<Duration> {
    let slots = native.slots().len();
    let mut param = stream(n, 1.0, 0)?;
    let mut grad = stream(n, 0.0, 1)?;
    for (i, g) in grad.as_mut_slice().iter_mut().enumerate() {
        *g = ((i % 997) as f32 - 498.0) * 1e-3;
    }
    let mut state: Vec<AlignedBuf<f32>> = (0..slots)
        .map(|k| stream(n, 0.0, 2 + k))
        .collect::<Result<_>>()?;
    let (param, grad) = (param.as_mut_slice(), grad.as_slice());
    let mut step = 0u64;
    // Threads only where the runtime would use them too (see `runtime::GRAIN`).
    let threads = threads.min(n / crate::runtime::GRAIN).max(1);
    let chunk = n.div_ceil(threads).div_ceil(16) * 16;
    median(config.min_time, || {
        step += 1;
        // (param, grad, state) of each thread's share.
        type Piece<'a> = (&'a mut [f32], &'a [f32], Vec<&'a mut [f32]>);
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        let mut state_chunks: Vec<_> = state
            .iter_mut()
            .map(|s| s.as_mut_slice().chunks_mut(chunk))
            .collect();
        for (p, g) in param.chunks_mut(chunk).zip(grad.chunks(chunk)) {
            let s: Vec<&mut [f32]> = state_chunks
                .iter_mut()
                .map(|c| c.next().expect("same length"))
                .collect();
            pieces.push((p, g, s));
        }
        use rayon::prelude::*;
        pieces
            .into_par_iter()
            .map(|(p, g, mut s)| native.step_with(isa, step, p, g, &mut s))
            .collect::<Result<Vec<()>>>()?;
        Ok(())
    })
}

/// Fills the ratios of one (optimizer, n, threads) point.
fn annotate(point: &mut [Record]) {
    let floor = point
        .iter()
        .filter(|r| r.implementation == "copy" || r.implementation == "axpy")
        .map(|r| r.gbps)
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    let time_of = |implementation: &str| {
        point
            .iter()
            .find(|r| r.implementation == implementation)
            .map(|r| r.ns_per_elem)
    };
    let (native, native128) = (time_of("native"), time_of("native128"));
    for r in point.iter_mut() {
        r.of_floor = floor.map(|f| r.gbps / f);
        if !["copy", "axpy", "read"].contains(&r.implementation.as_str()) {
            r.vs_native = native.map(|t| t / r.ns_per_elem);
        }
        if r.implementation == "jit" {
            r.vs_native128 = native128.map(|t| r.ns_per_elem / t);
        }
    }
}

/// Cold compile (a fresh JIT each time) and cache hit, per compile, in `ns_per_elem`.
fn compile_times(name: &str, graph: &Graph, target: Target) -> Result<Vec<Record>> {
    let program = crate::passes::compile(graph)?;
    let mut cold = Vec::new();
    for _ in 0..21 {
        let jit = Jit::for_target(target)?;
        jit.compile(&program, DType::F32)?;
        cold.push(jit.stats().compile_time);
    }
    cold.sort();
    let jit = Jit::for_target(target)?;
    jit.compile(&program, DType::F32)?;
    let hits = 10_000;
    let start = Instant::now();
    for _ in 0..hits {
        jit.compile(&program, DType::F32)?;
    }
    let hit = start.elapsed() / hits;
    let isa = jit.isa_name();
    Ok(vec![
        Record::duration(name, "compile_cold", cold[10]).with_isa(Some(&isa)),
        Record::duration(name, "compile_hit", hit).with_isa(Some(&isa)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn alternated_rotates_the_order_and_times_each_every_round() {
        let calls = RefCell::new(Vec::new());
        let mut steps: Vec<_> = (0..3)
            .map(|i| {
                let calls = &calls;
                move || {
                    calls.borrow_mut().push(i);
                    Ok(())
                }
            })
            .collect();
        let mut order = Vec::new();
        let times = alternated(Duration::ZERO, &mut steps, |round, i| {
            order.push((round, i))
        })
        .expect("steps succeed");
        assert_eq!(times.len(), 3);
        let first_rounds: Vec<(usize, usize)> = order.iter().copied().take(9).collect();
        let rotated = [(0, 1, 2), (1, 2, 0), (2, 0, 1)];
        let expected: Vec<(usize, usize)> = (0..3)
            .flat_map(|round| {
                let (a, b, c) = rotated[round];
                [(round, a), (round, b), (round, c)]
            })
            .collect();
        assert_eq!(first_rounds, expected);
        assert_eq!(order.len(), 3 * ROUNDS);
        // With no time to fill, each timing is its 3 calls.
        let calls = calls.into_inner();
        assert_eq!(calls.len(), 3 * 3 * ROUNDS);
        assert_eq!(calls[..9], [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn middle_is_the_median() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(middle(ms(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(middle(ms(&[4, 1, 3, 2])), Duration::from_millis(3));
    }

    #[test]
    fn steps_is_serialized_only_when_present() {
        let time = Duration::from_millis(1);
        let one = Record::step("adam", "jit", (10, 1, 1), time, 16);
        let json = serde_json::to_string(&one).expect("serializes");
        assert!(!json.contains("steps"), "{json}");
        let many = Record {
            steps: Some("shared"),
            ..one
        };
        let json = serde_json::to_string(&many).expect("serializes");
        assert!(
            json.ends_with(r#""vs_native":null,"steps":"shared"}"#),
            "{json}"
        );
    }

    #[test]
    fn records_carry_their_isa_the_host_and_the_ratio_to_native128() {
        let time = Duration::from_millis(1);
        let one = Record::step("adam", "native", (10, 1, 1), time, 16);
        let json = serde_json::to_string(&one).expect("serializes");
        let host = serde_json::to_string(host_features()).expect("serializes");
        for field in [
            r#""isa":null"#,
            &format!(r#""host":{host}"#),
            r#""vs_native128":null"#,
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        let jit = Record {
            isa: Some("x86_64 sse3 avx".to_string()),
            vs_native128: Some(1.5),
            ..one
        };
        let json = serde_json::to_string(&jit).expect("serializes");
        assert!(json.contains(r#""isa":"x86_64 sse3 avx""#), "{json}");
        assert!(
            json.contains(r#""vs_native128":1.5,"vs_native":null"#),
            "{json}"
        );
    }

    #[test]
    fn only_jit_rows_get_a_ratio_to_native128_as_time_over_its_time() {
        let ms = Duration::from_millis;
        let mut point = vec![
            Record::step("adam", "jit", (1000, 1, 1), ms(3), 28),
            Record::step("adam", "native", (1000, 1, 1), ms(1), 28),
            Record::step("adam", "native128", (1000, 1, 1), ms(2), 28),
            Record::step("adam", "chunked", (1000, 1, 1), ms(4), 28),
        ];
        annotate(&mut point);
        let ratios: Vec<_> = point.iter().map(|r| r.vs_native128).collect();
        assert_eq!(ratios, [Some(1.5), None, None, None]);
        // `vs_native` keeps its direction: the native time over the row's.
        let jit_vs_native = point[0].vs_native.expect("native was measured");
        assert!((jit_vs_native - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn host_features_name_only_known_features() {
        let host = host_features();
        if cfg!(target_arch = "x86_64") {
            let known = [
                "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw",
                "avx512dq",
            ];
            assert!(
                host.split(' ').all(|f| f.is_empty() || known.contains(&f)),
                "{host}"
            );
        } else {
            assert_eq!(host, std::env::consts::ARCH);
        }
    }
}

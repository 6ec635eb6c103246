//! The JIT: compiles a [`Program`]'s stage for one dtype with Cranelift, and caches kernels
//! by (stage, dtype, ISA flags, unroll). Hyperparameters live in the scalar block, not in the
//! code, so changing one never recompiles.

mod abi;
mod convert;
mod emit;
mod pressure;
mod target;

use crate::program::{Program, Stage};
use crate::segment::Segment;
use crate::{DType, Error, Float, Layout, Result};
use abi::{CodeOwner, Entry};
use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Module, ModuleReloc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
pub use target::Target;

/// Code generation choices that change the kernel (and so are part of the cache key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JitOptions {
    /// Copies of the vector body per main-loop iteration (1, 2, 4 or 8).
    pub unroll: u32,
}

impl JitOptions {
    /// The unroll factor for stages without division or square root, chosen by measurement
    /// (`cargo bench --bench adam_step`): at an L2-resident size, ×4 runs SGD 1.55× and
    /// SGD-momentum 1.4× faster than ×1 and within 10 % of ×8, which compiles 45 % slower.
    pub const DEFAULT_UNROLL: u32 = 4;

    /// The unroll factor for stages with a division or a square root: these are bound by the
    /// divider, and Adam runs at the same speed at every factor, so ×2 (which compiles 25 %
    /// faster than ×4).
    pub const DIVIDER_BOUND_UNROLL: u32 = 2;

    /// Stages reading at least this many scalars are not unrolled. First chosen because a
    /// second body copy of RAdam, Adan or schedule-free AdamW (11–12 scalars) spilled when
    /// each copy broadcast its own scalars; since the loops hold or fold them once for every
    /// copy, nothing spills at ×2 either, but ×2 measured no faster (RAdam, RAdamW, Adan and
    /// schedule-free AdamW at 2^16 within 1 % of ×1: the divider bounds them) and ×1
    /// compiles faster.
    pub const MANY_SCALARS: u32 = 10;

    /// Stages of more instructions than this are not unrolled: the loop's own two or three
    /// instructions are nothing beside such a body, and each copy costs compile time. No
    /// built-in comes near (the largest, Adan, has 24).
    pub const LARGE_BODY: usize = 256;

    /// The options [`Jit::compile`] uses for `stage`: the unroll factor by the stage's kind.
    pub fn for_stage(stage: &Stage) -> JitOptions {
        let divides = stage
            .body
            .iter()
            .any(|i| matches!(i.op, crate::ir::Op::Div | crate::ir::Op::Sqrt));
        let unroll = if stage.n_scalars >= Self::MANY_SCALARS || stage.body.len() > Self::LARGE_BODY
        {
            1
        } else if divides {
            Self::DIVIDER_BOUND_UNROLL
        } else {
            Self::DEFAULT_UNROLL
        };
        // The main loop is emitted once per combination of its unswitched conditions (see
        // `emit::unswitched`): with two, halve the unroll factor so that the body copies, and
        // the compile time with them, stay those of one condition (≤ 0.5 ms per kernel,
        // `optjit bench`'s compile rows). Measured: SGD-momentum specialised for both of its
        // conditions at ×2 runs faster than for one at ×4 (its blend leaves the loop).
        let variants: u32 = 1 << emit::unswitched(stage).len();
        let unroll = (unroll / (variants / 2).max(1)).max(1);
        JitOptions { unroll }
    }
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            unroll: Self::DEFAULT_UNROLL,
        }
    }
}

/// Counters of a [`Jit`]'s cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Kernels compiled.
    pub compiles: u64,
    /// Requests served from the cache.
    pub hits: u64,
    /// Total time spent compiling.
    pub compile_time: Duration,
    /// Kernels dropped from the cache because it was full (see [`Jit::CACHE_CAPACITY`]).
    pub evicted: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    stage: Stage,
    /// Resolved to the stage's streams.
    layout: Layout,
    options: JitOptions,
}

/// A compiled stage for one [`Layout`]. Cheap to clone; keeps its code alive.
#[derive(Clone)]
pub struct Kernel {
    inner: Arc<KernelInner>,
}

struct KernelInner {
    entry: Entry,
    stage: Stage,
    _code: Arc<CodeOwner>,
}

impl Kernel {
    /// The type the kernel computes in.
    pub fn dtype(&self) -> DType {
        self.inner.entry.layout().compute()
    }

    /// The storage of every stream the kernel was compiled for (resolved to its streams).
    pub fn layout(&self) -> &Layout {
        self.inner.entry.layout()
    }

    /// Runs the kernel on `segments`: one call for all of them.
    ///
    /// Fails, before touching any buffer, on a compute type or stream dtype other than the
    /// kernel's, on stochastic rounding other than the kernel's, on streams or scalar blocks
    /// of the wrong count or length, and on overlapping written buffers.
    pub fn run<T: Float>(&self, segments: &mut [Segment<'_, T>]) -> Result<()> {
        self.inner.entry.run(&self.inner.stage, segments)
    }
}

/// A Cranelift JIT for the host CPU with its kernel cache. Clones share the cache.
#[derive(Clone)]
pub struct Jit {
    inner: Arc<Mutex<JitInner>>,
}

struct JitInner {
    /// The code module new kernels go into; replaced when the cache is emptied.
    code: Arc<CodeOwner>,
    /// The ISA most kernels are compiled with (Cranelift's backtracking register allocator).
    isa: OwnedTargetIsa,
    /// The same ISA with the single-pass register allocator, for large kernels (see
    /// [`emit::is_large`]).
    large_isa: OwnedTargetIsa,
    /// The most kernels the cache holds before it is emptied.
    capacity: usize,
    ctx: Context,
    fctx: FunctionBuilderContext,
    cache: HashMap<CacheKey, Kernel>,
    stats: JitStats,
    target: Target,
    /// Whether this host has every feature of `target`: kernels are compiled only if so.
    runs_here: bool,
    /// What kernels are compiled for: the target's frontend configuration and the vector
    /// registers the loops may fill with scalars.
    machine: emit::Machine,
}

fn codegen<E: std::fmt::Display>(e: E) -> Error {
    Error::Codegen {
        message: e.to_string(),
    }
}

impl Jit {
    /// A JIT for the host ISA (all its SIMD features enabled, `opt_level = speed`, the
    /// Cranelift verifier on in debug builds).
    pub fn new() -> Result<Jit> {
        Jit::for_target(Target::Host)
    }

    /// A JIT for `target`. Its kernels run only where the host has the target's features
    /// (else [`Jit::compile`] fails with [`Error::HostUnsupported`]); [`Jit::disassemble`]
    /// and [`Jit::clif`] work on any host, so the code for one class of CPU can be examined
    /// on another.
    ///
    /// ```
    /// use optjit::{optim, passes, DType, Jit, JitOptions, Target};
    ///
    /// let jit = Jit::for_target(Target::X64Avx2)?;
    /// let program = passes::compile(&optim::by_name("adam").expect("a built-in"))?;
    /// let asm = jit.disassemble(&program, DType::F32, JitOptions::for_stage(&program.stage))?;
    /// assert!(asm.contains("vdivps") && !asm.contains("zmm"));
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn for_target(target: Target) -> Result<Jit> {
        Jit::build(target, None)
    }

    /// A JIT for `target` that allocates scalars as if the target had `registers` vector
    /// registers: with fewer, the loops read more kernel scalars from memory at each use
    /// instead of holding them (with 0, every one). The results are the same bits whatever
    /// the count; it exists to test and measure that path on any machine.
    pub fn for_target_with_registers(target: Target, registers: usize) -> Result<Jit> {
        Jit::build(target, Some(registers))
    }

    fn build(target: Target, registers: Option<usize>) -> Result<Jit> {
        let mut flags = settings::builder();
        let verifier = if cfg!(debug_assertions) {
            "true"
        } else {
            "false"
        };
        for (name, value) in [
            ("opt_level", "speed"),
            ("is_pic", "false"),
            ("use_colocated_libcalls", "false"),
            ("enable_verifier", verifier),
            // A kernel whose frame outgrows a page (a large one's spilled values) probes
            // each page as it grows, so that it faults on the thread's guard page instead
            // of writing past it; smaller frames, every built-in's, have no probe.
            ("enable_probestack", "true"),
            ("probestack_strategy", "inline"),
        ] {
            flags.set(name, value).map_err(codegen)?;
        }
        let builder = target.isa_builder()?;
        let isa = builder
            .finish(settings::Flags::new(flags.clone()))
            .map_err(codegen)?;
        flags
            .set("regalloc_algorithm", "single_pass")
            .map_err(codegen)?;
        let large_isa = builder
            .finish(settings::Flags::new(flags))
            .map_err(codegen)?;
        let runs_here = target.runs_here();
        let machine = emit::Machine {
            frontend: isa.frontend_config(),
            registers: registers.unwrap_or_else(|| target::vector_registers(&*isa)),
        };
        let module = JITModule::new(JITBuilder::with_isa(isa.clone(), default_libcall_names()));
        let ctx = module.make_context();
        Ok(Jit {
            inner: Arc::new(Mutex::new(JitInner {
                code: Arc::new(CodeOwner {
                    module: Mutex::new(Some(module)),
                }),
                isa,
                large_isa,
                capacity: Self::CACHE_CAPACITY,
                ctx,
                fctx: FunctionBuilderContext::new(),
                cache: HashMap::new(),
                stats: JitStats::default(),
                target,
                runs_here,
                machine,
            })),
        })
    }

    /// The target this JIT compiles for.
    pub fn target(&self) -> Target {
        self.lock().target
    }

    /// The instruction set the kernels use, as Cranelift was configured: the architecture
    /// and its enabled SIMD features, e.g. `x86_64 sse3 ssse3 sse41 sse42 avx avx2 fma` (what `optjit bench`
    /// records beside each JIT row).
    pub fn isa_name(&self) -> String {
        target::describe(&*self.lock().isa)
    }

    /// The process-wide JIT used by default.
    pub fn global() -> Result<Jit> {
        static GLOBAL: OnceLock<Result<Jit>> = OnceLock::new();
        GLOBAL.get_or_init(Jit::new).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JitInner> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            // A panic while compiling can only have left the reusable contexts half built
            // (the cache is updated after a kernel is complete): start them afresh.
            let mut inner = poisoned.into_inner();
            inner.fctx = FunctionBuilderContext::new();
            inner.ctx.clear();
            self.inner.clear_poison();
            inner
        })
    }

    /// Cache counters.
    pub fn stats(&self) -> JitStats {
        self.lock().stats
    }

    /// The kernel of `program` for `layout` (a [`DType`] for every stream stored as it),
    /// from the cache or compiled now, with the options [`JitOptions::for_stage`] chooses.
    pub fn compile(&self, program: &Program, layout: impl Into<Layout>) -> Result<Kernel> {
        self.compile_with(program, layout, JitOptions::for_stage(&program.stage))
    }

    /// Like [`Jit::compile`], with explicit code generation options.
    pub fn compile_with(
        &self,
        program: &Program,
        layout: impl Into<Layout>,
        options: JitOptions,
    ) -> Result<Kernel> {
        self.compile_stage(&program.stage, layout, options)
    }

    /// The kernel of one stage (a program's last, or one of its [`crate::program::Phase`]s)
    /// for `layout`. A stage with reductions runs a fixed four body copies per iteration
    /// (its accumulation order, `crate::ir::reduce`), so `options.unroll` does not apply to
    /// it.
    pub fn compile_stage(
        &self,
        stage: &Stage,
        layout: impl Into<Layout>,
        options: JitOptions,
    ) -> Result<Kernel> {
        check_options(options)?;
        let layout = layout.into().resolve(stage.n_streams);
        let options = match stage.reductions.is_empty() {
            true => options,
            false => JitOptions { unroll: 1 },
        };
        let key = CacheKey {
            stage: stage.clone(),
            layout,
            options,
        };
        let mut inner = self.lock();
        if !inner.runs_here {
            return Err(Error::HostUnsupported {
                message: format!(
                    "kernels for {:?} need CPU features this host lacks",
                    inner.target
                ),
            });
        }
        if let Some(kernel) = inner.cache.get(&key) {
            let kernel = kernel.clone();
            inner.stats.hits += 1;
            return Ok(kernel);
        }
        stage.check()?;
        if inner.cache.len() >= inner.capacity {
            inner.empty_cache();
        }
        let start = Instant::now();
        let kernel = inner.build(&key)?;
        inner.stats.compiles += 1;
        inner.stats.compile_time += start.elapsed();
        inner.cache.insert(key, kernel.clone());
        Ok(kernel)
    }

    /// The most kernels a [`Jit`]'s cache holds (≈ 6.5 KB of code each, about 7 MB in all).
    /// When a kernel is compiled into a full cache, the cache is emptied first and later
    /// kernels go into new code memory: the kernels already handed out stay valid, and the
    /// memory of the evicted ones is returned once the last of them is dropped. A program
    /// keeps its kernel as long as it runs, so only a process that builds thousands of
    /// distinct optimizers recompiles any.
    pub const CACHE_CAPACITY: usize = 1024;

    /// Sets how many kernels the cache holds before it is emptied (at least 1; the default
    /// is [`Jit::CACHE_CAPACITY`]). A cache already fuller is emptied at the next compile.
    ///
    /// ```
    /// use optjit::{optim, passes, DType, Jit};
    ///
    /// let jit = Jit::new()?;
    /// jit.set_cache_capacity(1);
    /// let sgd = passes::compile(&optim::by_name("sgd").expect("a built-in"))?;
    /// let adam = passes::compile(&optim::by_name("adam").expect("a built-in"))?;
    /// let kernel = jit.compile(&sgd, DType::F32)?;
    /// jit.compile(&adam, DType::F32)?; // evicts sgd's kernel, which stays usable
    /// jit.compile(&sgd, DType::F32)?; // compiled again
    /// assert_eq!((jit.stats().compiles, jit.stats().evicted), (3, 2));
    /// # drop(kernel);
    /// # Ok::<(), optjit::Error>(())
    /// ```
    pub fn set_cache_capacity(&self, kernels: usize) {
        self.lock().capacity = kernels.max(1);
    }

    /// How many kernels the cache holds now.
    pub fn cached(&self) -> usize {
        self.lock().cache.len()
    }

    /// The machine code of `program`'s kernel for `layout`, as Cranelift's disassembly of
    /// its lowered instructions (register-allocated, before encoding), for this host.
    pub fn disassemble(
        &self,
        program: &Program,
        layout: impl Into<Layout>,
        options: JitOptions,
    ) -> Result<String> {
        check_options(options)?;
        program.stage.check()?;
        let layout = layout.into().resolve(program.stage.n_streams);
        let mut inner = self.lock();
        let isa = inner.isa_for(&program.stage);
        let JitInner { fctx, machine, .. } = &mut *inner;
        let mut ctx = Context::new();
        ctx.func = Function::with_name_signature(
            UserFuncName::user(0, 0),
            emit::signature(isa.default_call_conv()),
        );
        emit::build(
            &mut ctx.func,
            fctx,
            &program.stage,
            &layout,
            options.unroll,
            *machine,
        );
        ctx.set_disasm(true);
        let compiled = ctx
            .compile(&*isa, &mut Default::default())
            .map_err(|e| codegen(format!("{:?}", e.inner)))?;
        Ok(compiled.vcode.clone().unwrap_or_default())
    }

    /// The Cranelift IR of `program`'s kernel for `layout`, before Cranelift's
    /// optimisations. It depends on the target only through its vector registers (see
    /// [`Target`]): the calling convention printed is always System V.
    pub fn clif(
        &self,
        program: &Program,
        layout: impl Into<Layout>,
        options: JitOptions,
    ) -> Result<String> {
        check_options(options)?;
        program.stage.check()?;
        let layout = layout.into().resolve(program.stage.n_streams);
        let mut inner = self.lock();
        // A fixed calling convention, so that the printed IR is the same on every host.
        let machine = inner.machine;
        let call_conv = CallConv::SystemV;
        let mut func =
            Function::with_name_signature(UserFuncName::user(0, 0), emit::signature(call_conv));
        emit::build(
            &mut func,
            &mut inner.fctx,
            &program.stage,
            &layout,
            options.unroll,
            machine,
        );
        Ok(func.display().to_string())
    }
}

/// Test support: functions built by hand, compiled into a [`Jit`]'s code module.
#[cfg(test)]
impl Jit {
    /// Compiles a function of `n_params` i64 parameters and no result, in the target's
    /// default calling convention, whose body `body` emits after the entry block (given the
    /// parameters; it must end every block and may leave blocks unsealed). Returns the
    /// finalized code's address, the owner of its memory and Cranelift's disassembly.
    pub(crate) fn compile_test_function(
        &self,
        n_params: usize,
        body: impl FnOnce(&mut cranelift_frontend::FunctionBuilder<'_>, &[cranelift_codegen::ir::Value]),
    ) -> Result<(*const u8, Arc<CodeOwner>, String)> {
        use cranelift_codegen::ir::{types, AbiParam, Signature};
        let mut inner = self.lock();
        let isa = inner.isa.clone();
        let frontend = inner.machine.frontend;
        let JitInner {
            code, ctx, fctx, ..
        } = &mut *inner;
        let mut guard = code.module.lock().unwrap_or_else(|p| p.into_inner());
        let module = guard.as_mut().expect("module lives as long as the Jit");
        let mut sig = Signature::new(isa.default_call_conv());
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(types::I64), n_params));
        let id = module.declare_anonymous_function(&sig).map_err(codegen)?;
        module.clear_context(ctx);
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut b = cranelift_frontend::FunctionBuilder::new(&mut ctx.func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let params = b.block_params(entry).to_vec();
        body(&mut b, &params);
        b.seal_all_blocks();
        b.finalize(frontend);
        ctx.set_disasm(true);
        let defined = define(module, id, ctx, &*isa);
        let disassembly = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
        module.clear_context(ctx);
        defined?;
        module.finalize_definitions().map_err(codegen)?;
        let ptr = module.get_finalized_function(id);
        Ok((ptr, code.clone(), disassembly))
    }
}

/// Compiles `ctx`'s function with `isa` (the module's own, or the same target with another
/// register allocator) and defines it as `id` in `module`.
fn define(
    module: &mut JITModule,
    id: FuncId,
    ctx: &mut Context,
    isa: &dyn TargetIsa,
) -> Result<()> {
    ctx.compile(isa, &mut Default::default())
        .map_err(|e| codegen(format!("{:?}", e.inner)))?;
    let compiled = ctx.compiled_code().expect("compiled above");
    let alignment = u64::from(compiled.buffer.alignment);
    let relocs: Vec<ModuleReloc> = compiled
        .buffer
        .relocs()
        .iter()
        .map(|reloc| ModuleReloc::from_mach_reloc(reloc, &ctx.func, id))
        .collect();
    module
        .define_function_bytes(id, alignment, compiled.code_buffer(), &relocs)
        .map_err(codegen)
}

fn check_options(options: JitOptions) -> Result<()> {
    if matches!(options.unroll, 1 | 2 | 4 | 8) {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: "unroll",
            reason: "must be 1, 2, 4 or 8",
        })
    }
}

impl JitInner {
    /// The ISA `stage`'s kernel is compiled with: Cranelift's backtracking register
    /// allocator, or its single-pass one for a large kernel (see [`emit::is_large`]).
    fn isa_for(&self, stage: &Stage) -> OwnedTargetIsa {
        if emit::is_large(stage) {
            self.large_isa.clone()
        } else {
            self.isa.clone()
        }
    }

    /// Empties the cache; later kernels go into a new code module (the old one lives as
    /// long as a kernel compiled into it).
    fn empty_cache(&mut self) {
        let module = JITModule::new(JITBuilder::with_isa(
            self.isa.clone(),
            default_libcall_names(),
        ));
        self.code = Arc::new(CodeOwner {
            module: Mutex::new(Some(module)),
        });
        self.stats.evicted += self.cache.len() as u64;
        self.cache.clear();
    }

    fn build(&mut self, key: &CacheKey) -> Result<Kernel> {
        let isa = self.isa_for(&key.stage);
        let JitInner {
            code,
            ctx,
            fctx,
            machine,
            ..
        } = self;
        let mut guard = code.module.lock().unwrap_or_else(|p| p.into_inner());
        let module = guard.as_mut().expect("module lives as long as the Jit");
        let sig = emit::signature(isa.default_call_conv());
        let id = module.declare_anonymous_function(&sig).map_err(codegen)?;
        module.clear_context(ctx);
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        emit::build(
            &mut ctx.func,
            fctx,
            &key.stage,
            &key.layout,
            key.options.unroll,
            *machine,
        );
        let defined = define(module, id, ctx, &*isa);
        module.clear_context(ctx);
        defined?;
        let entry = Entry::finalize(module, id, key.layout.clone())?;
        drop(guard);
        Ok(Kernel {
            inner: Arc::new(KernelInner {
                entry,
                stage: key.stage.clone(),
                _code: code.clone(),
            }),
        })
    }
}

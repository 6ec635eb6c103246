//! The only `unsafe` of optjit: turning compiled code into a callable entry point, calling
//! it on checked segments, and releasing code memory.

use super::emit::{record_words, SCALAR_BYTES};
use crate::program::Stage;
use crate::segment::{validate, Segment};
use crate::{Error, Float, Layout, Result};
use cranelift_jit::JITModule;
use cranelift_module::FuncId;
use std::sync::Mutex;

type KernelFn = unsafe extern "C" fn(table: *const u64, n_segments: u64);

/// A compiled kernel's entry point, with the shape it was compiled for.
pub(crate) struct Entry {
    code: KernelFn,
    /// Resolved to the stage's streams.
    layout: Layout,
}

impl Entry {
    /// Finalizes `module` and returns the entry point of function `id`, which the caller
    /// defined with `emit::build` for `layout` and `emit::signature` in the module's default
    /// calling convention (its only caller, `JitInner::build`, does). The module must stay
    /// alive as long as the entry: kernels hold its `CodeOwner`.
    pub(crate) fn finalize(module: &mut JITModule, id: FuncId, layout: Layout) -> Result<Entry> {
        module.finalize_definitions().map_err(|e| Error::Codegen {
            message: e.to_string(),
        })?;
        let ptr = module.get_finalized_function(id);
        assert!(!ptr.is_null(), "finalized code has an address");
        // SAFETY: `ptr` is the start of finalized, executable code of a function whose
        // Cranelift signature is (i64, i64) -> () in the host's default calling convention,
        // which is the C ABI of `KernelFn` on the hosts Cranelift supports.
        let code = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(Entry { code, layout })
    }

    /// The layout the code was compiled for.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Runs the kernel compiled for `stage` on `segments`, after checking everything the
    /// generated code trusts.
    pub(crate) fn run<T: Float>(
        &self,
        stage: &Stage,
        segments: &mut [Segment<'_, T>],
    ) -> Result<()> {
        let compute = self.layout.compute();
        if T::DTYPE != compute {
            return Err(Error::DTypeMismatch {
                expected: compute,
                actual: T::DTYPE,
            });
        }
        validate(stage, segments)?;
        for seg in segments.iter() {
            for s in 0..stage.n_streams {
                if seg.dtype(s) != self.layout.dtype(s) {
                    return Err(Error::DTypeMismatch {
                        expected: self.layout.dtype(s),
                        actual: seg.dtype(s),
                    });
                }
            }
            // Compared element by element: the lists are short (usually empty), and a
            // slice comparison calls `memcmp` even for empty slices — once per segment.
            let stochastic = self.layout.stochastic();
            let same = seg.noise.streams.len() == stochastic.len()
                && seg
                    .noise
                    .streams
                    .iter()
                    .zip(stochastic)
                    .all(|(a, b)| a == b);
            if !same {
                return Err(Error::InvalidOption {
                    option: "stochastic rounding",
                    reason: "a segment's stochastic streams differ from its kernel's layout",
                });
            }
        }
        // A kernel never calls back into Rust, so the borrow cannot be taken twice; a caller
        // that panicked cannot have left it taken either (the guard is dropped). While the
        // thread's locals are torn down, a call gets tables of its own.
        let called = TABLES.try_with(|t| self.call(stage, segments, &mut t.borrow_mut()));
        match called {
            Ok(result) => result,
            Err(_) => self.call(stage, segments, &mut Tables::default()),
        }
    }

    /// Fills `tables` for `segments` (which `validate` accepted) and calls the kernel.
    fn call<T: Float>(
        &self,
        stage: &Stage,
        segments: &mut [Segment<'_, T>],
        tables: &mut Tables,
    ) -> Result<()> {
        let Tables { records, scalars } = &mut *tables;
        fill(stage, &self.layout, segments, records, scalars)?;
        // SAFETY: the code was generated from `stage`, which `Jit::compile_with` checked with
        // `Stage::check` (operands in range, no store to the grad stream); `validate` checked
        // that every segment has `n_streams` streams of equal length and a scalar block of
        // `n_scalars` entries, each aligned for its element type, and that no written stream
        // overlaps any other buffer, and that a reducing stage's segments have `partials` of
        // one f64 per reduction and block of `ir::reduce::BLOCK` elements; `run` checked that
        // each stream's dtype is the layout's the code was compiled for (so the code reads
        // and writes each stream with its element size) and `T` its compute type; `fill`
        // made one record of `emit::record_words` words per segment (header, stream pointers,
        // partials if the stage reduces, generator key and index if the layout rounds
        // stochastically), each pointing to a copy of the segment's scalar block in
        // 16-byte-aligned vectors of `SCALAR_BYTES` inside `scalars`, which did not move
        // after (`fill` checks) and is neither touched nor freed until the call returns; the
        // code memory lives as long as `self` (the kernel holds its `CodeOwner`); the
        // exclusive borrows of `segments` last for the call.
        unsafe { (self.code)(records.as_ptr(), segments.len() as u64) };
        tables.trim();
        Ok(())
    }
}

/// One kernel scalar in every lane of a 16-byte vector: the scalar block's layout in the
/// generated code (`emit::SCALAR_BYTES`).
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Lanes([u64; 2]);

const _: () = assert!(std::mem::size_of::<Lanes>() == SCALAR_BYTES);

impl Lanes {
    fn splat<T: Float>(x: T) -> Lanes {
        let mut lanes = Lanes::default();
        let bytes = bytemuck::bytes_of(&x);
        for lane in bytemuck::bytes_of_mut(&mut lanes.0).chunks_exact_mut(bytes.len()) {
            lane.copy_from_slice(bytes);
        }
        lanes
    }
}

/// A thread's segment table and scalar vectors, kept from call to call so that a call
/// allocates only when it needs more room than the one before it on this thread.
#[derive(Default)]
struct Tables {
    records: Vec<u64>,
    scalars: Vec<Lanes>,
}

impl Tables {
    /// Bytes a thread keeps between calls whatever the last call used.
    const KEEP: usize = 1 << 16;

    /// Frees, beyond [`Tables::KEEP`], what this call used less than half of. So a thread
    /// keeps the tables of a large call until a call of less than half its size (a training
    /// loop's worker, stepping the same tensors every step, allocates them once); a thread
    /// that made one large call and no other keeps them. They take 8 bytes per stream and
    /// segment, and 16 per scalar of each distinct block (4 times an f32 block).
    fn trim(&mut self) {
        fn trim<E>(v: &mut Vec<E>) {
            let keep = Tables::KEEP / std::mem::size_of::<E>();
            if v.capacity() > keep.max(2 * v.len()) {
                v.clear();
                v.shrink_to(keep);
            }
        }
        trim(&mut self.records);
        trim(&mut self.scalars);
    }
}

thread_local! {
    static TABLES: std::cell::RefCell<Tables> = std::cell::RefCell::default();
}

/// Fills `records` with one record per segment and `scalars` with their scalar blocks as
/// vectors; consecutive segments with the same block share one copy.
fn fill<T: Float>(
    stage: &Stage,
    layout: &Layout,
    segments: &mut [Segment<'_, T>],
    records: &mut Vec<u64>,
    scalars: &mut Vec<Lanes>,
) -> Result<()> {
    let reduces = !stage.reductions.is_empty();
    let stochastic = !layout.stochastic().is_empty();
    let words = record_words(stage, layout);
    let n_scalars = stage.n_scalars as usize;
    let mut blocks: usize = 0;
    let mut previous: Option<*const T> = None;
    for seg in segments.iter() {
        if previous != Some(seg.scalars.as_ptr()) {
            blocks += 1;
            previous = Some(seg.scalars.as_ptr());
        }
    }
    records.clear();
    scalars.clear();
    let words = words.checked_mul(segments.len());
    reserve(records, words, "the kernel's segment table")?;
    // At least one vector, so that the pointer is valid even with no scalars. Pushing never
    // moves the vectors then (checked below).
    let vectors = blocks.checked_mul(n_scalars).map(|v| v.max(1));
    reserve(scalars, vectors, "the kernel's scalars")?;
    let base = scalars.as_ptr();
    previous = None;
    for seg in segments.iter_mut() {
        if previous != Some(seg.scalars.as_ptr()) {
            previous = Some(seg.scalars.as_ptr());
            scalars.extend(seg.scalars.iter().map(|&x| Lanes::splat(x)));
        }
        let block = scalars[scalars.len().saturating_sub(n_scalars)..].as_ptr();
        records.push(seg.param.len() as u64);
        records.push(block as u64);
        records.push(seg.param.as_mut_ptr() as u64);
        records.push(seg.grad.addr() as u64);
        for s in seg.state.iter_mut() {
            records.push(s.as_mut_ptr() as u64);
        }
        if reduces {
            records.push(seg.partials.as_mut_ptr() as u64);
        }
        if stochastic {
            let [k0, k1] = seg.noise.key;
            records.push(u64::from(k0) | u64::from(k1) << 32);
            records.push(u64::from(seg.noise.index));
        }
    }
    // Every record's block points into the vectors as they are now.
    assert_eq!(
        base,
        scalars.as_ptr(),
        "the scalar vectors never move while filled"
    );
    Ok(())
}

/// Room for `n` more elements in `v` (`None`: more than a `usize` counts), or
/// [`Error::OutOfMemory`].
fn reserve<E>(v: &mut Vec<E>, n: Option<usize>, what: &'static str) -> Result<()> {
    let bytes = n.map_or(usize::MAX, |n| n.saturating_mul(std::mem::size_of::<E>()));
    match n.map(|n| v.try_reserve(n)) {
        Some(Ok(())) => Ok(()),
        _ => Err(Error::OutOfMemory { what, bytes }),
    }
}

/// Owns a JIT module and frees its code memory when the last kernel using it is gone.
pub(crate) struct CodeOwner {
    pub(crate) module: Mutex<Option<JITModule>>,
}

impl Drop for CodeOwner {
    fn drop(&mut self) {
        let module = self.module.get_mut().map(Option::take);
        if let Ok(Some(module)) = module {
            // SAFETY: every `Kernel` and the `Jit` hold an `Arc<CodeOwner>`; this runs when
            // the last of them is dropped, so no entry point into this memory remains.
            unsafe { module.free_memory() };
        }
    }
}

/// Test support: a compiled element-wise map `f(src, dst, n)` from
/// `Jit::compile_test_function`, which reads `n` elements of `src_size` bytes at `src` and
/// writes `n` elements of `dst_size` bytes at `dst` (the shape `convert`'s tests build).
#[cfg(test)]
pub(crate) struct TestMap {
    code: unsafe extern "C" fn(src: *const u8, dst: *mut u8, n: u64),
    src_size: usize,
    dst_size: usize,
    _code: std::sync::Arc<CodeOwner>,
}

#[cfg(test)]
impl TestMap {
    /// The map at `ptr`, which `Jit::compile_test_function` returned with `owner` for a
    /// function of 3 parameters whose body accesses memory as [`TestMap`] says, for these
    /// element sizes.
    pub(crate) fn new(
        ptr: *const u8,
        owner: std::sync::Arc<CodeOwner>,
        src_size: usize,
        dst_size: usize,
    ) -> TestMap {
        assert!(!ptr.is_null(), "finalized code has an address");
        // SAFETY: `ptr` is the start of finalized, executable code of a function whose
        // Cranelift signature is (i64, i64, i64) -> () in the host's default calling
        // convention (`compile_test_function` with 3 parameters), which is the C ABI of
        // the pointer type on the hosts Cranelift supports; `owner` keeps the code alive.
        let code = unsafe {
            std::mem::transmute::<*const u8, unsafe extern "C" fn(*const u8, *mut u8, u64)>(ptr)
        };
        TestMap {
            code,
            src_size,
            dst_size,
            _code: owner,
        }
    }

    /// Runs the map over all of `src` into `dst`, which must hold as many elements.
    pub(crate) fn run(&self, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len() % self.src_size, 0, "whole source elements");
        let n = src.len() / self.src_size;
        assert_eq!(
            dst.len(),
            n * self.dst_size,
            "a destination element per source one"
        );
        // SAFETY: the function reads `n` elements of `src_size` bytes from `src` and writes
        // `n` of `dst_size` bytes to `dst` (what `new`'s caller promised), and both slices
        // hold exactly that many (checked above); `dst` is borrowed exclusively for the call;
        // the code lives as long as `self`.
        unsafe { (self.code)(src.as_ptr(), dst.as_mut_ptr(), n as u64) };
    }
}

//! The only `unsafe` of optjit: turning compiled code into a callable entry point, calling
//! it on checked segments, and releasing code memory.

use super::emit::RECORD_HEADER;
use crate::program::Stage;
use crate::segment::{validate, Segment};
use crate::{DType, Error, Float, Result};
use cranelift_jit::JITModule;
use cranelift_module::FuncId;
use std::sync::Mutex;

type KernelFn = unsafe extern "C" fn(table: *const u64, n_segments: u64);

/// A compiled kernel's entry point, with the shape it was compiled for.
pub(crate) struct Entry {
    code: KernelFn,
    dtype: DType,
}

impl Entry {
    /// Finalizes `module` and returns the entry point of function `id`, which the caller
    /// defined with `emit::build` for `dtype` and `emit::signature` in the module's default
    /// calling convention (its only caller, `JitInner::build`, does). The module must stay
    /// alive as long as the entry: kernels hold its `CodeOwner`.
    pub(crate) fn finalize(module: &mut JITModule, id: FuncId, dtype: DType) -> Result<Entry> {
        module.finalize_definitions().map_err(|e| Error::Codegen {
            message: e.to_string(),
        })?;
        let ptr = module.get_finalized_function(id);
        assert!(!ptr.is_null(), "finalized code has an address");
        // SAFETY: `ptr` is the start of finalized, executable code of a function whose
        // Cranelift signature is (i64, i64) -> () in the host's default calling convention,
        // which is the C ABI of `KernelFn` on the hosts Cranelift supports.
        let code = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(Entry { code, dtype })
    }

    /// Runs the kernel compiled for `stage` on `segments`, after checking everything the
    /// generated code trusts.
    pub(crate) fn run<T: Float>(
        &self,
        stage: &Stage,
        segments: &mut [Segment<'_, T>],
    ) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                expected: self.dtype,
                actual: T::DTYPE,
            });
        }
        validate(stage, segments)?;
        let words = RECORD_HEADER + stage.n_streams as usize;
        let mut table: Vec<u64> = Vec::with_capacity(words * segments.len());
        for seg in segments.iter_mut() {
            table.push(seg.param.len() as u64);
            table.push(seg.scalars.as_ptr() as u64);
            table.push(seg.param.as_mut_ptr() as u64);
            table.push(seg.grad.as_ptr() as u64);
            for s in seg.state.iter_mut() {
                table.push(s.as_mut_ptr() as u64);
            }
        }
        // SAFETY: the code was generated from `stage`, which `Jit::compile_with` checked with
        // `Stage::check` (operands in range, no store to the grad stream); `validate` checked
        // that every segment has `n_streams` streams of equal length and a scalar block of
        // `n_scalars` entries, all aligned for `T`, and that no written stream overlaps any
        // other buffer; `T` is the dtype the code was compiled for; the table has one record
        // of `words` words per segment; the code memory lives as long as `self` (the kernel
        // holds its `CodeOwner`); the exclusive borrows of `segments` last for the call.
        unsafe { (self.code)(table.as_ptr(), segments.len() as u64) };
        Ok(())
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

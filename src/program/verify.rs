//! The program verifier: every reference points backwards, every index exists, each stream is
//! stored at most once and the grad never. A failure is always an optjit bug.

use super::{ElemArg, Program, ScalarInst, Stage, GRAD_STREAM};
use crate::{Error, Result};

/// Checks the invariants of a [`Program`]; `pass` names the pass that produced it.
pub fn verify_program(p: &Program, pass: &'static str) -> Result<()> {
    let fail = |message: String| Err(Error::Verify { pass, message });
    for (i, inst) in p.prologue.insts.iter().enumerate() {
        let ok = match *inst {
            ScalarInst::Const(_) | ScalarInst::Step => true,
            ScalarInst::Hyper(n) => (n as usize) < p.hypers.len(),
            ScalarInst::State(n) => p.slots.get(n as usize).is_some_and(|s| s.kind.is_scalar()),
            ScalarInst::Apply(op, args) => args[..op.arity()].iter().all(|&a| (a as usize) < i),
            // After the phase that computes it.
            ScalarInst::Reduced(n) => {
                reduced_by(p, n).is_some_and(|k| (i as u32) >= p.phases[k].prologue_end)
            }
        };
        if !ok {
            return fail(format!("prologue ${i} has a bad operand"));
        }
    }
    let n_values = p.prologue.insts.len();
    if p.prologue
        .kernel_scalars
        .iter()
        .any(|&s| s as usize >= n_values)
    {
        return fail("a kernel scalar names a missing prologue value".to_string());
    }
    if p.prologue.skip.is_some_and(|s| s as usize >= n_values) {
        return fail("the skip condition names a missing prologue value".to_string());
    }
    for &(slot, value) in &p.prologue.state_updates {
        let scalar_slot = p
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.kind.is_scalar());
        if !scalar_slot || value as usize >= n_values {
            return fail(format!("bad scalar state update of slot {slot}"));
        }
    }
    let mut end = 0;
    for (k, phase) in p.phases.iter().enumerate() {
        let ok = phase.prologue_end >= end
            && phase.prologue_end as usize <= n_values
            && phase.kernel_scalars.iter().all(|&s| s < phase.prologue_end)
            && phase.stage.n_scalars as usize == phase.kernel_scalars.len()
            && phase.stage.n_streams == p.stage.n_streams
            && phase.scopes.len() == phase.stage.reductions.len()
            && !phase.stage.reductions.is_empty()
            && phase.stage.stores.is_empty();
        if !ok {
            return fail(format!("phase {k} is malformed"));
        }
        end = phase.prologue_end;
        phase
            .stage
            .check()
            .or_else(|e| fail(format!("phase {k}: {e}")))?;
    }
    if !p.stage.reductions.is_empty() {
        return fail("the last stage reduces".to_string());
    }
    if p.stage.n_scalars as usize != p.prologue.kernel_scalars.len() {
        return fail("scalar block length differs from the prologue's list".to_string());
    }
    if p.stage.n_streams as usize != 2 + p.element_slots().count() {
        return fail("stream count differs from the element slots".to_string());
    }
    p.stage.check().or_else(|e| match e {
        Error::InvalidProgram { reason } => fail(reason),
        e => fail(e.to_string()),
    })
}

impl Stage {
    /// Checks that the stage is well formed, as every executor requires: at least the param
    /// and grad streams, operands in range and referring only to earlier results, no
    /// scalar-only op, each stream stored at most once and the grad never.
    ///
    /// Stages made by [`crate::passes::compile`] always are; the JIT and the interpreters
    /// check anyway, since `Stage`'s fields are public and it can be deserialized.
    pub fn check(&self) -> Result<()> {
        let too_large = [
            (
                "streams",
                self.n_streams as usize,
                Stage::MAX_STREAMS as usize,
            ),
            (
                "scalars",
                self.n_scalars as usize,
                Stage::MAX_SCALARS as usize,
            ),
            ("instructions", self.body.len(), Stage::MAX_INSTRUCTIONS),
        ];
        if let Some(&(what, count, limit)) = too_large.iter().find(|(_, n, max)| n > max) {
            return Err(Error::ProgramTooLarge { what, count, limit });
        }
        check_stage(self).map_err(|reason| Error::InvalidProgram { reason })
    }

    /// The most scalars a stage may read: far above any optimizer's (Adan's 12), and small
    /// enough that generated code addresses each one with an immediate offset.
    pub const MAX_SCALARS: u32 = 1 << 16;

    /// The most streams (param, grad and element state slots) a stage may have.
    pub const MAX_STREAMS: u32 = 1 << 12;

    /// The most instructions a stage may have: far above any optimizer's (Adan's 24), and
    /// few enough that the JIT compiles any stage within the limits in about a second
    /// (README, "Limits").
    pub const MAX_INSTRUCTIONS: usize = 1 << 15;
}

/// The phase whose stage computes reduction `n` (numbered over the phases in order).
fn reduced_by(p: &Program, n: u32) -> Option<usize> {
    let mut first = 0;
    for (k, phase) in p.phases.iter().enumerate() {
        let count = phase.stage.reductions.len() as u32;
        if n < first + count {
            return Some(k);
        }
        first += count;
    }
    None
}

/// The stage's own invariants; `Err` says what is wrong.
fn check_stage(stage: &Stage) -> std::result::Result<(), String> {
    if stage.n_streams < 2 {
        return Err(format!(
            "{} streams; param and grad are always there",
            stage.n_streams
        ));
    }
    let arg_ok = |a: &ElemArg, i: usize| match *a {
        ElemArg::Load(s) => s < stage.n_streams,
        ElemArg::Scalar(k) => k < stage.n_scalars,
        ElemArg::Value(v) => (v as usize) < i,
    };
    for (i, inst) in stage.body.iter().enumerate() {
        if inst.op.scalar_only() {
            return Err(format!("%{i}: {} in the element stage", inst.op.name()));
        }
        if !inst.args().iter().all(|a| arg_ok(a, i)) {
            return Err(format!(
                "%{i} has an operand out of range or not yet computed"
            ));
        }
    }
    for (r, (_, value)) in stage.reductions.iter().enumerate() {
        if !arg_ok(value, stage.body.len()) {
            return Err(format!("reduction {r} has a bad value"));
        }
    }
    let mut stored = vec![false; stage.n_streams as usize];
    for (stream, value) in &stage.stores {
        if *stream == GRAD_STREAM || *stream >= stage.n_streams || stored[*stream as usize] {
            return Err(format!("bad store to stream {stream}"));
        }
        stored[*stream as usize] = true;
        if !arg_ok(value, stage.body.len()) {
            return Err(format!("store to stream {stream} has a bad value"));
        }
    }
    Ok(())
}

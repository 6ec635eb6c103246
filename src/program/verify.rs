//! The program verifier: every reference points backwards, every index exists, each stream is
//! stored at most once and the grad never. A failure is always an optjit bug.

use super::{ElemArg, Program, ScalarInst, GRAD_STREAM};
use crate::ir::SlotKind;
use crate::{Error, Result};

/// Checks the invariants of a [`Program`]; `pass` names the pass that produced it.
pub fn verify_program(p: &Program, pass: &'static str) -> Result<()> {
    let fail = |message: String| Err(Error::Verify { pass, message });
    for (i, inst) in p.prologue.insts.iter().enumerate() {
        let ok = match *inst {
            ScalarInst::Const(_) | ScalarInst::Step => true,
            ScalarInst::Hyper(n) => (n as usize) < p.hypers.len(),
            ScalarInst::State(n) => p
                .slots
                .get(n as usize)
                .is_some_and(|s| s.kind == SlotKind::Scalar),
            ScalarInst::Apply(op, args) => args[..op.arity()].iter().all(|&a| (a as usize) < i),
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
    for &(slot, value) in &p.prologue.state_updates {
        let scalar_slot = p
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.kind == SlotKind::Scalar);
        if !scalar_slot || value as usize >= n_values {
            return fail(format!("bad scalar state update of slot {slot}"));
        }
    }
    let stage = &p.stage;
    if stage.n_scalars as usize != p.prologue.kernel_scalars.len() {
        return fail("scalar block length differs from the prologue's list".to_string());
    }
    if stage.n_streams as usize != 2 + p.element_slots().count() {
        return fail("stream count differs from the element slots".to_string());
    }
    let arg_ok = |a: &ElemArg, i: usize| match *a {
        ElemArg::Load(s) => s < stage.n_streams,
        ElemArg::Scalar(k) => k < stage.n_scalars,
        ElemArg::Value(v) => (v as usize) < i,
    };
    for (i, inst) in stage.body.iter().enumerate() {
        if inst.op.scalar_only() {
            return fail(format!("%{i}: {} in the element stage", inst.op.name()));
        }
        if !inst.args().iter().all(|a| arg_ok(a, i)) {
            return fail(format!("%{i} has a bad operand"));
        }
    }
    let mut stored = vec![false; stage.n_streams as usize];
    for (stream, value) in &stage.stores {
        if *stream == GRAD_STREAM || *stream >= stage.n_streams || stored[*stream as usize] {
            return fail(format!("bad store to stream {stream}"));
        }
        stored[*stream as usize] = true;
        if !arg_ok(value, stage.body.len()) {
            return fail(format!("store to stream {stream} has a bad value"));
        }
    }
    Ok(())
}

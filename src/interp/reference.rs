//! The reference interpreter: runs a stage element by element in the compute type.
//!
//! [`eval_op`] (in `ir`) is the semantic definition of every [`Op`](crate::ir::Op); constant
//! folding and the prologue (in f64) use it too, and the JIT must agree with it bit for bit.

pub use crate::ir::eval_op;
use crate::program::{ElemArg, Stage};
use crate::segment::{validate, Segment};
use crate::{Float, Result};

/// Runs `stage` over `segments`, one element at a time.
pub fn run<T: Float>(stage: &Stage, segments: &mut [Segment<'_, T>]) -> Result<()> {
    stage.check()?;
    validate(stage, segments)?;
    let mut values = vec![T::ZERO; stage.body.len()];
    let mut results = vec![T::ZERO; stage.stores.len()];
    let mut operands: Vec<Vec<T>> = vec![Vec::new(); stage.reductions.len()];
    for seg in segments.iter_mut() {
        operands.iter_mut().for_each(Vec::clear);
        for i in 0..seg.len() {
            for (j, inst) in stage.body.iter().enumerate() {
                let get = |a: &ElemArg| match *a {
                    ElemArg::Load(s) => seg.load(s, i),
                    ElemArg::Scalar(k) => seg.scalars[k as usize],
                    ElemArg::Value(v) => values[v as usize],
                };
                let args = inst.args();
                let arg = |k: usize| get(&args[k.min(args.len() - 1)]);
                values[j] = eval_op(inst.op, arg(0), arg(1), arg(2));
            }
            // Every load of element i happens before any store to it.
            for (r, (_, value)) in results.iter_mut().zip(&stage.stores) {
                *r = match *value {
                    ElemArg::Load(s) => seg.load(s, i),
                    ElemArg::Scalar(k) => seg.scalars[k as usize],
                    ElemArg::Value(v) => values[v as usize],
                };
            }
            for (xs, (_, value)) in operands.iter_mut().zip(&stage.reductions) {
                xs.push(match *value {
                    ElemArg::Load(s) => seg.load(s, i),
                    ElemArg::Scalar(k) => seg.scalars[k as usize],
                    ElemArg::Value(v) => values[v as usize],
                });
            }
            for (r, (stream, _)) in results.iter().zip(&stage.stores) {
                seg.store(*stream, i, *r);
            }
        }
        super::write_partials(stage, &operands, seg.partials);
    }
    Ok(())
}

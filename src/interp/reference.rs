//! The reference interpreter: runs a stage element by element in the compute type.
//!
//! [`eval_op`] is the semantic definition of every [`Op`]; constant folding and the prologue
//! (in f64) use it too, and the JIT must agree with it bit for bit.

use crate::ir::Op;
use crate::program::{ElemArg, Stage};
use crate::segment::{validate, Segment};
use crate::{Float, Result};

/// Applies `op` to its operands (`b` and `c` are ignored by ops that do not take them).
#[inline]
pub fn eval_op<T: Float>(op: Op, a: T, b: T, c: T) -> T {
    let truth = |t: bool| if t { T::ONE } else { T::ZERO };
    match op {
        Op::Neg => -a,
        Op::Abs => a.abs(),
        Op::Sqrt => a.sqrt(),
        Op::Sign => {
            if a > T::ZERO {
                T::ONE
            } else if a < T::ZERO {
                -T::ONE
            } else {
                a
            }
        }
        Op::Exp => a.exp(),
        Op::Ln => a.ln(),
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / b,
        Op::Min => {
            if a.is_nan() || b.is_nan() {
                a + b
            } else if a == b {
                // Equal operands differ at most in the sign of zero: -0 is the minimum.
                if a.is_sign_negative() {
                    a
                } else {
                    b
                }
            } else if a < b {
                a
            } else {
                b
            }
        }
        Op::Max => {
            if a.is_nan() || b.is_nan() {
                a + b
            } else if a == b {
                if a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if a > b {
                a
            } else {
                b
            }
        }
        Op::Pow => a.powf(b),
        Op::Eq => truth(a == b),
        Op::Ne => truth(a != b),
        Op::Lt => truth(a < b),
        Op::Le => truth(a <= b),
        Op::Gt => truth(a > b),
        Op::Ge => truth(a >= b),
        Op::Select => {
            if a != T::ZERO {
                b
            } else {
                c
            }
        }
        Op::Fma => a.mul_add(b, c),
    }
}

/// Runs `stage` over `segments`, one element at a time.
pub fn run<T: Float>(stage: &Stage, segments: &mut [Segment<'_, T>]) -> Result<()> {
    stage.check()?;
    validate(stage, segments)?;
    let mut values = vec![T::ZERO; stage.body.len()];
    let mut results = vec![T::ZERO; stage.stores.len()];
    for seg in segments.iter_mut() {
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
            for (r, (stream, _)) in results.iter().zip(&stage.stores) {
                seg.store(*stream, i, *r);
            }
        }
    }
    Ok(())
}

//! The eager evaluator: each instruction of the stage runs over the whole segment and
//! allocates its result array, the way an unfused framework executes an optimizer. It is the
//! baseline fusion is measured against, and bit-exact with the reference interpreter.

use super::eval_op;
use crate::ir::Op;
use crate::program::{ElemArg, Stage};
use crate::segment::{validate, Segment};
use crate::{Float, Result};
use ndarray::{Array1, ArrayView1, ShapeBuilder, Zip};

/// Runs `stage` over `segments`, one op at a time over whole arrays.
pub fn run<T: Float>(stage: &Stage, segments: &mut [Segment<'_, T>]) -> Result<()> {
    stage.check()?;
    validate(stage, segments)?;
    for seg in segments.iter_mut() {
        let results = {
            let seg = &*seg;
            // Streams not stored as `T`, widened once.
            let mut scratch: Vec<Vec<T>> = vec![Vec::new(); stage.n_streams as usize];
            let streams: Vec<&[T]> = scratch
                .iter_mut()
                .zip(0..)
                .map(|(buf, s)| seg.widened(s, 0..seg.len(), buf))
                .collect();
            let streams = &streams;
            let mut values: Vec<Array1<T>> = Vec::with_capacity(stage.body.len());
            for inst in &stage.body {
                let args: Vec<ArrayView1<'_, T>> = inst
                    .args()
                    .iter()
                    .map(|a| view(seg, streams, &values, a))
                    .collect();
                let result = apply(inst.op, &args);
                values.push(result);
            }
            // Materialise every stored value before the first store.
            let results: Vec<Array1<T>> = stage
                .stores
                .iter()
                .map(|(_, v)| view(seg, streams, &values, v).to_owned())
                .collect();
            let operands: Vec<Vec<T>> = stage
                .reductions
                .iter()
                .map(|(_, v)| view(seg, streams, &values, v).to_vec())
                .collect();
            (results, operands)
        };
        let (results, operands) = results;
        super::write_partials(stage, &operands, seg.partials);
        for ((stream, _), result) in stage.stores.iter().zip(results) {
            let values = result.as_slice().expect("owned arrays are contiguous");
            seg.store_all(*stream, 0, values);
        }
    }
    Ok(())
}

/// An operand as a whole-segment array view (scalars broadcast).
fn view<'v, T: Float>(
    seg: &'v Segment<'_, T>,
    streams: &[&'v [T]],
    values: &'v [Array1<T>],
    a: &ElemArg,
) -> ArrayView1<'v, T> {
    match *a {
        ElemArg::Load(s) => ArrayView1::from(streams[s as usize]),
        ElemArg::Scalar(k) => {
            let one = std::slice::from_ref(&seg.scalars[k as usize]);
            ArrayView1::from_shape(seg.len().strides(0), one).expect("stride 0 stays in bounds")
        }
        ElemArg::Value(v) => values[v as usize].view(),
    }
}

/// Runs one op over whole arrays, with the op fixed outside the element loop (as a framework's
/// kernels are).
fn apply<T: Float>(op: Op, args: &[ArrayView1<'_, T>]) -> Array1<T> {
    macro_rules! dispatch {
        ($($name:ident),*) => {
            match op {
                $(Op::$name => map(args, |a, b, c| eval_op(Op::$name, a, b, c)),)*
            }
        };
    }
    dispatch!(
        Neg, Abs, Sqrt, Sign, Exp, Ln, Cos, Floor, Add, Sub, Mul, Div, Min, Max, Pow, Eq, Ne, Lt,
        Le, Gt, Ge, Select, Fma
    )
}

/// `f` over one to three arrays of equal length (missing operands repeat the last one).
#[inline]
fn map<T: Float>(args: &[ArrayView1<'_, T>], f: impl Fn(T, T, T) -> T) -> Array1<T> {
    match args {
        [a] => a.map(|&x| f(x, x, x)),
        [a, b] => Zip::from(a).and(b).map_collect(|&x, &y| f(x, y, y)),
        [a, b, c] => Zip::from(a)
            .and(b)
            .and(c)
            .map_collect(|&x, &y, &z| f(x, y, z)),
        _ => unreachable!("ops take one to three operands"),
    }
}

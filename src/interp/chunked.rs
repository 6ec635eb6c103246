//! The chunked interpreter: the fastest executor without code generation, and the portable
//! choice (`Executor::Chunked`) where JIT code cannot run — nothing switches to it
//! automatically: there, `Executor::Jit` fails with `Error::HostUnsupported`.
//!
//! Each segment is cut into blocks of [`block_len`] elements. For each block the stage runs
//! one instruction at a time: the op is chosen once, then one tight loop (monomorphic in the
//! op and in which operands are arrays or broadcast scalars, so rustc vectorizes it) writes
//! the instruction's scratch buffer. Loads read the segment's slices directly; the stores of a
//! block happen after all its instructions, so every load of an element precedes any store to
//! it. Every element goes through [`eval_op`] in the compute type, hence bit-exact with the
//! reference interpreter.
//!
//! Scratch buffers are shared by values whose lifetimes do not overlap (Adam's 16
//! instructions need 5), so a block's working set is a few live values plus the slices of the
//! streams.
//!
//! ## Block size
//! Measured on Adam (AMD EPYC, x86-64 SSE2 baseline, one thread), sweeping 128 to 16384 elements: for
//! cache-resident data, longer blocks amortise the per-instruction dispatch (f32: 256
//! elements cost ~17% more than 4096); for data streamed from DRAM, blocks of 1–8 KiB per
//! stream are 15–45% slower than 1–1.5 KiB ones (each instruction's loop restarts the
//! hardware prefetcher on every stream). [`BLOCK_BYTES`] = 1.5 KiB is within ~10% of the best
//! in both regimes for f32 and f64.

use super::eval_op;
use crate::ir::Op;
use crate::program::{ElemArg, Stage};
use crate::segment::{validate, Segment};
use crate::{Float, Result};
use std::ops::Range;

/// Bytes of each stream one block covers (see "Block size" in the module docs).
pub const BLOCK_BYTES: usize = 1536;

/// Elements per block for compute type `T`: 384 for f32, 192 for f64.
pub const fn block_len<T>() -> usize {
    BLOCK_BYTES / std::mem::size_of::<T>()
}

/// Runs `stage` over `segments`, one op at a time over blocks of [`block_len`] elements.
pub fn run<T: Float>(stage: &Stage, segments: &mut [Segment<'_, T>]) -> Result<()> {
    stage.check()?;
    validate(stage, segments)?;
    run_blocks(stage, segments, block_len::<T>());
    Ok(())
}

/// Runs checked `segments` in blocks of `block` elements.
fn run_blocks<T: Float>(stage: &Stage, segments: &mut [Segment<'_, T>], block: usize) {
    let longest = segments.iter().map(Segment::len).max().unwrap_or(0);
    let mut scratch = Scratch::new(stage, block.min(longest));
    for seg in segments.iter_mut() {
        scratch.operands.iter_mut().for_each(Vec::clear);
        let mut start = 0;
        while start < seg.len() {
            let end = seg.len().min(start + block);
            run_block(stage, seg, start..end, &mut scratch);
            start = end;
        }
        super::write_partials(stage, &scratch.operands, seg.partials);
    }
}

/// The scratch buffers of one call, allocated once and reused by every block.
struct Scratch<T> {
    /// Buffers for instruction results.
    buffers: Vec<Vec<T>>,
    /// `home[j]`: the buffer holding the result of instruction `j`.
    home: Vec<usize>,
    /// One buffer per store of a loaded value, in store order.
    staged: Vec<Vec<T>>,
    /// Per reduction: its operand at every element of the segment so far.
    operands: Vec<Vec<T>>,
    /// Per stream not stored as `T`: the block's elements widened.
    widened: Vec<Vec<T>>,
    /// Per stream: whether the stage reads it (only those are widened).
    read: Vec<bool>,
    /// A scalar stored to a stream, repeated over a block.
    repeated: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new(stage: &Stage, len: usize) -> Scratch<T> {
        let (home, count) = assign_buffers(stage);
        let stored_loads = stage
            .stores
            .iter()
            .filter(|(_, v)| matches!(v, ElemArg::Load(_)));
        Scratch {
            buffers: vec![vec![T::ZERO; len]; count],
            home,
            staged: vec![vec![T::ZERO; len]; stored_loads.count()],
            operands: vec![Vec::new(); stage.reductions.len()],
            widened: vec![Vec::new(); stage.n_streams as usize],
            read: reads(stage),
            repeated: Vec::with_capacity(len),
        }
    }
}

/// Per stream of `stage`, whether it loads it (an operand, a stored value or a reduction's).
fn reads(stage: &Stage) -> Vec<bool> {
    let mut read = vec![false; stage.n_streams as usize];
    let args = stage.body.iter().flat_map(|i| i.args().iter());
    let stored = stage.stores.iter().map(|(_, a)| a);
    let reduced = stage.reductions.iter().map(|(_, a)| a);
    for a in args.chain(stored).chain(reduced) {
        if let ElemArg::Load(s) = *a {
            read[s as usize] = true;
        }
    }
    read
}

/// The buffer of each instruction's result, and the number of buffers.
///
/// A buffer is reused once every use of its value has run (a store is a use at the end of the
/// block), so a block's working set is the most values live at once, not the body's length.
/// The result's buffer is chosen before its operands' buffers are released: an instruction
/// never writes a buffer it reads.
fn assign_buffers(stage: &Stage) -> (Vec<usize>, usize) {
    let end = stage.body.len();
    let value = |a: &ElemArg| match *a {
        ElemArg::Value(v) => Some(v as usize),
        _ => None,
    };
    // An unused value dies at its own instruction.
    let mut last_use: Vec<usize> = (0..end).collect();
    for (j, inst) in stage.body.iter().enumerate() {
        for v in inst.args().iter().filter_map(value) {
            last_use[v] = j;
        }
    }
    for v in stage.stores.iter().filter_map(|(_, a)| value(a)) {
        last_use[v] = end;
    }
    for v in stage.reductions.iter().filter_map(|(_, a)| value(a)) {
        last_use[v] = end;
    }
    let (mut home, mut free, mut count) = (Vec::with_capacity(end), Vec::new(), 0);
    for (j, inst) in stage.body.iter().enumerate() {
        home.push(free.pop().unwrap_or_else(|| {
            count += 1;
            count - 1
        }));
        let args = inst.args();
        for (k, a) in args.iter().enumerate() {
            // A value used as several operands is released once.
            match value(a) {
                Some(v) if last_use[v] == j && !args[..k].contains(a) => free.push(home[v]),
                _ => {}
            }
        }
        if last_use[j] == j {
            free.push(home[j]);
        }
    }
    (home, count)
}

/// Runs every instruction, then every store, over elements `range` of `seg`.
fn run_block<T: Float>(
    stage: &Stage,
    seg: &mut Segment<'_, T>,
    range: Range<usize>,
    scratch: &mut Scratch<T>,
) {
    let n = range.len();
    let Scratch {
        buffers,
        home,
        staged,
        operands,
        widened,
        read,
        repeated,
    } = scratch;
    {
        let seg = &*seg;
        // The block of each stream the stage reads and that is not stored as `T`, widened;
        // the others are read in place.
        for (s, buf) in (0..).zip(widened.iter_mut()) {
            if read[s as usize] && seg.native(s).is_none() {
                seg.widened(s, range.clone(), buf);
            }
        }
        let widened = &*widened;
        let stream = |s: u32| -> &[T] {
            match seg.native(s) {
                Some(elems) => &elems[range.clone()],
                None => &widened[s as usize][..n],
            }
        };
        for (j, inst) in stage.body.iter().enumerate() {
            // Taken out while written: no operand lives in it (see `assign_buffers`).
            let mut out = std::mem::take(&mut buffers[home[j]]);
            let arity = inst.op.arity();
            let arg = |k: usize| {
                let a = inst.args[k.min(arity - 1)];
                operand(seg, &stream, n, buffers, home, a)
            };
            apply(inst.op, &mut out[..n], [arg(0), arg(1), arg(2)], arity);
            buffers[home[j]] = out;
        }
        // A stored load is copied before any store: it may read a stream this block writes.
        let loads = stage.stores.iter().filter_map(|(_, v)| match *v {
            ElemArg::Load(s) => Some(s),
            _ => None,
        });
        for (buf, s) in staged.iter_mut().zip(loads) {
            buf[..n].copy_from_slice(stream(s));
        }
        for (xs, &(_, a)) in operands.iter_mut().zip(&stage.reductions) {
            match operand(seg, &stream, n, buffers, home, a) {
                Operand::Array(values) => xs.extend_from_slice(values),
                Operand::Splat(x) => xs.extend(std::iter::repeat_n(x, n)),
            }
        }
    }
    let scalars = seg.scalars;
    let mut staged = staged.iter_mut();
    for &(s, value) in &stage.stores {
        match value {
            ElemArg::Load(_) => {
                let buf = staged.next().expect("one staged buffer per stored load");
                seg.store_all(s, range.start, &buf[..n]);
            }
            ElemArg::Scalar(k) => {
                repeated.clear();
                repeated.resize(n, scalars[k as usize]);
                seg.store_all(s, range.start, repeated);
            }
            ElemArg::Value(v) => seg.store_all(s, range.start, &buffers[home[v as usize]][..n]),
        }
    }
}

/// Operand `a` over the block's `n` elements, whose streams `stream` gives.
#[inline]
fn operand<'o, 's: 'o, 'b: 'o, T: Float>(
    seg: &Segment<'_, T>,
    stream: &impl Fn(u32) -> &'s [T],
    n: usize,
    buffers: &'b [Vec<T>],
    home: &[usize],
    a: ElemArg,
) -> Operand<'o, T> {
    match a {
        ElemArg::Load(s) => Operand::Array(stream(s)),
        ElemArg::Scalar(k) => Operand::Splat(seg.scalars[k as usize]),
        ElemArg::Value(v) => Operand::Array(&buffers[home[v as usize]][..n]),
    }
}

/// An operand over one block: a slice of it, or a scalar broadcast to every element.
#[derive(Clone, Copy)]
enum Operand<'a, T> {
    Array(&'a [T]),
    Splat(T),
}

/// Element access that the loops are generic over, so that each combination of array and
/// broadcast operands gets its own loop.
trait Lane<T>: Copy {
    /// The first `n` elements (checked once, so the loop carries no bounds checks).
    fn prefix(self, n: usize) -> Self;
    fn at(self, i: usize) -> T;
}

impl<T: Copy> Lane<T> for &[T] {
    #[inline(always)]
    fn prefix(self, n: usize) -> Self {
        &self[..n]
    }
    #[inline(always)]
    fn at(self, i: usize) -> T {
        self[i]
    }
}

/// A broadcast scalar.
#[derive(Clone, Copy)]
struct Splat<T>(T);

impl<T: Copy> Lane<T> for Splat<T> {
    #[inline(always)]
    fn prefix(self, _: usize) -> Self {
        self
    }
    #[inline(always)]
    fn at(self, _: usize) -> T {
        self.0
    }
}

/// `out[i] = op(args[0][i], args[1][i], args[2][i])` with `arity` meaningful operands, the op
/// fixed outside the element loop.
fn apply<T: Float>(op: Op, out: &mut [T], args: [Operand<'_, T>; 3], arity: usize) {
    macro_rules! dispatch {
        ($($name:ident),*) => {
            match op {
                $(Op::$name => map(out, args, arity, |a, b, c| eval_op(Op::$name, a, b, c)),)*
            }
        };
    }
    dispatch!(
        Neg, Abs, Sqrt, Sign, Exp, Ln, Cos, Floor, Add, Sub, Mul, Div, Min, Max, Pow, Eq, Ne, Lt,
        Le, Gt, Ge, Select, Fma
    )
}

/// Binds `$x` to the operand as a [`Lane`] of the matching type and evaluates `$body`.
macro_rules! lane {
    ($operand:expr, $x:ident => $body:expr) => {
        match $operand {
            Operand::Array(s) => {
                let $x = s;
                $body
            }
            Operand::Splat(v) => {
                let $x = Splat(v);
                $body
            }
        }
    };
}

/// `f` over `arity` operands, with one loop per combination of operand kinds.
#[inline(always)]
fn map<T: Float>(
    out: &mut [T],
    [a, b, c]: [Operand<'_, T>; 3],
    arity: usize,
    f: impl Fn(T, T, T) -> T + Copy,
) {
    match arity {
        1 => lane!(a, a => map1(out, a, f)),
        2 => lane!(a, a => lane!(b, b => map2(out, a, b, f))),
        _ => lane!(a, a => lane!(b, b => lane!(c, c => map3(out, a, b, c, f)))),
    }
}

fn map1<T: Float>(out: &mut [T], a: impl Lane<T>, f: impl Fn(T, T, T) -> T) {
    let n = out.len();
    let a = a.prefix(n);
    for (i, o) in out.iter_mut().enumerate() {
        let x = a.at(i);
        *o = f(x, x, x);
    }
}

fn map2<T: Float>(out: &mut [T], a: impl Lane<T>, b: impl Lane<T>, f: impl Fn(T, T, T) -> T) {
    let n = out.len();
    let (a, b) = (a.prefix(n), b.prefix(n));
    for (i, o) in out.iter_mut().enumerate() {
        let y = b.at(i);
        *o = f(a.at(i), y, y);
    }
}

fn map3<T: Float>(
    out: &mut [T],
    a: impl Lane<T>,
    b: impl Lane<T>,
    c: impl Lane<T>,
    f: impl Fn(T, T, T) -> T,
) {
    let n = out.len();
    let (a, b, c) = (a.prefix(n), b.prefix(n), c.prefix(n));
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(a.at(i), b.at(i), c.at(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::run_reference;
    use crate::{optim, passes};

    /// Param, grad and state of one segment.
    type Buffers = (Vec<f32>, Vec<f32>, Vec<Vec<f32>>);

    /// The segments over `bufs`; their state lists are kept in `lists`.
    fn segments<'a>(
        bufs: &'a mut [Buffers],
        scalars: &'a [f32],
        lists: &'a mut Vec<Vec<crate::Elems<'a>>>,
    ) -> Vec<Segment<'a, f32>> {
        let mut rest = Vec::new();
        for (p, g, s) in bufs {
            lists.push(s.iter_mut().map(|s| s.into()).collect());
            rest.push((&mut p[..], &g[..]));
        }
        rest.into_iter()
            .zip(lists)
            .map(|((param, grad), state)| Segment {
                param: param.into(),
                grad: grad.into(),
                state,
                scalars,
                partials: &mut [],
                noise: crate::Noise::NONE,
            })
            .collect()
    }

    /// Params and states as bits, NaNs canonicalised.
    fn bits(bufs: &[Buffers]) -> Vec<u32> {
        bufs.iter()
            .flat_map(|(p, _, s)| p.iter().chain(s.iter().flatten()))
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect()
    }

    /// No instruction writes the buffer of a value still to be used (by a later instruction
    /// or a store), and Adam's 16 instructions need far fewer buffers.
    #[test]
    fn buffers_are_reused_only_after_the_last_use() {
        for name in optim::NAMES {
            let stage = passes::compile(&optim::by_name(name).unwrap())
                .unwrap()
                .stage;
            let (home, count) = assign_buffers(&stage);
            let end = stage.body.len();
            let uses = |v: usize| {
                let used = |a: &ElemArg| *a == ElemArg::Value(v as u32);
                let by_insts = stage.body.iter().enumerate();
                let last = by_insts
                    .filter(|(_, i)| i.args().iter().any(used))
                    .map(|(j, _)| j);
                let stored = stage.stores.iter().any(|(_, a)| used(a));
                if stored {
                    Some(end)
                } else {
                    last.max()
                }
            };
            for j in 0..end {
                for v in 0..j {
                    if uses(v).is_some_and(|last| last >= j) {
                        assert_ne!(home[v], home[j], "{name}: %{j} overwrites live %{v}");
                    }
                }
            }
            assert!(home.iter().all(|&b| b < count));
            if *name == "adam" {
                assert!(count <= 5, "adam uses {count} buffers");
            }
        }
    }

    /// Tiny blocks put block boundaries everywhere: every built-in agrees with the reference
    /// interpreter bit for bit whatever the block size.
    #[test]
    fn any_block_size_matches_the_reference() {
        for name in optim::NAMES {
            let program = passes::compile(&optim::by_name(name).unwrap()).unwrap();
            let stage = &program.stage;
            let slots = stage.n_streams as usize - 2;
            let fresh = || -> Vec<Buffers> {
                [0usize, 1, 5, 8, 13, 40]
                    .iter()
                    .map(|&n| {
                        let v = |k: usize| -> Vec<f32> {
                            (0..n)
                                .map(|i| ((i * 7 + k * 3) % 11) as f32 * 0.25 - 1.0)
                                .collect()
                        };
                        (v(0), v(1), (0..slots).map(|k| v(k + 2)).collect())
                    })
                    .collect()
            };
            let scalars: Vec<f32> = (0..stage.n_scalars)
                .map(|k| 0.5 + k as f32 * 0.125)
                .collect();
            let mut expected = fresh();
            run_reference(
                stage,
                &mut segments(&mut expected, &scalars, &mut Vec::new()),
            )
            .unwrap();
            for block in [1, 2, 3, 8, 64] {
                let mut got = fresh();
                run_blocks(
                    stage,
                    &mut segments(&mut got, &scalars, &mut Vec::new()),
                    block,
                );
                assert_eq!(bits(&expected), bits(&got), "{name}, block {block}");
            }
        }
    }
}

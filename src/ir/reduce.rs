//! Reductions: a per-element value folded into one per-step scalar, over one parameter tensor
//! or over every parameter of the step, in an accumulation order that is part of the
//! definition, so that every executor, thread count and unroll gives the same bits.
//!
//! **The order.** A parameter's elements are cut into blocks of [`BLOCK`] from its first
//! element (threads and segments start only at block boundaries). In a block, element `j` of
//! the first `len - len % L` goes to lane `j % L` of `L = `[`lanes`]`::<T>()` accumulators in
//! the compute type `T` (16 for f32, 8 for f64: four 128-bit vectors), each starting at the
//! op's identity. The lanes combine as four vectors `v0..v3` of `W = L / 4` lanes,
//! `s = (v0 ⊕ v1) ⊕ (v2 ⊕ v3)` lane-wise, then across: `(s0 ⊕ s2) ⊕ (s1 ⊕ s3)` for `W = 4`,
//! `s0 ⊕ s1` for `W = 2`; the remaining `len % L` elements follow one by one. That block
//! *partial*, widened exactly to f64, joins the parameter's value in block order:
//! `((identity ⊕ p0) ⊕ p1) ⊕ …` in f64. A global reduction combines the parameters' values
//! the same way in parameter order (the optimizer's order of insertion), and only then
//! [`ReduceOp::finish`] gives the result. `⊕` is `+` for the sums and the non-finite check,
//! [`crate::ir::Op::Max`] (NaN-propagating) for the maximum.

use super::{eval_op, Op};
use crate::Float;
use serde::{Deserialize, Serialize};

/// Elements per block: the unit of parallel work and of partial results.
pub const BLOCK: usize = 8192;

/// Lane accumulators per block for compute type `T`: four 128-bit vectors' worth.
pub const fn lanes<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

/// What a reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReduceOp {
    /// `Σ x`.
    Sum,
    /// `Σ x²`, each square rounded in the compute type (no fused multiply-add).
    SumSquares,
    /// `max |x|`; NaN if any element is NaN.
    MaxAbs,
    /// `1` if any element is ±inf or NaN, else `0`.
    NonFinite,
}

/// Over which elements a reduction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Each parameter tensor alone: one value per parameter.
    Param,
    /// Every parameter of the step, in every group: one value for all.
    Global,
}

impl Scope {
    /// `param` or `global`, as printed IR shows it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Param => "param",
            Scope::Global => "global",
        }
    }
}

impl ReduceOp {
    /// Every reduction op.
    pub const ALL: [ReduceOp; 4] = [
        ReduceOp::Sum,
        ReduceOp::SumSquares,
        ReduceOp::MaxAbs,
        ReduceOp::NonFinite,
    ];

    /// The op's name in printed IR and (per parameter) in the text form.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::SumSquares => "sumsq",
            ReduceOp::MaxAbs => "maxabs",
            ReduceOp::NonFinite => "nonfinite",
        }
    }

    /// The op named `name` (see [`ReduceOp::name`]).
    pub fn from_name(name: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The accumulators' starting value: `-0` for the sums (so that a sum of `-0`s is `-0`),
    /// `+0` for the maxima of magnitudes and the non-finite check.
    pub fn identity(self) -> f64 {
        match self {
            ReduceOp::Sum | ReduceOp::SumSquares => -0.0,
            ReduceOp::MaxAbs | ReduceOp::NonFinite => 0.0,
        }
    }

    /// What an element contributes: `x`, `x·x`, `|x|`, or for the non-finite check `x − x`
    /// (`+0` for a finite `x`, NaN for ±inf and NaN).
    #[inline]
    pub fn map<T: Float>(self, x: T) -> T {
        match self {
            ReduceOp::Sum => x,
            ReduceOp::SumSquares => x * x,
            ReduceOp::MaxAbs => x.abs(),
            // Not zero: NaN for ±inf and NaN, the point of the check.
            #[allow(clippy::eq_op)]
            ReduceOp::NonFinite => x - x,
        }
    }

    /// `a ⊕ b`: the sum (for the non-finite check, a sum of `+0`s that any NaN makes NaN:
    /// two instructions per element, where a NaN-propagating maximum takes several), or the
    /// NaN-propagating maximum.
    #[inline]
    pub fn combine<T: Float>(self, a: T, b: T) -> T {
        match self {
            ReduceOp::Sum | ReduceOp::SumSquares | ReduceOp::NonFinite => a + b,
            ReduceOp::MaxAbs => eval_op(Op::Max, a, b, b),
        }
    }

    /// The result from the combined value: itself, or for [`ReduceOp::NonFinite`] `1` when
    /// it is not finite (NaN: some element was not finite) and `0` otherwise.
    pub fn finish(self, value: f64) -> f64 {
        match self {
            ReduceOp::NonFinite => f64::from(u8::from(!value.is_finite())),
            _ => value,
        }
    }
}

/// The partial of one block of at most [`BLOCK`] elements (see the module doc).
pub fn block_partial<T: Float>(op: ReduceOp, xs: &[T]) -> f64 {
    debug_assert!(xs.len() <= BLOCK);
    let lanes = lanes::<T>();
    let width = lanes / 4;
    let identity = T::from_f64(op.identity());
    let mut acc = [identity; 16];
    let full = xs.len() - xs.len() % lanes;
    for chunk in xs[..full].chunks_exact(lanes) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = op.combine(*a, op.map(x));
        }
    }
    let c = |a, b| op.combine(a, b);
    let s: Vec<T> = (0..width)
        .map(|i| {
            c(
                c(acc[i], acc[width + i]),
                c(acc[2 * width + i], acc[3 * width + i]),
            )
        })
        .collect();
    let mut r = match width {
        4 => c(c(s[0], s[2]), c(s[1], s[3])),
        _ => c(s[0], s[1]),
    };
    for &x in &xs[full..] {
        r = c(r, op.map(x));
    }
    r.to_f64()
}

/// Combines values (block partials, or parameters' values) in order, from the identity, in
/// f64.
pub fn combine_all(op: ReduceOp, values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .fold(op.identity(), |a, b| op.combine(a, b))
}

/// A whole parameter's value (before [`ReduceOp::finish`]): its blocks' partials, combined.
pub fn reduce<T: Float>(op: ReduceOp, xs: &[T]) -> f64 {
    combine_all(op, xs.chunks(BLOCK).map(|b| block_partial(op, b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_is_lanes_then_tree_then_tail_then_blocks() {
        // 16 f32 lanes: element j goes to lane j % 16; 17 elements leave one for the tail.
        let mut xs = vec![0.0f32; 17];
        xs[0] = 1e8;
        xs[16] = 1.0; // the tail: added after the lanes combined
        xs[4] = -1e8;
        // Lane 0 holds 1e8, lane 4 -1e8: they meet in the tree (v0 ⊕ v1), cancel, then + 1.
        assert_eq!(block_partial(ReduceOp::Sum, &xs), 1.0);
        // Across blocks: each block's partial in f64, in order.
        let mut long = vec![0.0f32; BLOCK + 1];
        long[0] = 1e8;
        long[BLOCK] = 1.0;
        assert_eq!(reduce(ReduceOp::Sum, &long), 1e8 + 1.0);
        assert_ne!(
            f64::from(1e8f32 + 1.0),
            1e8 + 1.0,
            "in f32 the 1 would be lost"
        );
    }

    #[test]
    fn identities_keep_the_sign_of_zero_and_nan_propagates() {
        assert!(reduce(ReduceOp::Sum, &[-0.0f64; 3]).is_sign_negative());
        assert_eq!(
            reduce::<f64>(ReduceOp::Sum, &[]).to_bits(),
            (-0.0f64).to_bits()
        );
        let xs = [1.0f32, f32::NAN, -3.0];
        assert!(reduce(ReduceOp::MaxAbs, &xs).is_nan());
        assert_eq!(
            ReduceOp::NonFinite.finish(reduce(ReduceOp::NonFinite, &xs)),
            1.0
        );
        let ys = [1.0f32, f32::NEG_INFINITY];
        assert_eq!(
            ReduceOp::NonFinite.finish(reduce(ReduceOp::NonFinite, &ys)),
            1.0
        );
        assert_eq!(
            ReduceOp::NonFinite.finish(reduce(ReduceOp::NonFinite, &[2.0f32])),
            0.0
        );
        assert_eq!(reduce(ReduceOp::MaxAbs, &[-5.0f64, 2.0]), 5.0);
        assert_eq!(reduce(ReduceOp::SumSquares, &[3.0f64, -4.0]), 25.0);
    }
}

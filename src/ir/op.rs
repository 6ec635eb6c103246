//! The closed set of operations of optjit's IR and their semantics.
//!
//! The exhaustive `match` of [`eval_op`] is the definition (the reference interpreter, the
//! constant folder and the prologue all call it); the JIT emits the same IEEE operations and must agree with it bit for bit
//! (NaN payloads excepted). All arithmetic is IEEE 754 round-to-nearest-even in the compute
//! type: overflow gives ±inf, underflow gives subnormals or ±0, invalid operations give NaN.

use crate::Float;
use serde::{Deserialize, Serialize};

/// An operation. Comparisons yield `1.0` (true) or `0.0` (false) in the compute type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// `-a`: flips the sign bit (also of ±0 and NaN); never rounds.
    Neg,
    /// `|a|`: clears the sign bit; `abs(-0) = +0`, `abs(NaN)` is NaN.
    Abs,
    /// `√a`, correctly rounded; `sqrt(-0) = -0`, negative or NaN input gives NaN.
    Sqrt,
    /// `1` for `a > 0`, `-1` for `a < 0`, otherwise `a` itself (so ±0 keep their sign and NaN
    /// stays NaN).
    Sign,
    /// `eᵃ` (per-step scalars only, computed in f64); overflow gives +inf, `exp(-inf) = +0`,
    /// `exp(±0) = 1`, NaN stays NaN.
    Exp,
    /// Natural logarithm (per-step scalars only, computed in f64); `ln(±0) = -inf`,
    /// `ln(+inf) = +inf`, negative input or NaN gives NaN.
    Ln,
    /// `cos(a)` in radians (per-step scalars only, computed in f64 with the platform's `cos`,
    /// not guaranteed correctly rounded): `cos(±0) = 1`, `cos(±inf)` and `cos(NaN)` are NaN.
    /// For schedules ([`crate::schedule::graph`]).
    Cos,
    /// `⌊a⌋`, the largest integer not above `a` (per-step scalars only, computed in f64;
    /// exact): `floor(-0) = -0`, `floor(-0.5) = -1`, `floor(0.5) = +0`, `±inf` stay `±inf`,
    /// NaN stays NaN. For staircase schedules ([`crate::schedule::graph`]).
    Floor,
    /// `a + b`; `-0 + -0 = -0`, `+0 + -0 = +0`; `inf + -inf` is NaN.
    Add,
    /// `a - b`; `x - x = +0` for finite `x`, `-0 - +0 = -0`, `inf - inf` is NaN.
    Sub,
    /// `a * b`; `0 * inf` is NaN; the sign of a zero result is the xor of the signs.
    Mul,
    /// `a / b`; `x / 0` is ±inf for `x ≠ 0`, `0 / 0` is NaN.
    Div,
    /// The smaller operand, NaN if either is NaN; `min(-0, +0) = -0` (IEEE 754-2019
    /// `minimum`, like `torch.minimum` and Wasm `f32.min`).
    Min,
    /// The larger operand, NaN if either is NaN; `max(-0, +0) = +0` (IEEE 754-2019
    /// `maximum`, like `torch.maximum` and Wasm `f32.max`).
    Max,
    /// `aᵇ` (per-step scalars only, computed in f64 with the platform's `pow`, C99 Annex F
    /// semantics): `pow(x, ±0) = 1` and `pow(1, y) = 1` even for NaN, a negative base with a
    /// non-integer exponent gives NaN, overflow gives ±inf.
    Pow,
    /// `a == b`: false when either is NaN; `-0 == +0`.
    Eq,
    /// `a != b`: true when either is NaN.
    Ne,
    /// `a < b`: false when either is NaN.
    Lt,
    /// `a <= b`: false when either is NaN.
    Le,
    /// `a > b`: false when either is NaN.
    Gt,
    /// `a >= b`: false when either is NaN.
    Ge,
    /// `select(c, a, b)`: `a` where `c != 0` (NaN counts as non-zero), else `b`. Only the
    /// chosen operand's value is returned, bit for bit.
    Select,
    /// `fma(a, b, c) = a·b + c` with a single rounding (IEEE fusedMultiplyAdd): `fma(0, inf, c)`
    /// is NaN, and the result may differ from `a·b + c` rounded twice. Only the `fast_math`
    /// contraction pass (or the user) creates it; never in the default pipeline.
    Fma,
}

/// The groups of [`Op`], by shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpGroup {
    /// One operand.
    Unary,
    /// Two operands, floating-point result.
    Binary,
    /// Two operands, `1.0`/`0.0` result.
    Compare,
    /// Three operands (`select`, `fma`).
    Ternary,
}

impl Op {
    /// Every op, in declaration order.
    pub const ALL: [Op; 23] = [
        Op::Neg,
        Op::Abs,
        Op::Sqrt,
        Op::Sign,
        Op::Exp,
        Op::Ln,
        Op::Cos,
        Op::Floor,
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Min,
        Op::Max,
        Op::Pow,
        Op::Eq,
        Op::Ne,
        Op::Lt,
        Op::Le,
        Op::Gt,
        Op::Ge,
        Op::Select,
        Op::Fma,
    ];

    /// The op's shape.
    pub fn group(self) -> OpGroup {
        match self {
            Op::Neg | Op::Abs | Op::Sqrt | Op::Sign | Op::Exp | Op::Ln | Op::Cos | Op::Floor => {
                OpGroup::Unary
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max | Op::Pow => OpGroup::Binary,
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => OpGroup::Compare,
            Op::Select | Op::Fma => OpGroup::Ternary,
        }
    }

    /// Number of operands.
    pub fn arity(self) -> usize {
        match self.group() {
            OpGroup::Unary => 1,
            OpGroup::Binary | OpGroup::Compare => 2,
            OpGroup::Ternary => 3,
        }
    }

    /// True for ops that only exist on per-step scalars (computed in f64 in the prologue).
    pub fn scalar_only(self) -> bool {
        matches!(self, Op::Pow | Op::Exp | Op::Ln | Op::Cos | Op::Floor)
    }

    /// The op's name in printed IR and in the text form.
    pub fn name(self) -> &'static str {
        match self {
            Op::Neg => "neg",
            Op::Abs => "abs",
            Op::Sqrt => "sqrt",
            Op::Sign => "sign",
            Op::Exp => "exp",
            Op::Ln => "ln",
            Op::Cos => "cos",
            Op::Floor => "floor",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Min => "min",
            Op::Max => "max",
            Op::Pow => "pow",
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Le => "le",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Select => "select",
            Op::Fma => "fma",
        }
    }

    /// The op with this printed name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

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
        Op::Cos => a.cos(),
        Op::Floor => a.floor(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        assert_eq!(Op::from_name("lerp"), None);
    }
}

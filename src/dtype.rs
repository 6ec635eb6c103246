//! Storage dtypes and the element compute types the interpreter and the JIT share.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The storage type of a parameter, its gradient and its per-element state.
///
/// The element compute type equals the storage type for `F32` and `F64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    /// IEEE binary32; computed in f32.
    F32,
    /// IEEE binary64; computed in f64.
    F64,
    /// bfloat16 (the upper half of an f32); computed in f32, converted by [`crate::round`].
    BF16,
    /// IEEE binary16; computed in f32, converted by [`crate::round`].
    F16,
}

impl DType {
    /// Every dtype parameters and kernels support (bf16 and f16 are storage formats whose
    /// kernels are not wired in yet), in a fixed order.
    pub const ALL: [DType; 2] = [DType::F32, DType::F64];

    /// The name used in printed IR and on the command line (`f32`, `f64`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Panics, naming `self`: for matches over the dtype of a parameter or of a [`Float`],
    /// which is f32 or f64 until parameters of bf16 or f16 storage are supported.
    pub(crate) fn no_half_params(self) -> ! {
        panic!("{self} parameters are not supported yet: a parameter's dtype is f32 or f64")
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The element types' private supertrait: generated code trusts [`Float::DTYPE`] to give the
/// element's size and format, so no type outside optjit may claim one. It also lets the flat
/// store view memory as elements (`bytemuck::Pod`) without making that part of the API.
mod sealed {
    pub trait Sealed: bytemuck::Pod {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type the executors can run on (`f32`, `f64`); sealed: implemented
/// for those two only.
///
/// The methods are the IEEE operations the interpreter defines the ops with; the JIT emits the
/// same operations, so both agree bit for bit.
pub trait Float:
    Copy
    + Default
    + PartialEq
    + PartialOrd
    + fmt::Debug
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + sealed::Sealed
    + 'static
{
    /// The dtype tag of this type.
    const DTYPE: DType;
    /// `0.0`.
    const ZERO: Self;
    /// `1.0`.
    const ONE: Self;
    /// Rounds an f64 to this type (round to nearest even; overflow gives ±inf).
    fn from_f64(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// Correctly rounded square root.
    fn sqrt(self) -> Self;
    /// Clears the sign bit.
    fn abs(self) -> Self;
    /// `e^self` (the platform's `exp`).
    fn exp(self) -> Self;
    /// Natural logarithm (the platform's `ln`).
    fn ln(self) -> Self;
    /// `cos(self)` in radians (the platform's `cos`).
    fn cos(self) -> Self;
    /// The largest integer not above `self` (exact).
    fn floor(self) -> Self;
    /// `self^e` (the platform's `pow`).
    fn powf(self, e: Self) -> Self;
    /// `self·a + b` with one rounding (correctly rounded in hardware or software).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// True for any NaN.
    fn is_nan(self) -> bool;
    /// True when the sign bit is set (also for −0 and negative NaNs).
    fn is_sign_negative(self) -> bool;
    /// The raw bits, widened to u64.
    fn to_bits_u64(self) -> u64;
}

macro_rules! impl_float {
    ($t:ty, $d:expr) => {
        impl Float for $t {
            const DTYPE: DType = $d;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline]
            fn is_sign_negative(self) -> bool {
                <$t>::is_sign_negative(self)
            }
            #[inline]
            fn to_bits_u64(self) -> u64 {
                self.to_bits() as u64
            }
        }
    };
}

impl_float!(f32, DType::F32);
impl_float!(f64, DType::F64);

//! Storage dtypes and the element compute types the interpreter and the JIT share.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The storage type of one stream: a parameter, its gradient or one per-element state slot.
///
/// Each stream of a kernel has its own storage dtype; the kernel computes in the
/// [`DType::compute`] type they share (f32 for `F32`, `BF16` and `F16`; f64 for `F64`),
/// widening every element it loads and rounding every element it stores (see
/// [`crate::round`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    /// IEEE binary32; computed in f32.
    F32,
    /// IEEE binary64; computed in f64.
    F64,
    /// bfloat16 (8 exponent bits, 7 mantissa bits); computed in f32.
    BF16,
    /// IEEE binary16 (5 exponent bits, 10 mantissa bits); computed in f32.
    F16,
}

impl DType {
    /// Every supported storage dtype, in a fixed order.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

    /// The compute types (the [`Float`] types), in a fixed order.
    pub const COMPUTE: [DType; 2] = [DType::F32, DType::F64];

    /// The name used in printed IR and on the command line (`f32`, `f64`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// The dtype named `name` (see [`DType::name`]).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The type a kernel computes in when it loads or stores this dtype: `F64` for `F64`,
    /// `F32` for the others.
    pub fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            DType::F32 | DType::BF16 | DType::F16 => DType::F32,
        }
    }

    /// Whether stores to this dtype round the compute value (and may round stochastically).
    pub fn is_narrow(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The storage of every stream of a kernel: each stream's dtype (stream 0 the param, 1 the
/// grad, 2.. the element state slots), all of one compute type, and which written streams
/// round their stores stochastically (see [`crate::round`]).
///
/// A kernel is compiled for one layout (it is part of the JIT's cache key) and runs only on
/// segments whose streams have it.
///
/// ```
/// use optjit::{DType, Layout};
///
/// // bf16 params and grads, f32 state (Adam's two slots), stochastic rounding of the params.
/// let layout = Layout::new(vec![DType::BF16, DType::BF16, DType::F32, DType::F32])?
///     .with_stochastic(&[0])?;
/// assert_eq!(layout.compute(), DType::F32);
/// assert_eq!(layout.to_string(), "bf16~,bf16,f32,f32");
/// assert_eq!(Layout::from(DType::F64).dtype(3), DType::F64);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// The dtype of streams not in `streams`.
    rest: DType,
    /// The dtypes of streams `0..streams.len()`.
    streams: Vec<DType>,
    /// The streams whose stores round stochastically, ascending.
    stochastic: Vec<u32>,
}

impl Layout {
    /// Every stream stored as `dtype`, rounding to nearest.
    pub fn uniform(dtype: DType) -> Layout {
        Layout {
            rest: dtype,
            streams: Vec::new(),
            stochastic: Vec::new(),
        }
    }

    /// Stream `s` stored as `streams[s]`; streams past the list as the last one. Fails with
    /// [`crate::Error::DTypeMismatch`] when the dtypes do not share one compute type (f64
    /// with another dtype), and with [`crate::Error::InvalidOption`] on an empty list.
    pub fn new(streams: Vec<DType>) -> crate::Result<Layout> {
        let Some(&last) = streams.last() else {
            return Err(crate::Error::InvalidOption {
                option: "layout",
                reason: "a layout names at least one stream's dtype",
            });
        };
        if let Some(&other) = streams.iter().find(|d| d.compute() != last.compute()) {
            return Err(crate::Error::DTypeMismatch {
                expected: last.compute(),
                actual: other,
            });
        }
        Ok(Layout {
            rest: last,
            streams,
            stochastic: Vec::new(),
        })
    }

    /// The same layout with stochastic rounding on the stores of `streams` (each bf16 or
    /// f16, not the grad, and below [`crate::program::Stage::MAX_STREAMS`]: else
    /// [`crate::Error::InvalidOption`]).
    pub fn with_stochastic(mut self, streams: &[u32]) -> crate::Result<Layout> {
        let out_of_range = |s: u32| s >= crate::program::Stage::MAX_STREAMS;
        if streams
            .iter()
            .any(|&s| s == 1 || out_of_range(s) || !self.dtype(s).is_narrow())
        {
            return Err(crate::Error::InvalidOption {
                option: "stochastic rounding",
                reason: "only written bf16 or f16 streams round stochastically",
            });
        }
        self.stochastic = streams.to_vec();
        self.stochastic.sort_unstable();
        self.stochastic.dedup();
        Ok(self)
    }

    /// The dtype of stream `s`.
    pub fn dtype(&self, s: u32) -> DType {
        self.streams.get(s as usize).copied().unwrap_or(self.rest)
    }

    /// The type every stream computes in.
    pub fn compute(&self) -> DType {
        self.rest.compute()
    }

    /// The streams whose stores round stochastically, ascending.
    pub fn stochastic(&self) -> &[u32] {
        &self.stochastic
    }

    /// The same layout with every one of `n_streams` streams listed (stochastic streams
    /// past them dropped): equal layouts of a stage resolve to equal values.
    pub fn resolve(&self, n_streams: u32) -> Layout {
        let last = n_streams
            .checked_sub(1)
            .map_or(self.rest, |s| self.dtype(s));
        Layout {
            rest: last,
            streams: (0..n_streams).map(|s| self.dtype(s)).collect(),
            stochastic: self
                .stochastic
                .iter()
                .copied()
                .filter(|&s| s < n_streams)
                .collect(),
        }
    }

    /// The smallest element size of the layout's streams, in bytes: a run of elements
    /// aligned for it is aligned in every stream.
    pub fn min_size(&self) -> usize {
        let listed = self.streams.iter().map(|d| d.size());
        listed.fold(self.rest.size(), usize::min)
    }

    /// Whether every stream has one dtype and none rounds stochastically.
    pub fn is_uniform(&self) -> bool {
        self.stochastic.is_empty() && self.streams.iter().all(|&d| d == self.rest)
    }
}

impl From<DType> for Layout {
    fn from(dtype: DType) -> Layout {
        Layout::uniform(dtype)
    }
}

impl fmt::Display for Layout {
    /// `f32` for a uniform layout, else each listed stream's dtype, `~` marking the streams
    /// that round stochastically (only those): `bf16~,bf16,f32,f32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_uniform() {
            return f.write_str(self.rest.name());
        }
        let n = (self.streams.len() as u32).max(self.stochastic.last().map_or(0, |&s| s + 1));
        for s in 0..n.max(1) {
            if s > 0 {
                f.write_str(",")?;
            }
            f.write_str(self.dtype(s).name())?;
            if self.stochastic.contains(&s) {
                f.write_str("~")?;
            }
        }
        Ok(())
    }
}

/// `x` converted to `T` as PyTorch's `.to(dtype)` converts a double: rounded to nearest even
/// once, except to bf16 or f16, which PyTorch reaches through f32 (two roundings).
pub(crate) fn torch_cast<T: Element>(x: f64) -> T {
    match T::DTYPE.is_narrow() {
        true => T::from_f64(f64::from(x as f32)),
        false => T::from_f64(x),
    }
}

/// The element types' private supertrait: generated code trusts [`Element::DTYPE`] to give the
/// element's size and format, so no type outside optjit may claim one. It also lets the flat
/// store view memory as elements (`bytemuck::Pod`) without making that part of the API.
mod sealed {
    pub trait Sealed: bytemuck::Pod {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A storage element type (`f32`, `f64`, [`half::bf16`], [`half::f16`]); sealed: implemented
/// for those four only. Parameters, gradients and state buffers hold elements; kernels compute
/// in the element's [`DType::compute`] type (a [`Float`]).
pub trait Element:
    Copy + Default + PartialEq + fmt::Debug + Send + Sync + sealed::Sealed + 'static
{
    /// The dtype tag of this type.
    const DTYPE: DType;
    /// `0.0`.
    const ZERO: Self;
    /// Rounds an f64 to this type (round to nearest even; overflow gives ±inf).
    fn from_f64(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// The raw bits, widened to u64.
    fn to_bits_u64(self) -> u64;
}

/// `x` rounded to f32 toward zero, its last bit set when that was inexact ("round to odd"):
/// rounding this f32 to nearest even in a format of at most 22 significant bits (bf16, f16)
/// gives the same result as rounding `x` there directly. (`half`'s `from_f64` drops the
/// low 32 bits of `x` first, which misrounds values just above a halfway point.)
fn f32_round_to_odd(x: f64) -> f32 {
    let nearest = x as f32;
    if x.is_nan() || f64::from(nearest) == x {
        return nearest;
    }
    // The neighbour toward zero: `nearest` itself, or one step closer to zero.
    let toward_zero = if f64::from(nearest).abs() > x.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

macro_rules! impl_half {
    ($t:ty, $d:expr, $narrow:path) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const ZERO: Self = <$t>::ZERO;
            #[inline]
            fn from_f64(x: f64) -> Self {
                <$t>::from_bits($narrow(f32_round_to_odd(x)))
            }
            #[inline]
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            #[inline]
            fn to_bits_u64(self) -> u64 {
                u64::from(self.to_bits())
            }
        }
    };
}

impl_half!(half::bf16, DType::BF16, crate::round::f32_to_bf16);
impl_half!(half::f16, DType::F16, crate::round::f32_to_f16);

/// A floating-point element type the executors can run on (`f32`, `f64`); sealed: implemented
/// for those two only.
///
/// The methods are the IEEE operations the interpreter defines the ops with; the JIT emits the
/// same operations, so both agree bit for bit.
pub trait Float:
    Element
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// `1.0`.
    const ONE: Self;
    /// Converts an f32 to this type (exact).
    fn from_f32(x: f32) -> Self;
    /// Rounds to f32 (round to nearest even).
    fn to_f32(self) -> f32;
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
}

macro_rules! impl_float {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const ZERO: Self = 0.0;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_bits_u64(self) -> u64 {
                self.to_bits() as u64
            }
        }

        impl Float for $t {
            const ONE: Self = 1.0;
            #[inline]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
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
        }
    };
}

impl_float!(f32, DType::F32);
impl_float!(f64, DType::F64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `resolve` kept the unresolved layout's dtype for streams past the list, so
    /// two layouts listing the same streams of a stage resolved to different cache keys.
    #[test]
    fn layouts_that_agree_on_a_stages_streams_resolve_equal() {
        let (b, f) = (DType::BF16, DType::F32);
        let longer = Layout::new(vec![b, b, f, f, b]).unwrap();
        let shorter = Layout::new(vec![b, b, f, f]).unwrap();
        assert_ne!(longer, shorter);
        assert_eq!(longer.resolve(4), shorter.resolve(4));
        assert_eq!(
            Layout::uniform(f).resolve(3),
            Layout::new(vec![f]).unwrap().resolve(3)
        );
    }

    /// Regression: a stochastic stream far past any stage's was accepted, and printing the
    /// layout then overflowed or listed a billion streams.
    #[test]
    fn stochastic_streams_past_any_stage_are_refused() {
        let bf16 = Layout::uniform(DType::BF16);
        let last = crate::program::Stage::MAX_STREAMS - 1;
        assert!(bf16.clone().with_stochastic(&[0, last]).is_ok());
        for s in [last + 1, u32::MAX] {
            assert!(matches!(
                bf16.clone().with_stochastic(&[s]),
                Err(crate::Error::InvalidOption { .. })
            ));
        }
    }

    /// bf16 and f16 `from_f64` round once: a double just above a halfway point rounds up
    /// (`half`'s drops the low 32 bits and rounds it down), exact values stay.
    #[test]
    fn narrow_from_f64_rounds_once() {
        let above = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(
            half::bf16::from_f64(above).to_bits(),
            0x3F80,
            "half's rounding"
        );
        assert_eq!(<half::bf16 as Element>::from_f64(above).to_bits(), 0x3F81);
        let above = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(<half::f16 as Element>::from_f64(above).to_bits(), 0x3C01);
        // Through f32 first, as PyTorch casts: the halfway f32 rounds to even.
        assert_eq!(
            torch_cast::<half::bf16>(1.0 + 2f64.powi(-8) + 2f64.powi(-40)).to_bits(),
            0x3F80
        );
        for x in [0.0, -0.0, 1.5, -2.0, 65504.0] {
            assert_eq!(<half::f16 as Element>::from_f64(x).to_f64(), x);
        }
    }
}

//! The bf16 and f16 storage conversions, stochastic rounding and its random bits: the
//! reference definitions, in integer arithmetic. The interpreter calls these functions and
//! the JIT (`jit/convert.rs`) emits the same operations; both agree with them bit for bit,
//! whatever the floating-point environment (no result depends on MXCSR's rounding mode or on
//! flush-to-zero / denormals-are-zero).
//!
//! Highlights:
//! - Widening is exact. [`bf16_to_f32`] is a shift (`bits << 16`) for every pattern, NaNs
//!   included (two instructions in the JIT); the first arithmetic on a signalling NaN quiets
//!   it, and so does narrowing it back. [`f16_to_f32`] equals `half`'s `to_f32` for every
//!   pattern: a signalling NaN comes back quiet, every other pattern keeps its value.
//! - Narrowing to nearest ([`f32_to_bf16`], [`f32_to_f16`]) equals `half`'s `from_f32` for
//!   every f32, NaNs included (`half`'s software path and, for f16, its F16C path agree).
//! - Stochastic rounding ([`f32_to_bf16_stochastic`], [`f32_to_f16_stochastic`]) rounds the
//!   magnitude up with probability equal to the discarded fraction of an ulp, decided by 32
//!   random bits: exactly for every bf16 result and every f16 result except the tiny ones
//!   (|x| < 2⁻²², where the fraction is resolved to 2⁻²¹ of an ulp).
//! - [`random_bits`] is a counter-based generator: bits for element `index` under a per-step
//!   key from [`step_key`], made of 32-bit operations that SSE4.1 has lane-wise.
//!
//! ```
//! use optjit::round;
//!
//! let x = 1.0f32 + 0.25 * f32::EPSILON * 65536.0; // 1 + a quarter of a bf16 ulp
//! assert_eq!(round::f32_to_bf16(x), 0x3F80); // nearest: 1.0
//! let ups = (0..256u32)
//!     .filter(|&k| round::f32_to_bf16_stochastic(x, k << 24) == 0x3F81)
//!     .count();
//! assert_eq!(ups, 64); // a quarter of the random draws round up
//! assert_eq!(round::bf16_to_f32(0x3F81), 1.0078125);
//! ```

/// The f32 sign bit.
const SIGN: u32 = 0x8000_0000;
/// The f32 quiet-NaN bit (the top mantissa bit).
const QUIET: u32 = 0x0040_0000;
/// The f32 bits of +inf.
const INF: u32 = 0x7F80_0000;
/// The f32 bits of 2⁻¹⁴, the smallest normal f16.
const F16_MIN_NORMAL: u32 = 0x3880_0000;
/// The f32 bits of 65536: magnitudes from here up are at or past f16's inf.
const F16_INF_INPUT: u32 = 0x4780_0000;
/// The difference of the f32 and f16 exponent biases (127 − 15), as f32 exponent bits.
const REBIAS: u32 = 112 << 23;

/// Widens bf16 bits to f32: `bits << 16`, exact for every pattern (a signalling NaN stays
/// signalling; `half` quiets it, which costs the JIT three instructions per vector).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Widens f16 bits to f32, exactly (subnormals included); a NaN keeps its sign and its 10
/// payload bits (as the top of the f32 payload) and is returned quiet, as `half` does.
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let a = u32::from(bits & 0x7FFF);
    let magnitude = if a >= 0x7C00 {
        let nan = if a > 0x7C00 { QUIET } else { 0 };
        INF | nan | (a & 0x3FF) << 13
    } else if a >= 0x0400 {
        (a << 13) + REBIAS
    } else if a == 0 {
        0
    } else {
        // A subnormal: a·2⁻²⁴ with its leading bit at position p becomes a normal f32.
        let p = 31 - a.leading_zeros();
        ((p + 103) << 23) | ((a << (23 - p)) & 0x7F_FFFF)
    };
    f32::from_bits(sign | magnitude)
}

/// Narrows f32 to bf16 bits, rounding to nearest, ties to even: `(b + 0x7FFF + lsb) >> 16`
/// on the bits `b`, where `lsb` is bit 16 of `b`. So a magnitude past the largest finite
/// bf16 by half an ulp or more becomes ±inf, ±0 and ±inf keep their sign, and a NaN becomes
/// the quiet NaN `(b >> 16) | 0x0040` (sign and top payload bits kept).
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Narrows f32 to f16 bits, IEEE round to nearest, ties to even: subnormal results are
/// rounded as such, magnitudes below half the smallest subnormal (2⁻²⁵, and that tie) become
/// ±0, magnitudes from 65520 up (half an ulp past 65504, the largest finite f16) become ±inf,
/// and a NaN becomes the quiet NaN `sign | 0x7E00 | payload >> 13` (its top 10 payload bits).
/// This is `half`'s software rule and, on x86 with F16C, what `vcvtps2ph` computes.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let a = b & !SIGN;
    let magnitude = if a > INF {
        0x7E00 | (a >> 13) & 0x3FF
    } else if a >= F16_INF_INPUT {
        0x7C00
    } else if a >= F16_MIN_NORMAL {
        // A normal result (or 0x7C00 from a carry): drop 13 bits, ties to even.
        let t = a - REBIAS;
        (t + 0xFFF + ((t >> 13) & 1)) >> 13
    } else {
        // A subnormal result: a in units of 2⁻²⁴, rounded to an integer, ties to even.
        let exponent = a >> 23;
        let shift = 126 - exponent; // ≥ 14: the bits of the 24-bit significand dropped
        if exponent == 0 || shift > 24 {
            0
        } else {
            let significand = (a & 0x7F_FFFF) | 0x80_0000;
            let kept = significand >> shift;
            let rest = significand & ((1 << shift) - 1);
            let half = 1 << (shift - 1);
            kept + u32::from(rest > half || (rest == half && kept & 1 == 1))
        }
    };
    ((b >> 16) & 0x8000) as u16 | magnitude as u16
}

/// Narrows f32 to bf16 bits with stochastic rounding by the 32 random bits `r`:
/// `(b + (r >> 16)) >> 16` on the bits `b`, i.e. the magnitude rounds away from zero when its
/// 16 discarded bits plus the top 16 bits of `r` carry, with probability (discarded bits) /
/// 2¹⁶ = (|x| − |lo|)/(|hi| − |lo|) over uniform `r`. Values exact in bf16 (±0, ±inf
/// included) are unchanged for every `r`; a finite magnitude above the largest finite bf16
/// rounds to it or, by the same rule, to ±inf (the step after it); a NaN gives what
/// [`f32_to_bf16`] gives. See [`f32_to_f16_stochastic`] for the rule both share.
pub fn f32_to_bf16_stochastic(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32_to_bf16(x);
    }
    ((b + (r >> 16)) >> 16) as u16
}

/// Narrows f32 to f16 bits with stochastic rounding by the 32 random bits `r`.
///
/// The rule, shared with [`f32_to_bf16_stochastic`]: let `lo` be |x| truncated to the target
/// format and `hi` the next value away from zero, and `frac` = (|x| − lo)/(hi − lo) ∈ [0, 1)
/// the discarded fraction of an ulp. The result is `hi` (with x's sign) when
/// `floor(frac · 2²¹) + (r >> 11) ≥ 2²¹`, else `lo`: the top 21 bits of the fraction against
/// the top 21 bits of `r`. Over uniform `r` that is `hi` with probability
/// `floor(frac · 2²¹) / 2²¹`, which is `frac` exactly whenever the fraction has at most 21
/// bits: always for bf16 (16 discarded bits; the rule reduces to `(b + (r >> 16)) >> 16`) and
/// for normal f16 results (13 bits: `(b − rebias + (r >> 19)) >> 13`), and for subnormal f16
/// results of |x| ≥ 2⁻²² (at most 21 bits). Below 2⁻²² the fraction's bits under 2⁻²¹ of
/// an ulp (2⁻⁴⁵ in value) are ignored, so such values round up a little less often (by
/// < 2⁻²¹) than exactly. In the JIT that is one multiply by 2⁴⁵ and a truncating conversion:
/// |x|·2⁴⁵ < 2³¹ holds the subnormal count and 21 fraction bits.
///
/// Values exact in f16 (±0, ±inf included) are unchanged for every `r`. A finite magnitude
/// between 65504 (the largest finite f16) and 65536 rounds to 65504 or to ±inf by the same
/// rule (inf is the step after 65504); from 65536 up it is ±inf. A NaN gives what
/// [`f32_to_f16`] gives.
pub fn f32_to_f16_stochastic(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    let a = b & !SIGN;
    if a > INF {
        return f32_to_f16(x);
    }
    let magnitude = if a >= F16_INF_INPUT {
        0x7C00
    } else if a >= F16_MIN_NORMAL {
        (a - REBIAS + (r >> 19)) >> 13
    } else {
        // z = floor(|x| · 2⁴⁵) < 2³¹: the value in units of 2⁻²⁴ with 21 fraction bits.
        let exponent = a >> 23;
        let z = if exponent == 0 {
            0 // |x| < 2⁻¹²⁶: z = 0
        } else {
            let significand = (a & 0x7F_FFFF) | 0x80_0000; // |x| = significand · 2^(e − 150)
            match exponent {
                105.. => significand << (exponent - 105),
                _ => significand.checked_shr(105 - exponent).unwrap_or(0),
            }
        };
        (z + (r >> 11)) >> 21
    };
    ((b >> 16) & 0x8000) as u16 | magnitude as u16
}

/// The integer mixer of [`random_bits`]: lowbias32 (Chris Wellons' hash-prospector) without
/// its last step (`h ^= h >> 16`, which changes only the low 16 bits: the top 16 are
/// lowbias32's, what bf16 rounding of the param reads). A bijection of u32. Its low bits are
/// less mixed than lowbias32's; they reach rounding through f16's wider reads (21 bits for
/// subnormal results) and through a stream's multiplier, whose product's top bits depend on
/// every bit. The tests below (balanced bits, unbiased rounding, independent streams) find
/// no difference from lowbias32's; dropping the step saves two instructions per vector.
const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h.wrapping_mul(0x846C_A68B)
}

/// 32 random bits for element `index` under `key`: `mix32(index + key[0]) ^ key[1]`, where
/// `mix32(h)` is `h ^= h >> 16; h *= 0x7FEB352D; h ^= h >> 15; h *= 0x846CA68B` (wrapping
/// u32 arithmetic). A bijection of `index` for a fixed key, so no two elements of a step
/// share their bits; only additions, xor, logical shifts and wrapping multiplies, which the
/// JIT emits lane-wise (`pmulld`), the key's first word added once per segment to its first
/// index. Each stream of an element rounds with its own word of these bits,
/// [`stream_bits`].
pub fn random_bits(key: [u32; 2], index: u32) -> u32 {
    mix32(index.wrapping_add(key[0])) ^ key[1]
}

/// The multiplier of stream `stream`'s word: `1 + 2 · stream · 0x9E3779B9` (wrapping), odd
/// (so the word is a bijection of the element's bits) and distinct for every stream; 1 for
/// the param (stream 0), whose word is the element's bits themselves.
pub const fn stream_multiplier(stream: u32) -> u32 {
    1u32.wrapping_add(stream.wrapping_mul(0x9E37_79B9).wrapping_mul(2))
}

/// The random word with which stream `stream` of an element rounds, from the element's
/// [`random_bits`]: `bits · stream_multiplier(stream)` (wrapping). One generator call serves
/// every stochastic stream of an element, and each stream's word is uniform when the bits
/// are (the multiplier is odd); the words' top bits, which rounding reads, mix all 32 bits.
pub fn stream_bits(bits: u32, stream: u32) -> u32 {
    bits.wrapping_mul(stream_multiplier(stream))
}

/// splitmix64's finalizer: a bijection of u64 with full avalanche.
const fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of [`random_bits`] for optimizer step `step` under `seed` (computed on the host,
/// once per step): `z = splitmix64(splitmix64(seed + 0x9E3779B97F4A7C15) ^ step)`, split
/// into its low and high words `[z as u32, (z >> 32) as u32]`, where `splitmix64` is the
/// finalizer of Vigna's splitmix64. For a fixed seed, distinct steps give distinct keys.
pub fn step_key(seed: u64, step: u64) -> [u32; 2] {
    let z = splitmix64(splitmix64(seed.wrapping_add(0x9E37_79B9_7F4A_7C15)) ^ step);
    [z as u32, (z >> 32) as u32]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use half::{bf16, f16};

    /// f32 bit patterns for narrowing tests: every 65537th pattern, and for each bf16 value
    /// its neighbourhood (discarded 16 bits 0, 1, just below, at and above the halfway
    /// point, all ones).
    pub(crate) fn bf16_sweep() -> Vec<u32> {
        let mut v: Vec<u32> = (0..=u32::MAX / 65537).map(|i| i * 65537).collect();
        for high in 0..=0xFFFFu32 {
            for low in [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                v.push(high << 16 | low);
            }
        }
        v
    }

    /// f32 bit patterns for f16 tests: every 65537th pattern, and for every f32 exponent
    /// whose values narrow to an f16 other than 0 or inf (and some beyond, both signs), the
    /// kept bits with the discarded ones at 0, 1, just below, at and above the halfway point
    /// and all ones, the discarded width being 13 bits for normal results and more for
    /// subnormal ones; also NaNs with assorted payloads.
    pub(crate) fn f16_sweep() -> Vec<u32> {
        let mut v: Vec<u32> = (0..=u32::MAX / 65537).map(|i| i * 65537).collect();
        let exponents = [0u32, 1, 50, 72, 73, 90, 100].into_iter().chain(101..=143);
        for exponent in exponents.chain([144, 200, 254]) {
            // Discarded bits of the stored 23-bit mantissa.
            let discarded = (126u32.saturating_sub(exponent)).clamp(13, 23);
            let half = 1u32 << (discarded - 1);
            let lows = [0, 1, half - 1, half, half + 1, (half << 1) - 1];
            let kept_values = 1u32 << (23 - discarded);
            for kept in (0..kept_values).step_by(((kept_values / 256) as usize).max(1)) {
                for low in lows {
                    for sign in [0, SIGN] {
                        v.push(sign | exponent << 23 | kept << discarded | low);
                    }
                }
            }
        }
        // Every kept value near the top of f16 (the overflow threshold 65520 = 0x477FF000).
        for kept in 0..1024u32 {
            for low in [0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF] {
                v.push(142 << 23 | kept << 13 | low);
            }
        }
        for payload in [
            1, 2, 0x1FFF, 0x2000, 0x3F_FFFF, 0x40_0000, 0x40_0001, 0x7F_FFFF,
        ] {
            v.push(INF | payload);
            v.push(SIGN | INF | payload);
        }
        v
    }

    #[test]
    fn widening_equals_half_for_every_pattern() {
        for bits in 0..=u16::MAX {
            let ours = bf16_to_f32(bits).to_bits();
            // `half` quiets signalling NaNs; the value of every other pattern is the same.
            let signalling = ours & !SIGN > INF && ours & QUIET == 0;
            if !signalling {
                let half = bf16::from_bits(bits).to_f32().to_bits();
                assert_eq!(ours, half, "{bits:#06x}");
                assert_eq!(ours, bf16::from_bits(bits).to_f32_const().to_bits());
            }
            let ours = f16_to_f32(bits).to_bits();
            assert_eq!(ours, f16::from_bits(bits).to_f32().to_bits(), "{bits:#06x}");
            assert_eq!(ours, f16::from_bits(bits).to_f32_const().to_bits());
        }
    }

    #[test]
    fn widening_is_exact_but_for_signalling_f16_nans() {
        for bits in 0..=u16::MAX {
            let b = bf16_to_f32(bits);
            assert_eq!(b.to_bits(), u32::from(bits) << 16);
            let h = f16_to_f32(bits);
            if !h.is_nan() {
                assert_eq!(f64::from(h), f16::from_bits(bits).to_f64(), "{bits:#06x}");
            }
        }
        assert_eq!(bf16_to_f32(0x7F81).to_bits(), 0x7F81_0000);
        assert_eq!(f16_to_f32(0xFC01).to_bits(), 0xFFC0_2000);
    }

    #[test]
    fn nearest_bf16_equals_half() {
        for b in bf16_sweep() {
            let x = f32::from_bits(b);
            let ours = f32_to_bf16(x);
            assert_eq!(ours, bf16::from_f32(x).to_bits(), "{b:#010x}");
            assert_eq!(ours, bf16::from_f32_const(x).to_bits(), "{b:#010x}");
        }
    }

    #[test]
    fn nearest_f16_equals_half() {
        // `from_f32` uses F16C where the CPU has it; `from_f32_const` is the software path.
        for b in f16_sweep() {
            let x = f32::from_bits(b);
            let ours = f32_to_f16(x);
            assert_eq!(ours, f16::from_f32(x).to_bits(), "{b:#010x}");
            assert_eq!(ours, f16::from_f32_const(x).to_bits(), "{b:#010x}");
        }
        assert_eq!(f32_to_f16(65519.996), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(-2f32.powi(-25)), 0x8000); // the tie rounds to even: −0
        assert_eq!(f32_to_f16(2f32.powi(-25) * 1.0000001), 0x0001);
    }

    /// |x| truncated toward zero to f16 (as bits), from the nearest-even narrowing.
    fn f16_truncated(a: f32) -> u16 {
        let nearest = f32_to_f16(a);
        if f16_to_f32(nearest) > a {
            nearest - 1
        } else {
            nearest
        }
    }

    /// A few random words, fixed.
    fn some_r() -> Vec<u32> {
        let mut r: Vec<u32> = (0..48).map(|i| random_bits([7, 11], i)).collect();
        r.extend([
            0,
            1,
            0x7FF,
            0x800,
            0xFFFF,
            0x1_0000,
            0x8000_0000,
            u32::MAX - 1,
            u32::MAX,
        ]);
        r
    }

    #[test]
    fn stochastic_leaves_exact_values_and_specials_alone() {
        let rs = some_r();
        for bits in 0..=u16::MAX {
            let (b, h) = (bf16_to_f32(bits), f16_to_f32(bits));
            for &r in &rs {
                if !b.is_nan() {
                    assert_eq!(f32_to_bf16_stochastic(b, r), bits, "{bits:#06x} {r:#x}");
                } else {
                    assert_eq!(f32_to_bf16_stochastic(b, r), f32_to_bf16(b));
                }
                if !h.is_nan() {
                    assert_eq!(f32_to_f16_stochastic(h, r), bits, "{bits:#06x} {r:#x}");
                } else {
                    assert_eq!(f32_to_f16_stochastic(h, r), f32_to_f16(h));
                }
            }
        }
        for &r in &rs {
            for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001)] {
                assert_eq!(f32_to_bf16_stochastic(nan, r), f32_to_bf16(nan));
                assert_eq!(f32_to_f16_stochastic(nan, r), f32_to_f16(nan));
            }
            assert_eq!(f32_to_f16_stochastic(65536.0, r), 0x7C00);
            assert_eq!(f32_to_f16_stochastic(-f32::MAX, r), 0xFC00);
            assert_eq!(f32_to_f16_stochastic(1e-30, r), 0);
            assert_eq!(f32_to_f16_stochastic(-1e-40, r), 0x8000);
            assert_eq!(f32_to_bf16_stochastic(-0.0, r), 0x8000);
        }
    }

    #[test]
    fn stochastic_gives_the_truncation_or_the_next_value() {
        let rs = some_r();
        for b in bf16_sweep().into_iter().step_by(7) {
            let x = f32::from_bits(b);
            if x.is_nan() {
                continue;
            }
            let lo = (b >> 16) as u16;
            for &r in &rs {
                let y = f32_to_bf16_stochastic(x, r);
                assert!(y == lo || y == lo + 1, "{b:#010x} {r:#x}");
            }
        }
        for b in f16_sweep() {
            let x = f32::from_bits(b);
            if x.is_nan() {
                continue;
            }
            let sign = ((b >> 16) & 0x8000) as u16;
            let lo = f16_truncated(x.abs());
            let hi = if lo == 0x7C00 { lo } else { lo + 1 };
            for &r in &rs[..8] {
                let y = f32_to_f16_stochastic(x, r);
                assert!(
                    y == sign | lo || y == sign | hi,
                    "{b:#010x} {r:#x}: {y:#06x}"
                );
            }
        }
    }

    /// Rounds-up counted over `r = k << shift | low` for k in 0..2^(32 − shift).
    fn ups(round: impl Fn(u32) -> u16, lo: u16, shift: u32, low: u32) -> u32 {
        let mut count = 0;
        for k in 0..(1u32 << (32 - shift)) {
            let y = round(k << shift | low);
            assert!(y & 0x7FFF == lo || y & 0x7FFF == lo + 1);
            count += u32::from(y & 0x7FFF == lo + 1);
        }
        count
    }

    #[test]
    fn stochastic_rounds_up_with_the_discarded_fraction() {
        // x = lo + j/256 ulp: exactly j of the 256 values of r's top byte round up, whatever
        // the other bits of r.
        for (lo, j) in [
            (0x3F80u16, 64u32),
            (0x0001, 1),
            (0x7F7F, 255),
            (0x8100, 128),
        ] {
            let x = f32::from_bits(u32::from(lo) << 16 | j << 8);
            for low in [0, 0x00FF_FFFF, 0x0012_3456] {
                let n = ups(|r| f32_to_bf16_stochastic(x, r), lo & 0x7FFF, 24, low);
                assert_eq!(n, j, "{lo:#x} {j}");
            }
        }
        // Every bf16 fraction (16 bits) is resolved exactly.
        let x = f32::from_bits(0x4049_0FDB); // π
        assert_eq!(ups(|r| f32_to_bf16_stochastic(x, r), 0x4049, 16, 0), 0x0FDB);
        // f16: normal results (13 discarded bits), subnormal ones, the step to inf.
        // (The step after 65504 is inf; as a distance, 32.)
        let ulp = |lo: u16| f16_to_f32(lo + 1).min(65536.0) - f16_to_f32(lo);
        for (lo, j) in [
            (0x3C00u16, 64u32),
            (0x0400, 3),
            (0x03FF, 200),
            (0x0001, 128),
            (0x0000, 1),
            (0x7BFF, 192),
        ] {
            let x = f16_to_f32(lo) + ulp(lo) * j as f32 / 256.0;
            for low in [0, 0x00FF_FFFF, 0x00AB_CDEF] {
                let n = ups(|r| f32_to_f16_stochastic(x, r), lo, 24, low);
                assert_eq!(n, j, "{lo:#x} {j}");
                let n = ups(|r| f32_to_f16_stochastic(-x, r), lo, 24, low);
                assert_eq!(n, j, "-{lo:#x} {j}");
            }
        }
        // 13 bits of a normal f16 result, and 21 of a subnormal one, exactly.
        let x = f32::from_bits(0x3F80_0000 | 0x1ABC); // 1 + 0x1ABC/2^13 f16 ulp
        assert_eq!(ups(|r| f32_to_f16_stochastic(x, r), 0x3C00, 19, 0), 0x1ABC);
        let x = (5.0 + 0x1_2345 as f32 / (1 << 21) as f32) * 2f32.powi(-24);
        assert_eq!(ups(|r| f32_to_f16_stochastic(x, r), 5, 11, 0), 0x1_2345);
        // Below 2^-22 the fraction is cut to 21 bits: 2^-50 = 2^-26 ulp never rounds up.
        assert_eq!(
            ups(|r| f32_to_f16_stochastic(2f32.powi(-50), r), 0, 11, 0),
            0
        );
    }

    #[test]
    fn random_bits_are_balanced() {
        let key = step_key(42, 1);
        let n = 1_000_000u32;
        let mut counts = [0u32; 32];
        for i in 0..n {
            let r = random_bits(key, i);
            for (bit, count) in counts.iter_mut().enumerate() {
                *count += (r >> bit) & 1;
            }
        }
        // Binomial(n, 1/2): mean n/2, sigma sqrt(n)/2 = 500.
        let sigma = f64::from(n).sqrt() / 2.0;
        for (bit, &count) in counts.iter().enumerate() {
            let z = (f64::from(count) - f64::from(n) / 2.0) / sigma;
            assert!(z.abs() < 5.0, "bit {bit}: {count} set of {n} (z = {z:.2})");
        }
    }

    #[test]
    fn the_streams_of_an_element_round_independently() {
        // With one generator call per element, each stream reads its own word: whether the
        // param and a state slot of one element round up should be independent events. For
        // thresholds p and q on the words' top 16 bits (what bf16 rounding reads), the count
        // of elements where both fall below is Binomial(n, p·q) within 5 sigma.
        let key = step_key(3, 9);
        let n = 200_000u32;
        for (s, t, p, q) in [
            (0, 2, 0.5, 0.5),
            (0, 3, 0.3, 0.7),
            (2, 3, 0.1, 0.25),
            (2, 5, 0.6, 0.05),
        ] {
            let below = |w: u32, f: f64| f64::from(w >> 16) < f * 65536.0;
            let both = (0..n)
                .map(|i| random_bits(key, i))
                .filter(|&r| below(stream_bits(r, s), p) && below(stream_bits(r, t), q))
                .count() as f64;
            let expected = f64::from(n) * p * q;
            let sigma = (expected * (1.0 - p * q)).sqrt();
            assert!(
                (both - expected).abs() <= 5.0 * sigma,
                "streams {s} and {t}: {both} of {n} below ({p}, {q}), \
                 expected {expected:.0} ± {sigma:.0}"
            );
        }
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // The mean of SR(x) over n draws is within 5 sigma of x, where sigma = ulp ·
        // sqrt(p(1 − p)/n) for p the probability of rounding up.
        let key = step_key(7, 3);
        let n = 100_000u32;
        type Narrow = fn(f32, u32) -> u16;
        type Widen = fn(u16) -> f32;
        let cases: [(f32, Narrow, Widen); 4] = [
            (1.0 + 0.3 / 128.0, f32_to_bf16_stochastic, bf16_to_f32),
            (-3.7e-3, f32_to_bf16_stochastic, bf16_to_f32),
            (0.1, f32_to_f16_stochastic, f16_to_f32),
            (3.3e-6, f32_to_f16_stochastic, f16_to_f32),
        ];
        for (x, narrow, widen) in cases {
            let sum: f64 = (0..n)
                .map(|i| f64::from(widen(narrow(x, random_bits(key, i)))))
                .sum();
            let mean = sum / f64::from(n);
            let lo = f64::from(widen(narrow(x, 0)));
            let hi = f64::from(widen(narrow(x, u32::MAX)));
            let p = (f64::from(x) - lo) / (hi - lo);
            let sigma = (hi - lo).abs() * (p * (1.0 - p) / f64::from(n)).sqrt();
            assert!(
                (mean - f64::from(x)).abs() <= 5.0 * sigma,
                "{x}: mean {mean}, sigma {sigma}"
            );
        }
    }

    #[test]
    fn generator_values_are_fixed() {
        // The definitions above, pinned: changing them changes every SR result.
        assert_eq!(mix32(1), 0x6889_F849);
        assert_eq!(random_bits([0, 0], 0), 0);
        assert_eq!(random_bits([u32::MAX, 0], 1), 0);
        assert_eq!(random_bits([1, 2], 3), mix32(4) ^ 2);
        assert_eq!(stream_bits(0x1234_5678, 0), 0x1234_5678);
        assert_eq!(stream_multiplier(2), 0x78DD_E6E5);
        let keys: Vec<[u32; 2]> = (0..1000).map(|s| step_key(1, s)).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        assert_ne!(step_key(1, 0), step_key(2, 0));
    }
}

//! bf16 and f16 storage in the JIT: loads that widen to f32, stores that narrow from f32 (to
//! nearest even, or stochastically with random bits), and the counter-based random bits —
//! [`crate::round`]'s functions emitted as Cranelift IR, equal to them bit for bit.
//!
//! Cranelift's x64 backend cannot lower f16 `fpromote`/`fdemote`, so the conversions are
//! integer vector code over i32x4 (SSE4.1 at least: `pmovzxwd`, `pminud`, `pblendvb`,
//! `roundps`, `pmulld`), with a few float operations that are exact and independent of
//! MXCSR: multiplications by powers of two, `roundps` with an explicit rounding mode, and
//! truncating conversions. Four lanes move as 8 bytes (`pmovzxwd` in, `pshufb` and a 64-bit
//! store out); one lane (`vector == false`) runs the same code in lane 0 of a vector, so both
//! paths compute the same bits.

use crate::DType;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, ConstantData, Endianness, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// The f32 sign bit.
const SIGN: u32 = 0x8000_0000;
/// The f32 quiet-NaN bit.
const QUIET: u32 = 0x0040_0000;
/// The f32 bits of +inf.
const INF: u32 = 0x7F80_0000;
/// The difference of the f32 and f16 exponent biases (127 − 15), as f32 exponent bits.
const REBIAS: u32 = 112 << 23;
/// The f32 bits of 2⁻¹⁴, the smallest normal f16.
const F16_MIN_NORMAL: u32 = 0x3880_0000;
/// The f32 bits of 65536, where f16 results become inf whatever the rounding.
const F16_INF_INPUT: u32 = 0x4780_0000;

/// Loads 4 (vector) or 1 element(s) of storage `dtype` (F32, BF16 or F16) at `addr + offset`
/// and widens them to F32X4 / F32, as [`crate::round::bf16_to_f32`] and
/// [`crate::round::f16_to_f32`] do.
pub(crate) fn load_f32(
    b: &mut FunctionBuilder,
    dtype: DType,
    vector: bool,
    flags: MemFlagsData,
    addr: Value,
    offset: i32,
) -> Value {
    if dtype == DType::F32 {
        let ty = if vector { types::F32X4 } else { types::F32 };
        return b.ins().load(ty, flags, addr, offset);
    }
    let halves = if vector {
        b.ins().uload16x4(flags, addr, offset)
    } else {
        let half = b.ins().uload16(types::I32, flags, addr, offset);
        b.ins().scalar_to_vector(types::I32X4, half)
    };
    let wide = match dtype {
        DType::BF16 => widen_bf16(b, halves),
        DType::F16 => widen_f16(b, halves),
        DType::F32 | DType::F64 => panic!("load_f32 widens bf16 and f16, not {dtype}"),
    };
    if vector {
        wide
    } else {
        b.ins().extractlane(wide, 0)
    }
}

/// Narrows an F32X4 / F32 `value` to storage `dtype` (F32, BF16 or F16) and stores it at
/// `addr + offset`; `random` is Some(I32X4 / I32 random bits) for stochastic rounding
/// ([`crate::round::f32_to_bf16_stochastic`], [`crate::round::f32_to_f16_stochastic`]), None
/// for nearest even ([`crate::round::f32_to_bf16`], [`crate::round::f32_to_f16`]).
/// `nans == false` leaves out the NaN path (3–4 instructions): only for a value the caller
/// has checked has no NaN lane; every other lane's bits are the same either way.
///
/// Panics on stochastic rounding to f32 storage (there is nothing to round) and on f64.
#[allow(clippy::too_many_arguments)] // the team's contract: one call per stored stream
pub(crate) fn store_f32(
    b: &mut FunctionBuilder,
    dtype: DType,
    vector: bool,
    flags: MemFlagsData,
    value: Value,
    addr: Value,
    offset: i32,
    random: Option<Value>,
    nans: bool,
) {
    if dtype == DType::F32 {
        assert!(random.is_none(), "no stochastic rounding to f32 storage");
        b.ins().store(flags, value, addr, offset);
        return;
    }
    let (value, random) = if vector {
        (value, random)
    } else {
        let value = b.ins().scalar_to_vector(types::F32X4, value);
        let random = random.map(|r| b.ins().scalar_to_vector(types::I32X4, r));
        (value, random)
    };
    // The 16-bit results in the high (bf16) or low (f16) half of each i32 lane, gathered
    // into the low 8 bytes.
    let (bits, high) = match dtype {
        DType::BF16 => (narrow_bf16(b, value, random, nans), true),
        DType::F16 => (narrow_f16(b, value, random, nans), false),
        DType::F32 | DType::F64 => panic!("store_f32 narrows to bf16 and f16, not {dtype}"),
    };
    let bytes = bitcast(b, types::I8X16, bits);
    let first = if high { 2 } else { 0 };
    let mask: Vec<u8> = (0..16).map(|i| first + 4 * (i / 2 % 4) + i % 2).collect();
    let mask = b.func.dfg.immediates.push(ConstantData::from(mask));
    let packed = b.ins().shuffle(bytes, bytes, mask);
    if vector {
        let words = bitcast(b, types::F64X2, packed);
        let low = b.ins().extractlane(words, 0);
        b.ins().store(flags, low, addr, offset);
    } else {
        let words = bitcast(b, types::I32X4, packed);
        let low = b.ins().extractlane(words, 0);
        b.ins().istore16(flags, low, addr, offset);
    }
}

/// The generator's bits ([`crate::round::random_bits`]) for lanes (I32X4 or I32) with
/// counters `counter = index + key[0]` (which a loop adds once per segment to its first
/// index), under the key's second word `key1` (splatted for a vector): `mix32(counter) ^ key1`.
pub(crate) fn mix(b: &mut FunctionBuilder, key1: Value, counter: Value) -> Value {
    let h = mix32(b, counter);
    b.ins().bxor(h, key1)
}

/// Stream `stream`'s word of an element's generator bits `bits` (I32X4 or I32):
/// [`crate::round::stream_bits`], one multiply (none for the param's).
pub(crate) fn stream_bits(b: &mut FunctionBuilder, bits: Value, stream: u32) -> Value {
    match crate::round::stream_multiplier(stream) {
        1 => bits,
        k => mul_const(b, bits, k),
    }
}

/// `h ^= h >> 16; h *= 0x7FEB352D; h ^= h >> 15; h *= 0x846CA68B` ([`crate::round`]'s
/// `mix32`).
fn mix32(b: &mut FunctionBuilder, h: Value) -> Value {
    let h = xor_shift(b, h, 16);
    let h = mul_const(b, h, 0x7FEB_352D);
    let h = xor_shift(b, h, 15);
    mul_const(b, h, 0x846C_A68B)
}

fn xor_shift(b: &mut FunctionBuilder, h: Value, shift: i64) -> Value {
    let shifted = b.ins().ushr_imm_u(h, shift);
    b.ins().bxor(h, shifted)
}

fn mul_const(b: &mut FunctionBuilder, h: Value, k: u32) -> Value {
    let k = if b.func.dfg.value_type(h).is_vector() {
        splat(b, k)
    } else {
        b.ins().iconst(types::I32, i64::from(k))
    };
    b.ins().imul(h, k)
}

/// Bit `k` of each lane of `x`, as 0 or 1 (two shifts: no constant to load).
fn bit(b: &mut FunctionBuilder, x: Value, k: i64) -> Value {
    let top = b.ins().ishl_imm_u(x, 31 - k);
    b.ins().ushr_imm_u(top, 31)
}

/// `bits` in every lane of an I32X4 constant.
fn splat(b: &mut FunctionBuilder, bits: u32) -> Value {
    let data = ConstantData::from(bits.to_le_bytes().repeat(4));
    let constant = b.func.dfg.constants.insert(data);
    b.ins().vconst(types::I32X4, constant)
}

/// `x` in every lane of an F32X4 constant.
fn splat_f32(b: &mut FunctionBuilder, x: f32) -> Value {
    let data = ConstantData::from(x.to_bits().to_le_bytes().repeat(4));
    let constant = b.func.dfg.constants.insert(data);
    b.ins().vconst(types::F32X4, constant)
}

/// Reinterprets a 128-bit vector as another lane type, lanes in memory order.
fn bitcast(b: &mut FunctionBuilder, ty: types::Type, v: Value) -> Value {
    let little = MemFlagsData::new().with_endianness(Endianness::Little);
    b.ins().bitcast(ty, little, v)
}

/// bf16 halves (zero-extended into i32x4 lanes) to f32: `h << 16`.
fn widen_bf16(b: &mut FunctionBuilder, halves: Value) -> Value {
    let x = b.ins().ishl_imm_u(halves, 16);
    bitcast(b, types::F32X4, x)
}

/// f16 halves (zero-extended into i32x4 lanes) to f32, exactly.
///
/// With `m` the magnitude bits shifted into f32 position (`(h << 17) >> 4`):
/// `n = m + rebias` is the value of a normal f16, and `s = f32(m + (113 << 23)) − 2⁻¹⁴` that
/// of a subnormal one (`m·2⁻²⁴` as a normal f32: the subtraction is exact and never sees a
/// denormal, so flush-to-zero and denormals-are-zero change nothing). For a subnormal `n > s`,
/// for a normal `n ≤ s`, so the value is the unsigned minimum of their bits. Inf and NaN
/// (`m ≥ 31 << 23`) get the f32 exponent's remaining bits; adding −0.0 then quiets a
/// signalling NaN (keeping its payload, as `half` does) and changes nothing else.
fn widen_f16(b: &mut FunctionBuilder, halves: Value) -> Value {
    let m = b.ins().ishl_imm_u(halves, 17);
    let m = b.ins().ushr_imm_u(m, 4);
    let rebias = splat(b, REBIAS);
    let normal = b.ins().iadd(m, rebias);
    let subnormal_bias = splat(b, 113 << 23);
    let s = b.ins().iadd(m, subnormal_bias);
    let s = bitcast(b, types::F32X4, s);
    let min_normal = splat_f32(b, 2f32.powi(-14));
    let s = b.ins().fsub(s, min_normal);
    let s = bitcast(b, types::I32X4, s);
    let value = b.ins().umin(normal, s);
    let below_inf = splat(b, (31 << 23) - 1);
    let special = b.ins().icmp(IntCC::SignedGreaterThan, m, below_inf);
    let inf = splat(b, INF);
    let exponent = b.ins().band(special, inf);
    let value = b.ins().bor(value, exponent);
    let sign = b.ins().ushr_imm_u(halves, 15);
    let sign = b.ins().ishl_imm_u(sign, 31);
    let value = b.ins().bor(value, sign);
    let value = bitcast(b, types::F32X4, value);
    let minus_zero = splat_f32(b, -0.0);
    b.ins().fadd(value, minus_zero)
}

/// f32x4 to bf16 bits in the high half of each i32 lane: `b + 0x7FFF + lsb` (nearest even)
/// or `b + (r >> 16)` (stochastic), and `b | quiet bit` where `b` is a NaN (if `nans`).
fn narrow_bf16(b: &mut FunctionBuilder, value: Value, random: Option<Value>, nans: bool) -> Value {
    let x = bitcast(b, types::I32X4, value);
    let rounded = match random {
        None => {
            let lsb = bit(b, x, 16);
            let half = splat(b, 0x7FFF);
            let t = b.ins().iadd(x, half);
            b.ins().iadd(t, lsb)
        }
        Some(r) => {
            let r = b.ins().ushr_imm_u(r, 16);
            b.ins().iadd(x, r)
        }
    };
    if !nans {
        return rounded;
    }
    let nan = b.ins().fcmp(FloatCC::Unordered, value, value);
    let quiet = splat(b, QUIET);
    let quiet = b.ins().bor(x, quiet);
    b.ins().bitselect(nan, quiet, rounded)
}

/// f32x4 to f16 bits in the low half of each i32 lane.
///
/// With `a = |x|` as bits: a normal result is `(min(a, 65536) − rebias + 0xFFF + lsb) >> 13`
/// (nearest even; `lsb` is bit 13) or `(min(a, 65536) − rebias + (r >> 19)) >> 13`
/// (stochastic): the clamp makes every magnitude from 65536 up, inf included, exactly inf. A
/// NaN's is `((a | quiet bit) − (0x70 << 24)) >> 13` = `0x7E00 | payload >> 13`. A subnormal
/// result (`a < 2⁻¹⁴`) comes from `a·2²⁴` (exact): rounded to an integer by `roundps` in
/// nearest-even mode, or truncated after scaling by 2²¹ more (`a·2⁴⁵ < 2³¹`) and carried by
/// `r >> 11` (stochastic); a denormal f32 gives 0 either way, also under
/// denormals-are-zero. The sign is or-ed in last. Without `nans`, no NaN path.
fn narrow_f16(b: &mut FunctionBuilder, value: Value, random: Option<Value>, nans: bool) -> Value {
    let x = bitcast(b, types::I32X4, value);
    let magnitude = splat(b, !SIGN);
    let a = b.ins().band(x, magnitude);
    let inf_input = splat(b, F16_INF_INPUT);
    let clamped = b.ins().umin(a, inf_input);
    let t = match random {
        None => {
            let lsb = bit(b, clamped, 13);
            let bias = splat(b, 0xFFF_u32.wrapping_sub(REBIAS));
            let t = b.ins().iadd(clamped, bias);
            b.ins().iadd(t, lsb)
        }
        Some(r) => {
            let r = b.ins().ushr_imm_u(r, 19);
            let bias = splat(b, 0u32.wrapping_sub(REBIAS));
            let t = b.ins().iadd(clamped, bias);
            b.ins().iadd(t, r)
        }
    };
    let t = if nans {
        let inf = splat(b, INF);
        let nan = b.ins().icmp(IntCC::SignedGreaterThan, a, inf);
        let quiet = splat(b, QUIET);
        let quiet = b.ins().bor(a, quiet);
        let nan_bias = splat(b, 0u32.wrapping_sub(0x7000_0000));
        let quiet = b.ins().iadd(quiet, nan_bias);
        b.ins().bitselect(nan, quiet, t)
    } else {
        t
    };
    let normal = b.ins().ushr_imm_u(t, 13);

    let af = bitcast(b, types::F32X4, a);
    let subnormal = match random {
        None => {
            let scale = splat_f32(b, 2f32.powi(24));
            let q = b.ins().fmul(af, scale);
            let q = b.ins().nearest(q);
            b.ins().x86_cvtt2dq(types::I32X4, q)
        }
        Some(r) => {
            let scale = splat_f32(b, 2f32.powi(45));
            let q = b.ins().fmul(af, scale);
            let z = b.ins().x86_cvtt2dq(types::I32X4, q);
            let r = b.ins().ushr_imm_u(r, 11);
            let z = b.ins().iadd(z, r);
            b.ins().ushr_imm_u(z, 21)
        }
    };
    let below_normal = splat(b, F16_MIN_NORMAL - 1);
    let is_normal = b.ins().icmp(IntCC::SignedGreaterThan, a, below_normal);
    let bits = b.ins().bitselect(is_normal, normal, subnormal);
    let sign = b.ins().ushr_imm_u(x, 31);
    let sign = b.ins().ishl_imm_u(sign, 15);
    b.ins().bor(bits, sign)
}

#[cfg(test)]
mod tests;

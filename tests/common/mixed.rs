//! Helpers of the mixed-precision tests (`tests/mixed_precision.rs`): streams in their
//! storage dtype, seeded inputs made as bit patterns, segments with stochastic rounding, every
//! executor on copies of the same buffers, and the kernel contract's rounding as a reference.

use crate::common::SplitMix64;
use half::{bf16, f16};
use optjit::program::{ElemArg, Stage};
use optjit::{
    round, DType, Elems, ElemsRef, Error, Float, Jit, JitOptions, Kernel, Layout, Noise, Program,
    Segment,
};

/// The JIT's unroll factors.
pub const UNROLLS: [u32; 4] = [1, 2, 4, 8];

/// f32 values whose narrowing is easy to get wrong, and what they round to to nearest even
/// in bf16 and f16 (for a NaN, any quiet NaN); the sign is added at random.
#[rustfmt::skip]
pub const F32_EDGES: &[(u32, u16, u16)] = &[
    // Just below 2.0: rounds up across the binade to 2.0.
    (0x3FFF_FFFF, 0x4000, 0x4000),
    // 1 + 2^-8, halfway between bf16 1.0 and its successor: ties to even, 1.0 (exact in f16).
    (0x3F80_8000, 0x3F80, 0x3C04),
    // Halfway between bf16 0x3F81 and 0x3F82: ties to even, up (exact in f16).
    (0x3F81_8000, 0x3F82, 0x3C0C),
    // Just above a bf16 halfway case: rounds up.
    (0x3F80_8001, 0x3F81, 0x3C04),
    // 1 + 2^-11, halfway between f16 1.0 and its successor: ties to even, 1.0.
    (0x3F80_1000, 0x3F80, 0x3C00),
    // 1 + 3·2^-11, halfway in f16: ties to even, up to 1 + 2^-9.
    (0x3F80_3000, 0x3F80, 0x3C02),
    // 65520, f16's overflow threshold: inf in f16.
    (0x477F_F000, 0x4780, 0x7C00),
    // 65519.996, just below it: f16's largest finite, 65504.
    (0x477F_EFFF, 0x4780, 0x7BFF),
    // 2^-25, half f16's smallest subnormal: ties to even, 0.
    (0x3300_0000, 0x3300, 0x0000),
    // 3·2^-25, halfway between the f16 subnormals 2^-24 and 2^-23: ties to even, 2^-23.
    (0x33C0_0000, 0x33C0, 0x0002),
    // 2^-14 − 2^-25, halfway between f16's largest subnormal and smallest normal: up.
    (0x387F_E000, 0x3880, 0x0400),
    // Halfway between bf16's largest finite and 2^128: ties to even, inf.
    (0x7F7F_8000, 0x7F80, 0x7C00),
    // Just below it: bf16's largest finite.
    (0x7F7F_7FFF, 0x7F7F, 0x7C00),
    // An f32 subnormal halfway to bf16's smallest subnormal: ties to even, 0.
    (0x0000_8000, 0x0000, 0x0000),
    // Halfway between the bf16 subnormals 1 and 2 (×2^-133): ties to even, 2.
    (0x0001_8000, 0x0002, 0x0000),
    // f32's largest subnormal: up to bf16's smallest normal.
    (0x007F_FFFF, 0x0080, 0x0000),
    // f32's smallest subnormal.
    (0x0000_0001, 0x0000, 0x0000),
    // A signalling NaN with its payload in the low bits: truncated, it would be inf.
    (0x7F80_0001, 0x7FC0, 0x7E00),
    // A NaN of all ones: adding the rounding bias would carry out of it.
    (0x7FFF_FFFF, 0x7FC0, 0x7E00),
    (0x7FC0_0000, 0x7FC0, 0x7E00),
    (0x7F80_0000, 0x7F80, 0x7C00),
    (0x0000_0000, 0x0000, 0x0000),
    (0x3F80_0000, 0x3F80, 0x3C00),
];

/// bf16 edge cases as bits (the sign is added at random).
pub const BF16_EDGES: &[u16] = &[
    0x7FC0, // quiet NaN
    0x7F81, // signalling NaN
    0x7FFF, // NaN of all ones
    0x7F80, // inf
    0x0000, // 0
    0x0001, // the smallest subnormal
    0x007F, // the largest subnormal
    0x0080, // the smallest normal
    0x7F7F, // the largest finite
    0x3F80, // 1.0
    0x3F81, // 1.0's successor
    0x3F7F, // 1.0's predecessor
];

/// f16 edge cases as bits (the sign is added at random).
pub const F16_EDGES: &[u16] = &[
    0x7E00, // quiet NaN
    0x7C01, // signalling NaN
    0x7FFF, // NaN of all ones
    0x7C00, // inf
    0x0000, // 0
    0x0001, // the smallest subnormal
    0x03FF, // the largest subnormal
    0x0400, // the smallest normal
    0x7BFF, // the largest finite, 65504
    0x3C00, // 1.0
    0x3C01, // 1.0's successor
    0x3BFF, // 1.0's predecessor
];

/// f64 edge cases (the sign is added at random).
pub const F64_EDGES: &[f64] = &[
    0.0,
    1.0,
    1.0 + f64::EPSILON,
    f64::INFINITY,
    f64::NAN,
    f64::MAX,
    f64::MIN_POSITIVE,
    1e-310,
    5e-324,
];

/// One stream's elements in their storage dtype.
#[derive(Clone, Debug)]
pub enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    pub fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::F64(_) => DType::F64,
            Buf::BF16(_) => DType::BF16,
            Buf::F16(_) => DType::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
            Buf::BF16(v) => v.len(),
            Buf::F16(v) => v.len(),
        }
    }

    pub fn elems(&mut self) -> Elems<'_> {
        match self {
            Buf::F32(v) => v.into(),
            Buf::F64(v) => v.into(),
            Buf::BF16(v) => v.into(),
            Buf::F16(v) => v.into(),
        }
    }

    pub fn elems_ref(&self) -> ElemsRef<'_> {
        match self {
            Buf::F32(v) => v.into(),
            Buf::F64(v) => v.into(),
            Buf::BF16(v) => v.into(),
            Buf::F16(v) => v.into(),
        }
    }

    /// The raw bits of element `i`.
    pub fn bits(&self, i: usize) -> u64 {
        match self {
            Buf::F32(v) => v[i].to_bits().into(),
            Buf::F64(v) => v[i].to_bits(),
            Buf::BF16(v) => v[i].to_bits().into(),
            Buf::F16(v) => v[i].to_bits().into(),
        }
    }

    /// Element `i` widened to f64 (exact).
    pub fn get(&self, i: usize) -> f64 {
        match self {
            Buf::F32(v) => v[i].into(),
            Buf::F64(v) => v[i],
            Buf::BF16(v) => v[i].to_f64(),
            Buf::F16(v) => v[i].to_f64(),
        }
    }

    pub fn is_nan(&self, i: usize) -> bool {
        self.get(i).is_nan()
    }

    /// The same values as f32 (exact for every dtype but f64, which this is never given).
    pub fn widened(&self) -> Buf {
        assert_ne!(self.dtype(), DType::F64, "f64 does not widen to f32");
        Buf::F32((0..self.len()).map(|i| self.get(i) as f32).collect())
    }

    /// `values` stored as `dtype` the way the contract says: to nearest even (as the `half`
    /// crate rounds, a reference independent of optjit's), or with stochastic rounding on the
    /// bits `random(i)` where it gives some.
    pub fn narrowed(values: &[f32], dtype: DType, random: impl Fn(usize) -> Option<u32>) -> Buf {
        let each = |f: &dyn Fn(f32, Option<u32>) -> u16| -> Vec<u16> {
            values
                .iter()
                .enumerate()
                .map(|(i, &x)| f(x, random(i)))
                .collect()
        };
        match dtype {
            DType::F32 => Buf::F32(values.to_vec()),
            DType::BF16 => Buf::BF16(
                each(&|x, r| match r {
                    None => bf16::from_f32(x).to_bits(),
                    Some(r) => round::f32_to_bf16_stochastic(x, r),
                })
                .into_iter()
                .map(bf16::from_bits)
                .collect(),
            ),
            DType::F16 => Buf::F16(
                each(&|x, r| match r {
                    None => f16::from_f32(x).to_bits(),
                    Some(r) => round::f32_to_f16_stochastic(x, r),
                })
                .into_iter()
                .map(f16::from_bits)
                .collect(),
            ),
            DType::F64 => unreachable!("f64 is not an f32 storage dtype"),
        }
    }

    /// Every element has exactly the bits of `other`'s (NaN payloads included).
    pub fn identical(&self, other: &Buf) -> bool {
        self.dtype() == other.dtype()
            && self.len() == other.len()
            && (0..self.len()).all(|i| self.bits(i) == other.bits(i))
    }
}

/// Seeded inputs: edge cases as bit patterns, random bit patterns and realistic magnitudes.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    fn pick<X: Copy>(&mut self, pool: &[X]) -> X {
        pool[self.below(pool.len())]
    }

    fn u32(&mut self) -> u32 {
        self.0.next_u64() as u32
    }

    /// A weight- or gradient-like magnitude: log-uniform in [1e-6, 1e2); negative one time in
    /// two unless `nonneg`.
    pub fn realistic(&mut self, nonneg: bool) -> f64 {
        let x = 10f64.powf(-6.0 + 8.0 * self.0.unit());
        if nonneg || self.below(2) == 0 {
            x
        } else {
            -x
        }
    }

    /// A sign bit at random, at bit `shift`.
    pub fn sign(&mut self, shift: u32) -> u64 {
        (self.below(2) as u64) << shift
    }

    /// One element of `dtype`: one time in four an edge case of it (for f32, also the values
    /// whose narrowing is delicate), one in eight random bits, else realistic.
    pub fn value(&mut self, dtype: DType, nonneg: bool) -> u64 {
        let kind = self.below(8);
        let x = match kind {
            2 => return self.0.next_u64() >> (64 - 8 * dtype.size()),
            3.. => self.realistic(nonneg),
            _ => 0.0,
        };
        match dtype {
            DType::F64 if kind < 2 => self.pick(F64_EDGES).to_bits() | self.sign(63),
            DType::F64 => x.to_bits(),
            DType::F32 if kind < 2 => u64::from(self.pick(F32_EDGES).0) | self.sign(31),
            DType::F32 => (x as f32).to_bits().into(),
            DType::BF16 if kind < 2 => u64::from(self.pick(BF16_EDGES)) | self.sign(15),
            DType::BF16 => bf16::from_f64(x).to_bits().into(),
            DType::F16 if kind < 2 => u64::from(self.pick(F16_EDGES)) | self.sign(15),
            DType::F16 => f16::from_f64(x).to_bits().into(),
        }
    }

    pub fn buf(&mut self, dtype: DType, len: usize, nonneg: bool) -> Buf {
        let bits = (0..len).map(|_| self.value(dtype, nonneg));
        match dtype {
            DType::F32 => Buf::F32(bits.map(|b| f32::from_bits(b as u32)).collect()),
            DType::F64 => Buf::F64(bits.map(f64::from_bits).collect()),
            DType::BF16 => Buf::BF16(bits.map(|b| bf16::from_bits(b as u16)).collect()),
            DType::F16 => Buf::F16(bits.map(|b| f16::from_bits(b as u16)).collect()),
        }
    }
}

/// A kernel's scalar block: most from hyperparameters people use (lr log-uniform in
/// [1e-3, 1e-1], common betas and weight decays, eps 1e-8, step 1 or up to 10,000); one in
/// eight with every hyperparameter but `lr` and `eps` zero (moments that pass the gradient
/// through, so that f32 gradients are stored narrowed as they are); one in eight with each
/// entry drawn like an f64 input (a quarter of them IEEE edge cases, an eighth random bits).
pub fn scalar_block<T: Float>(rng: &mut Rng, program: &Program) -> Vec<T> {
    let kind = rng.below(8);
    if kind == 0 {
        return (0..program.stage.n_scalars)
            .map(|_| T::from_f64(f64::from_bits(rng.value(DType::F64, false))))
            .collect();
    }
    let hypers: Vec<(&str, f64)> = (program.hypers.iter())
        .map(|h| {
            let name = h.name.as_str();
            let value = match name {
                "lr" => 10f64.powf(-3.0 + 2.0 * rng.0.unit()),
                "eps" => 1e-8,
                _ if kind == 1 => 0.0,
                "weight_decay" => rng.pick(&[0.0, 1e-4, 1e-2, 0.1]),
                "b1" | "momentum" => rng.pick(&[0.9, 0.95, 0.8]),
                "b2" => rng.pick(&[0.999, 0.99, 0.95]),
                _ => h.default,
            };
            (name, value)
        })
        .collect();
    let step = match rng.below(4) {
        0 => 1,
        _ => 1 + rng.below(10_000) as u64,
    };
    block_of(program, &hypers, step)
}

/// The scalar block of `program` at `step` with the hyperparameters `hypers` (the others at
/// their defaults).
pub fn block_of<T: Float>(program: &Program, hypers: &[(&str, f64)], step: u64) -> Vec<T> {
    let hypers: Vec<f64> = (program.hypers.iter())
        .map(|h| match hypers.iter().find(|(name, _)| *name == h.name) {
            Some(&(_, value)) => value,
            None => h.default,
        })
        .collect();
    let mut values = Vec::new();
    program.eval_prologue(&hypers, step, |_| 0.0, &mut values);
    (program.prologue.kernel_scalars.iter())
        .map(|&k| T::from_f64(values[k as usize]))
        .collect()
}

/// The buffers of one segment, its scalar block and its generator index.
#[derive(Clone, Debug)]
pub struct Buffers<T> {
    pub param: Buf,
    pub grad: Buf,
    pub state: Vec<Buf>,
    pub scalars: Vec<T>,
    pub index: u32,
}

impl<T> Buffers<T> {
    /// Stream `s` (0 the param, 1 the grad, 2.. the state).
    pub fn stream(&self, s: u32) -> &Buf {
        match s {
            0 => &self.param,
            1 => &self.grad,
            k => &self.state[k as usize - 2],
        }
    }

    pub fn identical(&self, other: &Buffers<T>) -> bool {
        let n = 2 + self.state.len() as u32;
        n == 2 + other.state.len() as u32
            && (0..n).all(|s| self.stream(s).identical(other.stream(s)))
    }
}

/// Random inputs of `len` elements for `program` stored as `layout` says (second moments,
/// slots named `*_sq`, non-negative where realistic).
pub fn inputs<T: Float>(
    rng: &mut Rng,
    program: &Program,
    layout: &Layout,
    len: usize,
) -> Buffers<T> {
    let n = program.stage.n_streams;
    Buffers {
        param: rng.buf(layout.dtype(0), len, false),
        grad: rng.buf(layout.dtype(1), len, false),
        state: (2..n)
            .map(|s| {
                rng.buf(
                    layout.dtype(s),
                    len,
                    program.stream_name(s).ends_with("_sq"),
                )
            })
            .collect(),
        scalars: scalar_block(rng, program),
        index: rng.u32(),
    }
}

/// The segments over `bufs` with the stochastic streams and key of `noise` and each buffer
/// set's own generator index; their state lists are kept in `lists`.
pub fn segments<'a, T: Float>(
    bufs: &'a mut [Buffers<T>],
    lists: &'a mut Vec<Vec<Elems<'a>>>,
    noise: Noise<'a>,
) -> Vec<Segment<'a, T>> {
    let mut rest = Vec::new();
    for b in bufs {
        lists.push(b.state.iter_mut().map(Buf::elems).collect());
        rest.push((b.param.elems(), b.grad.elems_ref(), &b.scalars[..], b.index));
    }
    rest.into_iter()
        .zip(lists)
        .map(|((param, grad, scalars, index), state)| Segment {
            param,
            grad,
            state,
            scalars,
            partials: &mut [],
            noise: Noise { index, ..noise },
        })
        .collect()
}

/// Stochastic rounding of `streams` with `key` (each segment's index is its buffers').
pub fn noise(streams: &[u32], key: [u32; 2]) -> Noise<'_> {
    Noise {
        streams,
        key,
        index: 0,
    }
}

#[derive(Clone, Copy)]
pub enum Exec<'k> {
    Reference,
    Eager,
    Chunked,
    Jit(&'k Kernel),
}

/// The reference interpreter (the definition) and `kernels`.
pub fn reference_and(kernels: &[(String, Kernel)]) -> Vec<(String, Exec<'_>)> {
    let jit = kernels.iter().map(|(name, k)| (name.clone(), Exec::Jit(k)));
    [("reference".to_string(), Exec::Reference)]
        .into_iter()
        .chain(jit)
        .collect()
}

/// Every interpreter, the reference first, and `kernels`.
pub fn all_executors(kernels: &[(String, Kernel)]) -> Vec<(String, Exec<'_>)> {
    let mut all = reference_and(kernels);
    all.insert(1, ("eager".to_string(), Exec::Eager));
    all.insert(2, ("chunked".to_string(), Exec::Chunked));
    all
}

/// Runs `stage` on `bufs` in place.
pub fn run<T: Float>(
    exec: Exec<'_>,
    stage: &Stage,
    bufs: &mut [Buffers<T>],
    noise: Noise<'_>,
) -> optjit::Result<()> {
    let mut lists = Vec::new();
    let mut segs = segments(bufs, &mut lists, noise);
    match exec {
        Exec::Reference => optjit::interp::run_reference(stage, &mut segs),
        Exec::Eager => optjit::interp::run_eager(stage, &mut segs),
        Exec::Chunked => optjit::interp::run_chunked(stage, &mut segs),
        Exec::Jit(kernel) => kernel.run(&mut segs),
    }
}

/// `bufs` after a run, which must succeed.
pub fn ran<T: Float>(
    exec: Exec<'_>,
    stage: &Stage,
    bufs: &[Buffers<T>],
    noise: Noise<'_>,
) -> Vec<Buffers<T>> {
    let mut out = bufs.to_vec();
    run(exec, stage, &mut out, noise).unwrap();
    out
}

/// Asserts that `got` has `expected`'s bits element for element, a NaN matching any NaN
/// (payloads are not part of the contract: the hardware and Rust's float operations may
/// propagate different ones, as Cranelift's fuzzer assumes).
pub fn assert_same<T>(what: &str, expected: &Buffers<T>, got: &Buffers<T>, streams: u32) {
    for s in 0..streams {
        let (e, g) = (expected.stream(s), got.stream(s));
        assert_eq!(
            (e.dtype(), e.len()),
            (g.dtype(), g.len()),
            "{what}: stream {s}"
        );
        for i in 0..e.len() {
            let (eb, gb) = (e.bits(i), g.bits(i));
            assert!(
                eb == gb || (e.is_nan(i) && g.is_nan(i)),
                "{what}: stream {s} ({}) element {i}: expected {eb:#x} ({}), got {gb:#x} ({})",
                e.dtype(),
                e.get(i),
                g.get(i)
            );
        }
    }
}

/// Asserts that every NaN stored in a bf16 or f16 stream (each of `written`) is quiet: a
/// store rounds, and rounding a NaN quiets it, even one loaded signalling and stored back.
pub fn assert_quiet<T>(what: &str, bufs: &[Buffers<T>], written: &[(u32, ElemArg)]) {
    for (n, b) in bufs.iter().enumerate() {
        for &(s, _) in written {
            let stream = b.stream(s);
            let quiet = match stream.dtype() {
                DType::BF16 => 0x0040,
                DType::F16 => 0x0200,
                DType::F32 | DType::F64 => continue,
            };
            for i in (0..stream.len()).filter(|&i| stream.is_nan(i)) {
                let bits = stream.bits(i);
                assert!(
                    bits & quiet != 0,
                    "{what}, segment {n}: stream {s} element {i} is a signalling NaN {bits:#x}"
                );
            }
        }
    }
}

/// Runs `stage` on copies of `bufs` with the three interpreters and each of `kernels`,
/// asserts that all agree bit for bit with the reference interpreter and store only quiet
/// narrow NaNs, and returns the reference's result.
pub fn check_executors<T: Float>(
    what: &str,
    stage: &Stage,
    kernels: &[(String, Kernel)],
    bufs: &[Buffers<T>],
    noise: Noise<'_>,
) -> Vec<Buffers<T>> {
    let reference = ran(Exec::Reference, stage, bufs, noise);
    assert_quiet(&format!("{what}: reference"), &reference, &stage.stores);
    for (name, exec) in all_executors(kernels).into_iter().skip(1) {
        let got = ran(exec, stage, bufs, noise);
        for (n, (r, g)) in reference.iter().zip(&got).enumerate() {
            let what = format!("{what}: {name}, segment {n} (len {})", r.param.len());
            assert_same(&what, r, g, stage.n_streams);
        }
        assert_quiet(&format!("{what}: {name}"), &got, &stage.stores);
    }
    reference
}

/// What the kernel contract says a run of `stage` on `bufs` (f32 compute) stores: the stage
/// computed in f32 on every stream widened (exactly), each written stream then rounded to
/// its storage dtype: stochastically where `noise` says so, element `i` of stream `s` with
/// the bits `round::random_bits(key, index + i) · (1 + 2 · s · 0x9E3779B9)` (wrapping), else
/// to nearest even.
pub fn contract<T: Float>(stage: &Stage, bufs: &[Buffers<T>], noise: Noise<'_>) -> Vec<Buffers<T>> {
    let wide: Vec<Buffers<f32>> = (bufs.iter())
        .map(|b| Buffers {
            param: b.param.widened(),
            grad: b.grad.widened(),
            state: b.state.iter().map(Buf::widened).collect(),
            scalars: b.scalars.iter().map(|x| x.to_f32()).collect(),
            index: b.index,
        })
        .collect();
    let computed = ran(Exec::Reference, stage, &wide, Noise::NONE);
    let mut expected = bufs.to_vec();
    for (e, c) in expected.iter_mut().zip(&computed) {
        for &(s, _) in &stage.stores {
            let Buf::F32(values) = c.stream(s) else {
                unreachable!("widened above")
            };
            let first = e.index;
            let random = |i: usize| {
                let index = first.wrapping_add(i as u32);
                (noise.streams.contains(&s)).then(|| {
                    let bits = round::random_bits(noise.key, index);
                    bits.wrapping_mul(
                        1u32.wrapping_add(s.wrapping_mul(0x9E37_79B9).wrapping_mul(2)),
                    )
                })
            };
            let stored = Buf::narrowed(values, e.stream(s).dtype(), random);
            match s {
                0 => e.param = stored,
                k => e.state[k as usize - 2] = stored,
            }
        }
    }
    expected
}

/// Kernels of `program` for `layout`: the default one, and one per unroll factor when
/// `unrolls` is set.
pub fn kernels(
    jit: &Jit,
    program: &Program,
    layout: &Layout,
    unrolls: bool,
) -> Vec<(String, Kernel)> {
    let mut kernels = vec![(
        "jit".to_string(),
        jit.compile(program, layout.clone()).unwrap(),
    )];
    for unroll in UNROLLS.iter().filter(|_| unrolls) {
        let options = JitOptions { unroll: *unroll };
        let kernel = jit.compile_with(program, layout.clone(), options).unwrap();
        kernels.push((format!("jit unroll {unroll}"), kernel));
    }
    kernels
}

impl Buf {
    /// Elements `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Buf {
        match self {
            Buf::F32(v) => Buf::F32(v[range].to_vec()),
            Buf::F64(v) => Buf::F64(v[range].to_vec()),
            Buf::BF16(v) => Buf::BF16(v[range].to_vec()),
            Buf::F16(v) => Buf::F16(v[range].to_vec()),
        }
    }
}

impl<T: Clone> Buffers<T> {
    /// Elements `range`, whose generator index is this one's plus `range.start`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Buffers<T> {
        Buffers {
            param: self.param.slice(range.clone()),
            grad: self.grad.slice(range.clone()),
            state: self.state.iter().map(|s| s.slice(range.clone())).collect(),
            scalars: self.scalars.clone(),
            index: self.index.wrapping_add(range.start as u32),
        }
    }
}

/// Runs `bufs` with `exec` and asserts it fails with `expected` without changing a bit.
pub fn assert_refused<T: Float>(
    what: &str,
    exec: Exec<'_>,
    stage: &Stage,
    bufs: &[Buffers<T>],
    noise: Noise<'_>,
    expected: &dyn Fn(&Error) -> bool,
) {
    let mut got = bufs.to_vec();
    let result = run(exec, stage, &mut got, noise);
    assert!(
        matches!(&result, Err(e) if expected(e)),
        "{what}: {result:?}"
    );
    for (n, (b, g)) in bufs.iter().zip(&got).enumerate() {
        assert!(b.identical(g), "{what}: segment {n} changed");
    }
}

pub fn dtype_mismatch(expected: DType, actual: DType) -> impl Fn(&Error) -> bool {
    move |e| *e == Error::DTypeMismatch { expected, actual }
}

pub fn invalid_rounding(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidOption {
            option: "stochastic rounding",
            ..
        }
    )
}

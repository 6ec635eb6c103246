//! Mixed-precision storage: each stream of a kernel stored as f32, f64, bf16 or f16.
//!
//! - Every executor (reference, eager, chunked, JIT at every unroll factor) agrees bit for
//!   bit on the built-ins in layouts mixing the dtypes, on lengths around the vector width
//!   and the chunked interpreter's block, with inputs made as raw bit patterns (NaNs of
//!   both kinds, ±inf, ±0, subnormals, the largest finite values, ties of the narrowing).
//! - Stores follow the kernel contract exactly: the stage computed in f32 on the widened
//!   streams, each written stream rounded to nearest even, or stochastically with the bits
//!   `round::random_bits(key, index + i) · (1 + 2 · s · 0x9E3779B9)` for element `i` of
//!   stream `s`.
//! - Stochastic rounding is deterministic (cutting a segment changes no bit, another key
//!   changes some), unbiased, and lets updates far below half an ulp accumulate.
//! - Kernels, layouts and interpreters refuse what does not fit, before touching a buffer.

mod common;
#[path = "common/mixed.rs"]
mod mixed;

use half::{bf16, f16};
use mixed::*;
use optjit::program::Stage;
use optjit::{
    optim, passes, round, Builder, DType, Error, Float, Graph, Jit, Layout, Noise, Program,
};

/// Lengths around the vector width (4 f32 lanes, ×1 to ×8 unrolled) and the chunked
/// interpreter's block of 384 f32 elements.
const LENGTHS: [usize; 20] = [
    0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 383, 384, 385, 1000,
];

/// `param = grad` and `m = grad · h` (h = 1 unless the scalar block says otherwise): every
/// input pattern of the grad stored narrowed as it is.
fn store_grad() -> Graph {
    let b = Builder::new("store_grad");
    let h = b.hyper("h", 1.0);
    let _ = b.state("m", 0.0);
    b.set_state("m", b.grad() * h).unwrap();
    b.set_param(b.grad());
    b.finish().unwrap()
}

/// The layouts the differential test runs: uniform ones, narrow params with wider grads or
/// state, and one that mixes bf16 and f16.
fn layouts() -> Vec<(&'static str, Layout)> {
    use DType::{BF16, F16, F32, F64};
    let new = |v: Vec<DType>| Layout::new(v).unwrap();
    vec![
        ("all f32", Layout::uniform(F32)),
        ("bf16 param+grad, f32 state", new(vec![BF16, BF16, F32])),
        ("all bf16", Layout::uniform(BF16)),
        ("f16 param, f32 grad+state", new(vec![F16, F32, F32])),
        ("all f16", Layout::uniform(F16)),
        ("f32 param+grad, bf16 state", new(vec![F32, F32, BF16])),
        (
            "bf16 param, f16 grad, bf16 state",
            new(vec![BF16, F16, BF16]),
        ),
        ("all f64", Layout::uniform(F64)),
    ]
}

/// Every length alone, then all of them as segments of one call (each its own scalar
/// block); with f32 compute, the reference's result is also the contract's.
fn check_layout<T: Float>(jit: &Jit, program: &Program, name: &str, layout: &Layout, seed: u64) {
    let what = format!("{} in {name} ({layout})", program.name);
    let kernels = kernels(jit, program, layout, program.name == "adam");
    let stage = &program.stage;
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    for len in LENGTHS {
        let bufs = vec![inputs::<T>(&mut rng, program, layout, len)];
        let reference = check_executors(&what, stage, &kernels, &bufs, Noise::NONE);
        if T::DTYPE == DType::F32 {
            let expected = contract(stage, &bufs, Noise::NONE);
            let what = format!("{what}: contract");
            assert_same(&what, &expected[0], &reference[0], stage.n_streams);
        }
        all.extend(bufs);
    }
    let what = format!("{what}, all lengths in one call");
    check_executors(&what, stage, &kernels, &all, Noise::NONE);
}

/// Catches any executor, unroll factor or tail loop that loads, computes or rounds a
/// narrow stream differently from the others, or from f32 compute rounded to nearest even.
#[test]
fn every_builtin_agrees_across_executors_in_every_layout() {
    let jit = Jit::new().unwrap();
    let graphs = ["adam", "adamw", "sgd_momentum", "lion"].map(|n| optim::by_name(n).unwrap());
    for (g, graph) in graphs.iter().chain([&store_grad()]).enumerate() {
        let program = passes::compile(graph).unwrap();
        for (l, (name, layout)) in layouts().iter().enumerate() {
            let seed = (g * 100 + l) as u64;
            match layout.compute() {
                DType::F64 => check_layout::<f64>(&jit, &program, name, layout, seed),
                _ => check_layout::<f32>(&jit, &program, name, layout, seed),
            }
        }
    }
}

/// Catches a narrowing store that gets a tie, an overflow, a subnormal or a NaN wrong (a
/// truncation, a carry out of a NaN's payload, a tie rounded away from even): the grad's
/// edge cases stored to bf16 and f16 by every executor are the table's.
#[test]
fn narrowing_stores_round_ties_to_even_overflow_and_quiet_nans() {
    use DType::{BF16, F16, F32};
    let jit = Jit::new().unwrap();
    let program = passes::compile(&store_grad()).unwrap();
    let stage = &program.stage;
    let grad: Vec<f32> = (F32_EDGES.iter())
        .flat_map(|e| [e.0, e.0 | 0x8000_0000])
        .map(f32::from_bits)
        .collect();
    let n = grad.len();
    for dtype in [BF16, F16] {
        let layout = Layout::new(vec![dtype, F32, dtype]).unwrap();
        let expected: Vec<u64> = (F32_EDGES.iter())
            .map(|&(_, b, h)| u64::from(if dtype == BF16 { b } else { h }))
            .flat_map(|bits| [bits, bits | 0x8000])
            .collect();
        let bufs = [Buffers {
            grad: Buf::F32(grad.clone()),
            scalars: block_of::<f32>(&program, &[], 1),
            ..inputs(&mut Rng::new(30), &program, &layout, n)
        }];
        let kernels = kernels(&jit, &program, &layout, true);
        for (name, exec) in all_executors(&kernels) {
            let out = ran(exec, stage, &bufs, Noise::NONE).remove(0);
            for s in [0, 2] {
                let stored = out.stream(s);
                for (i, &e) in expected.iter().enumerate() {
                    let nan = |b: u64| b & 0x7FFF > if dtype == BF16 { 0x7F80 } else { 0x7C00 };
                    let got = stored.bits(i);
                    assert!(
                        got == e || (nan(e) && nan(got)),
                        "{name}, {dtype} stream {s}: {:#010x} stored as {got:#06x}, expected {e:#06x}",
                        grad[i].to_bits()
                    );
                }
            }
            assert_quiet(&format!("{name}, {dtype}"), &[out], &stage.stores);
        }
    }
}

/// Realistic finite values of `dtype` (log-uniform magnitudes, rounded to nearest).
fn finite(rng: &mut Rng, dtype: DType, len: usize, nonneg: bool) -> Buf {
    let values: Vec<f32> = (0..len).map(|_| rng.realistic(nonneg) as f32).collect();
    Buf::narrowed(&values, dtype, |_| None)
}

/// Catches a vector loop whose usual path (no NaN among the values a body copy narrows) or
/// whose NaN path (taken by the copy alone) stores other bits than the reference, or leaks
/// into the copies around it: Adam on finite inputs, then with one NaN gradient at each
/// position in turn, in every layout with a narrow stream and at every unroll factor.
#[test]
fn one_nan_takes_the_nan_path_for_its_copy_alone() {
    let jit = Jit::new().unwrap();
    let program = passes::compile(&optim::by_name("adam").unwrap()).unwrap();
    let stage = &program.stage;
    let n = 37; // ×8 unrolled: one main-loop iteration, then the shorter loops
    for (name, layout) in layouts() {
        let layout = layout.resolve(stage.n_streams);
        if !(0..stage.n_streams).any(|s| layout.dtype(s).is_narrow()) {
            continue;
        }
        let kernels = kernels(&jit, &program, &layout, true);
        let mut rng = Rng::new(41);
        let clean = Buffers::<f32> {
            param: finite(&mut rng, layout.dtype(0), n, false),
            grad: finite(&mut rng, layout.dtype(1), n, false),
            state: (2..stage.n_streams)
                .map(|s| finite(&mut rng, layout.dtype(s), n, s == 3))
                .collect(),
            scalars: block_of::<f32>(&program, &[("lr", 1e-2)], 3),
            index: 0,
        };
        let what = format!("adam in {name}");
        let reference = check_executors(
            &what,
            stage,
            &kernels,
            std::slice::from_ref(&clean),
            Noise::NONE,
        );
        assert!(
            (0..n).all(|i| !reference[0].param.is_nan(i)),
            "{what}: finite inputs give finite params"
        );
        for k in 0..n {
            let mut bufs = clean.clone();
            let nan: Vec<f32> = (0..n)
                .map(|i| {
                    if i == k {
                        // Low payload bits set: sent down the path without NaNs, it would
                        // carry into the exponent of its bf16 store (a NaN loaded from a
                        // bf16 or f16 gradient has no such bits).
                        f32::from_bits(0x7FFF_FFFF)
                    } else {
                        clean.grad.get(i) as f32
                    }
                })
                .collect();
            bufs.grad = Buf::narrowed(&nan, layout.dtype(1), |_| None);
            let what = format!("{what}, NaN gradient at {k}");
            let got = check_executors(&what, stage, &kernels, &[bufs], Noise::NONE);
            for i in 0..n {
                assert_eq!(
                    got[0].param.is_nan(i),
                    i == k,
                    "{what}: element {i} of the param"
                );
            }
        }
    }
}

/// Adam's layouts with stochastic rounding: of the param and the first moment, or of every
/// written stream.
fn stochastic_layouts() -> Vec<(&'static str, Layout)> {
    use DType::{BF16, F16, F32};
    let sr = |layout: Layout, streams: &[u32]| layout.with_stochastic(streams).unwrap();
    vec![
        ("all bf16", sr(Layout::uniform(BF16), &[0, 2])),
        ("all f16", sr(Layout::uniform(F16), &[0, 2])),
        (
            "bf16 param, f32 grad, bf16 state",
            sr(Layout::new(vec![BF16, F32, BF16]).unwrap(), &[0, 2, 3]),
        ),
    ]
}

fn adam() -> Program {
    passes::compile(&optim::by_name("adam").unwrap()).unwrap()
}

/// Buffer sets of every length whose generator indices follow each other from just below
/// 2^32, so that the indices of the later ones wrap.
fn consecutive<T: Float>(rng: &mut Rng, program: &Program, layout: &Layout) -> Vec<Buffers<T>> {
    let mut index = 0u32.wrapping_sub(1500);
    (LENGTHS.iter())
        .map(|&len| {
            let bufs = Buffers {
                index,
                ..inputs(rng, program, layout, len)
            };
            index = index.wrapping_add(len as u32);
            bufs
        })
        .collect()
}

/// Catches a stochastic store that draws other bits than the contract's (a wrong stream
/// multiplier, an index that ignores the segment's, the unroll copy's or the tail's offset, a
/// lane order mixed up) or rounds a stream that should round to nearest.
#[test]
fn stochastic_stores_agree_across_executors_and_use_the_documented_bits() {
    let (jit, program) = (Jit::new().unwrap(), adam());
    let stage = &program.stage;
    for (l, (name, layout)) in stochastic_layouts().iter().enumerate() {
        let what = format!("adam in {name} ({layout})");
        let kernels = kernels(&jit, &program, layout, l == 0);
        let mut rng = Rng::new(40 + l as u64);
        let noise = noise(layout.stochastic(), round::step_key(0x5EED + l as u64, 3));
        let all = consecutive::<f32>(&mut rng, &program, layout);
        for bufs in all.chunks(1).chain([&all[..]]) {
            let reference = check_executors(&what, stage, &kernels, bufs, noise);
            assert_contract(&format!("{what}: contract"), stage, bufs, noise, &reference);
        }
        // The same dtypes without stochastic rounding round to nearest even, and ignore a key.
        let nearest = Layout::new((0..stage.n_streams).map(|s| layout.dtype(s)).collect());
        let nearest = nearest.unwrap();
        let what = format!("adam in {name} ({nearest})");
        let kernels = self::kernels(&jit, &program, &nearest, false);
        for key in [Noise::NONE.key, noise.key] {
            let noise = self::noise(&[], key);
            let reference = check_executors(&what, stage, &kernels, &all, noise);
            assert_contract(&format!("{what}: contract"), stage, &all, noise, &reference);
        }
    }
}

/// Asserts that `got`, the result of running `stage` on `bufs`, is the contract's.
fn assert_contract(
    what: &str,
    stage: &Stage,
    bufs: &[Buffers<f32>],
    noise: Noise<'_>,
    got: &[Buffers<f32>],
) {
    let expected = contract(stage, bufs, noise);
    for (n, (e, g)) in expected.iter().zip(got).enumerate() {
        let what = format!("{what}, segment {n} of {}", bufs.len());
        assert_same(&what, e, g, stage.n_streams);
    }
}

/// Catches generator indices that depend on where a segment starts in its call or in its
/// buffer (the runtime cuts parameters into segments at places that change with the thread
/// count): a segment cut in two at `k` is rounded to the same bits, its index wrapping.
#[test]
fn cutting_a_segment_changes_no_stochastic_bit() {
    let (jit, program) = (Jit::new().unwrap(), adam());
    let stage = &program.stage;
    let (_, layout) = &stochastic_layouts()[0];
    let kernels = kernels(&jit, &program, layout, false);
    let noise = noise(layout.stochastic(), round::step_key(99, 1));
    let whole = Buffers {
        index: 0u32.wrapping_sub(600),
        ..inputs::<f32>(&mut Rng::new(50), &program, layout, 1000)
    };
    let expected = ran(Exec::Reference, stage, std::slice::from_ref(&whole), noise).remove(0);
    for (name, exec) in all_executors(&kernels) {
        for k in [1, 3, 4, 5, 7, 8, 9, 100, 383, 384, 385, 599, 600, 601, 999] {
            let cut = [whole.slice(0..k), whole.slice(k..1000)];
            let got = ran(exec, stage, &cut, noise);
            for (part, range) in got.iter().zip([0..k, k..1000]) {
                let what = format!("{name}, cut at {k}, elements {range:?}");
                assert_same(&what, &expected.slice(range), part, stage.n_streams);
            }
        }
    }
}

/// The param and `exp_avg` of a bf16 Adam step on realistic values, rounded with `noise` by
/// each executor.
fn realistic_step(jit: &Jit, noise: Noise<'_>, layout: &Layout) -> Vec<Buffers<f32>> {
    let program = adam();
    let mut rng = Rng::new(60);
    let mut realistic = |nonneg: bool| {
        let values = (0..1000).map(|_| bf16::from_f64(rng.realistic(nonneg)));
        Buf::BF16(values.collect())
    };
    let (param, grad, m, v) = (
        realistic(false),
        realistic(false),
        realistic(false),
        realistic(true),
    );
    let bufs = [Buffers {
        param,
        grad,
        state: vec![m, v],
        scalars: block_of(&program, &[("lr", 1e-2)], 10),
        index: 12345,
    }];
    let kernels = kernels(jit, &program, layout, false);
    (all_executors(&kernels).into_iter())
        .map(|(_, exec)| ran(exec, &program.stage, &bufs, noise).remove(0))
        .collect()
}

/// Catches a stochastic rounding that ignores its key (every step would round alike, and
/// the errors of many steps add up instead of cancelling) or that rounds to nearest.
#[test]
fn another_key_rounds_some_elements_differently() {
    let jit = Jit::new().unwrap();
    let layout = Layout::uniform(DType::BF16)
        .with_stochastic(&[0, 2])
        .unwrap();
    let streams = layout.stochastic();
    let one = realistic_step(&jit, noise(streams, round::step_key(1, 1)), &layout);
    let other = realistic_step(&jit, noise(streams, round::step_key(1, 2)), &layout);
    let nearest = realistic_step(&jit, Noise::NONE, &Layout::uniform(DType::BF16));
    for (e, ((a, b), n)) in one.iter().zip(&other).zip(&nearest).enumerate() {
        // Among 1000 realistic values, each rounds either way with a probability far from 0
        // and 1 (the fraction of an ulp it lies above its lower neighbour): some of them
        // round differently with certainty.
        for s in [0, 2] {
            let differ = |x: &Buffers<f32>, y: &Buffers<f32>| {
                let (x, y) = (x.stream(s), y.stream(s));
                (0..x.len()).filter(|&i| x.bits(i) != y.bits(i)).count()
            };
            assert!(
                differ(a, b) > 100,
                "executor {e}, stream {s}: {} of 1000 differ between keys",
                differ(a, b)
            );
            assert!(
                differ(a, n) > 100,
                "executor {e}, stream {s}: {} of 1000 differ from nearest",
                differ(a, n)
            );
        }
        // `exp_avg_sq` rounds to nearest with either key.
        assert!(a.stream(3).identical(b.stream(3)) && a.stream(3).identical(n.stream(3)));
    }
}

/// Catches a kernel that runs on segments stored otherwise than it was compiled for: it
/// would read bf16 bits as f32 ones and write past the end of a narrow buffer.
#[test]
fn an_f32_kernel_refuses_narrow_or_stochastic_segments_untouched() {
    use DType::{BF16, F32, F64};
    let program = adam();
    let stage = &program.stage;
    let kernel = Jit::new().unwrap().compile(&program, F32).unwrap();
    let jit = Exec::Jit(&kernel);
    let mut rng = Rng::new(70);
    let f32_layout = Layout::uniform(F32);
    let fits = inputs::<f32>(&mut rng, &program, &f32_layout, 17);
    // The last segment's param is bf16: nothing is written, not even to the first.
    let bf16_param = Layout::new(vec![BF16, F32]).unwrap();
    let bufs = [fits.clone(), inputs(&mut rng, &program, &bf16_param, 9)];
    let what = "bf16 param";
    assert_refused(
        what,
        jit,
        stage,
        &bufs,
        Noise::NONE,
        &dtype_mismatch(F32, BF16),
    );
    let bf16_state = Layout::new(vec![F32, F32, F32, BF16]).unwrap();
    let bufs = [fits.clone(), inputs(&mut rng, &program, &bf16_state, 9)];
    let what = "bf16 exp_avg_sq";
    assert_refused(
        what,
        jit,
        stage,
        &bufs,
        Noise::NONE,
        &dtype_mismatch(F32, BF16),
    );
    // Stochastic rounding of an f32 stream, which has nothing to round.
    let sr = noise(&[0], [1, 2]);
    let what = "stochastic f32 param";
    assert_refused(
        what,
        jit,
        stage,
        std::slice::from_ref(&fits),
        sr,
        &invalid_rounding,
    );
    // Another compute type.
    let wide = [inputs::<f64>(&mut rng, &program, &Layout::uniform(F64), 5)];
    assert_refused(
        "f64",
        jit,
        stage,
        &wide,
        Noise::NONE,
        &dtype_mismatch(F32, F64),
    );
    // What fits runs.
    let mut ok = [fits];
    assert_eq!(run(jit, stage, &mut ok, Noise::NONE), Ok(()));
}

/// Catches a narrow kernel that runs on segments of other dtypes or rounds other streams
/// stochastically than it was compiled for (its generated code reads neither from them).
#[test]
fn a_narrow_kernel_refuses_other_dtypes_and_stochastic_streams_untouched() {
    use DType::{BF16, F16, F32};
    let program = adam();
    let stage = &program.stage;
    let layout = Layout::uniform(BF16).with_stochastic(&[0, 2]).unwrap();
    let kernel = Jit::new()
        .unwrap()
        .compile(&program, layout.clone())
        .unwrap();
    let jit = Exec::Jit(&kernel);
    let mut rng = Rng::new(80);
    let fits = inputs::<f32>(&mut rng, &program, &layout, 33);
    let key = round::step_key(5, 5);
    for streams in [&[][..], &[0], &[2], &[0, 2, 3], &[0, 3]] {
        let what = format!("stochastic streams {streams:?}");
        let bufs = [fits.clone(), fits.clone()];
        assert_refused(
            &what,
            jit,
            stage,
            &bufs,
            noise(streams, key),
            &invalid_rounding,
        );
    }
    let sr = noise(layout.stochastic(), key);
    for (what, other, expected, actual) in [
        ("f16 param", vec![F16, BF16], BF16, F16),
        ("f32 grad", vec![BF16, F32, BF16], BF16, F32),
        ("f16 exp_avg_sq", vec![BF16, BF16, BF16, F16], BF16, F16),
    ] {
        let other = Layout::new(other).unwrap();
        let bufs = [fits.clone(), inputs(&mut rng, &program, &other, 8)];
        assert_refused(
            what,
            jit,
            stage,
            &bufs,
            sr,
            &dtype_mismatch(expected, actual),
        );
    }
    // The same dtypes rounding to nearest: another kernel.
    let nearest = Jit::new().unwrap().compile(&program, BF16).unwrap();
    let what = "stochastic segments, kernel rounding to nearest";
    let bufs = [fits.clone()];
    assert_refused(
        what,
        Exec::Jit(&nearest),
        stage,
        &bufs,
        sr,
        &invalid_rounding,
    );
    let mut ok = [fits];
    assert_eq!(run(jit, stage, &mut ok, sr), Ok(()));
}

/// Catches a layout that mixes compute types (no kernel computes in both f32 and f64) or
/// rounds stochastically what has nothing to round (f32, f64) or is never stored (the grad).
#[test]
fn layouts_refuse_mixed_compute_types_and_stochastic_wide_streams_or_grad() {
    use DType::{BF16, F16, F32, F64};
    let mismatch = |expected, actual| -> optjit::Result<Layout> {
        Err(Error::DTypeMismatch { expected, actual })
    };
    assert_eq!(Layout::new(vec![F64, F32]), mismatch(F32, F64));
    assert_eq!(Layout::new(vec![F32, F64]), mismatch(F64, F32));
    assert_eq!(Layout::new(vec![BF16, F16, F64]), mismatch(F64, BF16));
    assert_eq!(Layout::new(vec![F64, F64, BF16]), mismatch(F32, F64));
    assert!(matches!(
        Layout::new(Vec::new()),
        Err(Error::InvalidOption {
            option: "layout",
            ..
        })
    ));
    let mixed = Layout::new(vec![BF16, F16, F32]).unwrap();
    assert_eq!((mixed.compute(), mixed.dtype(7)), (F32, F32));
    let refused = |l: Result<Layout, Error>| matches!(l, Err(ref e) if invalid_rounding(e));
    let bf16 = Layout::uniform(BF16);
    assert!(refused(bf16.clone().with_stochastic(&[1])), "the grad");
    assert!(refused(bf16.clone().with_stochastic(&[0, 1])), "the grad");
    assert!(refused(Layout::uniform(F32).with_stochastic(&[0])), "f32");
    assert!(refused(Layout::uniform(F64).with_stochastic(&[2])), "f64");
    assert!(refused(mixed.clone().with_stochastic(&[2])), "f32 state");
    assert!(
        refused(mixed.clone().with_stochastic(&[0, 5])),
        "an f32 stream past the list"
    );
    // Narrow streams, listed or past the list, in any order.
    let sr = bf16.with_stochastic(&[5, 0, 2, 0]).unwrap();
    assert_eq!(sr.stochastic(), [0, 2, 5]);
    assert_eq!(
        mixed.with_stochastic(&[0]).unwrap().to_string(),
        "bf16~,f16,f32"
    );
}

/// Catches an interpreter that computes a segment mixing f64 with f32-class streams (it
/// would widen bf16 into f64 arithmetic, or narrow f64 state through f32) or that rounds
/// stochastically a stream that cannot be.
#[test]
fn interpreters_refuse_mixed_compute_types_and_misplaced_rounding_untouched() {
    use DType::{BF16, F32, F64};
    let program = adam();
    let stage = &program.stage;
    let mut rng = Rng::new(90);
    let mut wide = inputs::<f64>(&mut rng, &program, &Layout::uniform(F64), 20);
    wide.grad = rng.buf(BF16, 20, false);
    let mut narrow = inputs::<f32>(&mut rng, &program, &Layout::uniform(BF16), 20);
    narrow.state[1] = rng.buf(F64, 20, false);
    let fits = inputs::<f32>(&mut rng, &program, &Layout::uniform(BF16), 20);
    for (e, exec) in [Exec::Reference, Exec::Eager, Exec::Chunked]
        .into_iter()
        .enumerate()
    {
        let what = format!("interpreter {e}");
        let bufs = [wide.clone()];
        assert_refused(
            &what,
            exec,
            stage,
            &bufs,
            Noise::NONE,
            &dtype_mismatch(F64, BF16),
        );
        let bufs = [fits.clone(), narrow.clone()];
        assert_refused(
            &what,
            exec,
            stage,
            &bufs,
            Noise::NONE,
            &dtype_mismatch(F32, F64),
        );
        let f32_layout = Layout::new(vec![BF16, BF16, F32]).unwrap();
        let f32_state = inputs::<f32>(&mut rng, &program, &f32_layout, 20);
        // The grad, an f32 stream, a stream the stage does not have.
        for (streams, bufs) in [(&[1][..], &fits), (&[2], &f32_state), (&[0, 4], &fits)] {
            let bufs = std::slice::from_ref(bufs);
            let what = format!("{what}, stochastic streams {streams:?}");
            let sr = noise(streams, [3, 4]);
            assert_refused(&what, exec, stage, bufs, sr, &invalid_rounding);
        }
    }
}

/// `param = param + grad`: a zero param stores the grad rounded (0 + x = x exactly).
fn accumulate() -> Program {
    let b = Builder::new("accumulate");
    b.set_param(b.param() + b.grad());
    passes::compile(&b.finish().unwrap()).unwrap()
}

/// Catches a biased stochastic rounding: one that rounds up with a probability other than
/// the fraction of an ulp by which the value exceeds its lower neighbour (using too few
/// random bits, adding them at the wrong place, a correlated generator, or mishandling
/// subnormals and values below the smallest one).
#[test]
fn stochastic_rounding_is_unbiased() {
    use DType::{BF16, F16};
    let n = 100_000;
    let p2 = |e: i32| 2f64.powi(e);
    // (dtype, x, its neighbours below and above in the dtype)
    let cases = [
        (BF16, 1.0 + p2(-10) + p2(-12), 1.0, 1.0 + p2(-7)),
        (BF16, -(1.0 + p2(-10) + p2(-12)), -(1.0 + p2(-7)), -1.0),
        (F16, 1.0 + p2(-12) + p2(-14), 1.0, 1.0 + p2(-10)),
        // Subnormal in f16 (4.625 smallest subnormals), and below the smallest (0.375).
        (
            F16,
            p2(-22) + p2(-25) + p2(-27),
            4.0 * p2(-24),
            5.0 * p2(-24),
        ),
        (F16, 3.0 * p2(-27), 0.0, p2(-24)),
    ];
    let program = accumulate();
    let jit = Jit::new().unwrap();
    for (c, &(dtype, x, lo, hi)) in cases.iter().enumerate() {
        let layout = Layout::new(vec![dtype, DType::F32]).unwrap();
        let kernels = kernels(
            &jit,
            &program,
            &layout.with_stochastic(&[0]).unwrap(),
            false,
        );
        assert_eq!(x as f32 as f64, x, "x is an f32");
        let bufs = [Buffers {
            param: match dtype {
                BF16 => Buf::BF16(vec![bf16::ZERO; n]),
                _ => Buf::F16(vec![f16::ZERO; n]),
            },
            grad: Buf::F32(vec![x as f32; n]),
            state: Vec::new(),
            scalars: Vec::<f32>::new(),
            index: 0,
        }];
        let sr = noise(&[0], round::step_key(0xB1A5, c as u64));
        for (name, exec) in reference_and(&kernels) {
            let out = ran(exec, &program.stage, &bufs, sr).remove(0);
            let values: Vec<f64> = (0..n).map(|i| out.param.get(i)).collect();
            assert!(
                values.iter().all(|&v| v == lo || v == hi),
                "{name}, case {c}: a value is no neighbour of {x}"
            );
            // One draw is lo + ulp·B with B Bernoulli(p), p = (x − lo)/ulp, of standard
            // deviation ulp·sqrt(p(1 − p)); the mean of n independent draws is within 5 of its
            // standard deviations of x but with probability below 6e-7 (normal tail; n is
            // large enough for the normal approximation).
            let ulp = hi - lo;
            let p = (x - lo) / ulp;
            let sd = ulp * (p * (1.0 - p) / n as f64).sqrt();
            let mean = values.iter().sum::<f64>() / n as f64;
            assert!(
                (mean - x).abs() <= 5.0 * sd,
                "{name}, case {c}: mean {mean:e} of stochastic roundings of {x:e}, {:.1} sd away",
                (mean - x).abs() / sd
            );
        }
    }
}

/// Catches stochastic rounding that loses updates below half an ulp, the reason to use it:
/// 1000 steps of 1e-4 on a bf16 param of 1.0 (half an ulp below 1.0 is 2^-9 ≈ 0.002) leave
/// it at 1.0 when rounding to nearest and move it to 0.9 on average when rounding
/// stochastically with a new key each step.
#[test]
fn updates_below_half_an_ulp_accumulate_only_with_stochastic_rounding() {
    let b = Builder::new("sgd");
    let lr = b.hyper("lr", 0.01);
    b.set_param(b.param() - lr * b.grad());
    let program = passes::compile(&b.finish().unwrap()).unwrap();
    let (n, steps, seed) = (1000, 1000u64, 0x5_7E95);
    let nearest = Layout::new(vec![DType::BF16, DType::F32]).unwrap();
    let stochastic = nearest.clone().with_stochastic(&[0]).unwrap();
    let jit = Jit::new().unwrap();
    let d = f64::from(0.01f32 * 0.01f32);
    let expected = 1.0 - steps as f64 * d;
    assert!((expected - 0.9).abs() < 1e-6);
    for layout in [nearest, stochastic] {
        let kernels = kernels(&jit, &program, &layout, false);
        for (name, exec) in reference_and(&kernels) {
            let mut bufs = [Buffers {
                param: Buf::BF16(vec![bf16::ONE; n]),
                grad: Buf::F32(vec![0.01; n]),
                state: Vec::new(),
                scalars: block_of::<f32>(&program, &[], 1),
                index: 0,
            }];
            for step in 1..=steps {
                let sr = noise(layout.stochastic(), round::step_key(seed, step));
                run(exec, &program.stage, &mut bufs, sr).unwrap();
            }
            let params: Vec<f64> = (0..n).map(|i| bufs[0].param.get(i)).collect();
            if layout.stochastic().is_empty() {
                assert!(
                    params.iter().all(|&p| p == 1.0),
                    "{name}: rounding to nearest loses every update"
                );
                continue;
            }
            // Each step subtracts d = fl(0.01 · 0.01) from a bf16 value p in [0.5, 1] in f32 (an
            // error below 2^-25), then rounds it stochastically: unbiased, of variance
            // ulp²·q(1 − q) ≤ ulp·d with ulp = 2^-8 and q ≤ d/ulp the chance of rounding down. The
            // steps' errors are uncorrelated, so an element's variance after `steps` is at most
            // steps·ulp·d, and the mean of n independent elements is within 5 of its standard
            // deviations of the expectation but with probability below 6e-7.
            let sd = (steps as f64 * 2f64.powi(-8) * d / n as f64).sqrt();
            let bound = 5.0 * sd + steps as f64 * 2f64.powi(-25);
            let mean = params.iter().sum::<f64>() / n as f64;
            assert!(
                (mean - expected).abs() <= bound,
                "{name}: mean {mean} after {steps} stochastic steps, expected {expected} ± {bound}"
            );
        }
    }
}

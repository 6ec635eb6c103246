//! The emitted conversions against `crate::round`, bit for bit, on the vector and the
//! scalar path, for the host and the AVX2 class of CPU.

use super::*;
use crate::jit::abi::TestMap;
use crate::jit::{Jit, Target};
use crate::round;
use crate::round::tests::{bf16_sweep, f16_sweep};
use cranelift_codegen::ir::{Block, BlockArg};

/// What the test kernel writes for element `i`.
#[derive(Clone, Copy, Debug)]
enum Output {
    /// `narrow(widen(src[i]))`, to nearest even.
    Nearest,
    /// `narrow(widen(src[i]))`, rounded stochastically with `random_bits(key, i)`.
    Stochastic([u32; 2]),
    /// As `Nearest` or `Stochastic(key)` (`Some(key)`), narrowed without the NaN path: for
    /// sources without NaNs.
    WithoutNans(Option<[u32; 2]>),
    /// `stream_bits(random_bits(key, i), stream)` as a u32 (the source is read and ignored).
    Random([u32; 2], u32),
}

/// The JITs to test: the host's and, where this host runs it, the AVX2 class's.
fn jits() -> Vec<Jit> {
    let mut jits = vec![Jit::new().expect("a JIT for the host")];
    if Target::X64Avx2.runs_here() {
        jits.push(Jit::for_target(Target::X64Avx2).expect("a JIT for AVX2"));
    }
    jits
}

/// `i` (I64) as I32 lane indices: `i` (scalar) or `i, i+1, i+2, i+3` (vector).
fn indices(b: &mut FunctionBuilder, i: Value, vector: bool) -> Value {
    let i = b.ins().ireduce(types::I32, i);
    if !vector {
        return i;
    }
    let i = b.ins().splat(types::I32X4, i);
    let data: Vec<u8> = [0u32, 1, 2, 3]
        .iter()
        .flat_map(|k| k.to_le_bytes())
        .collect();
    let steps = b.func.dfg.constants.insert(ConstantData::from(data));
    let steps = b.ins().vconst(types::I32X4, steps);
    b.ins().iadd(i, steps)
}

/// The key words as I32 (scalar) or I32X4 (vector) values.
fn key_values(b: &mut FunctionBuilder, key: [u32; 2], vector: bool) -> [Value; 2] {
    key.map(|k| {
        let k = b.ins().iconst(types::I32, i64::from(k));
        if vector {
            b.ins().splat(types::I32X4, k)
        } else {
            k
        }
    })
}

/// One element (or four) of the test kernel at index `i`.
fn emit_element(
    b: &mut FunctionBuilder,
    [src, dst, i]: [Value; 3],
    (src_type, dst_type): (DType, DType),
    vector: bool,
    output: Output,
) {
    let flags = MemFlagsData::new().with_notrap();
    let src_offset = b.ins().imul_imm_u(i, src_type.size() as i64);
    let src_addr = b.ins().iadd(src, src_offset);
    let dst_offset = b.ins().imul_imm_u(i, dst_type.size() as i64);
    let dst_addr = b.ins().iadd(dst, dst_offset);
    let value = load_f32(b, src_type, vector, flags, src_addr, 0);
    let random = |b: &mut FunctionBuilder, key| {
        let key = key_values(b, key, vector);
        let index = indices(b, i, vector);
        let counter = b.ins().iadd(index, key[0]);
        mix(b, key[1], counter)
    };
    let (key, nans) = match output {
        Output::Nearest => (None, true),
        Output::Stochastic(key) => (Some(key), true),
        Output::WithoutNans(key) => (key, false),
        Output::Random(key, stream) => {
            let bits = random(b, key);
            let word = stream_bits(b, bits, stream);
            b.ins().store(flags, word, dst_addr, 0);
            return;
        }
    };
    let random = key.map(|key| random(b, key));
    store_f32(b, dst_type, vector, flags, value, dst_addr, 0, random, nans);
}

/// A loop header over `i` from the block's parameter: to `body` while `i + step <= n`,
/// else to `done` with `i`. Returns `i + step`.
fn emit_header(
    b: &mut FunctionBuilder,
    header: Block,
    n: Value,
    step: i64,
    body: Block,
    done: Block,
) -> Value {
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    let next = b.ins().iadd_imm_u(i, step);
    let more = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, next, n);
    b.ins().brif(more, body, &[], done, &[BlockArg::Value(i)]);
    next
}

/// `f(src, dst, n)`: for each of the `n` elements, `output`; four lanes at a time while four
/// remain (when `vector`), then one at a time. Also returns Cranelift's disassembly.
fn compile(jit: &Jit, types: (DType, DType), vector: bool, output: Output) -> (TestMap, String) {
    let (ptr, owner, asm) = jit
        .compile_test_function(3, |b, params| {
            let [src, dst, n] = [params[0], params[1], params[2]];
            let vector_header = b.create_block();
            let vector_body = b.create_block();
            let scalar_header = b.create_block();
            let scalar_body = b.create_block();
            let exit = b.create_block();
            for block in [vector_header, scalar_header, exit] {
                b.append_block_param(block, types::I64);
            }
            let zero = b.ins().iconst(types::I64, 0);
            let first = if vector { vector_header } else { scalar_header };
            b.ins().jump(first, &[BlockArg::Value(zero)]);

            let next = emit_header(b, vector_header, n, 4, vector_body, scalar_header);
            b.switch_to_block(vector_body);
            let i = b.block_params(vector_header)[0];
            emit_element(b, [src, dst, i], types, true, output);
            b.ins().jump(vector_header, &[BlockArg::Value(next)]);

            let next = emit_header(b, scalar_header, n, 1, scalar_body, exit);
            b.switch_to_block(scalar_body);
            let i = b.block_params(scalar_header)[0];
            emit_element(b, [src, dst, i], types, false, output);
            b.ins().jump(scalar_header, &[BlockArg::Value(next)]);

            b.switch_to_block(exit);
            b.ins().return_(&[]);
        })
        .expect("the test kernel compiles");
    let map = TestMap::new(ptr, owner, types.0.size(), types.1.size());
    (map, asm)
}

/// Runs `f(src, dst, n)` over `src` and returns the output elements as u32.
fn run(jit: &Jit, types: (DType, DType), vector: bool, output: Output, src: &[u8]) -> Vec<u32> {
    let (map, _) = compile(jit, types, vector, output);
    let n = src.len() / types.0.size();
    let mut dst = vec![0u8; n * types.1.size()];
    map.run(src, &mut dst);
    match types.1.size() {
        2 => dst
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => dst
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// The first element where `actual` and `expected` differ, for the message.
fn first_difference(inputs: &[u32], actual: &[u32], expected: &[u32]) -> Option<String> {
    assert_eq!(actual.len(), expected.len());
    (0..actual.len())
        .find(|&i| actual[i] != expected[i])
        .map(|i| {
            format!(
                "element {i}: input {:#x}, JIT {:#x}, reference {:#x}",
                inputs[i], actual[i], expected[i]
            )
        })
}

fn f32_bytes(bits: &[u32]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

#[test]
fn widening_matches_the_reference() {
    // Every pattern, then three more for the scalar tail after the vector loop.
    let halves: Vec<u32> = (0..=0xFFFF).chain([0x7C01, 0x8001, 0xFF81]).collect();
    let src: Vec<u8> = halves
        .iter()
        .flat_map(|&h| (h as u16).to_le_bytes())
        .collect();
    for jit in jits() {
        for vector in [true, false] {
            for (dtype, widen) in [
                (DType::BF16, round::bf16_to_f32 as fn(u16) -> f32),
                (DType::F16, round::f16_to_f32),
            ] {
                let actual = run(&jit, (dtype, DType::F32), vector, Output::Nearest, &src);
                let expected: Vec<u32> =
                    halves.iter().map(|&h| widen(h as u16).to_bits()).collect();
                let diff = first_difference(&halves, &actual, &expected);
                assert!(diff.is_none(), "{dtype} vector={vector}: {}", diff.unwrap());
            }
        }
    }
}

/// Narrows the sweep for `dtype` with the JIT and compares with `reference(x, i)`.
fn check_narrowing(dtype: DType, output: Output, reference: impl Fn(f32, u32) -> u16) {
    let mut inputs = if dtype == DType::BF16 {
        bf16_sweep()
    } else {
        f16_sweep()
    };
    inputs.extend([0x7F80_0001, 0x3F80_8000, 0xC780_0000]); // a scalar tail
    if matches!(output, Output::WithoutNans(_)) {
        inputs.retain(|&x| !f32::from_bits(x).is_nan());
    }
    let src = f32_bytes(&inputs);
    let expected: Vec<u32> = inputs
        .iter()
        .enumerate()
        .map(|(i, &x)| u32::from(reference(f32::from_bits(x), i as u32)))
        .collect();
    for jit in jits() {
        for vector in [true, false] {
            let actual = run(&jit, (DType::F32, dtype), vector, output, &src);
            let diff = first_difference(&inputs, &actual, &expected);
            assert!(
                diff.is_none(),
                "{dtype} {output:?} vector={vector}: {}",
                diff.unwrap()
            );
        }
    }
}

#[test]
fn nearest_bf16_matches_the_reference() {
    check_narrowing(DType::BF16, Output::Nearest, |x, _| round::f32_to_bf16(x));
}

#[test]
fn nearest_f16_matches_the_reference() {
    check_narrowing(DType::F16, Output::Nearest, |x, _| round::f32_to_f16(x));
}

#[test]
fn stochastic_bf16_matches_the_reference() {
    let key = round::step_key(5, 17);
    check_narrowing(DType::BF16, Output::Stochastic(key), |x, i| {
        round::f32_to_bf16_stochastic(x, round::random_bits(key, i))
    });
}

#[test]
fn stochastic_f16_matches_the_reference() {
    let key = round::step_key(5, 18);
    check_narrowing(DType::F16, Output::Stochastic(key), |x, i| {
        round::f32_to_f16_stochastic(x, round::random_bits(key, i))
    });
}

/// Catches a narrowing whose path without NaNs stores other bits than the full one for a
/// value that is not a NaN (ties, overflow, subnormals, signed zeros and infinities).
#[test]
fn narrowing_without_the_nan_path_matches_the_reference_on_every_other_value() {
    check_narrowing(DType::BF16, Output::WithoutNans(None), |x, _| {
        round::f32_to_bf16(x)
    });
    check_narrowing(DType::F16, Output::WithoutNans(None), |x, _| {
        round::f32_to_f16(x)
    });
    let key = round::step_key(6, 2);
    check_narrowing(DType::BF16, Output::WithoutNans(Some(key)), |x, i| {
        round::f32_to_bf16_stochastic(x, round::random_bits(key, i))
    });
    check_narrowing(DType::F16, Output::WithoutNans(Some(key)), |x, i| {
        round::f32_to_f16_stochastic(x, round::random_bits(key, i))
    });
}

#[test]
fn random_bits_match_the_reference() {
    let n = 1027u32;
    let src = vec![0u8; n as usize * 4];
    let key = round::step_key(9, 1);
    let inputs: Vec<u32> = (0..n).collect();
    for stream in [0, 2, 3, 7] {
        let expected: Vec<u32> = (inputs.iter())
            .map(|&i| round::stream_bits(round::random_bits(key, i), stream))
            .collect();
        for jit in jits() {
            for vector in [true, false] {
                let output = Output::Random(key, stream);
                let actual = run(&jit, (DType::F32, DType::F32), vector, output, &src);
                let diff = first_difference(&inputs, &actual, &expected);
                assert!(
                    diff.is_none(),
                    "stream {stream}, vector={vector}: {}",
                    diff.unwrap()
                );
            }
        }
    }
}

#[test]
fn f32_storage_is_a_plain_copy() {
    let inputs: Vec<u32> = (0..1027u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
    for jit in jits() {
        for vector in [true, false] {
            let actual = run(
                &jit,
                (DType::F32, DType::F32),
                vector,
                Output::Nearest,
                &f32_bytes(&inputs),
            );
            assert_eq!(actual, inputs);
        }
    }
}

#[test]
#[should_panic(expected = "no stochastic rounding to f32 storage")]
fn stochastic_rounding_to_f32_is_refused() {
    let jit = Jit::new().expect("a JIT for the host");
    compile(
        &jit,
        (DType::F32, DType::F32),
        true,
        Output::Stochastic([1, 2]),
    );
}

/// The vector loop body's instructions in Cranelift's disassembly: the last block that
/// jumps back to the vector loop's header, without the loop's own bookkeeping (the index
/// update, the jump back, and the `lea` of an element address).
fn vector_body(asm: &str) -> Vec<&str> {
    let lines: Vec<&str> = asm.lines().map(str::trim).collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("block") && lines[i].ends_with(':'))
        .collect();
    let body = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| &lines[start + 1..starts.get(k + 1).copied().unwrap_or(lines.len())])
        .rfind(|block| {
            block
                .last()
                .is_some_and(|l| l.starts_with("jmp") && l.ends_with("label1"))
        })
        .expect("a vector loop");
    body.iter()
        .copied()
        .filter(|l| !(l.starts_with("jmp") || l.starts_with("leaq") || l.starts_with("movq %rax")))
        .collect()
}

/// The conversions the count test and `show_vector_code` look at.
const SHOWN: [((DType, DType), Output); 6] = [
    ((DType::BF16, DType::F32), Output::Nearest),
    ((DType::F16, DType::F32), Output::Nearest),
    ((DType::F32, DType::BF16), Output::Nearest),
    ((DType::F32, DType::F16), Output::Nearest),
    ((DType::F32, DType::BF16), Output::Stochastic([1, 2])),
    ((DType::F32, DType::F16), Output::Stochastic([1, 2])),
];

#[test]
fn vector_code_stays_small() {
    // Instructions per 4 elements, including the element load and store and the loads of
    // constants (which Cranelift 0.135 does not fold into the instructions using them), as
    // measured with Cranelift 0.135.8 for the AVX2 class; the stochastic rows include the
    // generator and the lane indices (24 instructions). A regression guard, not a benchmark.
    let jit = Jit::for_target(Target::X64Avx2).expect("a JIT for AVX2");
    for ((types, output), most) in SHOWN.into_iter().zip([7, 21, 12, 30, 35, 57]) {
        let (_, asm) = compile(&jit, types, true, output);
        let body = vector_body(&asm);
        assert!(
            body.len() <= most,
            "{types:?} {output:?}: {} instructions, expected at most {most}:\n{}",
            body.len(),
            body.join("\n")
        );
    }
}

#[test]
#[ignore = "prints the code: cargo test --release --lib convert::tests::show -- --ignored --nocapture"]
fn show_vector_code() {
    for target in [Target::X64Avx2, Target::Host] {
        let jit = Jit::for_target(target).expect("a JIT");
        for (types, output) in SHOWN {
            let (_, asm) = compile(&jit, types, true, output);
            let body = vector_body(&asm);
            let constants = body.iter().filter(|l| l.contains("(%rip), %xmm")).count();
            println!(
                "==== {target:?} {types:?} {output:?}: {} instructions ({constants} constant loads)",
                body.len()
            );
            println!("{}", body.join("\n"));
        }
    }
}

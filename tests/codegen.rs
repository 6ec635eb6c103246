//! Properties of the generated machine code, for the two classes of x86-64 CPU whatever the
//! host (Cranelift compiles for a named target): in the vector loops of every built-in, no
//! scalar is reloaded or re-broadcast per vector and nothing spills; `fast_math` emits fused
//! multiply-adds.

use optjit::ir::GraphFlags;
use optjit::{optim, passes, DType, Jit, JitOptions, Target};

/// The blocks of a disassembly, as (label, instruction lines).
fn blocks(asm: &str) -> Vec<(&str, Vec<&str>)> {
    let mut blocks: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in asm.lines() {
        if let Some(label) = line.strip_suffix(':').filter(|l| l.starts_with("block")) {
            blocks.push((label, Vec::new()));
        } else if let Some((_, lines)) = blocks.last_mut() {
            lines.push(line.trim());
        }
    }
    blocks
}

/// Whether `line` moves a vector register to or from the stack.
fn is_spill(line: &str) -> bool {
    line.contains("xmm") && line.contains("(%rsp)")
}

/// Whether `line` loads an element vector of a stream: a move from memory addressed by a
/// base and an index register.
fn is_stream_load(line: &str) -> bool {
    let mov = ["vmovups ", "vmovupd ", "movups ", "movupd "];
    mov.iter().any(|m| line.starts_with(m))
        && (line.contains(", 4), %xmm") || line.contains(", 8), %xmm"))
}

/// Whether `line` stores an element vector to a stream.
fn is_stream_store(line: &str) -> bool {
    let mov = ["vmovups %xmm", "vmovupd %xmm", "movups %xmm", "movupd %xmm"];
    let wide = mov.iter().any(|m| line.starts_with(m))
        && (line.ends_with(", 4)") || line.ends_with(", 8)"));
    // Four bf16 or f16 elements: 8 bytes from the low half of a vector register.
    let narrow = ["vmovsd %xmm", "movsd %xmm"];
    wide || (narrow.iter().any(|m| line.starts_with(m)) && line.ends_with(", 2)"))
}

/// Whether `line` is a separate load of a scalar: a move into a vector register from memory
/// addressed by a base register alone (the scalar block), not the stack or constant pool.
/// (A scalar read as a memory operand of an arithmetic instruction costs no instruction.)
fn is_scalar_load(line: &str) -> bool {
    let Some((op, operands)) = line.split_once(' ') else {
        return false;
    };
    let mov = op.contains("mov") && !op.contains("movmsk");
    let from_base = operands
        .split_once(')')
        .is_some_and(|(address, rest)| !address.contains(',') && rest.starts_with(", %xmm"));
    mov && from_base && !operands.contains("(%rsp)") && !operands.contains("(%rip)")
}

/// Whether `line` splats a scalar across a vector.
fn is_broadcast(line: &str) -> bool {
    [
        "broadcast",
        "shufps",
        "pshufd",
        "movddup",
        "permilp",
        "unpcklp",
    ]
    .iter()
    .any(|b| line.contains(b))
}

/// Scalar loads per body copy that a built-in's vector loop needs. Only Adan's exceeds the 16
/// registers: 8 scalars that cannot be memory operands (they feed values used twice, such
/// as each moment that is both stored and read) beside 9 live values, so one of them is a
/// plain vector load per copy (never a broadcast).
fn plain_loads(name: &str, dtype: DType, n_scalars: usize) -> usize {
    // bf16 conversions hold their constants in registers (the emitter leaves them room), so
    // a loop may read any of its scalars from the block, each at most once per copy.
    match dtype {
        DType::BF16 => n_scalars,
        _ => usize::from(name == "adan"),
    }
}

/// For every built-in, dtype and class of x86-64 CPU, the vector loops (the blocks that
/// store a stream vector) neither load nor broadcast a scalar (but Adan's one, see
/// [`plain_loads`]), and no vector register spills anywhere in the kernel.
#[test]
fn vector_loops_read_scalars_for_free_and_never_spill_on_either_cpu_class() {
    let mut loops = 0;
    for target in [Target::X64Avx2, Target::X64Avx512] {
        let jit = Jit::for_target(target).unwrap();
        for name in optim::NAMES {
            let program = passes::compile(&optim::by_name(name).unwrap()).unwrap();
            // f16 is left out: its conversions' constants outnumber AVX2's registers, and
            // Cranelift hoists them out of the loop and spills (see BENCHMARKS.md).
            let n_scalars = program.stage.n_scalars as usize;
            for dtype in [DType::F32, DType::F64, DType::BF16] {
                let options = JitOptions::for_stage(&program.stage);
                let asm = jit.disassemble(&program, dtype, options).unwrap();
                let what = format!("{name} {dtype} {target:?}");
                let spills: Vec<&str> = asm.lines().filter(|l| is_spill(l)).collect();
                assert!(spills.is_empty(), "{what} spills:\n{}", spills.join("\n"));
                // A vector loop stores a stream vector (a store, unlike a load, is never
                // folded into another instruction): the main loops and the one-vector loop.
                let bodies: Vec<_> = blocks(&asm)
                    .into_iter()
                    .filter(|(_, lines)| lines.iter().any(|l| is_stream_store(l)))
                    .collect();
                let expected = 1 + usize::from(options.unroll > 1);
                assert!(
                    bodies.len() >= expected,
                    "{what}: {} vector loops found, at least {expected} expected in\n{asm}",
                    bodies.len()
                );
                for (label, lines) in bodies {
                    let copies = lines.iter().filter(|l| is_stream_store(l)).count()
                        / program.stage.stores.len();
                    let loads = lines.iter().filter(|l| is_scalar_load(l)).count();
                    let broadcasts = lines.iter().filter(|l| is_broadcast(l)).count();
                    assert!(
                        broadcasts == 0 && loads <= copies * plain_loads(name, dtype, n_scalars),
                        "{what}, {label}: {loads} scalar loads, {broadcasts} broadcasts:\n{}",
                        lines.join("\n")
                    );
                    loops += 1;
                }
            }
        }
    }
    assert!(
        loops >= 4 * optim::NAMES.len(),
        "{loops} vector loops checked"
    );
}

/// The checks above recognise what they reject: a loop that broadcasts a scalar loaded from
/// the block, and a spill.
#[test]
fn the_disassembly_checks_recognise_reloads_broadcasts_and_spills() {
    assert!(is_scalar_load("vmovss 0x1c(%rbx), %xmm2"));
    assert!(is_scalar_load("vmovups 0x20(%r15), %xmm14"));
    assert!(!is_scalar_load("vmulps 0x90(%r15), %xmm8, %xmm12"));
    assert!(!is_scalar_load("vmovups (%rcx, %r11, 4), %xmm0"));
    assert!(!is_scalar_load("vmovups %xmm6, (%rcx, %r11, 4)"));
    assert!(is_broadcast("vbroadcastss %xmm6, %xmm6"));
    assert!(is_broadcast("vbroadcastss 0x1c(%rbx), %xmm9"));
    assert!(is_stream_load("vmovups 0x10(%rdx, %r11, 4), %xmm1"));
    assert!(is_stream_store("vmovups %xmm6, 0x10(%rcx, %r11, 4)"));
    assert!(!is_stream_store("vmovups 0x10(%rdx, %r11, 4), %xmm1"));
    assert!(is_spill("movdqu %xmm1, <offset:1>+0x60(%rsp)"));
    assert!(!is_spill("movq 0x10(%rsp), %rbx"));
}

#[test]
fn fast_math_emits_fused_multiply_adds() {
    let graph = optim::by_name("sgd_momentum").unwrap();
    let fast = graph.clone().with_flags(GraphFlags {
        fast_math: true,
        ..graph.flags()
    });
    let jit = Jit::for_target(Target::X64Avx2).unwrap();
    let asm = |g: &optjit::Graph| {
        let program = passes::compile(g).unwrap();
        jit.disassemble(&program, DType::F32, JitOptions::for_stage(&program.stage))
            .unwrap()
    };
    assert!(!asm(&graph).contains("vfmadd") && !asm(&graph).contains("vfnmadd"));
    assert!(
        asm(&fast).contains("vfmadd") || asm(&fast).contains("vfnmadd"),
        "{}",
        asm(&fast)
    );
}

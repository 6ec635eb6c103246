//! Properties of the generated machine code: the vector loops of every built-in of ordinary
//! size keep all their values in registers (no spills), and `fast_math` emits fused
//! multiply-adds.

use optjit::ir::GraphFlags;
use optjit::{optim, passes, DType, Jit, JitOptions};

/// Lines of the disassembly that move a vector register to or from the stack.
fn vector_stack_accesses(asm: &str) -> Vec<&str> {
    asm.lines()
        .filter(|l| l.contains("xmm") && l.contains("(%rsp)"))
        .collect()
}

#[test]
fn built_in_kernels_do_not_spill() {
    let jit = Jit::new().unwrap();
    let mut checked = 0;
    for name in optim::NAMES {
        let program = passes::compile(&optim::by_name(name).unwrap()).unwrap();
        if program.stage.n_scalars >= JitOptions::MANY_SCALARS {
            continue; // RAdam, Adan, schedule-free AdamW: one or two spills remain
        }
        for dtype in DType::ALL {
            let options = JitOptions::for_stage(&program.stage);
            let asm = jit.disassemble(&program, dtype, options).unwrap();
            assert!(
                asm.contains("sqrtp") || asm.contains("mulp"),
                "{name}: vector code expected"
            );
            let spills = vector_stack_accesses(&asm);
            assert!(
                spills.is_empty(),
                "{name} {dtype} spills:\n{}",
                spills.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked} kernels checked");
}

#[test]
fn fast_math_emits_fused_multiply_adds() {
    let graph = optim::by_name("sgd_momentum").unwrap();
    let fast = graph.clone().with_flags(GraphFlags {
        fast_math: true,
        ..graph.flags()
    });
    let jit = Jit::new().unwrap();
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

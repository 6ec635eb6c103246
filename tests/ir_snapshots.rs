//! One snapshot per built-in optimizer telling its whole story: the graph as built, the graph
//! after each pass, the program, and the Cranelift IR of its f32 kernel before Cranelift's
//! own optimisations. Machine code is never snapshotted (it churns with Cranelift versions).

use optjit::{optim, passes, DType, Jit, JitOptions, Target};

fn story(name: &str) -> String {
    let graph = optim::by_name(name).unwrap();
    let (trace, program) = passes::compile_traced(&graph, DType::F32).unwrap();
    let mut text = format!("== built ==\n{graph}");
    for (pass, printed) in trace {
        text.push_str(&format!("\n== after {pass} ==\n{printed}"));
    }
    // Unrolled twice rather than the default four times: the same structure, half the text.
    let options = JitOptions { unroll: 2 };
    // x86-64 with AVX2: the same IR on every host.
    let clif = Jit::for_target(Target::X64Avx2)
        .unwrap()
        .clif(&program, DType::F32, options)
        .unwrap();
    text.push_str(&format!(
        "\n== cranelift ir, f32, unroll {} ==\n{clif}",
        options.unroll
    ));
    text
}

macro_rules! snapshot {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            insta::with_settings!({
                snapshot_path => "../snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
            }, {
                insta::assert_snapshot!($name, story($name));
            });
        }
    };
}

snapshot!(sgd, "sgd");
snapshot!(sgd_momentum, "sgd_momentum");
snapshot!(sgd_nesterov, "sgd_nesterov");
snapshot!(adam, "adam");
snapshot!(adamw, "adamw");
snapshot!(adam_amsgrad, "adam_amsgrad");
snapshot!(adamw_amsgrad, "adamw_amsgrad");

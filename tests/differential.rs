//! JIT ≡ reference interpreter ≡ eager evaluator ≡ chunked interpreter, bit for bit (NaN
//! canonicalised), for every op and every built-in, f32 and f64, every unroll factor, lengths
//! around the vector width and the chunked interpreter's block, several segments per call, and
//! inputs full of ±0, subnormals, ±inf, NaN, huge and tiny values.

mod common;

use common::SplitMix64;
use optjit::ir::Op;
use optjit::{
    optim, Builder, Elems, ElemsRef, Executor, Expr, Float, Graph, Jit, JitOptions, Kernel,
    ParamRef, ParamState, Segment, SlotValue, Stepper, Target,
};

/// Seeded test inputs full of IEEE edge cases, on the shared SplitMix64 generator.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn unit(&mut self) -> f64 {
        self.0.unit()
    }

    /// A value from a pool of IEEE edge cases or a random magnitude, either sign.
    fn special<T: Float>(&mut self) -> T {
        let tiny = T::from_f64(f64::MIN_POSITIVE);
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e-40,   // subnormal in f32
            -1e-310, // subnormal in f64, zero in f32
            1e38,
            -3e38,
            1e300,
            1e-30,
        ];
        let x = match self.next() % 4 {
            0 => specials[(self.next() % specials.len() as u64) as usize],
            1 => tiny.to_f64() * self.unit(),
            _ => {
                let exp = (self.next() % 40) as i32 - 20;
                (self.unit() - 0.5) * 10f64.powi(exp)
            }
        };
        T::from_f64(x)
    }

    fn vec<T: Float>(&mut self, n: usize) -> Vec<T> {
        (0..n).map(|_| self.special()).collect()
    }
}

/// Equal bits, or both NaN.
fn same<T: Float>(a: T, b: T) -> bool {
    a.to_bits_u64() == b.to_bits_u64() || (a.is_nan() && b.is_nan())
}

fn assert_same<T: Float>(what: &str, expected: &[T], actual: &[T]) {
    assert_eq!(expected.len(), actual.len(), "{what}: length");
    for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
        assert!(
            same(*e, *a),
            "{what}: element {i}: reference {e:?}, got {a:?}"
        );
    }
}

const UNROLLS: [u32; 4] = [1, 2, 4, 8];

/// Lengths around the vector width `lanes`, the unrolled width and the chunked
/// interpreter's block of `block` elements.
fn lengths(lanes: usize, block: usize) -> Vec<usize> {
    let mut v = vec![0, 1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 1027];
    for u in UNROLLS {
        let w = lanes * u as usize;
        v.extend([w - 1, w, w + 1, 2 * w + 1]);
    }
    v.extend([block - 1, block, block + 1, 2 * block + 3]);
    v.sort_unstable();
    v.dedup();
    v
}

/// Buffers of one segment: param, grad, element state, scalar block.
#[derive(Clone)]
struct Buffers<T> {
    param: Vec<T>,
    grad: Vec<T>,
    state: Vec<Vec<T>>,
    scalars: Vec<T>,
}

/// The segments over `bufs`; their state lists are kept in `lists`.
fn segments<'a, T: Float>(
    bufs: &'a mut [Buffers<T>],
    lists: &'a mut Vec<Vec<Elems<'a>>>,
) -> Vec<Segment<'a, T>> {
    let mut rest = Vec::new();
    for b in bufs {
        lists.push(b.state.iter_mut().map(|s| Elems::of(s)).collect());
        rest.push((&mut b.param[..], &b.grad[..], &b.scalars[..]));
    }
    rest.into_iter()
        .zip(lists)
        .map(|((param, grad, scalars), state)| Segment {
            param: Elems::of(param),
            grad: ElemsRef::of(grad),
            state,
            scalars,
            partials: &mut [],
            noise: optjit::Noise::NONE,
        })
        .collect()
}

/// Runs `program`'s stage on copies of `bufs` with the reference interpreter, the eager
/// evaluator, the chunked interpreter and `kernel`, and asserts all outputs agree.
fn check_stage<T: Float>(
    what: &str,
    program: &optjit::Program,
    kernel: &Kernel,
    bufs: &[Buffers<T>],
) {
    let mut reference = bufs.to_vec();
    optjit::interp::run_reference(
        &program.stage,
        &mut segments(&mut reference, &mut Vec::new()),
    )
    .unwrap();
    let mut eager = bufs.to_vec();
    optjit::interp::run_eager(&program.stage, &mut segments(&mut eager, &mut Vec::new())).unwrap();
    let mut chunked = bufs.to_vec();
    optjit::interp::run_chunked(&program.stage, &mut segments(&mut chunked, &mut Vec::new()))
        .unwrap();
    let mut jit = bufs.to_vec();
    kernel
        .run(&mut segments(&mut jit, &mut Vec::new()))
        .unwrap();
    for (s, r) in reference.iter().enumerate() {
        let what = format!("{what}, segment {s} (len {})", r.param.len());
        for (name, got) in [
            ("eager", &eager[s]),
            ("chunked", &chunked[s]),
            ("jit", &jit[s]),
        ] {
            assert_same(&format!("{what}: {name} param"), &r.param, &got.param);
            for (k, (rs, gs)) in r.state.iter().zip(&got.state).enumerate() {
                assert_same(&format!("{what}: {name} state {k}"), rs, gs);
            }
        }
    }
}

fn random_buffers<T: Float>(rng: &mut Rng, program: &optjit::Program, len: usize) -> Buffers<T> {
    let streams = program.stage.n_streams as usize - 2;
    // Scalars come from the prologue in real use; here they are edge cases too.
    Buffers {
        param: rng.vec(len),
        grad: rng.vec(len),
        state: (0..streams).map(|_| rng.vec(len)).collect(),
        scalars: rng.vec(program.stage.n_scalars as usize),
    }
}

/// Every length alone, then all of them as segments of one call.
fn check_graph_for<T: Float>(jit: &Jit, graph: &Graph, seed: u64) {
    let program = optjit::passes::compile(graph).unwrap();
    let lanes = 16 / std::mem::size_of::<T>();
    let mut rng = Rng::new(seed);
    for unroll in UNROLLS {
        let kernel = jit
            .compile_with(&program, T::DTYPE, JitOptions { unroll })
            .unwrap();
        let what = format!("{} {} unroll {unroll}", graph.name(), T::DTYPE);
        let mut all = Vec::new();
        for len in lengths(lanes, optjit::interp::chunked_block_len::<T>()) {
            let bufs = vec![random_buffers::<T>(&mut rng, &program, len)];
            check_stage(&what, &program, &kernel, &bufs);
            all.extend(bufs);
        }
        check_stage(
            &format!("{what}, all lengths in one call"),
            &program,
            &kernel,
            &all,
        );
    }
}

fn check_graph(jit: &Jit, graph: &Graph) {
    check_graph_for::<f32>(jit, graph, 1);
    check_graph_for::<f64>(jit, graph, 2);
}

/// `param = op(operands)` over element and scalar operands, in several arrangements.
fn op_graphs(op: Op) -> Vec<Graph> {
    let mut graphs = Vec::new();
    // `f` gets the builder and a state slot `m` (a third stream, stored unchanged).
    let mut add = |name: &str, f: &dyn for<'b> Fn(&'b Builder, Expr<'b>) -> Expr<'b>| {
        let b = Builder::new(&format!("{}_{name}", op.name()));
        let m = b.state("m", 0.0);
        let out = f(&b, m);
        b.set_state("m", m).unwrap();
        b.set_param(out);
        graphs.push(b.finish().unwrap());
    };
    match op.arity() {
        _ if op.scalar_only() => {
            // Computed in the prologue; the stage sees the result as a scalar.
            add("scalar", &|b, _| {
                let h = b.hyper("h", 1.5);
                let s = match op.arity() {
                    1 => b.apply(op, &[h]),
                    _ => b.apply(op, &[h, b.step()]),
                };
                b.grad() * s
            });
        }
        1 => add("elem", &|b, _| b.apply(op, &[b.grad()])),
        2 => {
            add("elem_elem", &|b, _| b.apply(op, &[b.param(), b.grad()]));
            add("elem_scalar", &|b, _| {
                b.apply(op, &[b.grad(), b.hyper("h", 0.5)])
            });
            add("scalar_elem", &|b, _| {
                b.apply(op, &[b.hyper("h", 0.5), b.grad()])
            });
            add("same_operand", &|b, _| b.apply(op, &[b.grad(), b.grad()]));
            // A comparison's result used as a number and as a condition.
            add("as_number", &|b, _| {
                b.apply(op, &[b.param(), b.grad()]) * b.grad()
            });
            add("as_condition", &|b, m| {
                let c = b.apply(op, &[b.param(), b.grad()]);
                b.select(c, b.grad(), m)
            });
        }
        _ => {
            add("elem_conds", &|b, m| b.select(b.param(), b.grad(), m));
            add("scalar_cond", &|b, _| {
                b.select(b.hyper("h", 0.0), b.grad(), b.param())
            });
            add("scalar_branch", &|b, _| {
                b.select(b.grad(), b.hyper("h", 2.0), b.param())
            });
        }
    }
    graphs
}

#[test]
fn every_op_agrees_across_executors() {
    let jit = Jit::new().unwrap();
    for op in Op::ALL {
        for graph in op_graphs(op) {
            check_graph(&jit, &graph);
        }
    }
}

/// Every built-in graph with the variants of its flags.
fn builtins() -> Vec<Graph> {
    let mut graphs: Vec<Graph> = optim::NAMES
        .iter()
        .map(|n| optim::by_name(n).unwrap())
        .collect();
    for maximize in [false, true] {
        graphs.push(
            optim::Sgd {
                momentum: 0.5,
                dampening: 0.25,
                maximize,
                ..Default::default()
            }
            .graph()
            .unwrap(),
        );
        graphs.push(
            optim::Adam {
                amsgrad: true,
                maximize,
                ..Default::default()
            }
            .graph()
            .unwrap(),
        );
        graphs.push(
            optim::AdamW {
                maximize,
                ..Default::default()
            }
            .graph()
            .unwrap(),
        );
    }
    // The other torch.optim built-ins, maximizing (their defaults are in NAMES).
    let maximize = true;
    graphs.extend(
        [
            optim::Rmsprop {
                centered: true,
                momentum: 0.5,
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::Adagrad {
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::Adadelta {
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::Adamax {
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::NAdam {
                decoupled_weight_decay: true,
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::RAdam {
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::Asgd {
                maximize,
                ..Default::default()
            }
            .graph(),
            optim::Rprop {
                maximize,
                ..Default::default()
            }
            .graph(),
        ]
        .map(Result::unwrap),
    );
    // The global clips: PyTorch's and optax's.
    let adam = optim::Adam::default().graph().unwrap();
    graphs.push(optim::clip_grad_norm(&adam, 2.0).unwrap());
    graphs.push(optim::clip_by_global_norm(&adam, 1.0).unwrap());
    graphs
}

#[test]
fn every_builtin_stage_agrees_across_executors() {
    let jit = Jit::new().unwrap();
    for graph in builtins() {
        check_graph(&jit, &graph);
    }
}

/// Stages far wider than the registers (a hundred states whose new values are all live until
/// the update sums them; two hundred values live at once), which the JIT compiles with
/// Cranelift's single-pass register allocator, agree bit for bit too.
#[test]
fn large_kernels_agree_across_executors() {
    let jit = Jit::new().unwrap();
    for source in [common::hostile::states(100), common::hostile::live(200)] {
        check_graph(&jit, &optjit::text::parse(&source).unwrap());
    }
}

/// With no register to hold them, every loop reads every scalar from the scalar block at each
/// use (the path of stages wider than the registers, as memory operands where Cranelift can
/// fold them): every op and every built-in still agree bit for bit.
#[test]
fn every_op_and_builtin_agree_with_scalars_read_from_memory() {
    let jit = Jit::for_target_with_registers(Target::Host, 0).unwrap();
    for op in Op::ALL {
        for graph in op_graphs(op) {
            check_graph(&jit, &graph);
        }
    }
    for graph in builtins() {
        check_graph(&jit, &graph);
    }
}

/// Segments whose scalar blocks are shared, consecutively and not (blocks A, A, B, A, B, B),
/// as the runtime makes them: each segment computes with its own block's values, whether the
/// scalars are held in registers or read from memory.
#[test]
fn segments_sharing_scalar_blocks_read_their_own_block() {
    let program = optjit::passes::compile(&optim::by_name("adam").unwrap()).unwrap();
    let mut rng = Rng::new(11);
    let blocks: Vec<Vec<f32>> = (0..2)
        .map(|_| rng.vec(program.stage.n_scalars as usize))
        .collect();
    let order = [0, 0, 1, 0, 1, 1];
    let bufs: Vec<Buffers<f32>> = order
        .iter()
        .map(|&b| Buffers {
            scalars: blocks[b].clone(),
            ..random_buffers(&mut rng, &program, 37)
        })
        .collect();
    let mut expected = bufs.clone();
    optjit::interp::run_reference(
        &program.stage,
        &mut segments(&mut expected, &mut Vec::new()),
    )
    .unwrap();
    for registers in [None, Some(0)] {
        let jit = match registers {
            None => Jit::new().unwrap(),
            Some(n) => Jit::for_target_with_registers(Target::Host, n).unwrap(),
        };
        let kernel = jit.compile(&program, optjit::DType::F32).unwrap();
        let mut got = bufs.clone();
        let mut lists = Vec::new();
        let mut segs = segments(&mut got, &mut lists);
        // One slice per block, shared by the segments that use it (the same address).
        for (seg, &block) in segs.iter_mut().zip(&order) {
            seg.scalars = &blocks[block];
        }
        kernel.run(&mut segs).unwrap();
        drop(segs);
        for (s, (e, g)) in expected.iter().zip(&got).enumerate() {
            let what = format!("registers {registers:?}, segment {s} (block {})", order[s]);
            assert_same(&format!("{what}: param"), &e.param, &g.param);
            for (k, (es, gs)) in e.state.iter().zip(&g.state).enumerate() {
                assert_same(&format!("{what}: state {k}"), es, gs);
            }
        }
    }
}

/// Whole steps through the Stepper (prologue included) on realistic values: every executor,
/// several parameters with different step counts in one call.
fn check_steps<T: Float>(graph: &Graph, seed: u64) {
    let executors = [
        Executor::Reference,
        Executor::Eager,
        Executor::Chunked,
        Executor::Jit,
    ];
    let mut rng = Rng::new(seed);
    let block = optjit::interp::chunked_block_len::<T>();
    let lens = [1, 7, 64, 1027, block - 1, block, block + 1, 2 * block + 3];
    let params: Vec<Vec<T>> = lens.iter().map(|&n| rng.vec(n)).collect();
    let grads: Vec<Vec<Vec<T>>> = (0..4)
        .map(|_| lens.iter().map(|&n| rng.vec(n)).collect())
        .collect();
    // Per executor: final params and states.
    type Run<T> = (Vec<Vec<T>>, Vec<ParamState<T>>);
    let mut results: Vec<Run<T>> = Vec::new();
    for executor in executors {
        let mut stepper = Stepper::new(graph).unwrap().with_executor(executor);
        let mut params = params.clone();
        let mut states: Vec<ParamState<T>> = lens
            .iter()
            .map(|&n| stepper.init_state(n).unwrap())
            .collect();
        for (k, grads) in grads.iter().enumerate() {
            stepper.set_hyper("lr", 0.01 * (k + 1) as f64).unwrap();
            // Parameter 1 has no gradient at step 2: it is skipped, its step count lags.
            let mut refs: Vec<ParamRef<'_, T>> = params
                .iter_mut()
                .zip(grads)
                .zip(states.iter_mut())
                .enumerate()
                .filter(|(i, _)| !(k == 2 && *i == 1))
                .map(|(_, ((param, grad), state))| ParamRef { param, grad, state })
                .collect();
            stepper.step_many(&mut refs).unwrap();
        }
        assert_eq!(states[1].step, 3);
        assert_eq!(states[0].step, 4);
        results.push((params, states));
    }
    let (ref_params, ref_states) = &results[0];
    for (executor, (params, states)) in executors.iter().zip(&results).skip(1) {
        for (i, (r, a)) in ref_params.iter().zip(params).enumerate() {
            assert_same(&format!("{} {executor:?} param {i}", graph.name()), r, a);
        }
        for (i, (r, a)) in ref_states.iter().zip(states).enumerate() {
            for (n, (r, a)) in r.slots.iter().zip(&a.slots).enumerate() {
                let what = format!("{} {executor:?} state {i} slot {n}", graph.name());
                match (r, a) {
                    (SlotValue::Buffer(r), SlotValue::Buffer(a)) => assert_same(&what, r, a),
                    // Scalar slots come from the prologue, the same code for every executor.
                    (SlotValue::Scalar(r), SlotValue::Scalar(a)) => {
                        assert!(same(*r, *a), "{what}: reference {r:?}, got {a:?}")
                    }
                    _ => panic!("{what}: a buffer and a scalar"),
                }
            }
        }
    }
}

#[test]
fn every_builtin_steps_identically_with_every_executor() {
    for graph in builtins() {
        check_steps::<f32>(&graph, 3);
        check_steps::<f64>(&graph, 4);
    }
}

/// A select whose condition is a per-step scalar runs in a main loop specialised for its
/// truth (one branch per segment): every truth value — zeros of both signs, NaN (true),
/// infinities, subnormals — agrees with the interpreters, beside selects on other scalar
/// conditions that stay per-element choices, in the short loops too.
#[test]
fn selects_on_scalar_conditions_agree_for_every_truth_value() {
    let jit = Jit::new().unwrap();
    let values = [0.0, -0.0, 1.0, -1.0, f64::NAN, f64::INFINITY, 1e-310];
    for (k, &h1) in values.iter().enumerate() {
        let h2 = values[(k + 3) % values.len()];
        let h3 = values[(k + 5) % values.len()];
        let b = Builder::new("scalar_conditions");
        let (c1, c2, c3) = (b.hyper("c1", h1), b.hyper("c2", h2), b.hyper("c3", h3));
        let (p, g) = (b.param(), b.grad());
        let one = b.select(c1, g * 2.0, p);
        let two = b.select(c2, one - p, b.select(c1, p, g));
        let three = b.select(c3, two, one * g);
        b.set_param(p - 0.5 * three);
        check_graph(&jit, &b.finish().unwrap());
    }
}

//! Fused mixed precision (`optim::amp`): the skip condition of a graph, through the text
//! form, the `Optimizer`, the `Stepper` and every executor; and AMP + clipping + Adam as one
//! program against the unfused sequence (`GradScaler::unscale`, `clip_grad_norm`, step), bit
//! for bit.

use ndarray::Array1;
use optjit::optim::{self, Adam, Sgd};
use optjit::{text, Error, Executor, GradScaler, Optimizer, Param, ParamRef, Stepper};

/// Four tensors in two groups, f32 and f64 alternating; lengths that cross the vector width
/// and the reduction block (8192).
const LENS: [usize; 4] = [37, 5, 9000, 129];

struct Model {
    opt: Optimizer,
    h32: Vec<Param<f32>>,
    h64: Vec<Param<f64>>,
}

fn model(graph: &optjit::Graph, threads: usize, executor: Executor) -> Model {
    let mut opt = Optimizer::new(graph)
        .unwrap()
        .with_threads(threads)
        .with_executor(executor);
    for g in 0..2 {
        opt.add_param_group(&[("lr", 0.01 * (g + 1) as f64)])
            .unwrap();
    }
    let (mut h32, mut h64) = (Vec::new(), Vec::new());
    for (k, &len) in LENS.iter().enumerate() {
        let values: Vec<f64> = (0..len)
            .map(|i| ((i * 7 + k) % 13) as f64 * 0.25 - 1.5)
            .collect();
        let name = format!("p{k}");
        if k % 2 == 0 {
            let v: Array1<f32> = values.iter().map(|&x| x as f32).collect();
            h32.push(opt.add_param(k % 2, &name, &v).unwrap());
        } else {
            h64.push(
                opt.add_param(k % 2, &name, &Array1::from_vec(values))
                    .unwrap(),
            );
        }
    }
    Model { opt, h32, h64 }
}

impl Model {
    /// Sets the gradients of step `step`, multiplied by `scale`; `inf_in` puts an infinity
    /// into that tensor (f64 ones odd, f32 ones even).
    fn set_grads(&mut self, step: usize, scale: f64, inf_in: Option<usize>) {
        for (k, h) in self.h32.iter().enumerate() {
            let len = self.opt.param(h).unwrap().len();
            let mut g: Vec<f32> = (0..len)
                .map(|i| (((i * 5 + k + step) % 11) as f64 - 5.0) as f32 * scale as f32)
                .collect();
            if inf_in == Some(2 * k) {
                g[len / 2] = f32::INFINITY;
            }
            self.opt.set_grad(h, &g).unwrap();
        }
        for (k, h) in self.h64.iter().enumerate() {
            let len = self.opt.param(h).unwrap().len();
            let mut g: Vec<f64> = (0..len)
                .map(|i| (((i * 3 + k + step) % 7) as f64 - 3.5) * scale)
                .collect();
            if inf_in == Some(2 * k + 1) {
                g[len - 1] = f64::INFINITY;
            }
            self.opt.set_grad(h, &g).unwrap();
        }
    }

    /// Every parameter's values, as f64 bits.
    fn params(&self) -> Vec<Vec<u64>> {
        let mut out: Vec<Vec<u64>> = self
            .h32
            .iter()
            .map(|h| {
                let p = self.opt.param(h).unwrap();
                p.iter().map(|&x| f64::from(x).to_bits()).collect()
            })
            .collect();
        out.extend(self.h64.iter().map(|h| {
            let p = self.opt.param(h).unwrap();
            p.iter().map(|x| x.to_bits()).collect()
        }));
        out
    }
}

/// Runs six scaled steps driven by a `GradScaler` (scale 2^10, backoff at the overflow of
/// step 3, whose infinity is in tensor `inf_in`; growth every 2 good steps), with
/// `before_step` between setting the gradients and the scaler's step. Returns the
/// parameters, the state dict and the scale after every step.
fn scaled_run(
    mut m: Model,
    inf_in: usize,
    before_step: impl Fn(&mut GradScaler, &mut Optimizer),
) -> Vec<(Vec<Vec<u64>>, optjit::runtime::StateDict, f64, bool)> {
    let mut scaler = GradScaler::new(1024.0, 2.0, 0.5, 2).unwrap();
    if m.opt.program().hyper_index("max_norm").is_some() {
        m.opt.set_hyper_all("max_norm", 3.0).unwrap();
    }
    let mut out = Vec::new();
    for step in 0..6 {
        m.set_grads(step, scaler.scale(), (step == 2).then_some(inf_in));
        before_step(&mut scaler, &mut m.opt);
        let stepped = scaler.step(&mut m.opt).unwrap();
        scaler.update();
        out.push((m.params(), m.opt.state_dict(), scaler.scale(), stepped));
    }
    out
}

fn amp_clip_adam() -> optjit::Graph {
    let adam = Adam::default().graph().unwrap();
    optim::amp(&optim::clip_grad_norm(&adam, 2.0).unwrap()).unwrap()
}

#[test]
fn amp_clip_and_adam_fused_equal_unscale_clip_then_step_bit_for_bit() {
    for inf_in in 0..LENS.len() {
        let fused = scaled_run(model(&amp_clip_adam(), 1, Executor::Jit), inf_in, |_, _| {});
        let adam = Adam::default().graph().unwrap();
        let unfused = scaled_run(model(&adam, 1, Executor::Jit), inf_in, |scaler, opt| {
            scaler.unscale(opt).unwrap();
            opt.clip_grad_norm(3.0, 2.0, false).unwrap();
        });
        let skipped: Vec<bool> = fused.iter().map(|s| !s.3).collect();
        assert_eq!(skipped, [false, false, true, false, false, false]);
        for (step, (a, b)) in fused.iter().zip(&unfused).enumerate() {
            assert_eq!(a.0, b.0, "inf in p{inf_in}, step {}: params", step + 1);
            assert_eq!(a.1.state, b.1.state, "inf in p{inf_in}, step {}", step + 1);
            assert_eq!(
                (a.2, a.3),
                (b.2, b.3),
                "inf in p{inf_in}, step {}",
                step + 1
            );
        }
    }
}

#[test]
fn the_fused_program_gives_the_same_bits_on_every_executor_and_thread_count() {
    let graph = amp_clip_adam();
    let reference = scaled_run(model(&graph, 1, Executor::Jit), 1, |_, _| {});
    for (threads, executor) in [
        (2, Executor::Jit),
        (1, Executor::Reference),
        (2, Executor::Chunked),
    ] {
        let other = scaled_run(model(&graph, threads, executor), 1, |_, _| {});
        for (step, (a, b)) in reference.iter().zip(&other).enumerate() {
            let what = format!("{executor:?}, {threads} threads, step {}", step + 1);
            assert_eq!(a.0, b.0, "{what}");
            assert_eq!(a.1.state, b.1.state, "{what}");
        }
    }
}

#[test]
fn an_inf_in_one_tensor_skips_the_step_of_every_group_and_dtype() {
    let mut m = model(&amp_clip_adam(), 2, Executor::Jit);
    m.opt.set_hyper_all(optim::INV_SCALE, 0.5).unwrap();
    m.set_grads(0, 2.0, None);
    assert!(m.opt.step().unwrap(), "a finite step is applied");
    // A parameter added now has no state: a skipped step must not give it any.
    let fresh = m
        .opt
        .add_param(0, "fresh", &Array1::from_elem(17, 1.0f32))
        .unwrap();
    m.opt.set_grad(&fresh, &[0.25; 17]).unwrap();
    for inf_in in 0..LENS.len() {
        let before = (m.params(), m.opt.state_dict());
        m.set_grads(1, 2.0, Some(inf_in));
        assert!(!m.opt.step().unwrap(), "inf in p{inf_in}: skipped");
        assert_eq!(m.params(), before.0, "inf in p{inf_in}: no parameter moved");
        assert_eq!(
            m.opt.state_dict(),
            before.1,
            "inf in p{inf_in}: state, steps"
        );
        assert_eq!(m.opt.param(&fresh).unwrap(), &[1.0; 17]);
    }
    // NaN skips too, and a finite step afterwards is applied to all.
    m.set_grads(1, 2.0, None);
    m.opt.set_grad(&m.h64[0].clone(), &[f64::NAN; 5]).unwrap();
    assert!(!m.opt.step().unwrap(), "NaN: skipped");
    m.set_grads(1, 2.0, None);
    assert!(m.opt.step().unwrap());
    assert_ne!(m.opt.param(&fresh).unwrap(), &[1.0; 17]);
    assert_eq!(m.opt.state_dict().state.len(), LENS.len() + 1);
}

#[test]
fn the_stepper_skips_as_the_optimizer_does() {
    let stepper = Stepper::new(&amp_clip_adam()).unwrap();
    let mut params: Vec<Vec<f32>> = vec![vec![1.0; 40], vec![-2.0; 3]];
    let mut grads: Vec<Vec<f32>> = vec![vec![0.5; 40], vec![0.25; 3]];
    let mut states = [
        stepper.init_state::<f32>(40).unwrap(),
        stepper.init_state::<f32>(3).unwrap(),
    ];
    let mut step = |params: &mut Vec<Vec<f32>>, grads: &Vec<Vec<f32>>| {
        let mut refs: Vec<ParamRef<'_, f32>> = params
            .iter_mut()
            .zip(grads)
            .zip(states.iter_mut())
            .map(|((param, grad), state)| ParamRef { param, grad, state })
            .collect();
        let applied = stepper.step_many(&mut refs).unwrap();
        let steps: Vec<u64> = refs.iter().map(|r| r.state.step).collect();
        (applied, steps)
    };
    assert_eq!(step(&mut params, &grads), (true, vec![1, 1]));
    let before = params.clone();
    grads[1][2] = f32::NEG_INFINITY;
    assert_eq!(step(&mut params, &grads), (false, vec![1, 1]), "skipped");
    assert_eq!(params, before);
    grads[1][2] = 0.25;
    assert_eq!(step(&mut params, &grads), (true, vec![2, 2]));
}

#[test]
fn skip_if_round_trips_through_the_text_form() {
    let source = "optimizer s(lr = 0.1, limit = 10.0) {\n\
                  param = param - lr * grad\n\
                  skip if global_maxabs(grad) > limit\n\
                  }";
    let graph = text::parse(source).unwrap();
    assert!(graph.skip().is_some());
    let printed = text::print(&graph);
    assert_eq!(text::parse(&printed).unwrap(), graph, "{printed}");
    // Every built-in with amp (and clipping) prints as text that parses back into a graph
    // that prints the same (a transformed graph's new hyperparameter nodes come first in its
    // arena, so the parsed graph is the same up to the order of its leaves).
    for name in optim::NAMES {
        let graph = optim::by_name(name).unwrap();
        for g in [
            optim::amp(&graph).unwrap(),
            optim::amp(&optim::clip_grad_norm(&graph, 2.0).unwrap()).unwrap(),
        ] {
            let printed = text::print(&g);
            let parsed = text::parse(&printed).unwrap();
            assert!(parsed.skip().is_some(), "{name}");
            assert_eq!(text::print(&parsed), printed, "{name}");
        }
    }
    // The condition's value when the step runs: a state assigned after it still reads as
    // the condition's own value.
    let source = "optimizer s(lr = 0.1) {\n\
                  scalar state n = 0.0\n\
                  skip if n > 2.0\n\
                  n = n + 1.0\n\
                  param = param - lr * grad\n\
                  }";
    let graph = text::parse(source).unwrap();
    assert_eq!(text::parse(&text::print(&graph)).unwrap(), graph);
}

#[test]
fn a_skip_condition_counts_steps_of_a_scalar_state() {
    // Skipped once the scalar state says so: the state itself stops too (the whole step).
    let source = "optimizer s(lr = 1.0) {\n\
                  scalar state n = 0.0\n\
                  skip if n >= 2.0\n\
                  n = n + 1.0\n\
                  param = param - lr * grad\n\
                  }";
    let mut opt = Optimizer::new(&text::parse(source).unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![0.0f64]).unwrap();
    let applied: Vec<bool> = (0..4)
        .map(|_| {
            opt.set_grad(&w, &[1.0]).unwrap();
            opt.step().unwrap()
        })
        .collect();
    assert_eq!(applied, [true, true, false, false]);
    assert_eq!(opt.param(&w).unwrap(), &[-2.0]);
}

#[test]
fn misplaced_skip_conditions_are_errors() {
    let error = text::parse("optimizer s() { param = param - grad\n skip if grad }").unwrap_err();
    assert!(error.to_string().contains("skip if"), "{error}");
    let error = text::parse("optimizer s() { param = param - grad\n skip if 1.0\n skip if 0.0 }")
        .unwrap_err();
    assert!(error.to_string().contains("one skip condition"), "{error}");
    let sgd = Sgd::default().graph().unwrap();
    let with_amp = optim::amp(&sgd).unwrap();
    assert!(matches!(
        optim::amp(&with_amp),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        optim::clip_grad_norm(&with_amp, 2.0),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn the_scaler_reports_a_step_the_optimizers_own_skip_condition_skipped() {
    // Not amp's program: the scaler unscales in place, and the optimizer's own condition
    // (a gradient above a limit) skips; the scaler must say so.
    let source = "optimizer s(lr = 1, limit = 1) {
        param = param - lr * grad
        skip if global_maxabs(grad) > limit
    }";
    let mut opt = Optimizer::new(&text::parse(source).unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![0.0f32]).unwrap();
    let mut scaler = GradScaler::new(4.0, 2.0, 0.5, 100).unwrap();
    opt.set_grad(&w, &[4.0 * 3.0]).unwrap(); // unscaled: 3 > limit
    assert!(
        !scaler.step(&mut opt).unwrap(),
        "skipped by the optimizer's condition"
    );
    assert_eq!(opt.param(&w).unwrap(), &[0.0]);
}

#[test]
fn an_overflow_found_by_unscale_skips_a_fused_step_even_if_the_gradients_are_fixed() {
    // PyTorch hands the recorded found_inf to its fused optimizers: the step is skipped and
    // the scale backs off, whatever the gradients became after `unscale_`.
    let mut m = model(&amp_clip_adam(), 1, Executor::Jit);
    let before = m.params();
    let mut scaler = GradScaler::new(1024.0, 2.0, 0.5, 100).unwrap();
    m.set_grads(0, 1024.0, Some(0));
    scaler.unscale(&mut m.opt).unwrap();
    m.set_grads(0, 1.0, None); // "fixed" after the check
    assert!(!scaler.step(&mut m.opt).unwrap());
    assert_eq!(m.params(), before);
    scaler.update();
    assert_eq!(scaler.scale(), 512.0, "backed off");
}

//! Group state (`SlotKind::Group`, `group state` in the text form): one value per parameter
//! group, advanced once per applied step whether or not the group's parameters have
//! gradients, read by every parameter of the group, and kept in the state dict's param
//! groups. Schedule-free AdamW's `k`, `lr_max` and `weight_sum` are group state, as in the
//! reference.

use ndarray::Array1;
use optjit::optim::{self, ScheduleFreeAdamW};
use optjit::runtime::StateDict;
use optjit::{text, Builder, Error, Optimizer};

/// A group state counting steps, and a parameter moved by `lr · (count so far)`.
const COUNTER: &str = "optimizer counted(lr = 1) {
    group state n = 0
    n = n + 1
    param = param - lr * n
}";

#[test]
fn a_group_state_advances_once_per_step_for_the_whole_group() {
    let mut opt = Optimizer::new(&text::parse(COUNTER).unwrap()).unwrap();
    let (g0, g1) = (
        opt.add_param_group(&[]).unwrap(),
        opt.add_param_group(&[]).unwrap(),
    );
    let a = opt.add_param(g0, "a", &ndarray::array![0.0f32]).unwrap();
    let b = opt.add_param(g0, "b", &ndarray::array![0.0f64]).unwrap();
    let c = opt.add_param(g1, "c", &ndarray::array![0.0f32]).unwrap();
    // Step 1: every parameter. Step 2: only `a`. Step 3: nobody. Step 4: `b` and `c`.
    let grads: [(bool, bool, bool); 4] = [
        (true, true, true),
        (true, false, false),
        (false, false, false),
        (false, true, true),
    ];
    for (ga, gb, gc) in grads {
        opt.zero_grad();
        if ga {
            opt.set_grad(&a, &[1.0]).unwrap();
        }
        if gb {
            opt.set_grad(&b, &[1.0]).unwrap();
        }
        if gc {
            opt.set_grad(&c, &[1.0]).unwrap();
        }
        assert!(opt.step().unwrap());
    }
    let dict = opt.state_dict();
    // Four steps, whoever had a gradient: n = 4 in both groups.
    for group in &dict.param_groups {
        assert_eq!(group.state["n"], 4.0, "{group:?}");
    }
    // Each parameter read the group's count at the steps it took part in.
    assert_eq!(opt.param(&a).unwrap(), &[-(1.0 + 2.0)]);
    assert_eq!(opt.param(&b).unwrap(), &[-(1.0 + 4.0)]);
    assert_eq!(opt.param(&c).unwrap(), &[-(1.0 + 4.0)]);
    // Group state is in the param groups, not in the parameters' state.
    assert!(dict.state.values().all(|s| s.scalars.is_empty()));
}

#[test]
fn a_skipped_step_does_not_advance_group_state() {
    let source = COUNTER.replace("n = n + 1", "n = n + 1\n    skip if global_nonfinite(grad)");
    let mut opt = Optimizer::new(&text::parse(&source).unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &ndarray::array![0.0f32]).unwrap();
    for grad in [1.0, f32::NAN, 1.0] {
        opt.set_grad(&w, &[grad]).unwrap();
        opt.step().unwrap();
    }
    assert_eq!(opt.state_dict().param_groups[0].state["n"], 2.0);
    assert_eq!(opt.param(&w).unwrap(), &[-3.0]);
}

#[test]
fn a_group_state_may_not_read_what_differs_between_parameters() {
    for (new_value, reads) in [
        ("n + step", "the step count"),
        ("n + own", "a parameter's scalar state"),
        ("n + sumsq(grad)", "a per-parameter reduction"),
    ] {
        let source = format!(
            "optimizer o(lr = 1) {{
                group state n = 0
                scalar state own = 0
                own = own
                n = {new_value}
                param = param - lr * grad
            }}"
        );
        let error = text::parse(&source).map(|g| optjit::passes::compile(&g));
        let message = match error {
            Err(e) | Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => panic!("{reads}: accepted"),
        };
        assert!(
            message.contains("same for every parameter of a group"),
            "{reads}: {message}"
        );
    }
    // The builder reports it too; hyperparameters and global reductions are fine.
    let b = Builder::new("o");
    let n = b.group_state("n", 0.0);
    b.set_state("n", n + b.step()).unwrap();
    b.set_param(b.param() - b.grad());
    assert!(matches!(b.finish(), Err(Error::PerParameterValue { .. })));
    let b = Builder::new("o");
    let lr = b.hyper("lr", 0.5);
    let n = b.group_state("n", 0.0);
    let norm = b.grad().sum_squares(optjit::ir::Scope::Global);
    b.set_state("n", n + lr * norm).unwrap();
    b.set_param(b.param() - b.grad());
    assert!(b.finish().is_ok());
}

#[test]
fn group_state_prints_and_parses_back() {
    let graph = text::parse(COUNTER).unwrap();
    let printed = text::print(&graph);
    assert!(printed.contains("group state n = 0.0"), "{printed}");
    assert_eq!(text::parse(&printed).unwrap(), graph);
}

/// Schedule-free AdamW over three tensors in one group, where tensor `j` has no gradient at
/// steps `s` with `(j + s) % 3 == 0`; `resume_at` saves the state dict after that many steps
/// and continues in a fresh optimizer loaded from it. Returns the parameters' bits and the
/// final state dict.
fn schedule_free_run(resume_at: Option<usize>) -> (Vec<Vec<u32>>, StateDict) {
    let graph = ScheduleFreeAdamW {
        lr: 0.05,
        warmup_steps: 2.0,
        ..ScheduleFreeAdamW::default()
    }
    .graph()
    .unwrap();
    let fresh = || {
        let mut opt = Optimizer::new(&graph).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let handles: Vec<_> = [7usize, 3, 20]
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                let v: Array1<f32> = (0..len).map(|i| (i + k) as f32 * 0.1 - 0.5).collect();
                opt.add_param(g, &format!("p{k}"), &v).unwrap()
            })
            .collect::<Vec<_>>();
        (opt, handles)
    };
    let (mut opt, mut handles) = fresh();
    for s in 0..6 {
        if Some(s) == resume_at {
            let bytes = opt.state_dict().to_bytes().unwrap();
            let (mut resumed, new_handles) = fresh();
            // The same values as the saved run: parameters are the optimizer's own.
            for (h, new) in handles.iter().zip(&new_handles) {
                let values = opt.param(h).unwrap().to_vec();
                resumed.param_mut(new).unwrap().copy_from_slice(&values);
            }
            let dict = StateDict::from_bytes(&bytes).unwrap();
            resumed.load_state_dict(&dict, true).unwrap();
            (opt, handles) = (resumed, new_handles);
        }
        opt.zero_grad();
        for (j, h) in handles.iter().enumerate() {
            if (j + s) % 3 != 0 {
                let len = opt.param(h).unwrap().len();
                let g: Vec<f32> = (0..len).map(|i| ((i * 3 + s) % 5) as f32 - 2.0).collect();
                opt.set_grad(h, &g).unwrap();
            }
        }
        opt.step().unwrap();
    }
    let bits = handles
        .iter()
        .map(|h| opt.param(h).unwrap().iter().map(|x| x.to_bits()).collect())
        .collect();
    (bits, opt.state_dict())
}

#[test]
fn schedule_free_keeps_its_group_scalars_per_group_and_resumes_exactly() {
    let (params, dict) = schedule_free_run(None);
    let group = &dict.param_groups[0].state;
    assert_eq!(group["k"], 6.0, "one count per step()");
    // weight_sum = Σ_t t⁰ · lr_maxₜ² with lr_max the warmed-up lr so far: 0.025², then 0.05².
    let expected = 0.025f64.powi(2) + 5.0 * 0.05f64.powi(2);
    assert!((group["weight_sum"] - expected).abs() < 1e-15, "{group:?}");
    assert_eq!(group["lr_max"], 0.05);
    for resume_at in [1, 3, 5] {
        let (resumed, resumed_dict) = schedule_free_run(Some(resume_at));
        assert_eq!(resumed, params, "resumed after step {resume_at}");
        assert_eq!(resumed_dict, dict, "resumed after step {resume_at}");
    }
}

#[test]
fn a_state_dict_without_the_group_state_loads_only_if_not_strict() {
    let graph = optim::ScheduleFreeAdamW::default().graph().unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt
        .add_param(g, "w", &ndarray::array![1.0f32, 2.0])
        .unwrap();
    opt.set_grad(&w, &[0.5, 0.5]).unwrap();
    opt.step().unwrap();
    let mut dict = opt.state_dict();
    dict.param_groups[0].state.remove("weight_sum");
    let before = opt.state_dict();
    assert!(opt.load_state_dict(&dict, true).is_err());
    assert_eq!(
        opt.state_dict(),
        before,
        "a failed strict load changes nothing"
    );
    let report = opt.load_state_dict(&dict, false).unwrap();
    assert_eq!(report.missing, ["group state `weight_sum` of group 0"]);
    assert_eq!(opt.state_dict(), before, "the missing value kept");
}

#[test]
fn skip_group_and_if_stay_usable_as_names() {
    // `skip if` and `group state` are keywords only in their place: hyperparameters, states
    // and `let`s of these names parse, print and parse back.
    let source = "optimizer o(skip = 1, group = 2, if = 3) {
        state m = 0
        let x = skip * group + if
        m = m + x * grad
        param = param - m
    }";
    let graph = text::parse(source).unwrap();
    assert_eq!(text::parse(&text::print(&graph)).unwrap(), graph);
}

#[test]
fn a_global_reduction_over_no_gradient_is_its_identity_in_group_state() {
    // No parameter has a gradient: the sum over nothing is -0 (as the Stepper's and the
    // reference's), so 1 / sum is -inf, not +inf.
    let source = "optimizer o(lr = 1) {
        group state x = 0
        x = 1 / global_sum(grad)
        param = param - lr * grad
    }";
    let mut opt = Optimizer::new(&text::parse(source).unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    opt.add_param(g, "w", &ndarray::array![1.0f32]).unwrap();
    assert!(opt.step().unwrap());
    assert_eq!(
        opt.state_dict().param_groups[0].state["x"],
        f64::NEG_INFINITY
    );
}

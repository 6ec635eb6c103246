//! state_dict / load_state_dict: a resumed run is bit-identical to an uninterrupted one;
//! malformed or mismatched dicts are typed errors that leave the optimizer as it was.

use ndarray::{array, Array1};
use optjit::optim::{Adam, AdamW, Sgd};
use optjit::runtime::{Param, StateDict, TensorData};
use optjit::{Error, Optimizer};

/// Two groups, f32 and f64 parameters; returns the optimizer and its handles.
fn model(values32: &[Vec<f32>], values64: &[f64]) -> (Optimizer, Vec<Param<f32>>, Param<f64>) {
    let graph = Adam {
        amsgrad: true,
        weight_decay: 1e-3,
        ..Adam::default()
    }
    .graph()
    .unwrap();
    let mut opt = Optimizer::new(&graph).unwrap();
    let g0 = opt.add_param_group(&[("lr", 0.01)]).unwrap();
    let g1 = opt.add_param_group(&[("lr", 0.003), ("b1", 0.8)]).unwrap();
    let a = opt
        .add_param(g0, "a", &Array1::from(values32[0].clone()))
        .unwrap();
    let c = opt
        .add_param(g1, "c", &Array1::from(values64.to_vec()))
        .unwrap();
    let b = opt
        .add_param(
            g1,
            "b",
            &Array1::from(values32[1].clone())
                .into_shape_with_order((2, 3))
                .unwrap(),
        )
        .unwrap();
    (opt, vec![a, b], c)
}

fn grads(step: usize) -> (Vec<Vec<f32>>, Vec<f64>) {
    let f = |i: usize| ((i * 7 + step * 3) % 11) as f64 * 0.1 - 0.45;
    (
        vec![
            (0..4).map(|i| f(i) as f32).collect(),
            (0..6).map(|i| f(i + 4) as f32).collect(),
        ],
        (0..3).map(|i| f(i + 10)).collect(),
    )
}

fn run_steps(
    opt: &mut Optimizer,
    h32: &[Param<f32>],
    h64: &Param<f64>,
    steps: std::ops::Range<usize>,
) {
    for step in steps {
        let (g32, g64) = grads(step);
        opt.zero_grad();
        for (k, (h, g)) in h32.iter().zip(&g32).enumerate() {
            // Parameter b has no gradient at step 2: skipped.
            if !(step == 2 && k == 1) {
                opt.set_grad(h, g).unwrap();
            }
        }
        opt.set_grad(h64, &g64).unwrap();
        if step == 4 {
            opt.set_hyper(1, "lr", 0.005).unwrap();
        }
        opt.step().unwrap();
    }
}

fn snapshot(
    opt: &Optimizer,
    h32: &[Param<f32>],
    h64: &Param<f64>,
) -> (Vec<Vec<u32>>, Vec<u64>, StateDict) {
    (
        h32.iter()
            .map(|h| opt.param(h).unwrap().iter().map(|x| x.to_bits()).collect())
            .collect(),
        opt.param(h64)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        opt.state_dict(),
    )
}

const INIT32: [[f32; 6]; 2] = [
    [0.5, -1.0, 2.0, 0.0, 0.0, 0.0],
    [1.0, 2.0, 3.0, -4.0, 0.25, -0.125],
];
const INIT64: [f64; 3] = [0.1, -0.2, 0.3];

fn init32() -> Vec<Vec<f32>> {
    vec![INIT32[0][..4].to_vec(), INIT32[1].to_vec()]
}

#[test]
fn a_resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let (mut straight, s32, s64) = model(&init32(), &INIT64);
    run_steps(&mut straight, &s32, &s64, 0..7);

    let (mut first, f32h, f64h) = model(&init32(), &INIT64);
    run_steps(&mut first, &f32h, &f64h, 0..4);
    let path =
        std::env::temp_dir().join(format!("optjit-resume-{}.safetensors", std::process::id()));
    first.state_dict().save(&path).unwrap();
    // The model's weights travel separately, as in PyTorch.
    let weights32: Vec<Vec<f32>> = f32h
        .iter()
        .map(|h| first.param(h).unwrap().to_vec())
        .collect();
    let weights64 = first.param(&f64h).unwrap().to_vec();
    drop(first);

    let (mut resumed, r32, r64) = model(&weights32, &weights64);
    let report = resumed
        .load_state_dict(&StateDict::load(&path).unwrap(), true)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(report.is_clean());
    assert_eq!(resumed.hyper(1, "b1").unwrap(), 0.8);
    run_steps(&mut resumed, &r32, &r64, 4..7);

    assert_eq!(
        snapshot(&resumed, &r32, &r64),
        snapshot(&straight, &s32, &s64)
    );
    assert_eq!(
        resumed.param_step(&r32[1]).unwrap(),
        6,
        "b skipped one step"
    );
}

#[test]
fn state_dict_has_pytorch_content_and_round_trips_through_bytes() {
    let (mut opt, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut opt, &h32, &h64, 0..2);
    let dict = opt.state_dict();
    // PyTorch numbering: group 0's params, then group 1's in group order (c, b).
    assert_eq!(dict.param_groups[0].params, vec![0]);
    assert_eq!(dict.param_groups[1].params, vec![1, 2]);
    assert_eq!(dict.param_groups[1].param_names, vec!["c", "b"]);
    assert_eq!(dict.param_groups[1].hypers["lr"], 0.003);
    assert_eq!(dict.state[&2].step, 2);
    let (shape, data) = &dict.state[&2].tensors["max_exp_avg_sq"];
    assert_eq!(shape, &vec![2, 3]);
    assert!(matches!(data, TensorData::F32(v) if v.len() == 6));
    assert!(matches!(
        &dict.state[&1].tensors["exp_avg"].1,
        TensorData::F64(_)
    ));
    let bytes = dict.to_bytes().unwrap();
    assert_eq!(StateDict::from_bytes(&bytes).unwrap(), dict);
}

/// Asserts that a failed load left `opt` exactly as it was.
fn assert_unchanged(opt: &mut Optimizer, bad: &StateDict, h32: &[Param<f32>]) -> Error {
    let before = (opt.state_dict(), opt.param(&h32[0]).unwrap().to_vec());
    let err = opt.load_state_dict(bad, true).unwrap_err();
    assert_eq!(
        (opt.state_dict(), opt.param(&h32[0]).unwrap().to_vec()),
        before
    );
    err
}

#[test]
fn mismatched_dicts_are_rejected_atomically_when_strict_and_reported_otherwise() {
    let (mut source, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut source, &h32, &h64, 0..3);
    let good = source.state_dict();
    let (mut opt, o32, o64) = model(&init32(), &INIT64);
    run_steps(&mut opt, &o32, &o64, 0..1);

    // A parameter of the dict the optimizer does not have, with its state.
    let mut unexpected = good.clone();
    unexpected.param_groups[1].param_names[1] = "renamed".into();
    let err = assert_unchanged(&mut opt, &unexpected, &o32);
    assert!(
        matches!(&err, Error::InvalidStateDict { reason } if reason.contains("unexpected parameter `renamed`") && reason.contains("missing parameter `b`")),
        "{err}"
    );

    // A state tensor of the wrong length; a slot the optimizer does not have; a hyper missing.
    let mut short = good.clone();
    short
        .state
        .get_mut(&0)
        .unwrap()
        .tensors
        .get_mut("exp_avg")
        .unwrap()
        .1 = TensorData::F32(vec![0.0; 3]);
    let err = assert_unchanged(&mut opt, &short, &o32);
    assert!(
        err.to_string()
            .contains("`exp_avg` has 3 values, the parameter 4"),
        "{err}"
    );
    let mut extra = good.clone();
    let t = extra.state[&0].tensors["exp_avg"].clone();
    extra
        .state
        .get_mut(&0)
        .unwrap()
        .tensors
        .insert("momentum_buffer".into(), t);
    assert!(assert_unchanged(&mut opt, &extra, &o32)
        .to_string()
        .contains("unknown slot `momentum_buffer`"));
    let mut no_hyper = good.clone();
    no_hyper.param_groups[0].hypers.remove("eps");
    assert!(assert_unchanged(&mut opt, &no_hyper, &o32)
        .to_string()
        .contains("missing hyperparameter `eps` of group 0"));

    // Non-strict: what fits is loaded, the rest reported.
    let report = opt.load_state_dict(&short, false).unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(opt.param_step(&o32[1]).unwrap(), 2, "b's state was loaded");
    assert_eq!(
        opt.param_step(&o32[0]).unwrap(),
        0,
        "a's mismatched state was not"
    );
    assert_eq!(opt.param_step(&o64).unwrap(), 3);
}

#[test]
fn malformed_bytes_are_typed_errors() {
    let (mut opt, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut opt, &h32, &h64, 0..1);
    let bytes = opt.state_dict().to_bytes().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"not a safetensors file at all".to_vec()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("huge header length", u64::MAX.to_le_bytes().to_vec()),
    ];
    for (what, bad) in cases {
        assert!(
            matches!(
                StateDict::from_bytes(&bad),
                Err(Error::InvalidStateDict { .. })
            ),
            "{what}"
        );
    }
    // A valid safetensors file that is not an optjit state dict.
    let plain = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .unwrap();
    let err = StateDict::from_bytes(&plain).unwrap_err();
    assert!(
        err.to_string().contains("not an optjit state dict"),
        "{err}"
    );
    // Metadata that is not the expected JSON.
    let meta =
        std::collections::HashMap::from([("optjit".to_string(), "{\"state\": 3}".to_string())]);
    let wrong = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        Some(meta),
    )
    .unwrap();
    assert!(matches!(
        StateDict::from_bytes(&wrong),
        Err(Error::InvalidStateDict { .. })
    ));
    assert!(matches!(
        StateDict::load("/nonexistent/optjit.safetensors"),
        Err(Error::Io { .. })
    ));
}

#[test]
fn names_absent_means_matching_by_position() {
    let (mut source, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut source, &h32, &h64, 0..2);
    let mut dict = source.state_dict();
    for g in &mut dict.param_groups {
        g.param_names.clear();
    }
    let (mut opt, o32, _) = model(&init32(), &INIT64);
    opt.load_state_dict(&dict, true).unwrap();
    assert_eq!(
        opt.state_buffer(&o32[1], "exp_avg").unwrap(),
        source.state_buffer(&h32[1], "exp_avg").unwrap()
    );
}

#[test]
fn state_is_cast_to_the_parameter_dtype() {
    let graph = AdamW::default().graph().unwrap();
    let mut wide = Optimizer::new(&graph).unwrap();
    let g = wide.add_param_group(&[]).unwrap();
    let w = wide.add_param(g, "w", &array![1.0f64, 2.0]).unwrap();
    wide.set_grad(&w, &[0.1, 1.0 / 3.0]).unwrap();
    wide.step().unwrap();
    let mut narrow = Optimizer::new(&graph).unwrap();
    let g = narrow.add_param_group(&[]).unwrap();
    let n = narrow.add_param(g, "w", &array![1.0f32, 2.0]).unwrap();
    narrow.load_state_dict(&wide.state_dict(), true).unwrap();
    let expected: Vec<f32> = wide
        .state_buffer(&w, "exp_avg")
        .unwrap()
        .unwrap()
        .iter()
        .map(|&x| x as f32)
        .collect();
    assert_eq!(
        narrow.state_buffer(&n, "exp_avg").unwrap().unwrap(),
        expected.as_slice()
    );
    assert_eq!(narrow.param_step(&n).unwrap(), 1);
}

#[test]
fn a_dict_for_another_optimizer_is_rejected() {
    let (mut adam, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut adam, &h32, &h64, 0..1);
    let mut sgd = Optimizer::new(
        &Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }
        .graph()
        .unwrap(),
    )
    .unwrap();
    let g = sgd.add_param_group(&[]).unwrap();
    sgd.add_param(g, "a", &array![0.5f32, -1.0, 2.0, 0.0])
        .unwrap();
    let err = sgd.load_state_dict(&adam.state_dict(), true).unwrap_err();
    assert!(matches!(err, Error::InvalidStateDict { .. }));
    assert_eq!(sgd.state_dict().state.len(), 0);
}

/// Regression: a non-finite hyperparameter or scalar state was saved as JSON `null` and the
/// checkpoint could not be loaded. Every value `set_hyper` accepts round-trips bit for bit.
#[test]
fn non_finite_hyperparameters_and_scalar_state_round_trip_bit_for_bit() {
    let odd_nan = f64::from_bits(0xfff0_0000_0000_0001); // negative, signalling, payload 1
    let values = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        odd_nan,
        -0.0,
        5e-324,
        f64::MAX,
    ];
    let nadam = optjit::optim::by_name("nadam").unwrap();
    for (k, &value) in values.iter().enumerate() {
        let mut opt = Optimizer::new(&nadam).unwrap();
        let g = opt.add_param_group(&[]).unwrap();
        let w = opt.add_param(g, "w", &array![1.0f64, -2.0]).unwrap();
        opt.set_grad(&w, &[0.5, 0.25]).unwrap();
        // NAdam's scalar state (mu_product) becomes the non-finite value through momentum_decay.
        opt.set_hyper(g, "momentum_decay", value).unwrap();
        opt.step().unwrap();
        opt.set_hyper(g, "weight_decay", value).unwrap();
        opt.set_hyper(g, "lr", values[(k + 1) % values.len()])
            .unwrap();
        let dict = opt.state_dict();
        let bytes = dict.to_bytes().unwrap();
        let back = StateDict::from_bytes(&bytes).unwrap();
        let bits = |d: &StateDict| {
            let hypers = d.param_groups[0].hypers.values().map(|v| v.to_bits());
            let scalars = d
                .state
                .values()
                .flat_map(|e| e.scalars.values().map(|v| v.to_bits()));
            hypers.chain(scalars).collect::<Vec<u64>>()
        };
        assert_eq!(bits(&back), bits(&dict), "value {value:?}");
        let mut fresh = Optimizer::new(&nadam).unwrap();
        let g = fresh.add_param_group(&[]).unwrap();
        fresh.add_param(g, "w", &array![0.0f64, 0.0]).unwrap();
        let report = fresh.load_state_dict(&back, true).unwrap();
        assert!(report.is_clean());
        assert_eq!(
            fresh.hyper(g, "weight_decay").unwrap().to_bits(),
            value.to_bits(),
            "value {value:?}"
        );
        assert_eq!(bits(&fresh.state_dict()), bits(&dict));
    }
}

/// Strings other than the non-finite forms are refused with a typed error naming the value.
#[test]
fn malformed_numbers_in_checkpoint_metadata_are_typed_errors() {
    let mut opt = Optimizer::new(&optjit::optim::by_name("adam").unwrap()).unwrap();
    let g = opt.add_param_group(&[]).unwrap();
    let w = opt.add_param(g, "w", &array![1.0f64]).unwrap();
    opt.set_grad(&w, &[0.5]).unwrap();
    opt.step().unwrap();
    opt.set_hyper(g, "eps", f64::INFINITY).unwrap();
    let bytes = opt.state_dict().to_bytes().unwrap();
    // The metadata is JSON inside the header's JSON, its quotes escaped; each replacement
    // keeps the header's length.
    let inf: &[u8] = br#"\"inf\""#;
    let at: Vec<usize> = (0..bytes.len() - inf.len())
        .filter(|&i| &bytes[i..i + inf.len()] == inf)
        .collect();
    assert_eq!(at.len(), 1, "one infinite hyperparameter");
    let with = |text: &[u8]| {
        let mut b = bytes.clone();
        b[at[0]..at[0] + inf.len()].copy_from_slice(text);
        StateDict::from_bytes(&b)
    };
    for bad in [&br#"\"Inf\""#[..], br#"\"abc\""#, b"null   "] {
        match with(bad) {
            Err(Error::InvalidStateDict { reason }) => assert!(reason.contains("eps"), "{reason}"),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
        }
    }
    let nan = with(br#"\"nan\""#).unwrap();
    assert!(nan.param_groups[0].hypers["eps"].is_nan());
}

/// Regression: a state tensor was matched by element count only, so shape [1, 6] loaded into a
/// [2, 3] parameter.
#[test]
fn a_state_tensor_of_another_shape_is_a_mismatch() {
    let (mut source, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut source, &h32, &h64, 0..2);
    let mut reshaped = source.state_dict();
    // Parameter b (index 2: groups in order, parameters in group order) has shape [2, 3].
    let b = reshaped.state.get_mut(&2).unwrap();
    assert_eq!(b.tensors["exp_avg"].0, vec![2, 3]);
    b.tensors.get_mut("exp_avg").unwrap().0 = vec![1, 6];
    let (mut opt, o32, o64) = model(&init32(), &INIT64);
    run_steps(&mut opt, &o32, &o64, 0..1);
    let err = assert_unchanged(&mut opt, &reshaped, &o32);
    assert!(
        matches!(&err, Error::InvalidStateDict { reason } if reason.contains("shape [1, 6]")),
        "{err}"
    );
    let report = opt.load_state_dict(&reshaped, false).unwrap();
    assert!(
        report.mismatched.iter().any(|m| m.contains("`b`")),
        "{report:?}"
    );
}

/// Regression: state keys `"00"` and `"+0"` both parsed as parameter 0, and a key twice kept
/// the last; each is now an error.
#[test]
fn non_canonical_or_duplicate_state_keys_are_rejected() {
    let (mut source, h32, h64) = model(&init32(), &INIT64);
    run_steps(&mut source, &h32, &h64, 0..1);
    let bytes = source.state_dict().to_bytes().unwrap();
    // The same tensors with the metadata JSON rewritten.
    let rewrite = |edit: &dyn Fn(&str) -> String| {
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let json = header.metadata().as_ref().unwrap()["optjit"].clone();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors.tensors();
        let meta = std::collections::HashMap::from([("optjit".to_string(), edit(&json))]);
        safetensors::serialize(views, Some(meta)).unwrap()
    };
    let same = StateDict::from_bytes(&rewrite(&|j| j.to_string())).unwrap();
    assert_eq!(
        same,
        source.state_dict(),
        "the rewrite itself changes nothing"
    );
    let first = r#""0":{"#;
    for (what, edit) in [
        ("leading zero", r#""00":{"#.to_string()),
        ("sign", r#""+0":{"#.to_string()),
    ] {
        let bad = rewrite(&|j: &str| j.replacen(first, &edit, 1));
        match StateDict::from_bytes(&bad) {
            Err(Error::InvalidStateDict { reason }) => {
                assert!(reason.contains("state key"), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // Parameter 0's entry twice: the second copy under the same key.
    let twice = rewrite(&|j: &str| {
        let start = j.find(first).unwrap();
        // The entry's closing brace: where the nesting depth returns to zero.
        let mut depth = 0;
        let end = start
            + j[start..]
                .char_indices()
                .find_map(|(i, c)| {
                    depth += i32::from(c == '{') - i32::from(c == '}');
                    (c == '}' && depth == 0).then_some(i + 1)
                })
                .unwrap();
        let entry = &j[start..end];
        j.replacen(entry, &format!("{entry},{entry}"), 1)
    });
    match StateDict::from_bytes(&twice) {
        Err(Error::InvalidStateDict { reason }) => assert!(reason.contains("twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Regression: a strict load matched parameters by name but applied hyperparameters by group
/// position, so a dict with the parameters in other groups loaded "cleanly" and each kept the
/// wrong group's learning rate; group sizes (2, 0) against (1, 1) were accepted too.
#[test]
fn a_strict_load_rejects_parameters_in_other_groups() {
    let mut opt = Optimizer::new(&Sgd::default().graph().unwrap()).unwrap();
    let g0 = opt.add_param_group(&[("lr", 0.1)]).unwrap();
    let g1 = opt.add_param_group(&[("lr", 0.5)]).unwrap();
    let a = opt.add_param(g0, "a", &array![1.0f64]).unwrap();
    let b = opt.add_param(g1, "b", &array![2.0f64]).unwrap();
    opt.set_grad(&a, &[1.0]).unwrap();
    opt.set_grad(&b, &[1.0]).unwrap();
    opt.step().unwrap();
    let good = opt.state_dict();
    assert!(opt.load_state_dict(&good, true).unwrap().is_clean());

    let mut swapped = good.clone();
    swapped.param_groups[0].param_names = vec!["b".into()];
    swapped.param_groups[1].param_names = vec!["a".into()];
    let mut sizes = good.clone();
    sizes.param_groups[0].param_names = vec!["a".into(), "b".into()];
    sizes.param_groups[0].params = vec![0, 1];
    sizes.param_groups[1].param_names.clear();
    sizes.param_groups[1].params.clear();
    for (what, bad) in [("swapped", &swapped), ("sizes (2, 0)", &sizes)] {
        let before = opt.state_dict();
        match opt.load_state_dict(bad, true) {
            Err(Error::InvalidStateDict { reason }) => {
                assert!(reason.contains("group"), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(opt.state_dict(), before, "{what}: nothing changed");
        let report = opt.load_state_dict(bad, false).unwrap();
        assert!(!report.mismatched.is_empty(), "{what}: {report:?}");
        opt.load_state_dict(&good, true).unwrap();
    }
    assert_eq!(
        (opt.hyper(g0, "lr").unwrap(), opt.hyper(g1, "lr").unwrap()),
        (0.1, 0.5)
    );
}

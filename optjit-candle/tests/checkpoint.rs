//! State dicts: a checkpoint through a safetensors file resumes bit for bit; malformed ones
//! are refused whole.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use common::{grad_store, values, Rng};
use optjit_candle::{Config, Error, OptjitOptimizer, ParamGroup};
use std::collections::HashMap;

const NAMES: [&str; 3] = ["fc1.weight", "fc1.bias", "norm.weight"];

/// A varmap with three vars of mixed dtypes and an AdamW over it with two groups.
fn setup(lr: f64) -> (VarMap, OptjitOptimizer) {
    let varmap = VarMap::new();
    let dtypes = [DType::F32, DType::F64, DType::BF16];
    for (k, (name, dtype)) in NAMES.iter().zip(dtypes).enumerate() {
        let init = Init::Const(0.5 + k as f64);
        varmap.get((2, 3), name, init, dtype, &Device::Cpu).unwrap();
    }
    let config = Config::adamw(&candle_nn::ParamsAdamW {
        lr,
        ..Default::default()
    })
    .unwrap()
    .group(ParamGroup::matching(&["*.bias", "norm.*"]).hyper("weight_decay", 0.0));
    let opt = OptjitOptimizer::from_varmap(&varmap, config).unwrap();
    (varmap, opt)
}

fn steps(varmap: &VarMap, opt: &mut OptjitOptimizer, rng: &mut Rng, n: usize) {
    let vars: Vec<_> = NAMES
        .iter()
        .map(|n| varmap.data().lock().unwrap()[*n].clone())
        .collect();
    let refs: Vec<_> = vars.iter().collect();
    for _ in 0..n {
        let grads: Vec<Vec<f64>> = vars.iter().map(|_| rng.awkward(6)).collect();
        opt.try_step(&grad_store(&refs, &grads)).unwrap();
    }
}

fn weights(varmap: &VarMap) -> Vec<Vec<u64>> {
    let data = varmap.data().lock().unwrap();
    NAMES
        .iter()
        .map(|n| values(&data[*n]).iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_checkpoint_resumes_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("optjit-candle-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (weights_file, opt_file) = (
        dir.join("model.safetensors"),
        dir.join("optimizer.safetensors"),
    );

    // Uninterrupted: 5 steps, a learning-rate change, 5 more.
    let (varmap, mut opt) = setup(1e-2);
    let mut rng = Rng(3);
    steps(&varmap, &mut opt, &mut rng, 5);
    varmap.save(&weights_file).unwrap();
    opt.save(&opt_file).unwrap();
    let after_five = rng.0;
    optjit::schedule::Hypers::set_hyper(&mut opt, 1, "lr", 3e-3).unwrap();
    opt.save(&opt_file).unwrap();
    steps(&varmap, &mut opt, &mut rng, 5);
    let want = weights(&varmap);

    // Resumed: fresh vars and optimizer (another lr), the files, the same 5 steps.
    let (mut resumed_map, mut resumed) = setup(1.0);
    resumed_map.load(&weights_file).unwrap();
    resumed.load(&opt_file).unwrap();
    assert_eq!(resumed.steps("fc1.weight"), Some(5));
    assert_eq!(candle_nn::Optimizer::learning_rate(&resumed), 1e-2);
    assert_eq!(
        optjit::schedule::Hypers::hyper(&resumed, 1, "lr").unwrap(),
        3e-3
    );
    steps(&resumed_map, &mut resumed, &mut Rng(after_five), 5);
    assert_eq!(weights(&resumed_map), want);
    assert_eq!(
        resumed.state_dict().unwrap().len(),
        opt.state_dict().unwrap().len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn state_dicts_hold_every_slot_by_name() {
    let (_, opt) = setup(1e-2);
    let dict = opt.state_dict().unwrap();
    let t = &dict["state.fc1.weight.exp_avg"];
    assert_eq!((t.dtype(), t.dims()), (DType::F32, &[2, 3][..]));
    assert_eq!(dict["state.norm.weight.exp_avg_sq"].dtype(), DType::BF16);
    assert_eq!(dict["state.fc1.bias.step"].to_scalar::<i64>().unwrap(), 0);
    assert_eq!(
        dict["param_groups.1.weight_decay"]
            .to_scalar::<f64>()
            .unwrap(),
        0.0
    );
    assert_eq!(
        dict["param_groups.0.weight_decay"]
            .to_scalar::<f64>()
            .unwrap(),
        1e-2
    );
}

/// `change` applied to a good state dict: refused with an error naming `key`, and nothing
/// changed (state, hyperparameters).
fn refused(change: impl FnOnce(&mut HashMap<String, Tensor>), key: &str) {
    let (varmap, mut opt) = setup(1e-2);
    steps(&varmap, &mut opt, &mut Rng(5), 2);
    let before = opt.state_dict().unwrap();
    let mut dict = before.clone();
    // A valid change first (the lr), which must not be applied either.
    dict.insert(
        "param_groups.0.lr".into(),
        Tensor::new(0.5f64, &Device::Cpu).unwrap(),
    );
    change(&mut dict);
    let err = opt.load_state_dict(&dict).err().unwrap();
    assert!(
        matches!(&err, Error::StateDict { key: k, .. } if k == key),
        "{err}"
    );
    let after = opt.state_dict().unwrap();
    for (k, t) in &before {
        let same = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            == after[k]
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
        assert!(same, "{k} changed");
    }
}

#[test]
fn malformed_state_dicts_change_nothing() {
    let cpu = Device::Cpu;
    refused(
        |d| drop(d.remove("state.fc1.bias.exp_avg")),
        "state.fc1.bias.exp_avg",
    );
    refused(
        |d| {
            drop(d.insert(
                "state.fc2.weight.exp_avg".into(),
                Tensor::zeros(1, DType::F32, &cpu).unwrap(),
            ))
        },
        "state.fc2.weight.exp_avg",
    );
    let wrong_shape = Tensor::zeros((3, 2), DType::F32, &cpu).unwrap();
    refused(
        |d| drop(d.insert("state.fc1.weight.exp_avg".into(), wrong_shape)),
        "state.fc1.weight.exp_avg",
    );
    let wrong_dtype = Tensor::zeros((2, 3), DType::F32, &cpu).unwrap();
    refused(
        |d| drop(d.insert("state.norm.weight.exp_avg".into(), wrong_dtype)),
        "state.norm.weight.exp_avg",
    );
    refused(
        |d| {
            drop(d.insert(
                "state.fc1.weight.step".into(),
                Tensor::new(-1i64, &cpu).unwrap(),
            ))
        },
        "state.fc1.weight.step",
    );
    refused(
        |d| {
            drop(d.insert(
                "state.fc1.weight.step".into(),
                Tensor::new(1.0f64, &cpu).unwrap(),
            ))
        },
        "state.fc1.weight.step",
    );
    refused(
        |d| {
            drop(d.insert(
                "param_groups.1.eps".into(),
                Tensor::new(&[1e-8f64], &cpu).unwrap(),
            ))
        },
        "param_groups.1.eps",
    );
}

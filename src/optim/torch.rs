//! `torch.optim` constructors (and optax's) as data: a class's lower-case name and its
//! keyword arguments (as JSON values) mapped onto the built-in with the same algorithm.

use super::{
    clip::DEFAULT_MAX_NORM, clip_by_global_norm, AdEMAMix, AdaBelief, Adadelta, Adagrad, Adam,
    AdamW, Adamax, Adan, Asgd, Lamb, Lars, Lion, NAdam, NovoGrad, RAdam, Rmsprop, Rprop, Sgd,
    SignSgd, Yogi,
};
use crate::{Error, Graph, Result};
use serde_json::{Map, Value};

/// The built-in graph for `torch.optim.<Class>(params, **kwargs)`.
///
/// `optimizer` is the class's name in lower case: `sgd`, `adam`, `adamw`, `rmsprop`,
/// `adagrad`, `adadelta`, `adamax`, `nadam`, `radam`, `asgd` or `rprop`. `kwargs` holds the
/// keyword arguments as PyTorch takes them: numbers, booleans, and two-element arrays for
/// `betas`, `etas` and `step_sizes` (which become the hyperparameters `b1`/`b2`,
/// `etaminus`/`etaplus` and `step_size_min`/`step_size_max`). Missing arguments take
/// PyTorch's defaults. `adam` with `decoupled_weight_decay=True` is AdamW (with Adam's
/// default `weight_decay`, 0).
///
/// Optimizers from outside `torch.optim`, with the keyword arguments of their reference
/// PyTorch implementations: `lion` (`lr`, `betas`, `weight_decay`, `maximize`), `adan`
/// (`betas` of three numbers, `b1`/`b2`/`b3`; `no_prox`) and `adabelief` (`amsgrad`,
/// `weight_decouple`, `fixed_decay`, `rectify`, `degenerated_to_sgd`), each with the
/// defaults of the optjit built-in of that name (optax's optimizers are
/// [`from_optax`]'s).
///
/// The implementation flags `foreach`, `capturable`, `differentiable` and `fused` choose how
/// PyTorch runs the same algorithm, not what it computes; each is accepted, where the class
/// has it, when it is `false` or `null` (PyTorch's default), and refused otherwise.
///
/// Errors: [`Error::UnknownOptimizer`] for another name; [`Error::UnsupportedOption`] for an
/// argument the class does not have (or an implementation flag set) and for a value of the
/// wrong type; what the built-in's `graph()` returns for options it rejects.
///
/// ```
/// use optjit::{optim, Stepper};
/// use serde_json::json;
///
/// let kwargs = json!({"lr": 0.01, "betas": [0.8, 0.95], "foreach": false});
/// let graph = optim::from_torch("nadam", kwargs.as_object().unwrap()).unwrap();
/// let nadam = Stepper::new(&graph).unwrap();
/// assert_eq!(nadam.hyper("b2").unwrap(), 0.95);
/// assert_eq!(nadam.hyper("momentum_decay").unwrap(), 4e-3); // PyTorch's default
/// ```
pub fn from_torch(optimizer: &str, kwargs: &Map<String, Value>) -> Result<Graph> {
    let mut k = Kwargs {
        optimizer,
        kwargs,
        taken: Vec::new(),
    };
    let graph = match optimizer {
        "sgd" => {
            k.implementation_flags(&["foreach", "differentiable", "fused"])?;
            let d = Sgd::default();
            Sgd {
                lr: k.number("lr", d.lr)?,
                momentum: k.number("momentum", d.momentum)?,
                dampening: k.number("dampening", d.dampening)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                nesterov: k.flag("nesterov", d.nesterov)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adam" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable", "fused"])?;
            let adam = adam_options(&mut k, Adam::default())?;
            if k.flag("decoupled_weight_decay", false)? {
                AdamW::from(adam).graph()
            } else {
                adam.graph()
            }
        }
        "adamw" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable", "fused"])?;
            let d = AdamW::default();
            let defaults = Adam {
                lr: d.lr,
                betas: d.betas,
                eps: d.eps,
                weight_decay: d.weight_decay,
                amsgrad: d.amsgrad,
                maximize: d.maximize,
            };
            AdamW::from(adam_options(&mut k, defaults)?).graph()
        }
        "rmsprop" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = Rmsprop::default();
            Rmsprop {
                lr: k.number("lr", d.lr)?,
                alpha: k.number("alpha", d.alpha)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                momentum: k.number("momentum", d.momentum)?,
                centered: k.flag("centered", d.centered)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adagrad" => {
            k.implementation_flags(&["foreach", "differentiable", "fused"])?;
            let d = Adagrad::default();
            Adagrad {
                lr: k.number("lr", d.lr)?,
                lr_decay: k.number("lr_decay", d.lr_decay)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                initial_accumulator_value: k
                    .number("initial_accumulator_value", d.initial_accumulator_value)?,
                eps: k.number("eps", d.eps)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adadelta" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = Adadelta::default();
            Adadelta {
                lr: k.number("lr", d.lr)?,
                rho: k.number("rho", d.rho)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adamax" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = Adamax::default();
            Adamax {
                lr: k.number("lr", d.lr)?,
                betas: k.pair("betas", d.betas)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "nadam" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = NAdam::default();
            NAdam {
                lr: k.number("lr", d.lr)?,
                betas: k.pair("betas", d.betas)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                momentum_decay: k.number("momentum_decay", d.momentum_decay)?,
                decoupled_weight_decay: k
                    .flag("decoupled_weight_decay", d.decoupled_weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "radam" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = RAdam::default();
            RAdam {
                lr: k.number("lr", d.lr)?,
                betas: k.pair("betas", d.betas)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                decoupled_weight_decay: k
                    .flag("decoupled_weight_decay", d.decoupled_weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "asgd" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = Asgd::default();
            Asgd {
                lr: k.number("lr", d.lr)?,
                lambd: k.number("lambd", d.lambd)?,
                alpha: k.number("alpha", d.alpha)?,
                t0: k.number("t0", d.t0)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "rprop" => {
            k.implementation_flags(&["foreach", "capturable", "differentiable"])?;
            let d = Rprop::default();
            Rprop {
                lr: k.number("lr", d.lr)?,
                etas: k.pair("etas", d.etas)?,
                step_sizes: k.pair("step_sizes", d.step_sizes)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "lion" => {
            let d = Lion::default();
            Lion {
                lr: k.number("lr", d.lr)?,
                betas: k.pair("betas", d.betas)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adan" => {
            let d = Adan::default();
            Adan {
                lr: k.number("lr", d.lr)?,
                betas: k.triple("betas", d.betas)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                no_prox: k.flag("no_prox", d.no_prox)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        "adabelief" => {
            let d = AdaBelief::default();
            AdaBelief {
                lr: k.number("lr", d.lr)?,
                betas: k.pair("betas", d.betas)?,
                eps: k.number("eps", d.eps)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                amsgrad: k.flag("amsgrad", d.amsgrad)?,
                weight_decouple: k.flag("weight_decouple", d.weight_decouple)?,
                fixed_decay: k.flag("fixed_decay", d.fixed_decay)?,
                rectify: k.flag("rectify", d.rectify)?,
                degenerated_to_sgd: k.flag("degenerated_to_sgd", d.degenerated_to_sgd)?,
                maximize: k.flag("maximize", d.maximize)?,
            }
            .graph()
        }
        _ => {
            return Err(Error::UnknownOptimizer {
                name: optimizer.to_string(),
            })
        }
    };
    k.finish()?;
    graph
}

/// The optimizer `optax.<optimizer>(**kwargs)` builds, with optax's argument names, for the
/// optax optimizers optjit has:
///
/// - `lamb`, `optax.lamb` ([`Lamb`]): `learning_rate`, `b1`, `b2`, `eps`, `eps_root`,
///   `weight_decay`;
/// - `lars`, `optax.lars` ([`Lars`]): `learning_rate`, `weight_decay`, `trust_coefficient`,
///   `eps`, `momentum`, `nesterov`;
/// - `novograd`, `optax.novograd` ([`NovoGrad`]): `learning_rate`, `b1`, `b2`, `eps`,
///   `eps_root`, `weight_decay`;
/// - `yogi`, `optax.yogi` ([`Yogi`]): `learning_rate`, `b1`, `b2`, `eps`;
/// - `sign_sgd`, `optax.sign_sgd` ([`SignSgd`]): `learning_rate`;
/// - `ademamix`, `optax.contrib.ademamix` ([`AdEMAMix`]): `learning_rate`, `b1`, `b2`, `b3`,
///   `alpha`, `eps`, `eps_root`, `weight_decay`;
/// - `clip_adam`, `optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(...))`
///   ([`clip_by_global_norm`] over [`Adam`]): `max_norm`, `learning_rate`, `b1`, `b2`, `eps`;
/// - `clip_adamw`, the same over `optax.adamw(...)` ([`AdamW`]): those and `weight_decay`
///   (optax's default, 1e-4).
///
/// Missing arguments take optax's defaults (where optax has none, `learning_rate` and
/// `max_norm`, the built-in's). Schedules (optax's callables) have no JSON form: a schedule
/// is the caller setting the hyperparameter before each step.
///
/// `clip_adam` and `clip_adamw` are optjit's Adam and AdamW, which follow PyTorch's
/// formulas: the same algorithm as optax's `scale_by_adam` (and `add_decayed_weights`
/// before `scale_by_learning_rate` for AdamW: `θ − lr·(u + λθ)` where PyTorch computes
/// `θ·(1 − lr·λ) − lr·u`), rounded in another order. optax's `eps_root`, `nesterov` and
/// `mu_dtype` are not taken. The clip is optax's, not PyTorch's (see
/// [`clip_by_global_norm`]).
///
/// ```
/// let kwargs = serde_json::json!({"learning_rate": 0.01, "weight_decay": 0.01});
/// let lamb = optjit::optim::from_optax("lamb", kwargs.as_object().unwrap())?;
/// assert_eq!(lamb.hypers()[0].default, 0.01);
/// # Ok::<(), optjit::Error>(())
/// ```
///
/// Fails with [`Error::UnknownOptimizer`] for another name and
/// [`Error::UnsupportedOption`] for an argument it does not take or of the wrong type.
pub fn from_optax(optimizer: &str, kwargs: &Map<String, Value>) -> Result<Graph> {
    let mut k = Kwargs {
        optimizer,
        kwargs,
        taken: Vec::new(),
    };
    let graph = match optimizer {
        "lamb" => {
            let d = Lamb::default();
            Lamb {
                lr: k.number("learning_rate", d.lr)?,
                betas: (k.number("b1", d.betas.0)?, k.number("b2", d.betas.1)?),
                eps: k.number("eps", d.eps)?,
                eps_root: k.number("eps_root", d.eps_root)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
            }
            .graph()
        }
        "novograd" => {
            let d = NovoGrad::default();
            NovoGrad {
                lr: k.number("learning_rate", d.lr)?,
                betas: (k.number("b1", d.betas.0)?, k.number("b2", d.betas.1)?),
                eps: k.number("eps", d.eps)?,
                eps_root: k.number("eps_root", d.eps_root)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
            }
            .graph()
        }
        "yogi" => {
            let d = Yogi::default();
            Yogi {
                lr: k.number("learning_rate", d.lr)?,
                betas: (k.number("b1", d.betas.0)?, k.number("b2", d.betas.1)?),
                eps: k.number("eps", d.eps)?,
                ..d
            }
            .graph()
        }
        "sign_sgd" => SignSgd {
            lr: k.number("learning_rate", SignSgd::default().lr)?,
        }
        .graph(),
        "ademamix" => {
            let d = AdEMAMix::default();
            AdEMAMix {
                lr: k.number("learning_rate", d.lr)?,
                betas: (
                    k.number("b1", d.betas.0)?,
                    k.number("b2", d.betas.1)?,
                    k.number("b3", d.betas.2)?,
                ),
                alpha: k.number("alpha", d.alpha)?,
                eps: k.number("eps", d.eps)?,
                eps_root: k.number("eps_root", d.eps_root)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
            }
            .graph()
        }
        "clip_adam" | "clip_adamw" => {
            let max_norm = k.number("max_norm", DEFAULT_MAX_NORM)?;
            let d = Adam::default();
            let adam = Adam {
                lr: k.number("learning_rate", d.lr)?,
                betas: (k.number("b1", d.betas.0)?, k.number("b2", d.betas.1)?),
                eps: k.number("eps", d.eps)?,
                ..d
            };
            let graph = if optimizer == "clip_adamw" {
                AdamW {
                    // optax.adamw's default.
                    weight_decay: k.number("weight_decay", 1e-4)?,
                    ..AdamW::from(adam)
                }
                .graph()
            } else {
                adam.graph()
            };
            graph.and_then(|graph| clip_by_global_norm(&graph, max_norm))
        }
        "lars" => {
            let d = Lars::default();
            Lars {
                lr: k.number("learning_rate", d.lr)?,
                weight_decay: k.number("weight_decay", d.weight_decay)?,
                trust_coefficient: k.number("trust_coefficient", d.trust_coefficient)?,
                eps: k.number("eps", d.eps)?,
                momentum: k.number("momentum", d.momentum)?,
                nesterov: k.flag("nesterov", d.nesterov)?,
            }
            .graph()
        }
        _ => {
            return Err(Error::UnknownOptimizer {
                name: optimizer.to_string(),
            })
        }
    };
    k.finish()?;
    graph
}

/// The options Adam and AdamW share, `defaults` for the missing ones.
fn adam_options(k: &mut Kwargs<'_>, defaults: Adam) -> Result<Adam> {
    Ok(Adam {
        lr: k.number("lr", defaults.lr)?,
        betas: k.pair("betas", defaults.betas)?,
        eps: k.number("eps", defaults.eps)?,
        weight_decay: k.number("weight_decay", defaults.weight_decay)?,
        amsgrad: k.flag("amsgrad", defaults.amsgrad)?,
        maximize: k.flag("maximize", defaults.maximize)?,
    })
}

/// The keyword arguments of one constructor call, read one by one so that the ones left over
/// can be reported.
struct Kwargs<'a> {
    optimizer: &'a str,
    kwargs: &'a Map<String, Value>,
    /// Names read so far.
    taken: Vec<&'static str>,
}

impl<'a> Kwargs<'a> {
    fn error(&self, option: &str, detail: String) -> Error {
        Error::UnsupportedOption {
            optimizer: self.optimizer.to_string(),
            option: option.to_string(),
            detail,
        }
    }

    fn wrong_type(&self, option: &str, expected: &str, value: &Value) -> Error {
        self.error(option, format!(": expected {expected}, got {value}"))
    }

    fn take(&mut self, name: &'static str) -> Option<&'a Value> {
        self.taken.push(name);
        self.kwargs.get(name)
    }

    fn number(&mut self, name: &'static str, default: f64) -> Result<f64> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.wrong_type(name, "a number", v)),
        }
    }

    fn flag(&mut self, name: &'static str, default: bool) -> Result<bool> {
        match self.take(name) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.wrong_type(name, "a boolean", v)),
        }
    }

    fn pair(&mut self, name: &'static str, default: (f64, f64)) -> Result<(f64, f64)> {
        let Some(v) = self.take(name) else {
            return Ok(default);
        };
        match v.as_array().map(Vec::as_slice) {
            Some([a, b]) => a.as_f64().zip(b.as_f64()),
            _ => None,
        }
        .ok_or_else(|| self.wrong_type(name, "two numbers", v))
    }

    fn triple(&mut self, name: &'static str, default: (f64, f64, f64)) -> Result<(f64, f64, f64)> {
        let Some(v) = self.take(name) else {
            return Ok(default);
        };
        match v.as_array().map(Vec::as_slice) {
            Some([a, b, c]) => a.as_f64().zip(b.as_f64()).zip(c.as_f64()),
            _ => None,
        }
        .map(|((a, b), c)| (a, b, c))
        .ok_or_else(|| self.wrong_type(name, "three numbers", v))
    }

    /// Accepts each of `names` when absent, `false` or `null`.
    fn implementation_flags(&mut self, names: &[&'static str]) -> Result<()> {
        for &name in names {
            match self.take(name) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) => {
                    let detail = format!(
                        ": only false or null is supported (got {v}); optjit always runs \
                         one fused kernel"
                    );
                    return Err(self.error(name, detail));
                }
            }
        }
        Ok(())
    }

    /// Fails on the first argument (in name order) that was never read.
    fn finish(&self) -> Result<()> {
        match self
            .kwargs
            .keys()
            .find(|key| !self.taken.contains(&key.as_str()))
        {
            Some(key) => Err(self.error(key, String::new())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kwargs(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn unsupported(optimizer: &str, option: &str, detail: &str) -> Error {
        Error::UnsupportedOption {
            optimizer: optimizer.to_string(),
            option: option.to_string(),
            detail: detail.to_string(),
        }
    }

    #[test]
    fn lion_adan_and_adabelief_take_their_reference_arguments() {
        let lion = from_torch("lion", &kwargs(json!({"lr": 3e-4, "betas": [0.95, 0.98]})));
        let lion = lion.expect("lion");
        let hypers = lion.hypers();
        assert_eq!((hypers[0].default, hypers[1].default), (3e-4, 0.95));
        let adan = from_torch("adan", &kwargs(json!({"betas": [0.9, 0.8, 0.7]})));
        let b3 = adan
            .expect("adan")
            .hypers()
            .iter()
            .find(|h| h.name == "b3")
            .map(|h| h.default);
        assert_eq!(b3, Some(0.7));
        let two = from_torch("adan", &kwargs(json!({"betas": [0.9, 0.8]})));
        assert!(matches!(two, Err(Error::UnsupportedOption { .. })));
        let belief = from_torch(
            "adabelief",
            &kwargs(json!({"rectify": false, "eps": 1e-12})),
        );
        assert!(belief.is_ok());
        assert!(from_optax("lion", &Map::new()).is_err());
    }

    #[test]
    fn every_torch_optimizer_maps_with_default_and_empty_kwargs() {
        let names = [
            "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam",
            "asgd", "rprop",
        ];
        for name in names {
            from_torch(name, &Map::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn an_unknown_optimizer_is_reported_by_name() {
        assert_eq!(
            from_torch("lbfgs", &Map::new()).unwrap_err(),
            Error::UnknownOptimizer {
                name: "lbfgs".to_string()
            }
        );
        // Names are the classes' in lower case, exactly.
        assert!(matches!(
            from_torch("Adam", &Map::new()),
            Err(Error::UnknownOptimizer { .. })
        ));
    }

    #[test]
    fn an_unknown_option_is_reported() {
        let err = from_torch("adam", &kwargs(json!({"lr": 0.1, "momentum": 0.9}))).unwrap_err();
        assert_eq!(err, unsupported("adam", "momentum", ""));
        // An option of another class is unknown here too.
        let err = from_torch("sgd", &kwargs(json!({"amsgrad": false}))).unwrap_err();
        assert_eq!(err, unsupported("sgd", "amsgrad", ""));
        // AdamW has no `decoupled_weight_decay` argument (Adam has).
        let err =
            from_torch("adamw", &kwargs(json!({"decoupled_weight_decay": true}))).unwrap_err();
        assert_eq!(err, unsupported("adamw", "decoupled_weight_decay", ""));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported() {
        let cases = [
            (
                "sgd",
                json!({"lr": "0.1"}),
                "lr",
                ": expected a number, got \"0.1\"",
            ),
            (
                "rmsprop",
                json!({"centered": 1}),
                "centered",
                ": expected a boolean, got 1",
            ),
            (
                "adam",
                json!({"betas": [0.9]}),
                "betas",
                ": expected two numbers, got [0.9]",
            ),
            (
                "rprop",
                json!({"etas": 0.5}),
                "etas",
                ": expected two numbers, got 0.5",
            ),
            (
                "nadam",
                json!({"betas": [0.9, null]}),
                "betas",
                ": expected two numbers, got [0.9,null]",
            ),
        ];
        for (optimizer, value, option, detail) in cases {
            assert_eq!(
                from_torch(optimizer, &kwargs(value)).unwrap_err(),
                unsupported(optimizer, option, detail)
            );
        }
    }

    #[test]
    fn implementation_flags_are_accepted_only_when_off() {
        let off = kwargs(json!({"foreach": false, "capturable": null, "differentiable": false}));
        from_torch("asgd", &off).unwrap();
        let err = from_torch("adam", &kwargs(json!({"fused": true}))).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedOption { option, .. } if option == "fused"),
            "{err}"
        );
        let err = from_torch("rprop", &kwargs(json!({"foreach": true}))).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedOption { option, .. } if option == "foreach"),
            "{err}"
        );
        // Only where the class has the flag: torch.optim.SGD has no `capturable`.
        let err = from_torch("sgd", &kwargs(json!({"capturable": false}))).unwrap_err();
        assert_eq!(err, unsupported("sgd", "capturable", ""));
    }

    #[test]
    fn pairs_and_flags_reach_the_hyperparameters_and_the_graph() {
        let graph = from_torch(
            "rprop",
            &kwargs(json!({"lr": 0.5, "etas": [0.25, 2], "step_sizes": [1e-3, 10]})),
        )
        .unwrap();
        let hypers: Vec<(&str, f64)> = graph
            .hypers()
            .iter()
            .map(|h| (h.name.as_str(), h.default))
            .collect();
        assert_eq!(
            hypers,
            [
                ("lr", 0.5),
                ("etaminus", 0.25),
                ("etaplus", 2.0),
                ("step_size_min", 1e-3),
                ("step_size_max", 10.0)
            ]
        );
        let adamw = from_torch("adam", &kwargs(json!({"decoupled_weight_decay": true}))).unwrap();
        assert_eq!(adamw.name(), "adamw");
        let centered = from_torch("rmsprop", &kwargs(json!({"centered": true}))).unwrap();
        assert_eq!(centered.name(), "rmsprop_centered");
    }

    #[test]
    fn every_optax_optimizer_maps_with_empty_kwargs() {
        let names = [
            ("lamb", "lamb"),
            ("lars", "lars"),
            ("novograd", "novograd"),
            ("yogi", "yogi"),
            ("sign_sgd", "sign_sgd"),
            ("ademamix", "ademamix"),
            ("clip_adam", "adam"),
            ("clip_adamw", "adamw"),
        ];
        for (name, graph) in names {
            let built = from_optax(name, &Map::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(built.name(), graph);
        }
        assert_eq!(
            from_optax("adafactor", &Map::new()).unwrap_err(),
            Error::UnknownOptimizer {
                name: "adafactor".to_string()
            }
        );
    }

    #[test]
    fn an_optax_argument_the_call_does_not_take_is_reported() {
        let cases = [
            // optax.yogi has no eps_root (scale_by_yogi has).
            ("yogi", json!({"eps_root": 0.0})),
            // optax.sign_sgd has no momentum (optax.signum has).
            ("sign_sgd", json!({"momentum": 0.9})),
            // PyTorch's names are not optax's.
            ("ademamix", json!({"lr": 0.01})),
            // optax.adam has no weight_decay (optax.adamw has).
            ("clip_adam", json!({"weight_decay": 0.01})),
            // optax's adam arguments optjit's Adam does not have.
            ("clip_adamw", json!({"eps_root": 0.0})),
        ];
        for (optimizer, value) in cases {
            let option = value.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(
                from_optax(optimizer, &kwargs(value)).unwrap_err(),
                unsupported(optimizer, &option, "")
            );
        }
        let err = from_optax("clip_adam", &kwargs(json!({"max_norm": "1"}))).unwrap_err();
        assert_eq!(
            err,
            unsupported("clip_adam", "max_norm", ": expected a number, got \"1\"")
        );
    }

    #[test]
    fn optax_arguments_reach_the_hyperparameters() {
        let defaults = |graph: &Graph| -> Vec<(String, f64)> {
            graph
                .hypers()
                .iter()
                .map(|h| (h.name.clone(), h.default))
                .collect()
        };
        let ademamix = from_optax(
            "ademamix",
            &kwargs(json!({"learning_rate": 0.01, "b3": 0.999, "alpha": 8})),
        )
        .unwrap();
        let expected = [
            ("lr", 0.01),
            ("b1", 0.9),
            ("b2", 0.999),
            ("b3", 0.999),
            ("alpha", 8.0),
            ("eps", 1e-8),
            ("eps_root", 0.0),
            ("weight_decay", 0.0),
        ];
        assert_eq!(
            defaults(&ademamix),
            expected.map(|(n, v)| (n.to_string(), v))
        );
        // optax.adamw's weight decay defaults to 1e-4 (PyTorch's to 1e-2); the clip's
        // max_norm is the last hyperparameter.
        let clipped = from_optax("clip_adamw", &kwargs(json!({"max_norm": 0.5}))).unwrap();
        let hypers = defaults(&clipped);
        assert!(
            hypers.contains(&("weight_decay".to_string(), 1e-4)),
            "{hypers:?}"
        );
        assert_eq!(hypers.last(), Some(&("max_norm".to_string(), 0.5)));
    }

    #[test]
    fn a_graph_error_is_passed_on() {
        let err = from_torch("sgd", &kwargs(json!({"nesterov": true}))).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidOption {
                option: "nesterov",
                ..
            }
        ));
    }
}

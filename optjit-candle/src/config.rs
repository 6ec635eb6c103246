//! What an [`crate::OptjitOptimizer`] is built from: the optimizer's graph (a built-in, a
//! PyTorch constructor's arguments or `.opt` text), hyperparameter values, parameter groups
//! chosen by name pattern, and gradient clipping.

use crate::{Error, Result};
use optjit::Graph;
use std::path::Path;

/// The configuration of an [`crate::OptjitOptimizer`] (candle's `Optimizer::Config`).
///
/// ```
/// use optjit_candle::{Config, ParamGroup};
///
/// // AdamW with candle's defaults, no weight decay on biases and norms, clipped to norm 1.
/// let config = Config::adamw(&candle_nn::ParamsAdamW::default())?
///     .group(ParamGroup::matching(&["*.bias", "*norm*"]).hyper("weight_decay", 0.0))
///     .clip_grad_norm(1.0, 2.0);
/// assert_eq!(config.graph().name(), "adamw");
/// # Ok::<(), optjit_candle::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) graph: Graph,
    /// Values for every group, over the graph's defaults.
    pub(crate) hypers: Vec<(String, f64)>,
    pub(crate) groups: Vec<ParamGroup>,
    pub(crate) clip: Option<Clip>,
}

/// A parameter group: the vars whose name matches one of its patterns, with hyperparameter
/// values of their own. Vars that no group matches are in group 0, the config's own.
///
/// A pattern is a glob over the whole name: `*` matches any run of characters (dots
/// included), every other character itself: `"*.bias"`, `"*norm*"`, `"head.*"`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    pub(crate) patterns: Vec<String>,
    pub(crate) hypers: Vec<(String, f64)>,
}

/// Clipping of the gradients' global norm before each step, as PyTorch's
/// `clip_grad_norm_(params, max_norm, norm_type)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    /// The largest norm let through.
    pub max_norm: f64,
    /// 1, 2 or `f64::INFINITY`.
    pub norm_type: f64,
}

impl Config {
    /// The optimizer `graph` with its default hyperparameters.
    pub fn new(graph: Graph) -> Config {
        Config {
            graph,
            hypers: Vec::new(),
            groups: Vec::new(),
            clip: None,
        }
    }

    /// An optimizer in the `.opt` text form (see [`optjit::text`]).
    pub fn from_text(source: &str) -> Result<Config> {
        Ok(Config::new(optjit::text::parse(source)?))
    }

    /// An optimizer from an `.opt` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        Ok(Config::new(optjit::text::parse_file(path)?))
    }

    /// A `torch.optim` optimizer from its constructor's keyword arguments (see
    /// [`optjit::optim::from_torch`]), e.g. `("sgd", {"lr": 0.1, "momentum": 0.9})`.
    pub fn from_torch(
        name: &str,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Config> {
        Ok(Config::new(optjit::optim::from_torch(name, kwargs)?))
    }

    /// optjit's AdamW (PyTorch's algorithm) with candle's AdamW parameters. candle computes
    /// the same update in another order: the two agree within a few ulps per step.
    pub fn adamw(p: &candle_nn::ParamsAdamW) -> Result<Config> {
        let adamw = optjit::optim::AdamW {
            lr: p.lr,
            betas: (p.beta1, p.beta2),
            eps: p.eps,
            weight_decay: p.weight_decay,
            ..optjit::optim::AdamW::default()
        };
        Ok(Config::new(adamw.graph()?))
    }

    /// Sets hyperparameter `name` for every group (a group's own value wins).
    pub fn hyper(mut self, name: &str, value: f64) -> Config {
        self.hypers.push((name.to_string(), value));
        self
    }

    /// Sets the learning rate, `lr`, for every group.
    pub fn lr(self, lr: f64) -> Config {
        self.hyper("lr", lr)
    }

    /// Adds a parameter group; a var joins the first group that matches its name.
    pub fn group(mut self, group: ParamGroup) -> Config {
        self.groups.push(group);
        self
    }

    /// Clips the global `norm_type` norm (1, 2 or `f64::INFINITY`) of all gradients of a
    /// step to `max_norm` before the step, as `torch.nn.utils.clip_grad_norm_`: every
    /// gradient is read multiplied by `min(max_norm / (total + 1e-6), 1)` (the gradients
    /// themselves are not written).
    pub fn clip_grad_norm(mut self, max_norm: f64, norm_type: f64) -> Config {
        self.clip = Some(Clip {
            max_norm,
            norm_type,
        });
        self
    }

    /// The optimizer's graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The group (0 for none, else 1 + its index) of a var named `name`.
    pub(crate) fn group_of(&self, name: &str) -> usize {
        self.groups
            .iter()
            .position(|g| g.patterns.iter().any(|p| glob(p, name)))
            .map_or(0, |i| i + 1)
    }

    /// Whether any [`ParamGroup`] was added.
    pub(crate) fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Checks what the graph cannot: the clip's arguments.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(clip) = self.clip {
            if !matches!(clip.norm_type, 1.0 | 2.0 | f64::INFINITY) {
                return Err(Error::InvalidOption {
                    option: "norm_type",
                    reason: "must be 1, 2 or inf",
                });
            }
            if clip.max_norm.is_nan() {
                return Err(Error::InvalidOption {
                    option: "max_norm",
                    reason: "must be a number",
                });
            }
        }
        Ok(())
    }
}

impl ParamGroup {
    /// The vars whose name matches any of `patterns`.
    pub fn matching(patterns: &[&str]) -> ParamGroup {
        ParamGroup {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            hypers: Vec::new(),
        }
    }

    /// Sets hyperparameter `name` for this group.
    pub fn hyper(mut self, name: &str, value: f64) -> ParamGroup {
        self.hypers.push((name.to_string(), value));
        self
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (the classic
/// two-pointer walk: on a mismatch, retry after the last `*` with one more character eaten).
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("*.bias", "fc1.bias"));
        assert!(glob("*.bias", ".bias"));
        assert!(!glob("*.bias", "fc1.bias.extra"));
        assert!(glob("*norm*", "layer_norm.weight"));
        assert!(!glob("*norm*", "fc1.weight"));
        assert!(glob("head.*", "head.w"));
        assert!(!glob("head.*", "body.head.w"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn the_first_matching_group_wins() {
        let c = super::Config::new(optjit::optim::Sgd::default().graph().unwrap())
            .group(super::ParamGroup::matching(&["*.bias"]))
            .group(super::ParamGroup::matching(&["fc1.*"]));
        assert_eq!(c.group_of("fc1.bias"), 1);
        assert_eq!(c.group_of("fc1.weight"), 2);
        assert_eq!(c.group_of("fc2.weight"), 0);
    }
}

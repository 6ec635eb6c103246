//! Gradient scaling for mixed-precision training with `torch.amp.GradScaler`'s semantics:
//! the loss is multiplied by a scale before the backward pass; [`GradScaler::step`] divides
//! the gradients by it again and skips the optimizer's step when any gradient is not finite;
//! [`GradScaler::update`] backs the scale off after such a step and grows it after
//! `growth_interval` good ones.

use super::Optimizer;
use crate::optim::INV_SCALE;
use crate::{DType, Error, Float, Result};
use serde::{Deserialize, Serialize};

/// A gradient scaler (PyTorch's `torch.amp.GradScaler`, its defaults and its rules).
///
/// ```
/// use optjit::{optim::Sgd, GradScaler, Optimizer};
/// use ndarray::array;
///
/// let mut opt = Optimizer::new(&Sgd { lr: 0.5, ..Sgd::default() }.graph()?)?;
/// let g = opt.add_param_group(&[])?;
/// let w = opt.add_param(g, "w", &array![1.0f32])?;
/// let mut scaler = GradScaler::new(1024.0, 2.0, 0.5, 3)?;
/// // The backward pass of `scaler.scale() * loss` gives scaled gradients:
/// opt.set_grad(&w, &[(scaler.scale() * 0.25) as f32])?;
/// assert!(scaler.step(&mut opt)?, "stepped");
/// assert_eq!(opt.param(&w)?, &[1.0 - 0.5 * 0.25]);
/// opt.set_grad(&w, &[f32::INFINITY])?;
/// scaler.update();
/// assert!(!scaler.step(&mut opt)?, "skipped: the gradient overflowed");
/// scaler.update();
/// assert_eq!(scaler.scale(), 512.0);
/// # Ok::<(), optjit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    growth_tracker: u64,
    /// Whether the current step's gradients were unscaled, and whether one was not finite.
    #[serde(skip)]
    unscaled: Option<bool>,
    /// Whether `step` ran since the last update.
    #[serde(skip)]
    stepped: bool,
}

/// A [`GradScaler`]'s state, in PyTorch's `state_dict()` layout and key names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerState {
    /// The current scale (a float32 value).
    pub scale: f64,
    /// The factor the scale grows by.
    pub growth_factor: f64,
    /// The factor the scale backs off by.
    pub backoff_factor: f64,
    /// Good steps between growths.
    pub growth_interval: u64,
    /// Good steps since the scale last changed.
    #[serde(rename = "_growth_tracker")]
    pub growth_tracker: u64,
}

impl Default for GradScaler {
    /// PyTorch's defaults: scale 2^16, growth ×2 every 2,000 good steps, backoff ×0.5.
    fn default() -> Self {
        GradScaler::new(65536.0, 2.0, 0.5, 2000).expect("valid defaults")
    }
}

impl GradScaler {
    /// A scaler starting at `init_scale` (rounded to f32, as PyTorch keeps it). Fails with [`Error::InvalidOption`] unless the
    /// scale is finite and positive, `growth_factor > 1`, `0 < backoff_factor < 1` and
    /// `growth_interval >= 1` (PyTorch's conditions).
    pub fn new(
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u64,
    ) -> Result<GradScaler> {
        let bad = |option, reason| Err(Error::InvalidOption { option, reason });
        if !(init_scale.is_finite() && init_scale > 0.0) {
            return bad("init_scale", "must be finite and positive");
        }
        if growth_factor.is_nan() || growth_factor <= 1.0 {
            return bad("growth_factor", "must be greater than 1");
        }
        if !(backoff_factor > 0.0 && backoff_factor < 1.0) {
            return bad("backoff_factor", "must be between 0 and 1");
        }
        if growth_interval == 0 {
            return bad("growth_interval", "must be at least 1");
        }
        Ok(GradScaler {
            scale: f64::from(init_scale as f32),
            growth_factor,
            backoff_factor,
            growth_interval,
            growth_tracker: 0,
            unscaled: None,
            stepped: false,
        })
    }

    /// The scaler's state in PyTorch's `GradScaler.state_dict()` layout (`scale`,
    /// `growth_factor`, `backoff_factor`, `growth_interval`, `_growth_tracker`), to save
    /// beside the optimizer's; serializes to the same JSON keys.
    pub fn state_dict(&self) -> ScalerState {
        ScalerState {
            scale: self.scale,
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
            growth_tracker: self.growth_tracker,
        }
    }

    /// Restores a state from [`GradScaler::state_dict`] (or PyTorch's, read from JSON).
    /// Checked as [`GradScaler::new`] checks its arguments, and the tracker must be below the
    /// interval; on error nothing changed. A step in progress (unscaled, not updated) is
    /// forgotten, as PyTorch's `load_state_dict` resets it.
    pub fn load_state_dict(&mut self, state: &ScalerState) -> Result<()> {
        let mut loaded = GradScaler::new(
            state.scale,
            state.growth_factor,
            state.backoff_factor,
            state.growth_interval,
        )?;
        if state.growth_tracker >= state.growth_interval {
            return Err(Error::InvalidOption {
                option: "_growth_tracker",
                reason: "must be below growth_interval",
            });
        }
        loaded.growth_tracker = state.growth_tracker;
        *self = loaded;
        Ok(())
    }

    /// The factor to multiply the loss by before the backward pass.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Good steps since the scale last changed.
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// Divides every gradient of `opt` by the scale (PyTorch's `unscale_`: multiplied by
    /// `1 / scale` rounded to the gradient's dtype) and notes whether any was NaN or infinite
    /// before. Once per step: a second call before [`GradScaler::update`] is an error
    /// (as in PyTorch), nothing changed.
    pub fn unscale(&mut self, opt: &mut Optimizer) -> Result<()> {
        if self.unscaled.is_some() {
            return Err(Error::InvalidOption {
                option: "unscale",
                reason: "already called since the last update",
            });
        }
        let found_inf = opt.grads_non_finite();
        let inv = self.inv_scale();
        opt.scale_grads::<f32>(|g| g * f32::from_f64(inv));
        opt.scale_grads::<f64>(|g| g * inv);
        self.unscaled = Some(found_inf);
        Ok(())
    }

    /// The factor that unscales the gradients: `1 / scale` rounded to f32, as PyTorch
    /// computes it (`scale.double().reciprocal().float()`), for gradients of every dtype.
    pub fn inv_scale(&self) -> f64 {
        f64::from((1.0 / self.scale) as f32)
    }

    /// Unscales the gradients (unless [`GradScaler::unscale`] already did) and steps `opt`,
    /// unless a gradient was not finite: then nothing of `opt` but its gradients changes.
    /// Returns whether it stepped.
    ///
    /// An optimizer built from [`crate::optim::amp`] (see [`crate::optim::is_amp`]) does it
    /// all in its own step: the scaler sets its [`crate::optim::INV_SCALE`] in every group
    /// for that step (1 if the gradients were unscaled already), and the step, one program,
    /// unscales in registers and skips itself on overflow; the gradients and the
    /// hyperparameter stay as they were. As with PyTorch's fused optimizers, the
    /// optimizer's `step` (and its hooks) runs on an overflowed step too, and changes nothing
    /// — unless [`GradScaler::unscale`] already found the overflow: then, as for the other
    /// optimizers, `step` is not called (PyTorch's `_maybe_opt_step`). Either way the overflow
    /// found (by `unscale` or by the program) is what [`GradScaler::update`] acts on.
    ///
    /// If the optimizer's step fails, the error is returned and the call can be repeated (the
    /// gradients are not unscaled twice). Returns whether the optimizer's step was applied
    /// (`false` also when the optimizer's own skip condition held).
    pub fn step(&mut self, opt: &mut Optimizer) -> Result<bool> {
        if self.stepped {
            return Err(Error::InvalidOption {
                option: "step",
                reason: "already called since the last update",
            });
        }
        if self.unscaled == Some(true) {
            self.stepped = true;
            return Ok(false);
        }
        if crate::optim::is_amp(opt.program()) {
            let inv = match self.unscaled {
                Some(_) => 1.0,
                None => self.inv_scale(),
            };
            let before: Vec<f64> = (0..opt.num_groups())
                .map(|g| opt.hyper(g, INV_SCALE))
                .collect::<Result<_>>()?;
            opt.set_hyper_all(INV_SCALE, inv)?;
            let applied = opt.step();
            for (g, &value) in before.iter().enumerate() {
                opt.set_hyper(g, INV_SCALE, value)?;
            }
            let applied = applied?;
            self.stepped = true;
            // A skip is an overflow (an unscaling in place may have made one, with a scale
            // below 1).
            self.unscaled = Some(!applied);
            return Ok(applied);
        }
        if self.unscaled.is_none() {
            self.unscale(opt)?;
        }
        if self.unscaled == Some(true) {
            self.stepped = true;
            return Ok(false);
        }
        let applied = opt.step()?;
        self.stepped = true;
        Ok(applied)
    }

    /// Adjusts the scale after a step: ×`backoff_factor` (and the tracker to 0) if a
    /// gradient was not finite, else the tracker counts the step and at `growth_interval`
    /// the scale grows ×`growth_factor` (and the tracker restarts). Does nothing if no
    /// gradient was unscaled since the last update.
    ///
    /// As in PyTorch, the scale is a float32 value: each new scale is rounded to f32, and a
    /// growth that would overflow f32 keeps the old scale.
    pub fn update(&mut self) {
        self.stepped = false;
        let f32_scale = |x: f64| f64::from(x as f32);
        match self.unscaled.take() {
            None => {}
            Some(true) => {
                self.scale = f32_scale(self.scale * self.backoff_factor);
                self.growth_tracker = 0;
            }
            Some(false) => {
                if self.growth_tracker + 1 == self.growth_interval {
                    let grown = f32_scale(self.scale * self.growth_factor);
                    if grown.is_finite() {
                        self.scale = grown;
                    }
                    self.growth_tracker = 0;
                } else {
                    self.growth_tracker += 1;
                }
            }
        }
    }
}

impl Optimizer {
    /// Whether any gradient element of a parameter with a gradient is NaN or infinite.
    pub(super) fn grads_non_finite(&self) -> bool {
        fn any<T: Float>(opt: &Optimizer, i: usize) -> bool {
            let grads = opt.grad_slice::<T>(i);
            grads.iter().any(|g| !g.to_f64().is_finite())
        }
        (0..self.params.len())
            .filter(|&i| self.has_grad[i])
            .any(|i| match self.params[i].dtype {
                DType::F32 => any::<f32>(self, i),
                DType::F64 => any::<f64>(self, i),
                d @ (DType::BF16 | DType::F16) => d.no_half_params(),
            })
    }
}

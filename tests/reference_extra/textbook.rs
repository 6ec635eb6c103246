//! The textbook loops of `reference_extra.rs`: one step of each optimizer on one tensor, written
//! from its reference implementation with PyTorch's element operations (`torch.sign`,
//! `torch.lerp`, `torch.maximum`) spelled out.

use optjit::optim::{AdaBelief, Adan, Lion, ScheduleFreeAdamW};
use optjit::Float;
use std::collections::BTreeMap;

/// One parameter of the textbook loops and its state.
pub struct Tensor<T> {
    pub param: Vec<T>,
    pub step: u64,
    /// Per-element state by the reference's names, created by the first step.
    pub buffers: BTreeMap<&'static str, Vec<T>>,
    /// Schedule-free's group scalars, kept per tensor as optjit keeps them.
    lr_max: f64,
    weight_sum: f64,
}

impl<T: Float> Tensor<T> {
    pub fn new(param: Vec<T>) -> Tensor<T> {
        Tensor {
            param,
            step: 0,
            buffers: BTreeMap::new(),
            lr_max: -1.0,
            weight_sum: 0.0,
        }
    }

    /// Takes the buffer `name` out (zeros when the reference would create it now).
    fn take(&mut self, name: &'static str) -> Vec<T> {
        let len = self.param.len();
        self.buffers
            .remove(name)
            .unwrap_or_else(|| vec![T::ZERO; len])
    }

    fn put(&mut self, name: &'static str, buffer: Vec<T>) {
        self.buffers.insert(name, buffer);
    }

    /// The value of optjit's slot `name` in the reference's state.
    pub fn slot(&self, name: &str) -> Option<Vec<T>> {
        match name {
            // The reference keeps the negated previous gradient.
            "pre_grad" => Some(
                self.buffers
                    .get("neg_pre_grad")?
                    .iter()
                    .map(|&x| -x)
                    .collect(),
            ),
            _ => self.buffers.get(name).cloned(),
        }
    }

    pub fn scalar(&self, name: &str) -> f64 {
        match name {
            "lr_max" => self.lr_max,
            "weight_sum" => self.weight_sum,
            _ => unreachable!("no scalar {name}"),
        }
    }
}

/// `x` rounded once to the element type.
fn c<T: Float>(x: f64) -> T {
    T::from_f64(x)
}

/// `torch.sign` on CPU: `(0 < x) − (x < 0)`, so 0 for ±0 and NaN.
fn torch_sign<T: Float>(x: T) -> T {
    let truth = |b: bool| if b { T::ONE } else { T::ZERO };
    truth(T::ZERO < x) - truth(x < T::ZERO)
}

/// `torch.lerp(start, end, weight)` with a Python-float weight: the formula depends on
/// `|weight| < 0.5`.
pub fn torch_lerp<T: Float>(start: T, end: T, weight: f64) -> T {
    if weight.abs() < 0.5 {
        start + c::<T>(weight) * (end - start)
    } else {
        end - (end - start) * c::<T>(1.0 - weight)
    }
}

/// `torch.maximum`: NaN if either operand is NaN, `+0` over `-0`.
fn maximum<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if a > b || (a == b && !a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// `lion_pytorch.lion_pytorch.update_fn`, with `maximize` negating the gradient.
pub fn lion<T: Float>(o: &Lion, t: &mut Tensor<T>, grad: &[T]) {
    let (beta1, beta2) = o.betas;
    t.step += 1;
    let mut exp_avg = t.take("exp_avg");
    for (i, &grad) in grad.iter().enumerate() {
        let g = if o.maximize { -grad } else { grad };
        // p.data.mul_(1. - lr * wd)
        let p = t.param[i] * c(1.0 - o.lr * o.weight_decay);
        // exp_avg.clone().mul_(beta1).add(grad, alpha = 1. - beta1).sign_()
        let update = torch_sign(exp_avg[i] * c(beta1) + c::<T>(1.0 - beta1) * g);
        // p.add_(update, alpha = -lr)
        t.param[i] = p + c::<T>(-o.lr) * update;
        // exp_avg.mul_(beta2).add_(grad, alpha = 1. - beta2)
        exp_avg[i] = exp_avg[i] * c(beta2) + c::<T>(1.0 - beta2) * g;
    }
    t.put("exp_avg", exp_avg);
}

/// `adan._single_tensor_adan` after `Adan.step`'s bias corrections (no clipping).
pub fn adan<T: Float>(o: &Adan, t: &mut Tensor<T>, grad: &[T]) {
    let (beta1, beta2, beta3) = o.betas;
    t.step += 1;
    let k = t.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(k);
    let bias_correction2 = 1.0 - beta2.powf(k);
    let bias_correction3_sqrt = (1.0 - beta3.powf(k)).sqrt();
    let step_size_diff = o.lr * beta2 / bias_correction2;
    let step_size = o.lr / bias_correction1;
    // 'neg_pre_grad' not in state or group['step'] == 1: neg_pre_grad = -grad
    let first = t.step == 1;
    let mut exp_avg = t.take("exp_avg");
    let mut exp_avg_sq = t.take("exp_avg_sq");
    let mut exp_avg_diff = t.take("exp_avg_diff");
    let mut neg_pre_grad = t.take("neg_pre_grad");
    for (i, &grad) in grad.iter().enumerate() {
        let g = if o.maximize { -grad } else { grad };
        let pre_grad = if first { g } else { -neg_pre_grad[i] };
        // neg_grad_or_diff.add_(grad), written as optjit's g − g₋ (see reference_extra.rs).
        let mut neg_grad_or_diff = g - pre_grad;
        exp_avg[i] = exp_avg[i] * c(beta1) + c::<T>(1.0 - beta1) * g;
        exp_avg_diff[i] = exp_avg_diff[i] * c(beta2) + c::<T>(1.0 - beta2) * neg_grad_or_diff;
        neg_grad_or_diff = neg_grad_or_diff * c(beta2) + g;
        exp_avg_sq[i] =
            exp_avg_sq[i] * c(beta3) + c::<T>(1.0 - beta3) * neg_grad_or_diff * neg_grad_or_diff;
        // The built-ins divide by per-step scalars through their reciprocal.
        let denom = exp_avg_sq[i].sqrt() * c(1.0 / bias_correction3_sqrt) + c(o.eps);
        let mut p = t.param[i];
        if o.no_prox {
            p = p * c(1.0 - o.lr * o.weight_decay);
            p = p + c::<T>(-step_size) * exp_avg[i] / denom;
            p = p + c::<T>(-step_size_diff) * exp_avg_diff[i] / denom;
        } else {
            p = p + c::<T>(-step_size) * exp_avg[i] / denom;
            p = p + c::<T>(-step_size_diff) * exp_avg_diff[i] / denom;
            p = p * c(1.0 / (1.0 + o.lr * o.weight_decay));
        }
        t.param[i] = p;
        neg_pre_grad[i] = -g; // zero_().add_(grad, alpha=-1.0), but as -g: see above
    }
    t.put("exp_avg", exp_avg);
    t.put("exp_avg_sq", exp_avg_sq);
    t.put("exp_avg_diff", exp_avg_diff);
    t.put("neg_pre_grad", neg_pre_grad);
}

/// `adabelief_pytorch.AdaBelief.step` (0.2.1), with `maximize` negating the gradient.
pub fn adabelief<T: Float>(o: &AdaBelief, t: &mut Tensor<T>, grad: &[T]) {
    let (beta1, beta2) = o.betas;
    t.step += 1;
    let step = t.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    // The rectification, as Python floats.
    let beta2_t = beta2.powf(step);
    let n_sma_max = 2.0 / (1.0 - beta2) - 1.0;
    let n_sma = n_sma_max - 2.0 * step * beta2_t / (1.0 - beta2_t);
    let step_size = if n_sma >= 5.0 {
        ((1.0 - beta2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma * n_sma_max
            / (n_sma_max - 2.0))
            .sqrt()
            / (1.0 - beta1.powf(step))
    } else if o.degenerated_to_sgd {
        1.0 / (1.0 - beta1.powf(step))
    } else {
        -1.0
    };
    let mut exp_avg = t.take("exp_avg");
    let mut exp_avg_var = t.take("exp_avg_var");
    let mut max_exp_avg_var = t.take("max_exp_avg_var");
    for (i, &grad) in grad.iter().enumerate() {
        let mut g = if o.maximize { -grad } else { grad };
        let mut p = t.param[i];
        if o.weight_decouple {
            if !o.fixed_decay {
                p = p * c(1.0 - o.lr * o.weight_decay);
            } else {
                p = p * c(1.0 - o.weight_decay);
            }
        } else if o.weight_decay != 0.0 {
            g = g + c::<T>(o.weight_decay) * p;
        }
        exp_avg[i] = exp_avg[i] * c(beta1) + c::<T>(1.0 - beta1) * g;
        let grad_residual = g - exp_avg[i];
        exp_avg_var[i] =
            exp_avg_var[i] * c(beta2) + c::<T>(1.0 - beta2) * grad_residual * grad_residual;
        // exp_avg_var.add_(eps), in place, in both branches.
        exp_avg_var[i] = exp_avg_var[i] + c(o.eps);
        let denom = if o.amsgrad {
            max_exp_avg_var[i] = maximum(max_exp_avg_var[i], exp_avg_var[i]);
            max_exp_avg_var[i].sqrt() * c(1.0 / bias_correction2.sqrt()) + c(o.eps)
        } else {
            exp_avg_var[i].sqrt() * c(1.0 / bias_correction2.sqrt()) + c(o.eps)
        };
        if !o.rectify {
            p = p + c::<T>(-(o.lr / bias_correction1)) * exp_avg[i] / denom;
        } else if n_sma >= 5.0 {
            let denom = exp_avg_var[i].sqrt() + c(o.eps);
            p = p + c::<T>(-step_size * o.lr) * exp_avg[i] / denom;
        } else if step_size > 0.0 {
            p = p + c::<T>(-step_size * o.lr) * exp_avg[i];
        }
        t.param[i] = p;
    }
    t.put("exp_avg", exp_avg);
    t.put("exp_avg_var", exp_avg_var);
    if o.amsgrad {
        t.put("max_exp_avg_var", max_exp_avg_var);
    }
}

/// `schedulefree.AdamWScheduleFree.step`, the `foreach=False` path, with the group scalars
/// per tensor and `maximize` negating the gradient.
pub fn schedule_free<T: Float>(o: &ScheduleFreeAdamW, t: &mut Tensor<T>, grad: &[T]) {
    let (beta1, beta2) = o.betas;
    let k = t.step as f64;
    t.step += 1;
    let sched = if k < o.warmup_steps {
        (k + 1.0) / o.warmup_steps
    } else {
        1.0
    };
    let bias_correction2 = 1.0 - beta2.powf(k + 1.0);
    let bias_correction1 = 1.0 - o.inner_momentum.powf(k + 1.0);
    let lr = o.lr * sched;
    // Python's max(lr, lr_max): the first unless the second is larger.
    t.lr_max = if t.lr_max > lr { t.lr_max } else { lr };
    let weight = (k + 1.0).powf(o.r) * t.lr_max.powf(o.weight_lr_power);
    t.weight_sum += weight;
    // ZeroDivisionError -> 0
    let ckp1 = if t.weight_sum == 0.0 {
        0.0
    } else {
        weight / t.weight_sum
    };

    let mut z = t.buffers.remove("z").unwrap_or_else(|| t.param.clone());
    let mut exp_avg_sq = t.take("exp_avg_sq");
    let mut exp_avg = t.take("exp_avg");
    for (i, &grad) in grad.iter().enumerate() {
        let g = if o.maximize { -grad } else { grad };
        let y = t.param[i];
        exp_avg_sq[i] = exp_avg_sq[i] * c(beta2) + c::<T>(1.0 - beta2) * g * g;
        let denom = (exp_avg_sq[i] * c(1.0 / bias_correction2)).sqrt() + c(o.eps);
        let mut grad_normalized = if o.inner_momentum != 0.0 {
            exp_avg[i] = exp_avg[i] * c(o.inner_momentum) + c::<T>(1.0 - o.inner_momentum) * g;
            exp_avg[i] * c(1.0 / bias_correction1) / denom
        } else {
            g / denom
        };
        if o.weight_decay != 0.0 {
            grad_normalized = grad_normalized + c::<T>(o.weight_decay) * y;
        }
        let y = torch_lerp(y, z[i], ckp1);
        t.param[i] = y + c::<T>(lr * (beta1 * (1.0 - ckp1) - 1.0)) * grad_normalized;
        z[i] = z[i] - c::<T>(lr) * grad_normalized;
    }
    t.put("z", z);
    t.put("exp_avg_sq", exp_avg_sq);
    if o.inner_momentum != 0.0 {
        t.put("exp_avg", exp_avg);
    }
}

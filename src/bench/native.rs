//! Handwritten f32 loops of five built-in optimizers, compiled by rustc for the CPU at hand:
//! the baseline for cache-resident sizes (DESIGN, "Performance model").
//!
//! Each loop performs exactly the IEEE operations of the optimizer's program with default
//! options, in the same order (`optjit show NAME` prints them, one per line): the per-step
//! scalars are computed in f64 like the prologue and rounded once to f32; the element
//! operations are f32, neither fused (rustc never contracts `a * b + c`) nor reassociated. So
//! the results are bit-identical to the JIT's and the reference interpreter's, and a
//! benchmark compares the same work done by two compilers.
//!
//! Each loop is compiled three times: for AVX-512 (F and VL, with AVX2 and FMA), for AVX2 with
//! FMA, and for the target's baseline (SSE2 on x86-64: 128-bit vectors, like the JIT). The
//! library stays portable — no `-C target-cpu=native` — because the wider versions are
//! `#[target_feature]` functions, called only after run-time detection found their features.
//! Those calls are the only `unsafe` of this module (an exception to STYLE rule 5: a
//! `#[target_feature]` function cannot be called without it), each naming its detection.
//!
//! ```
//! use optjit::bench::native::{Isa, NativeOptimizer};
//!
//! let (mut param, grad) = (vec![1.0f32, -1.0], vec![0.5f32, -2.0]);
//! let (mut m, mut v) = (vec![0.0f32; 2], vec![0.0f32; 2]);
//! let mut state = [m.as_mut_slice(), v.as_mut_slice()];
//! NativeOptimizer::Adam.step(1, &mut param, &grad, &mut state).unwrap();
//! // The first Adam step moves every element by lr = 1e-3 against its gradient's sign.
//! assert!((param[0] - 0.999).abs() < 1e-6 && (param[1] + 0.999).abs() < 1e-6);
//! assert_eq!(NativeOptimizer::isa(), Isa::best().name());
//! ```

use crate::optim::{Adam, AdamW, Lion, Rmsprop, Sgd};
use crate::{Error, Graph, Result};

/// The instruction sets the loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F and VL, with AVX2 and FMA (x86-64 only): rustc uses 512-bit vectors.
    Avx512,
    /// AVX2 with FMA (x86-64 only): 256-bit vectors.
    Avx2,
    /// The compilation target's baseline: on x86-64 SSE2, 128-bit vectors like the JIT's.
    Portable,
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// `"avx512"`, `"avx2"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU runs the loops compiled for `self` (detected at run time).
    pub fn is_available(self) -> bool {
        Detected::new(self).is_some()
    }

    /// The instruction sets this CPU runs, best first; [`Isa::Portable`] always.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The best instruction set this CPU runs: the one [`NativeOptimizer::step`] uses.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Portable)
    }
}

/// An instruction set that run-time detection found on this CPU: the fact each `unsafe`
/// call below relies on. Only [`Detected::new`] makes one.
#[derive(Clone, Copy, Debug)]
struct Detected(Isa);

impl Detected {
    /// `Some` if the CPU has every feature that the loops for `isa` are compiled with.
    fn new(isa: Isa) -> Option<Detected> {
        let found = match isa {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
        };
        found.then_some(Detected(isa))
    }
}

/// A built-in optimizer with default options (PyTorch's), as a handwritten loop.
///
/// | variant | built-in | hyperparameters | state slots |
/// |---|---|---|---|
/// | `Adam` | `adam` | lr 1e-3, betas (0.9, 0.999), eps 1e-8 | `exp_avg`, `exp_avg_sq` |
/// | `AdamW` | `adamw` | as Adam, weight_decay 1e-2 (decoupled) | `exp_avg`, `exp_avg_sq` |
/// | `SgdMomentum` | `sgd_momentum` | lr 1e-3, momentum 0.9, dampening 0 | `momentum_buffer` |
/// | `Lion` | `lion` | lr 1e-4, betas (0.9, 0.99) | `exp_avg` |
/// | `Rmsprop` | `rmsprop` | lr 1e-2, alpha 0.99, eps 1e-8 | `square_avg` |
///
/// Weight decay is 0 but for AdamW; no variant maximizes, uses AMSGrad, Nesterov or
/// centering.
///
/// The values are read from the built-ins' `Default`s, so the two cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeOptimizer {
    /// `torch.optim.Adam`.
    Adam,
    /// `torch.optim.AdamW`.
    AdamW,
    /// `torch.optim.SGD` with `momentum = 0.9`.
    SgdMomentum,
    /// Lion (`lion_pytorch.Lion`).
    Lion,
    /// `torch.optim.RMSprop` (no momentum, not centered).
    Rmsprop,
}

impl NativeOptimizer {
    /// Every optimizer with a native loop.
    pub const ALL: [NativeOptimizer; 5] = [
        NativeOptimizer::Adam,
        NativeOptimizer::AdamW,
        NativeOptimizer::SgdMomentum,
        NativeOptimizer::Lion,
        NativeOptimizer::Rmsprop,
    ];

    /// The name of the matching built-in, as `optjit show` and [`crate::optim::by_name`]
    /// know it.
    pub fn name(self) -> &'static str {
        match self {
            NativeOptimizer::Adam => "adam",
            NativeOptimizer::AdamW => "adamw",
            NativeOptimizer::SgdMomentum => "sgd_momentum",
            NativeOptimizer::Lion => "lion",
            NativeOptimizer::Rmsprop => "rmsprop",
        }
    }

    /// The graph of the matching built-in: the JIT runs it bit-identically to this loop.
    pub fn graph(self) -> Result<Graph> {
        match self {
            NativeOptimizer::Adam => Adam::default().graph(),
            NativeOptimizer::AdamW => AdamW::default().graph(),
            NativeOptimizer::SgdMomentum => sgd_momentum().graph(),
            NativeOptimizer::Lion => Lion::default().graph(),
            NativeOptimizer::Rmsprop => Rmsprop::default().graph(),
        }
    }

    /// The state slots [`NativeOptimizer::step`] takes, in the built-in's order.
    pub fn slots(self) -> &'static [&'static str] {
        match self {
            NativeOptimizer::Adam | NativeOptimizer::AdamW => &["exp_avg", "exp_avg_sq"],
            NativeOptimizer::SgdMomentum => &["momentum_buffer"],
            NativeOptimizer::Lion => &["exp_avg"],
            NativeOptimizer::Rmsprop => &["square_avg"],
        }
    }

    /// Bytes a step must move per f32 element: read and write the parameter and every slot,
    /// read the gradient (Adam 28 B, the others 20 B).
    pub fn bytes_per_element(self) -> usize {
        4 * (3 + 2 * self.slots().len())
    }

    /// The name of the instruction set [`NativeOptimizer::step`] uses on this CPU:
    /// `"avx512"`, `"avx2"` or `"portable"`.
    pub fn isa() -> &'static str {
        Isa::best().name()
    }

    /// Applies update number `step` (1-based, this update included, as
    /// [`ParamState::step`](crate::ParamState) `+ 1`) to `param` and `state` in place, with the
    /// loop compiled for the best instruction set of this CPU.
    ///
    /// `state` holds one buffer per slot of [`NativeOptimizer::slots`], in that order, each as
    /// long as `param`; so does `grad`. Everything is checked first: on error nothing changes.
    pub fn step(
        self,
        step: u64,
        param: &mut [f32],
        grad: &[f32],
        state: &mut [&mut [f32]],
    ) -> Result<()> {
        self.step_with(Isa::best(), step, param, grad, state)
    }

    /// [`NativeOptimizer::step`] with the loop compiled for `isa`, which must be
    /// [available](Isa::is_available) on this CPU.
    pub fn step_with(
        self,
        isa: Isa,
        step: u64,
        param: &mut [f32],
        grad: &[f32],
        state: &mut [&mut [f32]],
    ) -> Result<()> {
        let n = param.len();
        if grad.len() != n {
            return Err(Error::LengthMismatch {
                what: "grad".into(),
                expected: n,
                actual: grad.len(),
            });
        }
        if step == 0 {
            return Err(Error::InvalidOption {
                option: "step",
                reason: "steps count from 1 (the update being made)",
            });
        }
        let isa = Detected::new(isa).ok_or(Error::InvalidOption {
            option: "isa",
            reason: "this CPU lacks the instruction set",
        })?;
        let t = step as f64;
        match self {
            NativeOptimizer::Adam => {
                let state = self.buffers::<2>(state, n)?;
                dispatch(isa, &AdamLoop::<false>::new(t), param, grad, state);
            }
            NativeOptimizer::AdamW => {
                let state = self.buffers::<2>(state, n)?;
                dispatch(isa, &AdamLoop::<true>::new(t), param, grad, state);
            }
            NativeOptimizer::SgdMomentum => {
                let state = self.buffers::<1>(state, n)?;
                dispatch(isa, &SgdMomentumLoop::new(t), param, grad, state);
            }
            NativeOptimizer::Lion => {
                let state = self.buffers::<1>(state, n)?;
                dispatch(isa, &LionLoop::new(), param, grad, state);
            }
            NativeOptimizer::Rmsprop => {
                let state = self.buffers::<1>(state, n)?;
                dispatch(isa, &RmspropLoop::new(), param, grad, state);
            }
        }
        Ok(())
    }

    /// `state` as exactly `N` buffers of `len` elements, or the error saying why not.
    fn buffers<'a, const N: usize>(
        self,
        state: &'a mut [&mut [f32]],
        len: usize,
    ) -> Result<[&'a mut [f32]; N]> {
        let count = state.len();
        let state: &mut [&mut [f32]; N] = state.try_into().map_err(|_| Error::StateMismatch {
            slot: format!("#{}", count.min(N)),
            reason: "the state has a different number of slots than the optimizer",
        })?;
        for (name, buffer) in self.slots().iter().zip(state.iter()) {
            if buffer.len() != len {
                return Err(Error::LengthMismatch {
                    what: format!("state slot `{name}`"),
                    expected: len,
                    actual: buffer.len(),
                });
            }
        }
        Ok(state.each_mut().map(|b| &mut **b))
    }
}

/// The options of the `sgd_momentum` built-in.
fn sgd_momentum() -> Sgd {
    Sgd {
        momentum: 0.9,
        ..Sgd::default()
    }
}

/// 1.0 for true, 0.0 for false: the value of a comparison op.
#[inline(always)]
fn truth(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// One optimizer's element loop with this step's scalars, over `N` state buffers that the
/// caller checked are as long as the parameter.
trait ElementLoop<const N: usize> {
    /// Updates `param` and `state` in place. Inlined into each `#[target_feature]` wrapper,
    /// so that rustc vectorizes it for that wrapper's instruction set.
    fn run(&self, param: &mut [f32], grad: &[f32], state: [&mut [f32]; N]);
}

/// Runs `l` with the version compiled for the detected instruction set.
fn dispatch<const N: usize, L: ElementLoop<N>>(
    isa: Detected,
    l: &L,
    param: &mut [f32],
    grad: &[f32],
    state: [&mut [f32]; N],
) {
    match isa.0 {
        Isa::Portable => l.run(param, grad, state),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Detected::new(Isa::Avx512)`, which checked
        // `is_x86_feature_detected!` for avx512f, avx512vl, avx2 and fma: every feature that
        // `run_avx512` enables is present on this CPU.
        Isa::Avx512 => unsafe { run_avx512(l, param, grad, state) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Detected::new(Isa::Avx2)`, which checked
        // `is_x86_feature_detected!` for avx2 and fma: every feature that `run_avx2` enables
        // is present on this CPU.
        Isa::Avx2 => unsafe { run_avx2(l, param, grad, state) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => unreachable!("Detected::new finds them on x86-64 only"),
    }
}

/// `l.run` compiled for AVX-512 (F, VL) with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn run_avx512<const N: usize, L: ElementLoop<N>>(
    l: &L,
    param: &mut [f32],
    grad: &[f32],
    state: [&mut [f32]; N],
) {
    l.run(param, grad, state)
}

/// `l.run` compiled for AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<const N: usize, L: ElementLoop<N>>(
    l: &L,
    param: &mut [f32],
    grad: &[f32],
    state: [&mut [f32]; N],
) {
    l.run(param, grad, state)
}

/// Adam's (`DECOUPLED = false`) or AdamW's per-step scalars, as in `optjit show adam`
/// (`adamw`).
#[derive(Clone, Copy, Debug)]
struct AdamLoop<const DECOUPLED: bool> {
    /// Adam: the L2 penalty `λ`, and whether `λ ≠ 0` (the penalty's select).
    weight_decay: f32,
    l2: bool,
    /// AdamW: `1 − lr·λ`.
    decay: f32,
    /// `1 − β₁`, the first moment's lerp weight.
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    /// `1 / √(1 − β₂ᵗ)` (the built-ins divide by per-step scalars through their reciprocal).
    inv_bc2_sqrt: f32,
    eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
}

impl<const DECOUPLED: bool> AdamLoop<DECOUPLED> {
    /// The scalars of step `t`: the prologue in f64, each rounded once.
    fn new(t: f64) -> Self {
        let (lr, (b1, b2), eps, wd) = if DECOUPLED {
            let o = AdamW::default();
            (o.lr, o.betas, o.eps, o.weight_decay)
        } else {
            let o = Adam::default();
            (o.lr, o.betas, o.eps, o.weight_decay)
        };
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        AdamLoop {
            weight_decay: wd as f32,
            l2: wd != 0.0,
            decay: (1.0 - lr * wd) as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
        }
    }
}

impl<const DECOUPLED: bool> ElementLoop<2> for AdamLoop<DECOUPLED> {
    #[inline(always)]
    fn run(&self, param: &mut [f32], grad: &[f32], [m, v]: [&mut [f32]; 2]) {
        let s = *self;
        let elements = param
            .iter_mut()
            .zip(grad)
            .zip(m.iter_mut())
            .zip(v.iter_mut());
        for (((p, &g), m), v) in elements {
            let (theta, g) = if DECOUPLED {
                (*p * s.decay, g)
            } else {
                (*p, if s.l2 { g + s.weight_decay * *p } else { g })
            };
            let m_new = *m + s.one_minus_b1 * (g - *m);
            let v_new = s.b2 * *v + s.one_minus_b2 * g * g;
            let denom = v_new.sqrt() * s.inv_bc2_sqrt + s.eps;
            *p = theta - s.step_size * m_new / denom;
            *m = m_new;
            *v = v_new;
        }
    }
}

/// SGD with momentum's per-step scalars, as in `optjit show sgd_momentum`.
#[derive(Clone, Copy, Debug)]
struct SgdMomentumLoop {
    /// The L2 penalty `λ`, and whether `λ ≠ 0`.
    weight_decay: f32,
    l2: bool,
    momentum: f32,
    one_minus_dampening: f32,
    /// Step 1, where the buffer starts as the gradient.
    first: bool,
    lr: f32,
}

impl SgdMomentumLoop {
    /// The scalars of step `t`.
    fn new(t: f64) -> Self {
        let o = sgd_momentum();
        SgdMomentumLoop {
            weight_decay: o.weight_decay as f32,
            l2: o.weight_decay != 0.0,
            momentum: o.momentum as f32,
            one_minus_dampening: (1.0 - o.dampening) as f32,
            first: t == 1.0,
            lr: o.lr as f32,
        }
    }
}

impl ElementLoop<1> for SgdMomentumLoop {
    #[inline(always)]
    fn run(&self, param: &mut [f32], grad: &[f32], [buf]: [&mut [f32]; 1]) {
        let s = *self;
        for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
            let g = if s.l2 { g + s.weight_decay * *p } else { g };
            let b_new = if s.first {
                g
            } else {
                s.momentum * *b + s.one_minus_dampening * g
            };
            *p -= s.lr * b_new;
            *b = b_new;
        }
    }
}

/// Lion's scalars (the same every step), as in `optjit show lion`.
#[derive(Clone, Copy, Debug)]
struct LionLoop {
    /// `1 − lr·λ`.
    decay: f32,
    b1: f32,
    one_minus_b1: f32,
    lr: f32,
    b2: f32,
    one_minus_b2: f32,
}

impl LionLoop {
    fn new() -> Self {
        let o = Lion::default();
        let (b1, b2) = o.betas;
        LionLoop {
            decay: (1.0 - o.lr * o.weight_decay) as f32,
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            lr: o.lr as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
        }
    }
}

impl ElementLoop<1> for LionLoop {
    #[inline(always)]
    fn run(&self, param: &mut [f32], grad: &[f32], [m]: [&mut [f32]; 1]) {
        let s = *self;
        for ((p, &g), m) in param.iter_mut().zip(grad).zip(m.iter_mut()) {
            let c = s.b1 * *m + s.one_minus_b1 * g;
            // torch.sign: (c > 0) − (c < 0), 0 for ±0 and NaN.
            let sign = truth(c > 0.0) - truth(c < 0.0);
            *p = *p * s.decay - s.lr * sign;
            *m = s.b2 * *m + s.one_minus_b2 * g;
        }
    }
}

/// RMSprop's scalars (the same every step), as in `optjit show rmsprop`.
#[derive(Clone, Copy, Debug)]
struct RmspropLoop {
    /// The L2 penalty `λ`, and whether `λ ≠ 0`.
    weight_decay: f32,
    l2: bool,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    lr: f32,
}

impl RmspropLoop {
    fn new() -> Self {
        let o = Rmsprop::default();
        RmspropLoop {
            weight_decay: o.weight_decay as f32,
            l2: o.weight_decay != 0.0,
            alpha: o.alpha as f32,
            one_minus_alpha: (1.0 - o.alpha) as f32,
            eps: o.eps as f32,
            lr: o.lr as f32,
        }
    }
}

impl ElementLoop<1> for RmspropLoop {
    #[inline(always)]
    fn run(&self, param: &mut [f32], grad: &[f32], [v]: [&mut [f32]; 1]) {
        let s = *self;
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(v.iter_mut()) {
            let g = if s.l2 { g + s.weight_decay * *p } else { g };
            let v_new = s.alpha * *v + s.one_minus_alpha * g * g;
            let denom = v_new.sqrt() + s.eps;
            *p -= s.lr * g / denom;
            *v = v_new;
        }
    }
}

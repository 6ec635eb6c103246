//! optax's schedules as expressions of the step: scalar functions compiled into the prologue,
//! so a scheduled learning rate costs nothing per element.
//!
//! Each function follows its namesake in `optax.schedules` (`_schedule.py`, `_join.py`)
//! operation for operation, with the same clipping at the ends, and returns an [`Expr`]
//! evaluated in f64 by the prologue. In the text form they are built-in functions that read
//! `step` implicitly (see [`crate::text`]): `linear`, `polynomial`, `cosine_decay`,
//! `warmup_cosine_decay`, `exponential_decay`, `piecewise_constant`, `constant` and `join`.
//!
//! **Count, not step.** optax evaluates a schedule at `count`, the number of updates already
//! done (0 at the first update); optjit's [`Builder::step`] is 1-based and includes this
//! update, so every function here takes the count as its first argument and [`count`] gives
//! `step − 1`. `linear_schedule(count(&b), 1.0, 0.0, 100.0, 0.0)` is 1 at the first step, as
//! optax's is at count 0.
//!
//! **Arguments.** Values that optax takes as arrays (`init_value`, `end_value`, `power`,
//! `alpha`, `exponent`, ...) are [`IntoExpr`]: a hyperparameter or an `f64`. Arguments on
//! which optax branches in Python (`transition_steps <= 0`, `decay_rate < 1`, the sorted
//! boundaries, ...) are `f64` (or `bool`), and the branch is taken while building. Every
//! array-like argument and the count must be per-step scalars; a per-element one is
//! [`Error::ScalarRequired`], and where optax raises `ValueError` the mistake is
//! [`Error::InvalidOption`] — both reported by [`Builder::finish`], like any mistake made
//! inside an expression.
//!
//! ```
//! use optjit::schedule::graph::{count, warmup_cosine_decay_schedule};
//! use optjit::Builder;
//!
//! // Adam-free SGD whose learning rate warms up for 100 steps, then decays over 900.
//! let b = Builder::new("sgd_warmup_cosine");
//! let lr = b.hyper("lr", 0.1);
//! let lr_t = warmup_cosine_decay_schedule(count(&b), 0.0, lr, 100.0, 1000.0, 0.0, 1.0);
//! b.set_param(b.param() - lr_t * b.grad());
//! let program = optjit::passes::compile(&b.finish()?)?;
//! assert_eq!(program.stage.body.len(), 2, "lr_t * grad, param - that: the schedule is all prologue");
//! # Ok::<(), optjit::Error>(())
//! ```

use crate::ir::{Builder, Expr, IntoExpr, Rank};
use crate::{Error, Result};

/// optax's `count` for this update: `step − 1`, the number of updates already done.
pub fn count(b: &Builder) -> Expr<'_> {
    b.step() - 1.0
}

/// The value of a schedule at the 1-based `step`, as the prologue computes it (in f64, every
/// hyperparameter at its default): for checking a schedule, in a test or a doc.
///
/// ```
/// use optjit::schedule::graph::{count, linear_schedule, value_at};
///
/// let at = |step| value_at(step, |b| linear_schedule(count(b), 1.0, 0.0, 4.0, 0.0));
/// assert_eq!(at(1)?, 1.0); // count 0
/// assert_eq!(at(3)?, 0.5); // count 2
/// assert_eq!(at(9)?, 0.0); // held at the end value
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn value_at(step: u64, schedule: impl for<'b> Fn(&'b Builder) -> Expr<'b>) -> Result<f64> {
    Ok(super::ScalarExpr::build(schedule)?.at_step(step))
}

/// `x > 0`, false for NaN (optax's `not x > 0` is true for NaN).
fn is_positive(x: f64) -> bool {
    x > 0.0
}

/// True when every argument is a per-step scalar; else records [`Error::ScalarRequired`]
/// naming the first that is not.
fn scalars(function: &str, args: &[(&str, Expr<'_>)]) -> bool {
    for &(name, e) in args {
        let b = e.builder();
        if b.rank(e) == Rank::Element {
            b.mistake(Error::ScalarRequired {
                what: format!("`{name}` of `{function}`"),
            });
            return false;
        }
    }
    true
}

/// optax's `constant_schedule(value)`: `value` at every count.
///
/// ```
/// use optjit::schedule::graph::{constant_schedule, count, value_at};
///
/// assert_eq!(value_at(7, |b| constant_schedule(count(b), 0.25))?, 0.25);
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn constant_schedule<'b>(count: Expr<'b>, value: impl IntoExpr<'b>) -> Expr<'b> {
    let b = count.builder();
    let value = value.into_expr(b);
    scalars("constant_schedule", &[("count", count), ("value", value)]);
    value
}

/// optax's `polynomial_schedule(init_value, end_value, power, transition_steps,
/// transition_begin=0)`:
///
/// ```text
/// k = clip(count − B, 0, T)
/// (I − E) · (1 − k / T)^P + E
/// ```
///
/// so `I` up to count `B`, `E` from count `B + T` on. As in optax, `transition_steps <= 0`
/// gives the constant `init_value` and a negative `transition_begin` counts as 0.
///
/// ```
/// use optjit::schedule::graph::{count, polynomial_schedule, value_at};
///
/// // optax's docstring example: counts 0, 5, 6, 104, 105, 110.
/// let at = |step| value_at(step, |b| polynomial_schedule(count(b), 1.0, 0.01, 2.0, 100.0, 5.0));
/// assert_eq!(at(1)?, 1.0);
/// assert_eq!(at(6)?, 1.0);
/// assert!((at(7)? - 0.9803).abs() < 1e-4);
/// assert!((at(105)? - 0.0101).abs() < 1e-4);
/// assert_eq!(at(106)?, 0.01);
/// assert_eq!(at(111)?, 0.01);
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn polynomial_schedule<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    end_value: impl IntoExpr<'b>,
    power: impl IntoExpr<'b>,
    transition_steps: f64,
    transition_begin: f64,
) -> Expr<'b> {
    let b = count.builder();
    let (init, end, power) = (
        init_value.into_expr(b),
        end_value.into_expr(b),
        power.into_expr(b),
    );
    let args = [
        ("count", count),
        ("init_value", init),
        ("end_value", end),
        ("power", power),
    ];
    if !scalars("polynomial_schedule", &args) || transition_steps <= 0.0 {
        return init;
    }
    let begin = if transition_begin < 0.0 {
        0.0
    } else {
        transition_begin
    };
    let k = (count - begin).max(0.0).min(transition_steps);
    let frac = 1.0 - k / transition_steps;
    (init - end) * frac.pow(power) + end
}

/// optax's `linear_schedule(init_value, end_value, transition_steps, transition_begin=0)`:
/// [`polynomial_schedule`] with power 1 (`x^1` is `x` exactly), so
///
/// ```text
/// I + (E − I) · clip(count − B, 0, T) / T     (computed as (I − E)·(1 − k/T)^1 + E)
/// ```
///
/// ```
/// use optjit::schedule::graph::{count, linear_schedule, value_at};
///
/// let at = |step| value_at(step, |b| linear_schedule(count(b), 1.0, 0.01, 100.0, 0.0));
/// assert_eq!(at(1)?, 1.0); // optax's docstring: 1 at count 0 ...
/// assert_eq!(at(101)?, 0.01); // ... and 0.01 at count 100
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn linear_schedule<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    end_value: impl IntoExpr<'b>,
    transition_steps: f64,
    transition_begin: f64,
) -> Expr<'b> {
    polynomial_schedule(
        count,
        init_value,
        end_value,
        1.0,
        transition_steps,
        transition_begin,
    )
}

/// optax's `cosine_decay_schedule(init_value, decay_steps, alpha=0, exponent=1)`:
///
/// ```text
/// k = min(count, D)
/// I · ((1 − α) · (½ · (1 + cos(π · k / D)))^p + α)
/// ```
///
/// so `I` at count 0 and `α · I` from count `D` on. `decay_steps` must be positive (optax
/// raises `ValueError`): otherwise [`Error::InvalidOption`].
///
/// ```
/// use optjit::schedule::graph::{cosine_decay_schedule, count, value_at};
///
/// let at = |step| value_at(step, |b| cosine_decay_schedule(count(b), 2.0, 10.0, 0.1, 1.0));
/// assert_eq!(at(1)?, 2.0);
/// assert!((at(6)? - 2.0 * (0.9 * 0.5 + 0.1)).abs() < 1e-15); // halfway
/// assert!((at(50)? - 0.2).abs() < 1e-15); // α·I after decay_steps
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn cosine_decay_schedule<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    decay_steps: f64,
    alpha: impl IntoExpr<'b>,
    exponent: impl IntoExpr<'b>,
) -> Expr<'b> {
    let b = count.builder();
    let (init, alpha, exponent) = (
        init_value.into_expr(b),
        alpha.into_expr(b),
        exponent.into_expr(b),
    );
    let args = [
        ("count", count),
        ("init_value", init),
        ("alpha", alpha),
        ("exponent", exponent),
    ];
    if !scalars("cosine_decay_schedule", &args) {
        return init;
    }
    if !is_positive(decay_steps) {
        return b.mistake(Error::InvalidOption {
            option: "decay_steps",
            reason: "a cosine decay needs a positive number of decay steps",
        });
    }
    let k = count.min(decay_steps);
    let cosine_decay = 0.5 * (1.0 + (std::f64::consts::PI * k / decay_steps).cos());
    let decayed = (1.0 - alpha) * cosine_decay.pow(exponent) + alpha;
    init * decayed
}

/// optax's `warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
/// end_value=0, exponent=1)`: a [`linear_schedule`] from `I` to the peak `P` over `W` steps
/// joined at count `W` ([`join_schedules`]) to a [`cosine_decay_schedule`] of `P` over
/// `D − W` steps (`decay_steps` includes the warmup) with `α = E / P`:
///
/// ```text
/// count < W:  linear(count; I → P over W)
/// otherwise:  cosine_decay(count − W; P, D − W, α = (P == 0 ? 0 : E / P), p)
/// ```
///
/// optax picks `α` with a Python `if peak_value == 0.0`; here the peak may be a
/// hyperparameter, so the choice is a `select` in the graph, with the same result.
/// `decay_steps − warmup_steps` must be positive: otherwise [`Error::InvalidOption`].
///
/// ```
/// use optjit::schedule::graph::{count, value_at, warmup_cosine_decay_schedule};
///
/// let at = |step| {
///     value_at(step, |b| {
///         let lr = b.hyper("lr", 1.0);
///         warmup_cosine_decay_schedule(count(b), 0.0, lr, 10.0, 110.0, 0.0, 1.0)
///     })
/// };
/// assert_eq!(at(1)?, 0.0);
/// assert_eq!(at(6)?, 0.5); // halfway through the warmup
/// assert_eq!(at(11)?, 1.0); // the peak, at count 10
/// assert!((at(61)? - 0.5).abs() < 1e-15); // halfway through the decay
/// assert_eq!(at(1000)?, 0.0);
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn warmup_cosine_decay_schedule<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    peak_value: impl IntoExpr<'b>,
    warmup_steps: f64,
    decay_steps: f64,
    end_value: impl IntoExpr<'b>,
    exponent: impl IntoExpr<'b>,
) -> Expr<'b> {
    let b = count.builder();
    let (init, peak, end, exponent) = (
        init_value.into_expr(b),
        peak_value.into_expr(b),
        end_value.into_expr(b),
        exponent.into_expr(b),
    );
    let args = [
        ("count", count),
        ("init_value", init),
        ("peak_value", peak),
        ("end_value", end),
        ("exponent", exponent),
    ];
    if !scalars("warmup_cosine_decay_schedule", &args) {
        return init;
    }
    if !is_positive(decay_steps - warmup_steps) {
        return b.mistake(Error::InvalidOption {
            option: "decay_steps",
            reason: "a warmup cosine decay needs more decay steps than warmup steps",
        });
    }
    let alpha = b.select(peak.eq(0.0), 0.0, end / peak);
    let warmup = linear_schedule(count, init, peak, warmup_steps, 0.0);
    let decay = cosine_decay_schedule(
        count - warmup_steps,
        peak,
        decay_steps - warmup_steps,
        alpha,
        exponent,
    );
    join(count, &[warmup, decay], &[warmup_steps])
}

/// optax's `exponential_decay(init_value, transition_steps, decay_rate, transition_begin=0,
/// staircase=False, end_value=None)`:
///
/// ```text
/// c = count − B
/// p = c / T                 (⌊c / T⌋ when staircase)
/// v = c <= 0 ? I : I · rate^p
/// v = max(v, E) if rate < 1 else min(v, E)     (only with an end value)
/// ```
///
/// As in optax, `transition_steps <= 0` or `decay_rate == 0` give the constant
/// `init_value` (the end value then has no effect), and a negative `transition_begin`
/// counts as 0.
///
/// ```
/// use optjit::schedule::graph::{count, exponential_decay, value_at};
///
/// // Halve every 10 updates, in steps, never below 0.2.
/// let at = |step| {
///     value_at(step, |b| {
///         let end = b.constant(0.2);
///         exponential_decay(count(b), 1.0, 10.0, 0.5, 0.0, true, Some(end))
///     })
/// };
/// assert_eq!(at(10)?, 1.0); // count 9
/// assert_eq!(at(11)?, 0.5); // count 10
/// assert_eq!(at(21)?, 0.25);
/// assert_eq!(at(31)?, 0.2); // clipped at the end value
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn exponential_decay<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    transition_steps: f64,
    decay_rate: f64,
    transition_begin: f64,
    staircase: bool,
    end_value: Option<Expr<'b>>,
) -> Expr<'b> {
    let b = count.builder();
    let init = init_value.into_expr(b);
    let mut args = vec![("count", count), ("init_value", init)];
    args.extend(end_value.map(|e| ("end_value", e)));
    if !scalars("exponential_decay", &args) || transition_steps <= 0.0 || decay_rate == 0.0 {
        return init;
    }
    let begin = if transition_begin < 0.0 {
        0.0
    } else {
        transition_begin
    };
    let decreased_count = count - begin;
    let mut p = decreased_count / transition_steps;
    if staircase {
        p = p.floor();
    }
    let decayed = init * b.constant(decay_rate).pow(p);
    let value = b.select(decreased_count.le(0.0), init, decayed);
    match end_value {
        Some(end) if decay_rate < 1.0 => value.max(end),
        Some(end) => value.min(end),
        None => value,
    }
}

/// optax's `piecewise_constant_schedule(init_value, boundaries_and_scales)`: `init_value`
/// times the product of the scales whose boundary the count has reached, computed as optax
/// does, over the boundaries in increasing order:
///
/// ```text
/// v = I
/// for (t, s) in sorted(boundaries_and_scales):
///     ind = max(0, sign(t − count))          (1 before the boundary, 0 from it on)
///     v = v · ind + (1 − ind) · s · v
/// ```
///
/// As in optax, every scale must be non-negative (NaN is not); and as with the keys of its
/// `dict`, no boundary may appear twice (nor be NaN). Otherwise [`Error::InvalidOption`].
///
/// ```
/// use optjit::schedule::graph::{count, piecewise_constant_schedule, value_at};
///
/// let at = |step| {
///     value_at(step, |b| piecewise_constant_schedule(count(b), 1.0, &[(200.0, 0.5), (100.0, 0.1)]))
/// };
/// assert_eq!(at(100)?, 1.0); // count 99
/// assert_eq!(at(101)?, 0.1); // count 100: the boundary is reached
/// assert_eq!(at(250)?, 0.05);
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn piecewise_constant_schedule<'b>(
    count: Expr<'b>,
    init_value: impl IntoExpr<'b>,
    boundaries_and_scales: &[(f64, f64)],
) -> Expr<'b> {
    let b = count.builder();
    let init = init_value.into_expr(b);
    if !scalars(
        "piecewise_constant_schedule",
        &[("count", count), ("init_value", init)],
    ) {
        return init;
    }
    if boundaries_and_scales
        .iter()
        .any(|&(_, s)| !(is_positive(s) || s == 0.0))
    {
        return b.mistake(Error::InvalidOption {
            option: "boundaries_and_scales",
            reason: "a piecewise constant schedule expects non-negative scale factors",
        });
    }
    let mut sorted = boundaries_and_scales.to_vec();
    if sorted.iter().any(|(t, _)| t.is_nan()) {
        return b.mistake(Error::InvalidOption {
            option: "boundaries_and_scales",
            reason: "a piecewise constant schedule's boundaries must be numbers",
        });
    }
    sorted.sort_by(|x, y| x.0.total_cmp(&y.0));
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return b.mistake(Error::InvalidOption {
            option: "boundaries_and_scales",
            reason: "a piecewise constant schedule's boundaries must differ",
        });
    }
    let mut v = init;
    for (threshold, scale) in sorted {
        let indicator = b.constant(0.0).max((threshold - count).sign());
        v = v * indicator + (1.0 - indicator) * scale * v;
    }
    v
}

/// optax's `join_schedules(schedules, boundaries)`: the first schedule before the first
/// boundary, then each next one from its boundary on, evaluated at the count since that
/// boundary:
///
/// ```text
/// out = s₀(count)
/// for (bₖ, sₖ) in zip(boundaries, schedules[1:]):
///     out = count < bₖ ? out : sₖ(count − bₖ)
/// ```
///
/// Boundaries are counts from the start, not from the previous boundary. There must be one
/// boundary less than schedules (optax's `zip` would drop the extra ones silently):
/// otherwise [`Error::InvalidOption`].
///
/// ```
/// use optjit::schedule::graph::{constant_schedule, count, join_schedules, linear_schedule, value_at};
///
/// // Hold 1 for 10 updates, then fall linearly to 0 over the next 10.
/// let at = |step| {
///     value_at(step, |b| {
///         let hold = |c| constant_schedule(c, 1.0);
///         let fall = |c| linear_schedule(c, 1.0, 0.0, 10.0, 0.0);
///         join_schedules(count(b), &[&hold, &fall], &[10.0])
///     })
/// };
/// assert_eq!(at(10)?, 1.0); // count 9
/// assert_eq!(at(11)?, 1.0); // count 10: the second schedule at its count 0
/// assert_eq!(at(16)?, 0.5);
/// assert_eq!(at(40)?, 0.0);
/// # Ok::<(), optjit::Error>(())
/// ```
pub fn join_schedules<'b>(
    count: Expr<'b>,
    schedules: &[&dyn Fn(Expr<'b>) -> Expr<'b>],
    boundaries: &[f64],
) -> Expr<'b> {
    let b = count.builder();
    if schedules.len() != boundaries.len() + 1 {
        return b.mistake(Error::InvalidOption {
            option: "boundaries",
            reason: "joined schedules need one boundary less than schedules",
        });
    }
    let mut values = vec![schedules[0](count)];
    for (schedule, &boundary) in schedules[1..].iter().zip(boundaries) {
        values.push(schedule(count - boundary));
    }
    join(count, &values, boundaries)
}

/// The selects of [`join_schedules`] over schedules already evaluated, each at its own count
/// (`values[k]` at `count − boundaries[k − 1]`); `values` has one entry more than
/// `boundaries`.
pub(crate) fn join<'b>(count: Expr<'b>, values: &[Expr<'b>], boundaries: &[f64]) -> Expr<'b> {
    let b = count.builder();
    let mut out = values[0];
    for (&value, &boundary) in values[1..].iter().zip(boundaries) {
        out = b.select(count.lt(boundary), out, value);
    }
    out
}

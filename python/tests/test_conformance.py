"""Conformance of ``optjit.torch`` against ``torch.optim``, side by side (issue 15, item 3).

Every test runs an optjit optimizer and its twin on the same tensors and compares them after
every step: the twin is ``torch.optim.X(foreach=False)`` for PyTorch's eleven classes, and
a short PyTorch reference (``reference.py``: the math of ``src/optim/<name>.rs``, written
the way torch.optim's single-tensor code is) for Lion, Adan, AdaBelief, LAMB and LARS.
Compared are the parameters and every state tensor the twin has (the same dtype and shape;
``step`` exactly); ``test_state_dict_has_torch_format`` also wants no other state.

Data: six tensors of 1, 7, 33, 257, 3×11 and 5 elements (around the vector widths), values
≈ N(0, 0.8²) with exact zeros; gradients of mixed signs and magnitudes from 1e-4 to 10, with
exact ±0 and an f32 subnormal; 20 steps in which some tensors have no gradient (``MISSING``):
tensor 4 gets its first one at step 11, tensor 5 never does.

Tolerances, per element and after every step, ``|optjit − twin| ≤ atol + rtol·|twin|``:

* float32: ``rtol = 1e-5, atol = 1e-7``; float64: ``rtol = atol = 1e-12`` — the values of
  ``/work/shared/conformance/README.md``. float64 runs with torch's default dtype float64
  (as that data was recorded) and with the default float32, where PyTorch keeps ``step``
  and scalar state (ASGD's ``eta``/``mu``, NAdam's ``mu_product``) in float32; there ASGD
  and NAdam are compared with ``rtol = 1e-6, atol = 1e-8`` (``F32_SCALARS_TOL``: PyTorch steps with the
  float32-rounded scalars, optjit with float64 ones, rounding only what it stores).
  Over 20 steps float32 rounding alone can exceed the float32 bound where a state cancels
  (an element of a momentum buffer summing terms of opposite signs): PyTorch's own value is
  then farther than 1e-5 from the exact one. So each float32 run has a shadow, the twin in
  float64 on the same values, and an element outside the bound passes only if optjit is no
  farther from the shadow than twice the twin is, plus the bound (``assert_all_close``).
* bfloat16 (the README of ``/work/shared/conformance-bf16``): optjit computes in f32 and
  rounds each stored tensor once, as PyTorch's fused CPU kernels do. So bf16 runs are
  compared with ``torch.optim.X(fused=True)`` (Adam, AdamW, SGD, Adagrad) and, for every
  optimizer, with the twin run in f32 on the bf16 values, each stored tensor rounded to bf16
  after every step. Bound: ``BF16_ULPS`` = 38 bf16 ulps per element (the README's spread
  between PyTorch's own bf16 implementations), differences below ``BF16_FLOOR`` = 2⁻¹⁶ of
  the tensor's largest value ignored (a difference of one f32 rounding in a result that
  cancels to ~0 is thousands of ulps of that result), and ``BF16_EXACT`` = 97% of all values
  bit-identical; PyTorch's per-operation bf16 Adam fails this against its fused one
  (``test_bf16_comparison_is_live``). Measured: 0 ulps against fused Adam/AdamW, ≤ 23 where
  PyTorch's kernels round differently (its ``add_(alpha=)`` is one FMA).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

import optjit.torch as ot
import reference
from torch.optim.optimizer import register_optimizer_step_post_hook

from harness import (  # the data, cases and comparison; see harness.py
    ALL, CASES, F32_SCALARS, F32_SCALARS_TOL, MISSING, MODES, ROOT, SHAPES, STEPS, TOL,
    TORCH, Side, assert_close, case_params, compare, feed, gradients, initial_values, ours,
    run, same_options, sides, theirs,
)


@pytest.fixture(params=list(MODES))
def mode(request):
    dtype, default = MODES[request.param]
    torch.set_default_dtype(default)
    return dtype


# --- Every option, f32 and f64 ------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", case_params(ALL))
def test_matches_twin_step_by_step(name, kwargs, mode, monkeypatch):
    if mode == torch.float64 and torch.get_default_dtype() == torch.float32 and name in F32_SCALARS:
        monkeypatch.setitem(TOL, torch.float64, F32_SCALARS_TOL)
    both = sides(name, kwargs, mode)
    run(both, gradients(mode), name)
    # A parameter that never had a gradient has not moved, nor has its step count.
    assert torch.equal(both[0].params[5], initial_values(mode)[5])
    assert both[0].opt.state.get(both[0].params[5], {}).get("step", 0) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_comparison_is_live(dtype):
    """An optjit value one ulp off passes; 1e-4 off fails, as does a missing state key."""
    torch.set_default_dtype(dtype)
    both = sides("Adam", dict(lr=0.01), dtype)
    run(both, gradients(dtype)[:3], "Adam")
    state = both[0].opt.state[both[0].params[3]]
    v = state["exp_avg_sq"]
    i = int(v.argmax())
    v[i] = torch.nextafter(v[i], v.new_tensor(math.inf))
    compare(both, "one ulp")
    v[i] *= 1 + 1e-4
    with pytest.raises(AssertionError, match="param 3, state 'exp_avg_sq'.* first at " + str(i)):
        compare(both, "1e-4")
    v[i] /= 1 + 1e-4
    del state["exp_avg"]
    with pytest.raises(AssertionError, match="lacks"):
        compare(both, "missing")


@pytest.mark.parametrize("name", TORCH)
def test_tensor_lr(name):
    kwargs = dict(CASES[name][-1][1])
    kwargs["lr"] = torch.tensor(kwargs.get("lr", 0.01))
    if name == "SGD":
        kwargs["weight_decay"] = torch.tensor(0.1)
    run(sides(name, kwargs, torch.float32), gradients(torch.float32), name)


def test_tensor_betas():
    kwargs = dict(lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.95)), amsgrad=True)
    run(sides("Adam", kwargs, torch.float32), gradients(torch.float32), "Adam")


@pytest.mark.parametrize("name", ALL)
def test_param_groups_with_different_options(name):
    """Three groups: the constructor's options, and two other cases of the class."""
    cases = CASES[name]
    groups = [{"params": [0, 1]}, {"params": [2, 3], **cases[-1][1]},
              {"params": [4, 5], **cases[1][1]}]
    both = sides(name, cases[0][1], torch.float32, groups)
    run(both, gradients(torch.float32), name)
    same_options(both[0].opt, both[1].opt)


@pytest.mark.parametrize("name", ALL)
def test_missing_gradients_leave_parameter_and_state_untouched(name):
    params = [torch.nn.Parameter(v) for v in initial_values(torch.float32)]
    # AdaBelief's last case does not degenerate to SGD: it leaves parameters in place while
    # the variance is intractable (its first steps), which is not what this test looks at.
    options = CASES[name][0 if name == "AdaBelief" else -1][1]
    opt = ours(name, params, **options)
    grads = gradients(torch.float32, missing=set())
    feed(params, grads[0])
    opt.step()
    for k in (1, 2):
        before = {i: {key: t.clone() for key, t in opt.state[p].items()}
                  for i, p in enumerate(params)}
        values = [p.detach().clone() for p in params]
        feed(params, [None if i in (0, 3) else g for i, g in enumerate(grads[k])])
        opt.step()
        for i in (0, 3):
            assert torch.equal(params[i], values[i])
            assert opt.state[params[i]].keys() == before[i].keys()
            for key, t in opt.state[params[i]].items():
                assert torch.equal(t, before[i][key]), (i, key)
        assert not torch.equal(params[1], values[1])
        if "step" in opt.state[params[1]]:
            assert opt.state[params[1]]["step"].item() == k + 1


# --- Schedulers -----------------------------------------------------------------------------

# Options that are decay rates in [0, 1): a change keeps them there.
DECAYS = {"betas", "rho", "alpha", "momentum", "dampening"}
# Read only when a parameter's state is created.
FIXED = {"initial_accumulator_value"}


def wiggled(key, value, k, j=0):
    f = 1 + 0.3 * math.sin(1.7 * k + j)
    if isinstance(value, tuple):
        return tuple(wiggled(key, v, k, j + n + 1) for n, v in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, float) or value == 0 or key in FIXED:
        return value
    if key in DECAYS and value < 1:
        return 1 - (1 - value) * f
    return value * f


@pytest.mark.parametrize("name", ALL)
def test_every_hyperparameter_is_read_at_every_step(name):
    """LambdaLR changes lr; every other numeric option of the group changes at every step
    too (decay rates stay below 1, values away from 0 stay away from it). In float64."""
    torch.set_default_dtype(torch.float64)
    kwargs = {k: (float(v) if type(v) is int else v) for k, v in CASES[name][-1][1].items()}
    both = sides(name, kwargs, torch.float64)
    base = {k: v for k, v in both[1].opt.param_groups[0].items() if k not in ("params", "lr")}
    lam = lambda k: 1 + 0.5 * math.sin(k)  # noqa: E731
    schedulers = [torch.optim.lr_scheduler.LambdaLR(s.opt, lam) for s in both]

    def before(k):
        for s in both:
            for key, value in base.items():
                s.opt.param_groups[0][key] = wiggled(key, value, k)

    def after(k):
        for scheduler in schedulers:
            scheduler.step()

    run(both, gradients(torch.float64), name, before=before, after=after)
    same_options(both[0].opt, both[1].opt)


def _one_cycle(opt):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS,
                                               cycle_momentum=True)


SCHEDULES = {
    # OneCycleLR and CyclicLR cycle the momentum (Adam's and Lion's betas[0]) with lr.
    "Adam-OneCycleLR": ("Adam", dict(lr=0.01, amsgrad=True), _one_cycle),
    "SGD-OneCycleLR": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True), _one_cycle),
    "RMSprop-CyclicLR": ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True),
                         lambda o: torch.optim.lr_scheduler.CyclicLR(
                             o, base_lr=1e-3, max_lr=1e-2, step_size_up=4,
                             cycle_momentum=True)),
    "Lion-OneCycleLR": ("Lion", dict(lr=1e-3), _one_cycle),
    "AdamW-CosineWarmRestarts": ("AdamW", dict(lr=0.01),
                                 lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                                     o, T_0=7)),
    "Adagrad-Sequential": ("Adagrad", dict(lr=0.05, lr_decay=0.01),
                           lambda o: torch.optim.lr_scheduler.SequentialLR(
                               o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=5),
                                   torch.optim.lr_scheduler.ExponentialLR(o, 0.9)],
                               milestones=[5])),
    "NAdam-StepLR": ("NAdam", dict(lr=0.01),
                     lambda o: torch.optim.lr_scheduler.StepLR(o, 4, gamma=0.5)),
    "Adamax-Polynomial": ("Adamax", dict(lr=0.01),
                          lambda o: torch.optim.lr_scheduler.PolynomialLR(o, STEPS, 2.0)),
    "Adadelta-MultiStep": ("Adadelta", dict(), lambda o: torch.optim.lr_scheduler.MultiStepLR(
        o, [3, 9, 15], gamma=0.3)),
    "RAdam-ReduceOnPlateau": ("RAdam", dict(lr=0.01),
                              lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
                                  o, patience=1, factor=0.5)),
}


@pytest.mark.parametrize("case", list(SCHEDULES))
def test_torch_scheduler(case):
    name, kwargs, make = SCHEDULES[case]
    both = sides(name, kwargs, torch.float32)
    schedulers = [make(s.opt) for s in both]
    seen = set()

    def after(k):
        for scheduler in schedulers:
            scheduler.step(*([1.0] if "Plateau" in case else []))
        same_options(both[0].opt, both[1].opt)
        group = both[0].opt.param_groups[0]
        seen.add((group["lr"], str(group.get("betas", group.get("momentum")))))

    run(both, gradients(torch.float32), case, after=after)
    assert len(seen) > 3, "the schedule changed the options"
    if "Cycl" in case:
        assert len({m for _, m in seen}) > 3, "the schedule changed the momentum"


# --- state_dict / load_state_dict -----------------------------------------------------------

SAVE_AT = 8  # before tensor 4's first gradient, so a loaded optimizer creates its state


def _checkpoint(opt) -> dict:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("route", ["torch-to-optjit", "optjit-to-torch", "optjit-to-optjit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_save_and_load_in_the_middle(name, route, dtype):
    """A run interrupted after ``SAVE_AT`` steps, saved with ``torch.save``, loaded into a
    new optimizer (of the other kind for the first two routes) and continued, equals the
    twin's uninterrupted run (``torch`` is the reference for optimizers torch lacks)."""
    torch.set_default_dtype(dtype)
    kwargs = CASES[name][-1][1]
    grads = gradients(dtype)
    kinds = {"torch": theirs, "optjit": ours}
    first, then = (kinds[k] for k in route.split("-to-"))
    both = sides(name, kwargs, dtype, make=(first, theirs))
    run(both, grads[:SAVE_AT], f"{name}, before saving")
    saved = _checkpoint(both[0].opt)
    params = [torch.nn.Parameter(p.detach().clone()) for p in both[0].params]
    both[0] = Side(then(name, params, **kwargs), params)
    both[0].opt.load_state_dict(saved)
    same_options(both[0].opt, both[1].opt)
    run(both, grads[SAVE_AT:], f"{name}, after loading", first=SAVE_AT)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_has_torch_format(name):
    """After a few steps, optjit's state dict is the twin's but for the numbers: the same
    param groups (every key), the same parameters with state, the same state keys, each of
    the same dtype and shape. (Parameters that never had a gradient: see the next test.)"""
    both = sides(name, CASES[name][-1][1], torch.float32, shadow=False)
    run(both, gradients(torch.float32)[:5], name)
    da, db = (s.opt.state_dict() for s in both)
    assert da["param_groups"] == db["param_groups"]
    stepped = lambda state: {i: s for i, s in state.items() if s.get("step", 1) != 0}  # noqa
    assert sorted(stepped(da["state"])) == sorted(stepped(db["state"]))
    for i, sb in stepped(db["state"]).items():
        sa = da["state"][i]
        assert sorted(sa) == sorted(sb), f"param {i}: {sorted(sa)} != {sorted(sb)}"
        for key in sb:
            assert (sa[key].dtype, sa[key].shape) == (sb[key].dtype, sb[key].shape), (i, key)


def test_adagrad_has_state_before_its_first_step():
    """torch.optim.Adagrad creates every parameter's state (``step`` 0, ``sum`` at
    ``initial_accumulator_value``) in its constructor."""
    both = sides("Adagrad", dict(initial_accumulator_value=0.5), torch.float32, shadow=False)
    da, db = (s.opt.state_dict() for s in both)
    assert sorted(da["state"]) == sorted(db["state"]) == list(range(len(SHAPES)))
    for i in db["state"]:
        assert sorted(da["state"][i]) == sorted(db["state"][i])
        assert torch.equal(da["state"][i]["sum"], db["state"][i]["sum"])


# --- The rest of the Optimizer API ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_add_param_group_mid_run(name):
    cases = CASES[name]
    both = sides(name, cases[0][1], torch.float32, groups=[{"params": [0, 1, 2]}])

    def before(k):
        if k == 6:
            for s in both:
                s.opt.add_param_group({"params": s.params[3:], **cases[-1][1]})

    run(both, gradients(torch.float32), name, before=before)
    assert len(both[0].opt.param_groups) == 2
    same_options(both[0].opt, both[1].opt)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    both = sides("Adam", {}, torch.float32, shadow=False)
    for s in both:
        feed(s.params, gradients(torch.float32, missing={(0, 5)})[0])
        s.opt.step()
        s.opt.zero_grad(set_to_none=set_to_none)
    for p, q in zip(both[0].params, both[1].params):
        assert (p.grad is None) == (q.grad is None)
        if p is not both[0].params[5]:
            assert (p.grad is None) == set_to_none
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad) and not p.grad.any()


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Lion"])
def test_step_with_closure_returns_the_loss(name):
    torch.manual_seed(3)
    x, y = torch.randn(64, 7), torch.randn(64, 1)
    values = [torch.randn(1, 7) * 0.1, torch.zeros(1)]
    opts = []
    for make in (ours, theirs):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opts.append(Side(make(name, params, **CASES[name][1][1]), params))

    def closure(side):
        def loss():
            side.opt.zero_grad()
            w, c = side.params
            value = ((x @ w.T + c - y) ** 2).mean()
            value.backward()
            return value
        return loss

    losses = []
    for _ in range(15):
        la, lb = (s.opt.step(closure(s)) for s in opts)
        assert isinstance(la, torch.Tensor) and la.requires_grad
        assert_close(la.detach(), lb.detach(), "loss")
        compare(opts, name)
        losses.append(la.item())
    assert losses[-1] < losses[0]


def test_step_hooks_fire_in_order():
    params = [torch.nn.Parameter(v) for v in initial_values(torch.float32)[:3]]
    opt = ot.AdamW(params, lr=0.01)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o)))
    glob = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global", o)))
    try:
        for row in gradients(torch.float32)[:2]:
            feed(params, row)
            opt.step()
    finally:
        glob.remove()
    assert calls == [("pre", opt), ("post", opt), ("global", opt)] * 2
    pre.remove()
    post.remove()
    opt.step()
    assert len(calls) == 6


def test_a_pre_hook_may_change_the_gradients():
    """As in torch, the step reads the gradients after the pre hooks ran."""
    both = sides("Adam", dict(lr=0.01), torch.float32)

    def clip(opt, args, kwargs):
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 0.5)

    for s in both:
        s.opt.register_step_pre_hook(clip)
    run(both, gradients(torch.float32), "Adam")


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(fused=True), dict(fused=False)],
                         ids=lambda f: str(f))
def test_implementation_flags_change_no_number(flags):
    """``foreach`` and ``fused`` say how PyTorch runs; optjit runs one way."""
    both = sides("AdamW", dict(lr=0.01, amsgrad=True), torch.float32)
    both[0] = Side(ot.AdamW(both[0].params, lr=0.01, amsgrad=True, **flags), both[0].params)
    run(both, gradients(torch.float32), "AdamW")
    assert all(both[0].opt.param_groups[0][k] == v for k, v in flags.items())


# --- bfloat16 --------------------------------------------------------------------------------

BF16_ULPS = 38  # PyTorch's own spread between its bf16 Adam implementations (bf16 README)
BF16_EXACT = 0.97  # fraction of all compared values that must be bit-identical
BF16_FLOOR = 2.0**-16  # differences below this times the tensor's largest value: cancellation
BF16_DIFF_FLOOR = 2.0**-7  # one bf16 ulp of the largest value, for states of differences


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """bf16 bits as integers in the order of the values (±0 both 0)."""
    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


class Bf16Tally:
    """Compares bf16 tensors in ulps; counts the bit-identical values."""

    def __init__(self):
        self.same = self.total = 0

    def check(self, actual, expected, what):
        assert actual.dtype == expected.dtype == torch.bfloat16, what
        ulps = (_ordered(actual.detach()) - _ordered(expected.detach())).abs()
        diff = (actual.detach().float() - expected.detach().float()).abs()
        # Adan's `exp_avg_diff` averages differences of successive gradients: where they
        # cancel, rounding the terms (an ulp of the largest) decides the result.
        floor = BF16_DIFF_FLOOR if what.endswith("'exp_avg_diff'") else BF16_FLOOR
        tiny = diff <= floor * expected.detach().float().abs().max()
        far = (ulps > BF16_ULPS) & ~tiny
        assert not far.any(), f"{what}: {int(far.sum())} values off by up to {ulps.max()} ulps (worst: {actual[far.nonzero()[0]].item()} vs {expected[far.nonzero()[0]].item()}, tensor max {expected.abs().max().item()})"
        self.same += int((ulps == 0).sum())
        self.total += ulps.numel()

    def assert_mostly_exact(self):
        assert self.same >= BF16_EXACT * self.total, f"{self.same} of {self.total} bit-identical"


def run_bf16(a, pa, b, pb, grads, what, rounding="none"):
    """``a`` steps bf16 parameters ``pa``; ``b`` steps ``pb``, bf16 too (``rounding="none"``)
    or float32, rounded to bf16 after every step: the parameters and every element state
    (``"all"``, as a fused kernel stores them), or the parameters only (``"params"``).
    Compared are the parameters, and the element state unless ``"params"``."""
    tally = Bf16Tally()
    for k, row in enumerate(grads):
        for opt, params in ((a, pa), (b, pb)):
            feed(params, row)
            opt.step()
        for i, (p, q) in enumerate(zip(pa, pb)):
            slots = {key: t for key, t in b.state.get(q, {}).items()
                     if key != "step" and t.shape == q.shape}
            with torch.no_grad():
                for t in [q] + (list(slots.values()) if rounding == "all" else []):
                    t.copy_(t.to(torch.bfloat16))
            tally.check(p, q.to(torch.bfloat16), f"{what}, step {k + 1}, param {i}")
            if rounding == "params" or b.state.get(q, {}).get("step", 1) == 0:
                continue
            for key, t in slots.items():
                tally.check(a.state[p][key], t.to(torch.bfloat16),
                            f"{what}, step {k + 1}, param {i}, state {key!r}")
    tally.assert_mostly_exact()


FUSED_CASES = [
    ("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1,
                                          maximize=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.1,
                     maximize=True)),
]


@pytest.mark.parametrize("name, kwargs", FUSED_CASES, ids=[f"{n}-{k}" for n, k in FUSED_CASES])
def test_bf16_matches_torch_fused(name, kwargs):
    """bf16 parameters, gradients and state against PyTorch's fused CPU kernel, which also
    computes in f32 and rounds each stored tensor once. (Fused SGD fails in PyTorch when a
    momentum buffer is missing while others exist, so SGD's gradients are never missing.)"""
    missing = {(k, 5) for k in range(STEPS)} if name == "SGD" else MISSING
    pa, pb = ([torch.nn.Parameter(v) for v in initial_values(torch.bfloat16)] for _ in "ab")
    a = getattr(ot, name)(pa, **kwargs)
    b = getattr(torch.optim, name)(pb, fused=True, **kwargs)
    run_bf16(a, pa, b, pb, gradients(torch.bfloat16, missing=missing), name)


def test_bf16_comparison_is_live():
    """PyTorch's per-operation bf16 Adam (each tensor operation rounded to bf16) fails the
    comparison with the fused kernel that optjit passes."""
    pa, pb = ([torch.nn.Parameter(v) for v in initial_values(torch.bfloat16)] for _ in "ab")
    a = torch.optim.Adam(pa, lr=1e-2, foreach=False)
    b = torch.optim.Adam(pb, lr=1e-2, fused=True)
    with pytest.raises(AssertionError):
        run_bf16(a, pa, b, pb, gradients(torch.bfloat16), "Adam")


@pytest.mark.parametrize("name, kwargs", case_params(ALL))
def test_bf16_matches_f32_rounded_once_per_step(name, kwargs):
    """bf16 parameters and state against the twin run in f32 on the same values, its
    parameters and state rounded to bf16 after every step."""
    values = initial_values(torch.bfloat16)
    pa = [torch.nn.Parameter(v.clone()) for v in values]
    pb = [torch.nn.Parameter(v.float()) for v in values]
    a, b = ours(name, pa, **kwargs), theirs(name, pb, **kwargs)
    run_bf16(a, pa, b, pb, gradients(torch.bfloat16), name, rounding="all")


@pytest.mark.parametrize("name", ALL)
def test_bf16_parameters_with_f32_state(name):
    """``state_dtype=torch.float32``: bf16 parameters, f32 state; against the twin in f32
    whose parameters are rounded to bf16 after every step."""
    kwargs = CASES[name][-1][1]
    values = initial_values(torch.bfloat16)
    pa = [torch.nn.Parameter(v.clone()) for v in values]
    pb = [torch.nn.Parameter(v.float()) for v in values]
    a = ours(name, pa, state_dtype=torch.float32, **kwargs)
    b = theirs(name, pb, **kwargs)
    run_bf16(a, pa, b, pb, gradients(torch.bfloat16), name, rounding="params")
    for p in pa:
        for key, t in a.state.get(p, {}).items():
            assert t.dtype == torch.float32, key


# --- Optimizers torch.optim lacks: the references, and text-form optimizers -----------------


OPTAX = sorted((ROOT / "tests/data/optax").glob("la*/*.json"))


def test_the_optax_recordings_are_there():
    assert [f"{p.parent.name}/{p.name}" for p in OPTAX][::2] == [
        "lamb/default.float32.json", "lamb/weight_decay.float32.json",
        "lars/default.float32.json", "lars/weight_decay_nesterov.float32.json"]


@pytest.mark.parametrize("path", OPTAX, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_reference_lamb_and_lars_match_optax_recordings(path):
    """The LAMB and LARS references replay optax's recorded trajectories
    (``tests/data/optax``, optax 0.2.8) within the float32/float64 tolerances."""
    case = json.loads(path.read_text())
    dtype = getattr(torch, case["dtype"])
    torch.set_default_dtype(dtype)
    hyper = dict(case["hyper"])
    kwargs = {"lr": hyper.pop("learning_rate")}
    if "b1" in hyper or "b2" in hyper:
        kwargs["betas"] = (hyper.pop("b1", 0.9), hyper.pop("b2", 0.999))
    params = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64).to(dtype))
              for v in case["params"]]
    opt = getattr(reference, case["optimizer"].upper())(params, **kwargs, **hyper)
    for k in range(case["steps"]):
        feed(params, [torch.tensor(g, dtype=torch.float64) for g in case["grads"][k]])
        opt.step()
        for i, (p, e) in enumerate(zip(params, case["expected_params"][k])):
            assert_close(p, torch.tensor(e, dtype=torch.float64).to(dtype), f"step {k}, {i}")


ADAN_TEXT = """
# Adan (sail-sg/Adan, proximal decay), as src/optim/adan.rs builds it.
optimizer adan(lr = 0.01, b1 = 0.98, b2 = 0.92, b3 = 0.99, eps = 1e-8, weight_decay = 0.02) {
    state exp_avg = 0
    state exp_avg_diff = 0
    state exp_avg_sq = 0
    state pre_grad = 0

    let d = grad - select(step == 1, grad, pre_grad)
    exp_avg = b1 * exp_avg + (1 - b1) * grad
    exp_avg_diff = b2 * exp_avg_diff + (1 - b2) * d
    let u = b2 * d + grad
    exp_avg_sq = b3 * exp_avg_sq + (1 - b3) * u * u
    pre_grad = grad
    let denom = sqrt(exp_avg_sq) / sqrt(1 - b3 ^ step) + eps
    let m_step = lr / (1 - b1 ^ step) * exp_avg / denom
    let n_step = lr * b2 / (1 - b2 ^ step) * exp_avg_diff / denom
    param = (param - m_step - n_step) / (1 + lr * weight_decay)
}
"""
LARS_TEXT = """
# LARS as optax.lars (src/optim/lars.rs), without Nesterov momentum.
optimizer lars(lr = 0.1, weight_decay = 0, trust_coefficient = 0.001, eps = 0, momentum = 0.9) {
    state trace = 0

    let u = grad + weight_decay * param
    let pn = sqrt(sumsq(param))
    let un = sqrt(sumsq(u))
    let ratio = select((pn == 0) + (un == 0), 1, trust_coefficient * pn / (un + eps))
    trace = -lr * (u * ratio) + momentum * trace
    param = param + trace
}
"""
# (id, text or example file, its hyperparameters, the reference, its keyword arguments,
# reference state key -> text state key)
TEXTS = [
    ("lion.opt", ROOT / "examples/lion.opt", dict(lr=1e-3, b1=0.95, weight_decay=0.1),
     "Lion", dict(lr=1e-3, betas=(0.95, 0.99), weight_decay=0.1), {"exp_avg": "m"}),
    ("lamb.opt", ROOT / "examples/lamb.opt", dict(lr=1e-2, weight_decay=0.1, eps_root=1e-8),
     "LAMB", dict(lr=1e-2, weight_decay=0.1, eps_root=1e-8), {}),
    ("adabelief.opt", ROOT / "examples/adabelief.opt", dict(lr=1e-2, weight_decay=0.1, eps=1e-12),
     "AdaBelief", dict(lr=1e-2, weight_decay=0.1, eps=1e-12, rectify=False),
     {"exp_avg": "m", "exp_avg_var": "s"}),
    ("adan", ADAN_TEXT, dict(lr=1e-2, b2=0.9), "Adan", dict(lr=1e-2, betas=(0.98, 0.9, 0.99)),
     {}),
    ("lars", LARS_TEXT, dict(lr=0.5, weight_decay=0.01), "LARS",
     dict(lr=0.5, weight_decay=0.01), {}),
]


@pytest.mark.parametrize("text, hypers, name, kwargs, keys", [t[1:] for t in TEXTS],
                         ids=[t[0] for t in TEXTS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_text_form_optimizers_match_references(text, hypers, name, kwargs, keys, dtype):
    """``from_file``/``from_text`` optimizers against the references, in two param groups
    (the second with its own lr), with lr changed at every step."""
    torch.set_default_dtype(dtype)

    def make(_, params, **__):
        if isinstance(text, Path):
            return ot.from_file(text, params, **hypers)
        return ot.from_text(text, params, **hypers)

    groups = [{"params": [0, 1, 2]}, {"params": [3, 4, 5], "lr": kwargs["lr"] / 2}]
    both = sides(name, kwargs, dtype, groups, make=(make, theirs))
    both[0].keys = keys
    assert both[0].opt.defaults == {**dict(both[0].opt.program().hypers), **hypers}

    def before(k):
        for s in both:
            s.opt.param_groups[0]["lr"] = kwargs["lr"] * (1 + 0.5 * math.sin(k))

    run(both, gradients(dtype), name, before=before)


def test_text_form_errors():
    text = (ROOT / "examples/lion.opt").read_text()
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="beta1"):
        ot.from_text(text, [p], beta1=0.9)
    with pytest.raises(ValueError, match="beta1"):
        ot.from_file(ROOT / "examples/lion.opt", [p], lr=0.1, beta1=0.9)
    with pytest.raises(ValueError, match="bogus"):
        ot.from_text("optimizer x(lr = 1) {\n    param = param - lr * bogus\n}", [p])
    with pytest.raises(ValueError):
        ot.from_text("optimizer x(lr = 1) {\n    param = param -\n}", [p])
    opt = ot.from_text(text, [p], lr=0.5)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["b2"] == 0.99


# --- Errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCH)
def test_differentiable_is_refused_at_construction(name):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="differentiable"):
        getattr(ot, name)([p], differentiable=True)


BAD = [
    ("SGD", dict(lr=-1.0)), ("SGD", dict(momentum=-0.5)), ("SGD", dict(weight_decay=-1.0)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("Adam", dict(lr=-1e-3)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.9))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-0.1)),
    ("Adam", dict(lr=torch.tensor([0.1, 0.2]))), ("AdamW", dict(betas=(0.9, 1.5))),
    ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1.0)), ("Adadelta", dict(rho=1.5)), ("Adadelta", dict(eps=-1.0)),
    ("Adamax", dict(betas=(0.9, 1.0))), ("NAdam", dict(momentum_decay=-0.1)),
    ("RAdam", dict(betas=(-0.1, 0.9))), ("RMSprop", dict(alpha=-0.5)),
    ("RMSprop", dict(momentum=-0.5)), ("Rprop", dict(etas=(1.5, 1.2))),
    ("Rprop", dict(etas=(0.5, 0.9))), ("ASGD", dict(lr=-0.1)), ("ASGD", dict(weight_decay=-1.0)),
]


@pytest.mark.parametrize("name, kwargs", BAD, ids=[f"{n}-{k}" for n, k in BAD])
def test_invalid_options_raise_as_in_torch(name, kwargs):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([p], **kwargs)
    with pytest.raises(ValueError):
        getattr(ot, name)([p], **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_unknown_keyword_is_a_type_error(name):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError):
        getattr(ot, name)([p], lr=0.1, no_such_option=1)


@pytest.mark.parametrize("name", TORCH)
def test_constructor_defaults_are_torchs(name):
    p = torch.nn.Parameter(torch.zeros(3))
    assert ours(name, [p]).defaults == theirs(name, [p]).defaults

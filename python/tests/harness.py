"""The conformance tests' shared parts (``test_conformance.py`` states the data and
tolerances): the data, every optimizer's option cases, the optjit/twin pairs and the
comparison after every step."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import optjit.torch as ot
import reference

ROOT = Path(__file__).resolve().parents[2]

# --- Data -------------------------------------------------------------------------------

SHAPES = [(1,), (7,), (33,), (257,), (3, 11), (5,)]
STEPS = 20
# (step, tensor) without a gradient; tensor 5 never has one.
MISSING = {(k, 4) for k in range(10)} | {(k, 5) for k in range(STEPS)}
MISSING |= {(2, 1), (3, 1), (6, 0), (9, 2), (12, 3), (13, 1), (16, 0)}


def initial_values(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    return [v.clone() for v in _initial_values(dtype, seed)]


@functools.lru_cache(maxsize=None)
def _initial_values(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = []
    for shape in SHAPES:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 0.8
        x.view(-1)[3::11] = 0.0
        values.append(x.to(dtype))
    return values


def gradients(dtype: torch.dtype, steps: int = STEPS, seed: int = 1, missing=MISSING):
    """``grads[k][i]``: tensor i's gradient at step k+1, or None (to be copied, not kept)."""
    return _gradients(dtype, steps, seed, frozenset(missing))


@functools.lru_cache(maxsize=None)
def _gradients(dtype, steps, seed, missing):
    g = torch.Generator().manual_seed(seed)
    grads = []
    for k in range(steps):
        row = []
        for i, shape in enumerate(SHAPES):
            sign = torch.randn(shape, generator=g, dtype=torch.float64).sign()
            exponent = torch.rand(shape, generator=g, dtype=torch.float64) * 5 - 4
            x = sign * 10**exponent
            flat = x.view(-1)
            flat[(k + i) % 5 :: 5] = 0.0
            if flat.numel() > 2:
                flat[1] = -0.0
            if flat.numel() > 30:
                flat[29] = 1e-39 * flat[29].sign()  # an f32 subnormal
            row.append(None if (k, i) in missing else x.to(dtype))
        grads.append(row)
    return grads


# --- Optimizers and their options ---------------------------------------------------------

TORCH = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop",
         "Rprop", "ASGD"]
OTHERS = ["Lion", "Adan", "AdaBelief", "LAMB", "LARS"]

# Per optimizer: cases (id, keyword arguments); together they set every option of the class
# to a value other than its default. The first case is the one other tests start from.
CASES = {
    "SGD": [
        ("plain", dict(lr=0.1)),
        ("momentum", dict(lr=0.1, momentum=0.9)),
        ("dampening", dict(lr=0.1, momentum=0.9, dampening=0.3)),
        ("maximize_wd", dict(lr=0.1, weight_decay=0.1, maximize=True)),
        ("nesterov_wd_maximize", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1,
                                      maximize=True)),
    ],
    "Adam": [
        ("default", dict()),
        ("lr_betas_eps", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
        ("amsgrad", dict(lr=0.01, amsgrad=True)),
        ("l2_maximize", dict(lr=0.01, weight_decay=0.1, maximize=True)),
        ("decoupled_amsgrad", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                   amsgrad=True)),
    ],
    "AdamW": [
        ("default", dict()),
        ("amsgrad_maximize", dict(lr=0.01, betas=(0.85, 0.99), amsgrad=True, maximize=True)),
        ("strong_decay", dict(lr=0.05, weight_decay=0.5, eps=1e-4)),
    ],
    "Adagrad": [
        ("default", dict()),
        ("lr_decay", dict(lr=0.05, lr_decay=0.1)),
        ("initial_accumulator", dict(initial_accumulator_value=0.5, eps=1e-6)),
        ("l2_maximize", dict(lr=0.05, weight_decay=0.1, maximize=True, lr_decay=0.01)),
    ],
    "Adadelta": [
        ("default", dict()),
        ("rho_eps", dict(lr=0.5, rho=0.8, eps=1e-5)),
        ("l2_maximize", dict(weight_decay=0.1, maximize=True)),
    ],
    "Adamax": [
        ("default", dict()),
        ("betas_eps", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-4)),
        ("l2_maximize", dict(weight_decay=0.1, maximize=True)),
    ],
    "NAdam": [
        ("default", dict()),
        ("momentum_decay_betas", dict(lr=0.01, betas=(0.85, 0.99), momentum_decay=0.01,
                                      eps=1e-6)),
        ("l2", dict(weight_decay=0.1)),
        ("decoupled_maximize", dict(weight_decay=0.1, decoupled_weight_decay=True,
                                    maximize=True)),
    ],
    "RAdam": [
        ("default", dict()),
        ("betas", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6)),  # ρ > 5 from step 3
        ("l2", dict(weight_decay=0.1)),
        ("decoupled_maximize", dict(weight_decay=0.1, decoupled_weight_decay=True,
                                    maximize=True)),
    ],
    "RMSprop": [
        ("default", dict()),
        ("alpha_eps", dict(lr=0.005, alpha=0.9, eps=1e-6)),
        ("centered", dict(centered=True)),
        ("momentum", dict(momentum=0.9)),
        ("everything", dict(lr=0.005, momentum=0.5, centered=True, weight_decay=0.1,
                            maximize=True)),
    ],
    "Rprop": [
        ("default", dict()),
        ("maximize", dict(maximize=True)),
        ("etas_step_sizes", dict(lr=0.02, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05),
                                 maximize=True)),
    ],
    "ASGD": [
        ("default", dict()),
        ("lambd_alpha", dict(lr=0.05, lambd=0.01, alpha=0.5)),
        ("averaging_t0", dict(t0=5)),
        ("l2_maximize", dict(weight_decay=0.1, maximize=True, t0=2)),
    ],
    "Lion": [
        ("default", dict(lr=1e-3)),
        ("betas", dict(lr=1e-2, betas=(0.95, 0.98))),
        ("decay_maximize", dict(lr=1e-3, weight_decay=0.5, maximize=True)),
    ],
    "Adan": [
        ("default", dict(lr=1e-2)),
        ("no_prox", dict(lr=1e-2, no_prox=True, weight_decay=0.1)),
        ("betas_eps_maximize", dict(lr=1e-2, betas=(0.9, 0.8, 0.95), eps=1e-6,
                                    weight_decay=0.0, maximize=True)),
    ],
    "AdaBelief": [
        ("default", dict(lr=1e-2)),
        ("amsgrad", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
        ("l2", dict(lr=1e-2, weight_decouple=False, weight_decay=0.1)),
        ("fixed_decay", dict(lr=1e-2, fixed_decay=True, weight_decay=0.01)),
        ("unrectified_amsgrad", dict(lr=1e-2, rectify=False, amsgrad=True, eps=1e-12)),
        ("not_degenerated", dict(lr=1e-2, betas=(0.8, 0.9), degenerated_to_sgd=False,
                                 maximize=True)),
    ],
    "LAMB": [
        ("default", dict(lr=1e-2)),
        ("decay_betas_eps", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, eps_root=1e-8,
                                 weight_decay=0.1)),
    ],
    "LARS": [
        ("default", dict()),
        ("nesterov_decay", dict(lr=0.5, nesterov=True, weight_decay=0.01, momentum=0.8)),
        ("trust_eps", dict(trust_coefficient=0.02, eps=1e-3, momentum=0.0)),
    ],
}
ALL = TORCH + OTHERS
FUSED = ["SGD", "Adam", "AdamW", "Adagrad"]  # torch.optim classes with a fused CPU kernel


def ours(name: str, params, **kwargs):
    if name in TORCH:
        kwargs.setdefault("foreach", False)
    return getattr(ot, name)(params, **kwargs)


def theirs(name: str, params, **kwargs):
    if name in TORCH:
        kwargs.setdefault("foreach", False)
        return getattr(torch.optim, name)(params, **kwargs)
    return getattr(reference, name)(params, **kwargs)


def case_params(names):
    return [pytest.param(n, kw, id=f"{n}-{c}") for n in names for c, kw in CASES[n]]


# Float modes: (parameter dtype, torch's default dtype, which sets the dtype of scalar state).
MODES = {
    "f32": (torch.float32, torch.float32),
    "f64": (torch.float64, torch.float64),
    "f64-default-f32": (torch.float64, torch.float32),
}
TOL = {torch.float32: (1e-5, 1e-7), torch.float64: (1e-12, 1e-12)}
# float64 parameters under the default dtype float32: PyTorch computes ASGD's `eta` and
# NAdam's `mu_product` in float32 and steps with the rounded values; optjit computes every
# scalar in float64 and rounds only what it stores in those float32 tensors (its choice: a
# float64 run stays float64). The difference is float32 rounding of those scalars, up to ≈ 1e-7 relative in the update.
F32_SCALARS = ("ASGD", "NAdam")
F32_SCALARS_TOL = (1e-6, 1e-8)


# --- Comparison ----------------------------------------------------------------------------


class Side:
    """One optimizer of a comparison and its parameters; ``keys`` renames the twin's state
    keys to this optimizer's (a text-form optimizer names its state as it likes)."""

    def __init__(self, opt, params, keys=None):
        self.opt, self.params, self.keys = opt, params, keys or {}


def sides(name, kwargs, dtype, groups=None, shadow=None, make=None):
    """optjit's optimizer and its twin (``make[0]``, ``make[1]``: ``ours``, ``theirs`` by
    default) over equal parameters of ``dtype``, in ``groups`` (dicts whose ``params`` are
    indices); and for float32 a shadow: the twin in float64 on the same values."""
    make = make or (ours, theirs)
    values = initial_values(dtype)
    out = []
    for i, kind in enumerate((*make, theirs)):
        if i == 2 and not (shadow if shadow is not None else dtype == torch.float32):
            break
        params = [torch.nn.Parameter(v.to(torch.float64 if i == 2 else dtype, copy=True))
                  for v in values]
        options = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        out.append(Side(kind(name, grouped(params, groups), **options), params))
    return out


def grouped(params, groups):
    if groups is None:
        return params
    return [{**g, "params": [params[i] for i in g["params"]]} for g in groups]


def feed(params, row) -> None:
    for p, g in zip(params, row):
        p.grad = None if g is None else g.to(p.dtype, copy=True)


def run(all_sides, grads, what, before=None, after=None, first=0):
    """Steps every side with ``grads``, comparing them after every step; ``before(k)`` and
    ``after(k)`` run around step ``k`` (0-based)."""
    for k, row in enumerate(grads, start=first):
        if before:
            before(k)
        for s in all_sides:
            feed(s.params, row)
            s.opt.step()
        if after:
            after(k)
        compare(all_sides, f"{what}, step {k + 1}")


def assert_close(actual, expected, what, shadow=None) -> None:
    """``actual`` within ``tolerance`` of ``expected``; or, given the ``shadow`` (the twin's
    float64 value), no farther from it than twice ``expected`` is, plus the tolerance: where
    float32 rounding alone (cancellation in a momentum buffer, say) moves torch's own value
    by more than the tolerance, optjit may be off by as much."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert_all_close([(actual, expected, what, shadow)])


def assert_all_close(checks) -> None:
    """``assert_close`` for each of ``checks``, (actual, expected, what, shadow), in as few
    tensor operations as possible."""
    by_dtype = {}
    for check in checks:
        by_dtype.setdefault(check[1].dtype, []).append(check)
    for group in by_dtype.values():
        def flat(k):
            return torch.cat([c[k].detach().reshape(-1).double() for c in group])

        a, e = flat(0), flat(1)
        bad = (a - e).abs() > _tol(e, group)
        bad |= a.isnan() != e.isnan()
        if bad.any() and group[0][3] is not None:
            s = flat(3)
            bad &= (a - s).abs() > 2 * (e - s).abs() + _tol(e, group)
        if not bad.any():
            continue
        start = 0
        for actual, expected, what, shadow in group:
            n = expected.numel()
            here = bad[start : start + n]
            if here.any():
                i = int(here.nonzero()[0])
                more = "" if shadow is None else f", float64 {shadow.reshape(-1)[i].item()!r}"
                raise AssertionError(
                    f"{what}: {int(here.sum())} of {n} elements differ; first at {i}: "
                    f"optjit {actual.reshape(-1)[i].item()!r}, "
                    f"twin {expected.reshape(-1)[i].item()!r}{more}"
                )
            start += n


def _tol(e: torch.Tensor, group) -> torch.Tensor:
    rtol, atol = TOL.get(group[0][1].dtype, TOL[torch.float32])
    return atol + rtol * e.abs()


def compare(all_sides, what: str) -> None:
    """The parameters of optjit's side and the twin's, and every state tensor the twin has
    (a twin's state that never saw a gradient, ``step`` 0, optjit may not have yet)."""
    (a, pa), (b, pb) = ((s.opt, s.params) for s in all_sides[:2])
    keys = all_sides[0].keys
    shadow = all_sides[2] if len(all_sides) > 2 else None
    checks = []

    def check(actual, expected, where, s):
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        checks.append((actual, expected, where, s))

    for i, (p, q) in enumerate(zip(pa, pb)):
        ps = shadow.params[i] if shadow else None
        check(p, q, f"{what}, param {i}", ps)
        sb = b.state.get(q, {})
        if not sb or ("step" in sb and sb["step"].item() == 0 and p not in a.state):
            continue
        sa = {key: a.state.get(p, {}).get(keys.get(key, key)) for key in sb}
        assert None not in sa.values(), f"{what}, param {i}: state lacks one of {sorted(sb)}"
        for key, expected in sb.items():
            if key == "step":
                assert sa[key].dtype == expected.dtype, f"{what}, param {i}: step dtype"
                assert sa[key].item() == expected.item(), f"{what}, param {i}: step count"
            else:
                s = shadow.opt.state[ps][key] if shadow else None
                check(sa[key], expected, f"{what}, param {i}, state {key!r}", s)
    assert_all_close(checks)


def same_options(a, b) -> None:
    """Each param group of ``a`` has the values of ``b``'s for its keys."""
    assert len(a.param_groups) == len(b.param_groups)
    for ga, gb in zip(a.param_groups, b.param_groups):
        for key, value in ga.items():
            if key != "params":
                assert key in gb and _equal(value, gb[key]), (key, value, gb.get(key))


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return torch.as_tensor(x).item() == torch.as_tensor(y).item()
    return x == y

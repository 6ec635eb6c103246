"""Small pure-PyTorch references for the optimizers ``torch.optim`` lacks: Lion, Adan,
AdaBelief, LAMB and LARS, for ``test_conformance.py``.

Each is a ``torch.optim.Optimizer`` written the way ``torch.optim``'s single-tensor
implementations are: one tensor operation at a time in the parameter's dtype, scalar
coefficients computed in Python floats (double precision). The math is the optjit built-in's
documented math (the doc comment of ``src/optim/<name>.rs``, quoted in each docstring), which
cites the paper and the reference implementation; the keyword arguments and state names are
the ``optjit.torch`` classes', so a reference and its optjit twin can be compared state by
state. State: ``step`` (a 0-dimensional tensor of PyTorch's scalar dtype), and the slots
named in ``slots``, created at a parameter's first gradient, as ``torch.optim`` does.

Checked: LAMB and LARS replay optax's recordings (``test_conformance.py``); Adan and LARS
agree with the same math written in optjit's text form, and Lion, LAMB and AdaBelief
(``rectify=False``) with ``examples/*.opt``.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _Reference(Optimizer):
    """Steps every parameter that has a gradient with ``update``; skips the others
    entirely (state and step count untouched), as ``torch.optim`` does."""

    slots: tuple[str, ...] = ()

    def __init__(self, params, **defaults):
        super().__init__(params, defaults)

    def slot_names(self, group: dict) -> tuple[str, ...]:
        return self.slots

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    for name in self.slot_names(group):
                        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                self.update(p, p.grad, state, group, state["step"].item())
        return loss

    def update(self, p, grad, state, group, t):
        raise NotImplementedError


class Lion(_Reference):
    """``src/optim/lion.rs``::

        g ← −∇ if maximize else ∇
        θ ← θ · (1 − lr · weight_decay)
        c ← β₁ · m + (1 − β₁) · g
        θ ← θ − lr · sign(c)
        m ← β₂ · m + (1 − β₂) · g
    """

    slots = ("exp_avg",)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay,
                         maximize=maximize)

    def update(self, p, grad, state, group, t):
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        g = -grad if group["maximize"] else grad
        m = state["exp_avg"]
        p.mul_(1 - lr * wd)
        c = m * b1 + g * (1 - b1)
        p.add_(torch.sign(c), alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)


class Adan(_Reference):
    """``src/optim/adan.rs`` (sail-sg/Adan's single-tensor path)::

        g₋ ← g at step 1, else the previous step's g;  d ← g − g₋
        m ← β₁ m + (1 − β₁) g;  n ← β₂ n + (1 − β₂) d;  u ← β₂ d + g;  v ← β₃ v + (1 − β₃) u²
        denom ← √v / √(1 − β₃ᵗ) + ε
        θ ← θ · (1 − lr · wd)                                              if no_prox
        θ ← θ − (lr / (1 − β₁ᵗ)) m / denom − (lr β₂ / (1 − β₂ᵗ)) n / denom
        θ ← θ / (1 + lr · wd)                                               otherwise
    """

    slots = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "pre_grad")

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.02,
                 no_prox=False, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         no_prox=no_prox, maximize=maximize)

    def update(self, p, grad, state, group, t):
        lr, (b1, b2, b3), eps = group["lr"], group["betas"], group["eps"]
        wd = group["weight_decay"]
        g = -grad if group["maximize"] else grad
        m, n, v = state["exp_avg"], state["exp_avg_diff"], state["exp_avg_sq"]
        pre = state["pre_grad"]
        d = g - (g if t == 1 else pre)
        m.mul_(b1).add_(g, alpha=1 - b1)
        n.mul_(b2).add_(d, alpha=1 - b2)
        u = d * b2 + g
        v.mul_(b3).addcmul_(u, u, value=1 - b3)
        pre.copy_(g)
        denom = v.sqrt() / math.sqrt(1 - b3**t) + eps
        if group["no_prox"]:
            p.mul_(1 - lr * wd)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        p.addcdiv_(n, denom, value=-lr * b2 / (1 - b2**t))
        if not group["no_prox"]:
            p.div_(1 + lr * wd)


class AdaBelief(_Reference):
    """``src/optim/adabelief.rs`` (adabelief-pytorch 0.2.1)::

        θ ← θ (1 − lr wd) if weight_decouple and not fixed_decay; θ (1 − wd) if fixed_decay;
        g ← g + wd θ otherwise (if wd ≠ 0)
        m ← β₁ m + (1 − β₁) g;  s ← β₂ s + (1 − β₂)(g − m)² + ε;  ŝ ← max(ŝ, s) if amsgrad
        rectify: ρ∞ = 2/(1 − β₂) − 1, ρ = ρ∞ − 2t β₂ᵗ/(1 − β₂ᵗ); if ρ ≥ 5:
            r = √((1 − β₂ᵗ)(ρ − 4)/(ρ∞ − 4)(ρ − 2)/ρ ρ∞/(ρ∞ − 2)) / (1 − β₁ᵗ),
            θ ← θ − r lr m / (√s + ε); else θ ← θ − lr/(1 − β₁ᵗ) m if degenerated_to_sgd
        otherwise: θ ← θ − lr/(1 − β₁ᵗ) m / (√ŝ / √(1 − β₂ᵗ) + ε)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0,
                 amsgrad=False, weight_decouple=True, fixed_decay=False, rectify=True,
                 degenerated_to_sgd=True, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, weight_decouple=weight_decouple,
                         fixed_decay=fixed_decay, rectify=rectify,
                         degenerated_to_sgd=degenerated_to_sgd, maximize=maximize)

    def slot_names(self, group):
        return ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if group["amsgrad"] else ())

    def update(self, p, grad, state, group, t):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        g = -grad if group["maximize"] else grad
        if not group["weight_decouple"]:
            if wd != 0:
                g = g + wd * p
        elif group["fixed_decay"]:
            p.mul_(1 - wd)
        else:
            p.mul_(1 - lr * wd)
        m, s = state["exp_avg"], state["exp_avg_var"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        diff = g - m
        s.mul_(b2).addcmul_(diff, diff, value=1 - b2).add_(eps)
        s_hat = s
        if group["amsgrad"]:
            s_hat = state["max_exp_avg_var"]
            torch.maximum(s_hat, s, out=s_hat)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        if group["rectify"]:
            rho_inf = 2 / (1 - b2) - 1
            rho = rho_inf - 2 * t * b2**t / bc2
            if rho >= 5:
                r = math.sqrt(bc2 * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf
                              / (rho_inf - 2)) / bc1
                p.addcdiv_(m, s.sqrt().add_(eps), value=-r * lr)
            elif group["degenerated_to_sgd"]:
                p.add_(m, alpha=-lr / bc1)
        else:
            p.addcdiv_(m, s_hat.sqrt() / math.sqrt(bc2) + eps, value=-lr / bc1)


class LAMB(_Reference):
    """``src/optim/lamb.rs`` (``optax.lamb``)::

        m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
        u ← (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ) + eps_root) + eps) + wd θ
        θ ← θ − lr · u · ‖θ‖/‖u‖   (ratio 1 where either norm is 0)
    """

    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, eps_root=0.0,
                 weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, eps_root=eps_root,
                         weight_decay=weight_decay)

    def update(self, p, grad, state, group, t):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        u = m_hat / ((v_hat + group["eps_root"]).sqrt() + eps) + group["weight_decay"] * p
        pn, un = p.norm().item(), u.norm().item()
        ratio = 1.0 if pn == 0 or un == 0 else pn / un
        p.sub_(lr * (u * ratio))


class LARS(_Reference):
    """``src/optim/lars.rs`` (``optax.lars``)::

        u ← g + wd θ;  r ← trust_coefficient ‖θ‖ / (‖u‖ + eps)  (1 where either norm is 0)
        u ← −lr (u r);  t ← u + momentum t;  θ ← θ + (u + momentum t if nesterov else t)
    """

    slots = ("trace",)

    def __init__(self, params, lr=0.1, weight_decay=0.0, trust_coefficient=0.001, eps=0.0,
                 momentum=0.9, nesterov=False):
        super().__init__(params, lr=lr, weight_decay=weight_decay,
                         trust_coefficient=trust_coefficient, eps=eps, momentum=momentum,
                         nesterov=nesterov)

    def update(self, p, grad, state, group, t):
        u = grad + group["weight_decay"] * p
        pn, un = p.norm().item(), u.norm().item()
        ratio = 1.0 if pn == 0 or un == 0 else group["trust_coefficient"] * pn / (un + group["eps"])
        u = -group["lr"] * (u * ratio)
        trace = state["trace"]
        trace.mul_(group["momentum"]).add_(u)
        p.add_(u + group["momentum"] * trace if group["nesterov"] else trace)

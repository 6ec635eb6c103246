"""optjit optimizers as ``torch.optim`` optimizers for CPU tensors.

Each class is a real :class:`torch.optim.Optimizer`: param groups, ``add_param_group``,
``zero_grad``, ``step(closure)``, hooks, ``state_dict``/``load_state_dict`` in PyTorch's
format. The state lives in ``self.state[p]`` as torch tensors (``step`` a 0-dimensional
tensor, one tensor per state slot, named as PyTorch names them) that optjit updates in place,
so PyTorch's LR schedulers, ``GradScaler``, ``clip_grad_norm_`` and checkpoints work
unchanged. Hyperparameters are read from ``param_groups`` at every step and never cause a
recompile; an option that changes the algorithm (``amsgrad``, ``nesterov``, ...) compiles
once per distinct value.

A step makes one call into optjit for all param groups: every parameter's data pointers are
gathered and checked (CPU, contiguous, float32/float64/bfloat16/float16, no memory shared
between them) before any group changes, then one fused JIT kernel per group runs over them
with the GIL released, on ``torch.get_num_threads()`` threads unless ``threads=`` says
otherwise.

Besides PyTorch's keyword arguments, every class takes ``threads`` (an int, default: torch's
thread count at each step) and ``state_dtype`` (a torch dtype for new state tensors, default:
the parameter's, e.g. ``torch.float32`` state for bfloat16 parameters).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from ._optjit import Program, step_groups

__all__ = [
    "OptjitOptimizer",
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ASGD",
    "Lion",
    "Adan",
    "AdaBelief",
    "LAMB",
    "LARS",
    "ScheduleFreeAdamW",
    "from_text",
    "from_file",
]

# Keyword arguments holding several hyperparameters, and the hyperparameters' names.
_SEQUENCES = {
    "betas": ("b1", "b2", "b3"),
    "etas": ("etaminus", "etaplus"),
    "step_sizes": ("step_size_min", "step_size_max"),
}
# How PyTorch runs an algorithm, not what it computes: optjit always runs one fused kernel.
_IMPLEMENTATION = ("foreach", "fused", "capturable")


def _scalar_dtype() -> torch.dtype:
    """The dtype PyTorch gives ``step`` and other scalar state."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


class _Compiled:
    """A group's program and how to read its hyperparameters from the group."""

    __slots__ = ("program", "key_names", "key", "plan", "group_slots")

    def __init__(self, program: Program, options: dict, group: dict):
        self.program = program
        # State kept once per group (schedule-free's `k`): (name, initial value).
        self.group_slots = program.group_slots
        if self.group_slots:
            # Fails now, not after a step, for group state that depends on a parameter.
            program.advance_group([d for _, d in program.hypers], [i for _, i in self.group_slots])
        # Per hyperparameter: (group key, index in it or None), or its fixed value.
        self.plan: list = []
        used = set()
        for name, default in program.hypers:
            source = None
            if name in options:
                source = (name, None)
            else:
                for key, names in _SEQUENCES.items():
                    if name in names and key in options:
                        source = (key, names.index(name))
            if source is None:
                self.plan.append(default)
            else:
                self.plan.append(source)
                used.add(source[0])
        # Options that are no hyperparameter (nor group state) shape the program: a change
        # recompiles.
        state = {name for name, _ in self.group_slots}
        self.key_names = tuple(k for k in options if k not in used and k not in state)
        self.key = tuple(_freeze(group[k]) for k in self.key_names)

    def matches(self, group: dict) -> bool:
        return all(_freeze(group.get(k)) == v for k, v in zip(self.key_names, self.key))

    def hypers(self, group: dict) -> list:
        out = []
        for p in self.plan:
            if isinstance(p, tuple):
                value = group[p[0]]
                if p[1] is not None:
                    value = value[p[1]]
                out.append(float(value))
            else:
                out.append(p)
        return out


def _group_value(group: dict, g: int, name: str, init: float) -> float:
    """Group state `name` of group `g` as a number (`init` when the group has none yet)."""
    value = group.get(name, init)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"group state {name!r} of group {g} is {value!r}, not a number")
    return float(value)


def _freeze(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", value.item())
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class OptjitOptimizer(Optimizer):
    """A :class:`torch.optim.Optimizer` whose step runs an optjit program per param group.

    ``build(options)`` returns the :class:`optjit.Program` for a group's options (its
    entries other than ``params``).
    """

    # Whether the state keeps a `step` (PyTorch's SGD keeps none).
    _keep_step = True
    # Whether the state is made in the constructor rather than at the first step (as
    # PyTorch's Adagrad does).
    _eager_state = False

    def __init__(
        self,
        params,
        defaults: dict,
        build: Callable[[dict], Program],
        *,
        threads: int | None = None,
        state_dtype: torch.dtype | None = None,
    ):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if state_dtype is not None and not isinstance(state_dtype, torch.dtype):
            raise TypeError(f"state_dtype must be a torch.dtype or None, got {state_dtype!r}")
        if defaults.get("differentiable"):
            raise ValueError("differentiable=True is not supported: optjit steps outside autograd")
        self._build = build
        self._threads = threads
        self._state_dtype = state_dtype
        self._compiled: dict[int, _Compiled] = {}
        super().__init__(params, defaults)
        # Compile every group now: bad options fail at construction, as in PyTorch.
        for group in self.param_groups:
            self._program(group)
            self._make_state(group)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(_build=self._build, _threads=self._threads, _state_dtype=self._state_dtype)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # Programs are compiled again on first use.
        self._compiled = {}

    def _make_state(self, group: dict) -> None:
        if not self._eager_state:
            return
        program = self._program(group).program
        for p in group["params"]:
            if not self.state.get(p):
                self.state[p] = program.init_state(
                    p, _scalar_dtype(), self._state_dtype, self._keep_step
                )

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_compiled"):
            self._program(self.param_groups[-1])
            self._make_state(self.param_groups[-1])

    def _options(self, group: dict) -> dict:
        # Only the optimizer's own arguments: a group also holds what others put there
        # (schedulers' `initial_lr`, `max_lr`, `base_momentum`; `param_names`; user keys;
        # torch.optim.AdamW's `decoupled_weight_decay` in its checkpoints), which torch ignores.
        return {
            k: v
            for k, v in group.items()
            if k in self.defaults and k != "params" and k not in _IMPLEMENTATION
        }

    def _program(self, group: dict) -> _Compiled:
        compiled = self._compiled.get(id(group))
        if compiled is None or not compiled.matches(group):
            options = self._options(group)
            if options.get("differentiable"):
                raise ValueError("differentiable=True is not supported")
            compiled = _Compiled(self._build(options), options, group)
            self._compiled[id(group)] = compiled
        return compiled

    def program(self, group: int = 0) -> Program:
        """The compiled program of param group ``group`` (``print`` it to see its code)."""
        return self._program(self.param_groups[group]).program

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Performs one optimization step (``closure`` re-evaluates the model and returns
        the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        threads = self._threads or torch.get_num_threads()
        step_dtype = _scalar_dtype()
        work = []
        for g, group in enumerate(self.param_groups):
            compiled = self._program(group)
            values = None
            if compiled.group_slots:
                values = [_group_value(group, g, n, init) for n, init in compiled.group_slots]
            work.append((compiled, group, compiled.hypers(group), values))
        # One call for all groups: each group's tensors are checked before any group steps.
        applied = step_groups(
            [(c.program, group["params"], hypers, g, values)
             for g, (c, group, hypers, values) in enumerate(work)],
            self.state,
            threads,
            step_dtype,
            self._state_dtype,
            self._keep_step,
        )
        for (compiled, group, hypers, values), done in zip(work, applied):
            if values is not None and done:
                # The group's state advances once per step, gradients or not.
                new = compiled.program.advance_group(hypers, values)
                for (name, _), value in zip(compiled.group_slots, new):
                    old = group.get(name)
                    if isinstance(old, torch.Tensor):
                        group[name] = torch.tensor(value, dtype=old.dtype)
                    elif isinstance(old, int) and float(value).is_integer():
                        group[name] = int(value)
                    else:
                        group[name] = value
            # The parameters changed in place behind autograd's back: say so, so that a
            # graph that saved them fails loudly instead of computing with new values.
            torch.autograd.graph.increment_version(group["params"])
        return loss


def _torch_style(name: str, torch_class: type | None, signature: inspect.Signature, doc: str):
    """The constructor of a class taking ``signature``'s arguments, whose program is
    ``Program.from_torch(name, options)``. With ``torch_class`` (PyTorch's class of that
    name), the arguments are checked and completed by PyTorch itself: an instance over a
    placeholder parameter gives its errors, messages and defaults."""

    def __init__(self, params, *args, threads=None, state_dtype=None, **kwargs):
        if torch_class is not None:
            probe = torch_class([torch.zeros(1, requires_grad=True)], *args, **kwargs)
            defaults = dict(probe.defaults)
        else:
            defaults = _bound_defaults(signature, params, args, kwargs)

        def build(options: dict) -> Program:
            kwargs = {k: _jsonable(v) for k, v in options.items() if v is not None}
            # torch.optim.AdamW is Adam with decoupled weight decay, and says so in its
            # groups (PyTorch 2.6 and later).
            decoupled = name == "adamw" and "decoupled_weight_decay" in kwargs
            builtin = "adam" if decoupled else name
            return Program.from_torch(builtin, json.dumps(kwargs))

        OptjitOptimizer.__init__(
            self, params, defaults, build, threads=threads, state_dtype=state_dtype
        )

    params = list(signature.parameters.values())
    extra = [
        inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("state_dtype", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    positional = [p for p in params if p.kind != inspect.Parameter.VAR_KEYWORD]
    __init__.__signature__ = signature.replace(parameters=positional + extra)
    __init__.__doc__ = doc
    return __init__


def _bound_defaults(signature: inspect.Signature, params, args, kwargs) -> dict:
    """The options of a class taking ``signature``'s arguments, defaults filled in and
    checked as PyTorch checks them."""
    bound = signature.bind(None, params, *args, **kwargs)
    bound.apply_defaults()
    defaults = dict(bound.arguments)
    defaults.pop("self")
    defaults.pop("params")
    _check(defaults)
    return defaults


def _check(options: dict) -> None:
    """PyTorch's checks of common options, with its messages."""
    lr = options.get("lr")
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if lr is not None and not 0.0 <= float(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    eps = options.get("eps")
    if eps is not None and not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    wd = options.get("weight_decay")
    if wd is not None and not 0.0 <= float(wd):
        raise ValueError(f"Invalid weight_decay value: {wd}")
    betas = options.get("betas")
    if betas is not None:
        for i, b in enumerate(betas):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
    momentum = options.get("momentum")
    if momentum is not None and not 0.0 <= momentum:
        raise ValueError(f"Invalid momentum value: {momentum}")


def _class(
    name: str,
    builtin: str,
    signature: inspect.Signature,
    doc: str,
    torch_class: type | None = None,
    **attributes: Any,
) -> type:
    attributes.update({"__doc__": doc, "__module__": __name__})
    cls = type(name, (OptjitOptimizer,), attributes)
    cls.__init__ = _torch_style(builtin, torch_class, signature, doc)
    cls.__init__.__qualname__ = f"{name}.__init__"
    return cls


def _torch_class(name: str, **attributes: Any) -> type:
    torch_class = getattr(torch.optim, name)
    doc = (
        f"``torch.optim.{name}``, run by optjit: the same keyword arguments, defaults, state "
        f"and numbers (within the tolerances of optjit's conformance tests), plus "
        f"``threads`` and ``state_dtype``."
    )
    signature = inspect.signature(torch_class.__init__)
    return _class(name, name.lower(), signature, doc, torch_class, **attributes)


def _signature(**kwargs: Any) -> inspect.Signature:
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
    params += [P(k, P.POSITIONAL_OR_KEYWORD, default=v) for k, v in kwargs.items()]
    return inspect.Signature(params)


SGD = _torch_class("SGD", _keep_step=False)
Adam = _torch_class("Adam")
AdamW = _torch_class("AdamW")
Adagrad = _torch_class("Adagrad", _eager_state=True)
Adadelta = _torch_class("Adadelta")
Adamax = _torch_class("Adamax")
NAdam = _torch_class("NAdam")
RAdam = _torch_class("RAdam")
RMSprop = _torch_class("RMSprop")
Rprop = _torch_class("Rprop")
ASGD = _torch_class("ASGD")

Lion = _class(
    "Lion",
    "lion",
    _signature(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False),
    "Lion (Chen et al., 2023), with the arguments of ``lion-pytorch``; state ``exp_avg``.",
)
Adan = _class(
    "Adan",
    "adan",
    _signature(
        lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.02, no_prox=False,
        maximize=False,
    ),
    "Adan (Xie et al., 2022), with the arguments of its reference PyTorch implementation.",
)
AdaBelief = _class(
    "AdaBelief",
    "adabelief",
    _signature(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, amsgrad=False,
        weight_decouple=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True,
        maximize=False,
    ),
    "AdaBelief (Zhuang et al., 2020), with the arguments of ``adabelief-pytorch``.",
)


def _optax_style(name: str, rename: dict, signature: inspect.Signature, doc: str) -> type:
    """A class whose program is optax's ``name`` (``Program.from_optax`` with optax's
    argument names, from ``rename``)."""

    def __init__(self, params, *args, threads=None, state_dtype=None, **kwargs):
        defaults = _bound_defaults(signature, params, args, kwargs)

        def build(options: dict) -> Program:
            kwargs = {}
            for k, v in options.items():
                if k == "betas":
                    kwargs["b1"], kwargs["b2"] = (_jsonable(b) for b in v)
                else:
                    kwargs[rename.get(k, k)] = _jsonable(v)
            return Program.from_optax(name, json.dumps(kwargs))

        OptjitOptimizer.__init__(
            self, params, defaults, build, threads=threads, state_dtype=state_dtype
        )

    cls = type(name.upper(), (OptjitOptimizer,), {"__doc__": doc, "__module__": __name__})
    __init__.__signature__ = signature
    __init__.__doc__ = doc
    cls.__init__ = __init__
    return cls


LAMB = _optax_style(
    "lamb",
    {"lr": "learning_rate"},
    _signature(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, eps_root=0.0, weight_decay=0.0),
    "LAMB (You et al., 2019) as ``optax.lamb``: Adam's direction plus weight decay, scaled "
    "per parameter by the trust ratio ||p|| / ||update||.",
)
LARS = _optax_style(
    "lars",
    {"lr": "learning_rate"},
    _signature(lr=0.1, weight_decay=0.0, trust_coefficient=0.001, eps=0.0, momentum=0.9,
               nesterov=False),
    "LARS (You et al., 2017) as ``optax.lars``.",
)


class _Text(OptjitOptimizer):
    """An optimizer written in optjit's text form; its hyperparameters are the group's
    options."""

    def __init__(self, program: Program, params, threads=None, state_dtype=None, **hypers):
        defaults = dict(program.hypers)
        unknown = sorted(set(hypers) - set(defaults))
        if unknown:
            raise ValueError(
                f"optimizer {program.name!r} has no hyperparameter {unknown[0]!r} "
                f"(it has {', '.join(defaults) or 'none'})"
            )
        defaults.update(hypers)
        OptjitOptimizer.__init__(
            self, params, defaults, lambda _: program, threads=threads, state_dtype=state_dtype
        )


def from_text(text: str, params, *, threads=None, state_dtype=None, **hypers) -> OptjitOptimizer:
    """The optimizer written in ``text`` (optjit's text form), over ``params``, with
    hyperparameter values ``hypers`` (the text's defaults for the others)."""
    return _Text(Program.from_text(text), params, threads, state_dtype, **hypers)


def from_file(path, params, *, threads=None, state_dtype=None, **hypers) -> OptjitOptimizer:
    """The optimizer in the ``.opt`` file at ``path``; see :func:`from_text`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no optimizer file at {str(path)!r}")
    return _Text(Program.from_file(str(path)), params, threads, state_dtype, **hypers)


del Iterable


class ScheduleFreeAdamW(OptjitOptimizer):
    """Schedule-free AdamW (Defazio et al., 2024) as ``schedulefree.AdamWScheduleFree``:
    the same arguments, param-group keys (``k``, ``lr_max``, ``weight_sum``,
    ``train_mode``, ``scheduled_lr``) and state (``z``, ``exp_avg_sq``; no ``step``), so its
    checkpoints load in either. As there, call ``train()`` before stepping and ``eval()``
    before evaluating or saving the model: the parameters hold the point where gradients are
    taken (``y``) in train mode and the average (``x``) in eval mode; ``step()`` in eval mode
    raises.
    """

    _keep_step = False
    # Group entries that are state or bookkeeping, not options of the program.
    _GROUP_STATE = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")

    def __init__(
        self,
        params,
        lr=0.0025,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        warmup_steps=0,
        r=0.0,
        weight_lr_power=2.0,
        foreach=None,
        *,
        threads=None,
        state_dtype=None,
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps,
            train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0,
            weight_lr_power=weight_lr_power, weight_decay=weight_decay, foreach=foreach,
        )
        _check(defaults)
        super().__init__(
            params,
            defaults,
            lambda options: Program.builtin("schedule_free_adamw"),
            threads=threads,
            state_dtype=state_dtype,
        )

    def _options(self, group: dict) -> dict:
        options = super()._options(group)
        return {k: v for k, v in options.items() if k not in self._GROUP_STATE}

    def _swap(self, train: bool) -> None:
        """Moves every parameter from ``y`` to ``x`` (eval) or back (train); everything is
        checked before any parameter moves."""
        moves = []
        for g, group in enumerate(self.param_groups):
            if group["train_mode"] == train:
                continue
            beta1 = float(group["betas"][0])
            if not train and beta1 == 0.0:
                raise ValueError(f"group {g} has betas[0] = 0: its average x is undefined")
            weight = 1 - beta1 if train else 1 - 1 / beta1
            for i, p in enumerate(group["params"]):
                z = self.state.get(p, {}).get("z")
                if z is None:
                    continue
                if not isinstance(z, torch.Tensor) or z.shape != p.shape:
                    raise ValueError(
                        f"state 'z' of parameter {i} of group {g} is not a tensor of the "
                        f"parameter's shape {tuple(p.shape)}"
                    )
                moves.append((p, z, weight))
        for p, z, weight in moves:
            p.lerp_(end=z.to(device=p.device, dtype=p.dtype), weight=weight)
        for group in self.param_groups:
            group["train_mode"] = train

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to the average ``x``, for evaluation and saving the model."""
        self._swap(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters back to ``y``, for training."""
        self._swap(train=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One step (in train mode only)."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(
                "Optimizer was not in train mode when step is called: call .train() before "
                "stepping and .eval() before evaluating"
            )
        scheduled = []
        for g, group in enumerate(self.param_groups):
            k = _group_value(group, g, "k", 0.0)
            if not (0 <= k < 2**53 and k.is_integer()):
                raise ValueError(f"group state 'k' of group {g} is {k}, not a step count")
            warmup = group["warmup_steps"]
            scheduled.append(float(group["lr"]) * ((k + 1) / warmup if k < warmup else 1.0))
        loss = super().step(closure)
        # For logging, as the reference keeps it: the learning rate after warmup.
        for group, lr in zip(self.param_groups, scheduled):
            group["scheduled_lr"] = lr
        return loss

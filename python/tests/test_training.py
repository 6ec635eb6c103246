"""optjit.torch inside an ordinary PyTorch training loop: ``torch.amp.GradScaler`` (with a
step it skips because of an infinite gradient), ``clip_grad_norm_``, an LR scheduler that
also moves ``betas``, two param groups, and checkpoints of all of them, each run side by
side with ``torch.optim.AdamW(foreach=False)`` on the same model, data and seed."""

import copy
import io
import math

import pytest
import torch

import optjit.torch as ot

STEPS = 8
# The step (0-based) whose gradient gets an infinity: the scaler skips it.
INF_STEP = 3
MAX_NORM = 0.5
RTOL, ATOL = 1e-5, 1e-6


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(12, 6, generator=g), torch.randn(12, 3, generator=g)


class Run:
    """A model, an AdamW of class `cls` (weights decayed, biases not), a CPU GradScaler
    whose scale grows every 2 good steps, and a OneCycleLR that changes lr and betas[0] at
    every step."""

    def __init__(self, cls, autocast: torch.dtype | None = None):
        self.model = make_model()
        weights = [p for n, p in self.model.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in self.model.named_parameters() if n.endswith("bias")]
        extra = {"foreach": False} if cls is torch.optim.AdamW else {}
        self.opt = cls(
            [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}],
            lr=1e-2,
            betas=(0.9, 0.99),
            **extra,
        )
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=3e-2, total_steps=STEPS + 2, cycle_momentum=True,
            base_momentum=0.8, max_momentum=0.95,
        )
        self.autocast = autocast
        self.step_index = 0
        self.log: list[dict] = []

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def state(self) -> list[dict]:
        return [
            {k: v.clone() for k, v in self.opt.state[p].items()} for p in self.model.parameters()
        ]

    def step(self, inf_grad: bool = False) -> None:
        x, y = batch(self.step_index)
        with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            loss = torch.nn.functional.mse_loss(self.model(x).float(), y)
        self.scaler.scale(loss).backward()
        if inf_grad:
            self.model[2].weight.grad[1, 2] = math.inf
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_NORM)
        scale = self.scaler.get_scale()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad()
        self.log.append({
            "norm": norm.item(),
            "scale": scale,
            "lr": [g["lr"] for g in self.opt.param_groups],
            "beta1": [g["betas"][0] for g in self.opt.param_groups],
            "params": self.params(),
        })
        self.step_index += 1

    def checkpoint(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sched": self.sched.state_dict(),
            "step_index": self.step_index,
        }, buffer)
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        saved = torch.load(io.BytesIO(data), weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["opt"])
        self.scaler.load_state_dict(saved["scaler"])
        self.sched.load_state_dict(saved["sched"])
        self.step_index = saved["step_index"]


def assert_close_lists(actual, expected, what, rtol=RTOL, atol=ATOL):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{what} {i}: {m}")


def assert_state_close(actual: list[dict], expected: list[dict], rtol=RTOL, atol=ATOL):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert set(a) == set(e), f"state keys of parameter {i}"
        for k in e:
            assert a[k].dtype == e[k].dtype and a[k].shape == e[k].shape, f"{k} of {i}"
            torch.testing.assert_close(
                a[k], e[k], rtol=rtol, atol=atol, msg=lambda m: f"state {k} of {i}: {m}"
            )


def train(run: Run, steps=range(STEPS)) -> dict:
    """Steps `run`; returns its params and state just before and after INF_STEP."""
    around = {}
    for s in steps:
        if s == INF_STEP:
            around["before"] = (run.params(), run.state())
        run.step(inf_grad=s == INF_STEP)
        if s == INF_STEP:
            around["after"] = (run.params(), run.state())
    return around


# (autocast dtype, tolerance): bfloat16 autocast rounds the forward's inputs to bfloat16, so
# that a last-bit difference in a parameter may become a bfloat16 rounding difference.
CASES = {
    "float32": (None, (RTOL, ATOL)),
    "bf16-autocast": (torch.bfloat16, (1e-3, 1e-4)),
}


@pytest.mark.parametrize("case", CASES)
def test_scaler_clipping_and_scheduler_loop_matches_torch(case):
    autocast, (rtol, atol) = CASES[case]
    ours, theirs = Run(ot.AdamW, autocast), Run(torch.optim.AdamW, autocast)
    around = train(ours)
    train(theirs)

    # The loop did what it claims: one skipped step (the scale halved after it, grew
    # otherwise), clipping that clipped, lr and beta1 moved by the scheduler.
    scales = [e["scale"] for e in ours.log]
    halved = [i for i in range(1, STEPS) if scales[i] < scales[i - 1]]
    assert halved == [INF_STEP + 1], scales
    assert max(scales) > scales[0]
    assert math.isinf(ours.log[INF_STEP]["norm"]) or math.isnan(ours.log[INF_STEP]["norm"])
    assert sum(e["norm"] > MAX_NORM for e in ours.log if math.isfinite(e["norm"])) >= 2
    assert len({e["lr"][0] for e in ours.log}) == STEPS
    assert len({e["beta1"][0] for e in ours.log}) == STEPS

    # The skipped step left every parameter and state tensor exactly as it was.
    (p0, s0), (p1, s1) = around["before"], around["after"]
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    for a, b in zip(s0, s1):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(s["step"].item() == INF_STEP for s in s1)
    assert all(s["step"].item() == STEPS - 1 for s in ours.state())
    # ... and the other steps moved them.
    assert not torch.equal(ours.log[0]["params"][0], make_model()[0].weight)

    # Step by step, the same numbers as torch.optim.AdamW.
    for s, (a, e) in enumerate(zip(ours.log, theirs.log)):
        assert a["scale"] == e["scale"], f"scale at step {s}"
        assert a["lr"] == e["lr"] and a["beta1"] == e["beta1"], f"lr/betas at step {s}"
        if math.isfinite(e["norm"]):
            assert a["norm"] == pytest.approx(e["norm"], rel=rtol * 10), f"norm at step {s}"
        assert_close_lists(a["params"], e["params"], f"step {s}, parameter", rtol, atol)
    assert_state_close(ours.state(), theirs.state(), rtol, atol)


def test_a_checkpoint_of_model_optimizer_scaler_and_scheduler_resumes_exactly():
    whole = Run(ot.AdamW)
    train(whole)

    first = Run(ot.AdamW)
    train(first, range(5))
    data = first.checkpoint()
    resumed = Run(ot.AdamW)
    resumed.restore(data)
    assert resumed.opt.state_dict()["param_groups"] == first.opt.state_dict()["param_groups"]
    train(resumed, range(5, STEPS))

    # The same kernel on the same inputs: bit for bit.
    assert all(torch.equal(a, b) for a, b in zip(resumed.params(), whole.params()))
    for a, b in zip(resumed.state(), whole.state()):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.scaler.get_scale() == whole.scaler.get_scale()
    assert resumed.sched.get_last_lr() == whole.sched.get_last_lr()


def test_a_torch_adamw_checkpoint_resumes_with_optjit_adamw():
    """Switching a running job to optjit: its torch.optim.AdamW checkpoint loads into
    optjit.torch.AdamW and training continues as torch's would."""
    theirs = Run(torch.optim.AdamW)
    train(theirs, range(5))
    data = theirs.checkpoint()
    train(theirs, range(5, STEPS))

    ours = Run(ot.AdamW)
    ours.restore(data)
    train(ours, range(5, STEPS))
    assert_close_lists(ours.params(), theirs.params(), "parameter")
    assert_state_close(ours.state(), theirs.state())


def test_an_optjit_adamw_checkpoint_resumes_with_torch_adamw():
    ours = Run(ot.AdamW)
    train(ours, range(5))
    data = ours.checkpoint()
    train(ours, range(5, STEPS))

    theirs = Run(torch.optim.AdamW)
    theirs.restore(data)
    assert all(g["decoupled_weight_decay"] for g in theirs.opt.param_groups)
    train(theirs, range(5, STEPS))
    assert_close_lists(theirs.params(), ours.params(), "parameter")
    assert_state_close(theirs.state(), ours.state())


def test_zero_grad_set_to_none_false_and_grads_missing_for_a_frozen_layer():
    """Gradients zeroed in place (set_to_none=False) and a frozen first layer (no gradient
    ever, so no state): as torch."""
    runs = []
    for cls in (ot.AdamW, torch.optim.AdamW):
        model = make_model()
        model[0].requires_grad_(False)
        extra = {"foreach": False} if cls is torch.optim.AdamW else {}
        opt = cls(model.parameters(), lr=1e-2, **extra)
        for s in range(4):
            x, y = batch(s)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
        runs.append((model, opt))
    (m1, o1), (m2, o2) = runs
    assert m1[2].weight.grad is not None and not m1[2].weight.grad.any()
    assert m1[0].weight not in o1.state and m1[0].bias not in o1.state
    assert torch.equal(m1[0].weight, make_model()[0].weight)
    assert_close_lists([p.detach() for p in m1.parameters()],
                       [p.detach() for p in m2.parameters()], "parameter")
    assert_state_close([o1.state[p] for p in list(m1.parameters())[2:]],
                       [o2.state[p] for p in list(m2.parameters())[2:]])


def test_named_parameters_and_extra_group_keys_are_carried_not_compiled():
    """`model.named_parameters()` (torch keeps `param_names` in each group) and a group key
    of the user's (`name`) are carried along and ignored by the step, as torch does."""
    runs = []
    for cls in (ot.AdamW, torch.optim.AdamW):
        model = make_model()
        named = list(model.named_parameters())
        extra = {"foreach": False} if cls is torch.optim.AdamW else {}
        opt = cls(named[:2], lr=1e-2, **extra)
        opt.add_param_group({"params": named[2:], "name": "head", "lr": 3e-3})
        for s in range(3):
            x, y = batch(s)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        runs.append((model, opt))
    (m1, o1), (m2, o2) = runs
    assert o1.param_groups[0]["param_names"] == ["0.weight", "0.bias"]
    assert o1.param_groups[1]["name"] == "head"
    assert_close_lists([p.detach() for p in m1.parameters()],
                       [p.detach() for p in m2.parameters()], "parameter")
    # Each loads the other's checkpoint (copies: a state_dict holds the state's tensors).
    ours, theirs = copy.deepcopy(o1.state_dict()), copy.deepcopy(o2.state_dict())
    assert ours["param_groups"][0]["param_names"] == ["0.weight", "0.bias"]
    o1.load_state_dict(theirs)
    o2.load_state_dict(ours)
    assert o1.param_groups[1]["name"] == "head"
    for m, o in runs:
        x, y = batch(3)
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
    assert_close_lists([p.detach() for p in m1.parameters()],
                       [p.detach() for p in m2.parameters()], "parameter")

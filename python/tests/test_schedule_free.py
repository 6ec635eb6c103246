"""optjit.torch.ScheduleFreeAdamW against the reference package's
``schedulefree.AdamWScheduleFree(foreach=False)``: two param groups, warmup, a parameter
without a gradient in some steps, eval/train swaps, an LR scheduler, f32 and f64, and
checkpoints loaded across the two."""

import io

import pytest
import schedulefree
import torch

import optjit.torch as ot

GROUP_KEYS = ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


def make(cls, dtype, **kwargs):
    """Three parameters in two groups (weights decayed, the bias not), the same values for
    either class."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
              for shape in ((5, 7), (33,), (7,))]
    extra = {"foreach": False} if cls is schedulefree.AdamWScheduleFree else {}
    opt = cls(
        [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
        lr=0.05, betas=(0.9, 0.99), warmup_steps=3, r=0.5, weight_lr_power=2.0, **extra,
        **kwargs,
    )
    return params, opt


def give_grads(params, step, dtype):
    """Gradients of step `step`; the second parameter has none at steps 2 and 5."""
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=dtype)
        p.grad = None if (i == 1 and step in (2, 5)) else grad


def assert_same(ours, theirs, dtype, what):
    (po, oo), (pt, ot_) = ours, theirs
    for i, (a, b) in enumerate(zip(po, pt)):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=f"{what}: parameter {i}")
        sa, sb = oo.state[a], ot_.state[b]
        assert set(sa) == set(sb), f"{what}: state keys of parameter {i}"
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], **TOL[dtype],
                                       msg=f"{what}: state {key} of parameter {i}")
    for ga, gb in zip(oo.param_groups, ot_.param_groups):
        for key in GROUP_KEYS:
            assert ga[key] == pytest.approx(gb[key], rel=1e-12), f"{what}: group {key}"


def run(side, steps, dtype, start=0):
    params, opt = side
    for s in range(start, start + steps):
        give_grads(params, s, dtype)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_steps_eval_and_train_match_the_reference(dtype):
    ours, theirs = make(ot.ScheduleFreeAdamW, dtype), make(schedulefree.AdamWScheduleFree, dtype)
    for side in (ours, theirs):
        side[1].train()
    run(ours, 6, dtype)
    run(theirs, 6, dtype)
    assert_same(ours, theirs, dtype, "after 6 steps")
    assert ours[1].param_groups[0]["k"] == 6
    for side in (ours, theirs):
        side[1].eval()
    assert_same(ours, theirs, dtype, "in eval mode")
    for side in (ours, theirs):
        side[1].train()
    run(ours, 2, dtype, start=6)
    run(theirs, 2, dtype, start=6)
    assert_same(ours, theirs, dtype, "after 2 more steps")


def test_a_scheduler_changing_lr_is_read_at_every_step():
    dtype = torch.float64
    sides = [make(ot.ScheduleFreeAdamW, dtype), make(schedulefree.AdamWScheduleFree, dtype)]
    scheds = [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) for _, opt in sides]
    for _, opt in sides:
        opt.train()
    for s in range(6):
        for (params, opt), sched in zip(sides, scheds):
            give_grads(params, s, dtype)
            opt.step()
            sched.step()
    assert_same(sides[0], sides[1], dtype, "with StepLR")
    assert sides[0][1].param_groups[0]["lr"] == 0.05 / 8


def test_stepping_in_eval_mode_is_refused_and_changes_nothing():
    params, opt = make(ot.ScheduleFreeAdamW, torch.float32)
    give_grads(params, 0, torch.float32)
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="train mode"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert opt.param_groups[0]["k"] == 0 and not opt.state


@pytest.mark.parametrize("direction", ["optjit_to_reference", "reference_to_optjit"])
def test_checkpoints_load_across_the_two(direction):
    dtype = torch.float64
    first, second = ot.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree
    if direction == "reference_to_optjit":
        first, second = second, first
    saved = make(first, dtype)
    saved[1].train()
    run(saved, 3, dtype)
    buffer = io.BytesIO()
    torch.save(saved[1].state_dict(), buffer)
    buffer.seek(0)
    resumed = make(second, dtype)
    with torch.no_grad():
        for p, q in zip(resumed[0], saved[0]):
            p.copy_(q)
    resumed[1].load_state_dict(torch.load(buffer))
    # Both continue from the checkpoint and stay equal.
    run(saved, 3, dtype, start=3)
    run(resumed, 3, dtype, start=3)
    ours, theirs = (resumed, saved) if second is ot.ScheduleFreeAdamW else (saved, resumed)
    assert_same(ours, theirs, dtype, f"resumed {direction}")


COUNTER = """optimizer counted(lr = 1) {
    group state n = 0
    n = n + 1
    param = param - lr * n
}"""


def test_group_state_of_any_program_lives_in_its_group_and_advances_once_per_step():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = ot.from_text(COUNTER, [{"params": [a]}, {"params": [b], "lr": 10.0}])
    # Step 1: both have gradients; step 2: only `a`; step 3: neither.
    for grads in ((True, True), (True, False), (False, False)):
        a.grad = torch.ones(3) if grads[0] else None
        b.grad = torch.ones(2) if grads[1] else None
        opt.step()
    assert [g["n"] for g in opt.param_groups] == [3.0, 3.0]
    assert torch.equal(a.detach(), torch.full((3,), -3.0))  # -(1 + 2)
    assert torch.equal(b.detach(), torch.full((2,), -10.0))  # -10 · 1
    assert "n" not in opt.state[a] and "n" not in opt.state[b]
    # Step 4 reads n = 3 and gives 4.
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(a.detach(), torch.full((3,), -7.0))


def test_group_values_are_checked():
    program = ot.Program.builtin("schedule_free_adamw")
    assert [n for n, _ in program.group_slots] == ["k", "lr_max", "weight_sum"]
    p = torch.zeros(4)
    p.grad = torch.ones(4)
    hypers = [d for _, d in program.hypers]
    with pytest.raises(ValueError, match="group_values"):
        program.step([p], {}, hypers, 1, torch.float32, keep_step=False)
    with pytest.raises(ValueError, match="2 group values for 3 group slots"):
        program.step([p], {}, hypers, 1, torch.float32, keep_step=False, group_values=[0.0, 1.0])
    with pytest.raises(ValueError, match="hyperparameter values"):
        program.advance_group(hypers[:-1], [0.0, -1.0, 0.0])
    assert torch.equal(p, torch.zeros(4))
    with pytest.raises(ValueError, match="no built-in optimizer"):
        ot.Program.builtin("adam_nonsense")


def test_eval_and_train_with_state_in_another_dtype():
    p = torch.randn(6, dtype=torch.bfloat16, requires_grad=True)
    opt = ot.ScheduleFreeAdamW([p], lr=0.1, state_dtype=torch.float32)
    opt.train()
    for s in range(3):  # after one step y = z = x: take more
        p.grad = torch.randn(6, generator=torch.Generator().manual_seed(s)).to(p.dtype)
        opt.step()
    assert opt.state[p]["z"].dtype == torch.float32
    y = p.detach().clone()
    opt.eval()
    assert not torch.equal(p.detach(), y)
    opt.train()
    torch.testing.assert_close(p.detach(), y, rtol=1e-2, atol=1e-2)  # bf16 round trip


def test_a_swap_that_cannot_be_done_moves_no_parameter():
    a, b = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = ot.ScheduleFreeAdamW([a, b], lr=0.1)
    opt.train()
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    opt.state[b]["z"] = torch.zeros(5)
    before = a.detach().clone()
    with pytest.raises(ValueError, match="state 'z' of parameter 1 of group 0"):
        opt.eval()
    assert torch.equal(a.detach(), before) and opt.param_groups[0]["train_mode"]


@pytest.mark.parametrize("key, value, error", [
    ("weight_sum", "x", "group state 'weight_sum' of group 1 is 'x', not a number"),
    ("lr_max", float("nan"), "group state 'lr_max' of group 1 is nan, not a number"),
    ("k", 2.5, "group state 'k' of group 1 is 2.5, not a step count"),
    ("k", -1, "group state 'k' of group 1 is -1.0, not a step count"),
])
def test_bad_group_state_is_a_value_error_and_changes_nothing(key, value, error):
    params, opt = make(ot.ScheduleFreeAdamW, torch.float32)
    opt.train()
    run((params, opt), 1, torch.float32)
    opt.param_groups[1][key] = value
    before = [p.detach().clone() for p in params]
    groups = [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]
    give_grads(params, 1, torch.float32)
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert groups == [dict((k, v) for k, v in g.items() if k != "params")
                      for g in opt.param_groups]


def test_group_state_with_a_reduction_is_refused_when_built():
    source = """optimizer g(lr = 1) {
        group state n = 0
        n = n + global_sumsq(grad)
        param = param - lr * n * grad
    }"""
    with pytest.raises(ValueError, match="keeps state per group and reduces"):
        ot.from_text(source, [torch.zeros(3, requires_grad=True)])


def test_a_deep_copy_steps_as_the_original():
    import copy

    params, opt = make(ot.ScheduleFreeAdamW, torch.float64)
    opt.train()
    run((params, opt), 2, torch.float64)
    twin_params, twin = copy.deepcopy((params, opt))
    run((params, opt), 2, torch.float64, start=2)
    run((twin_params, twin), 2, torch.float64, start=2)
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))

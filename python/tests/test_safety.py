"""Bad input to optjit.torch: each gets a clear Python error naming the tensor, and nothing
changes (no parameter, no state, no step count), or the documented IEEE behaviour."""

import math

import pytest
import torch

import optjit
import optjit.torch as ot


def snapshot(opt):
    """Every parameter and state tensor of `opt`, cloned."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    state = {
        id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for p, s in opt.state.items()
    }
    return params, state


def assert_unchanged(opt, before):
    params, state = before
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(params, now))
    assert set(state) == {id(p) for p in opt.state}
    for p, s in opt.state.items():
        old = state[id(p)]
        assert set(old) == set(s)
        for k, v in s.items():
            assert torch.equal(old[k], v) if isinstance(v, torch.Tensor) else old[k] == v


def adam_with_state(*params):
    """Adam over `params`, stepped once with gradients of ones."""
    opt = ot.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt


def test_a_non_contiguous_gradient_is_a_value_error_naming_it_and_changes_nothing():
    a, b = torch.zeros(4, 6, requires_grad=True), torch.zeros(6, 4, requires_grad=True)
    opt = adam_with_state(a, b)
    before = snapshot(opt)
    a.grad = torch.ones(4, 6)
    b.grad = torch.ones(4, 6).t()  # a transposed view: not contiguous
    with pytest.raises(ValueError, match=r"gradient of parameter 1 of group 0 is not contiguous"):
        opt.step()
    assert_unchanged(opt, before)


def test_a_non_contiguous_parameter_is_a_value_error():
    base = torch.zeros(6, 4)
    p = base.t().requires_grad_()
    opt = ot.SGD([p], lr=0.1)
    p.grad = torch.ones(4, 6)
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 is not contiguous"):
        opt.step()
    assert torch.equal(base, torch.zeros(6, 4))


def test_a_tensor_not_on_the_cpu_is_a_value_error():
    p = torch.zeros(3, device="meta", requires_grad=True)
    opt = ot.Adam([p])
    p.grad = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match=r"is on meta"):
        opt.step()
    assert len(opt.state) == 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_an_unsupported_dtype_is_a_type_error_naming_it(dtype):
    good = torch.zeros(3, requires_grad=True)
    bad = torch.zeros(3).to(dtype)  # a leaf without autograd: any dtype may carry a grad
    opt = ot.Adam([good, bad])
    good.grad, bad.grad = torch.ones(3), torch.ones(3).to(dtype)
    with pytest.raises(TypeError, match=r"parameter 1 of group 0 has dtype"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(good.detach(), torch.zeros(3))


def test_a_sparse_gradient_is_a_type_error():
    p = torch.zeros(4, requires_grad=True)
    opt = ot.SGD([p], lr=1.0)
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(TypeError, match=r"not a dense"):
        opt.step()


def test_a_gradient_of_another_length_is_a_value_error_and_changes_nothing():
    a, b = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)
    opt = adam_with_state(a, b)
    before = snapshot(opt)
    a.grad, b.grad = torch.ones(5), torch.ones(5)
    b.grad.set_(torch.ones(4))  # torch checks sizes when a grad is assigned, not after
    with pytest.raises(ValueError, match=r"gradient of parameter 1 of group 0 has 4 elements"):
        opt.step()
    assert_unchanged(opt, before)


def test_parameters_sharing_memory_are_a_value_error_naming_both():
    base = torch.zeros(10)
    a, b = base[:6], base[4:]  # overlap in elements 4 and 5
    opt = ot.SGD([a, b], lr=1.0)
    a.grad, b.grad = torch.ones(6), torch.ones(6)
    with pytest.raises(ValueError, match=r"parameter [01] of group 0 overlaps .* parameter [01]"):
        opt.step()
    assert torch.equal(base, torch.zeros(10))


def test_a_gradient_aliasing_its_parameter_is_a_value_error():
    p = torch.zeros(8, requires_grad=True)
    opt = ot.Adam([p], lr=0.1)
    p.grad = p.detach()  # same memory
    with pytest.raises(ValueError, match=r"overlaps"):
        opt.step()
    assert len(opt.state) == 0


def test_gradients_may_share_memory_with_each_other():
    a, b = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    g = torch.ones(4)
    opt = ot.SGD([a, b], lr=0.5)
    a.grad, b.grad = g, g  # read only: no conflict
    opt.step()
    assert torch.equal(a.detach(), torch.full((4,), -0.5))
    assert torch.equal(b.detach(), torch.full((4,), -0.5))


def test_state_from_another_optimizer_is_a_value_error_and_changes_nothing():
    p = torch.zeros(3, requires_grad=True)
    sgd = ot.RMSprop([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    sgd.step()
    adam = ot.Adam([p], lr=0.1)
    adam.load_state_dict({"state": {0: dict(sgd.state[p])}, "param_groups": adam.state_dict()["param_groups"]})
    before = snapshot(adam)
    with pytest.raises(ValueError, match=r"has no \"exp_avg\""):
        adam.step()
    assert_unchanged(adam, before)


def test_a_step_count_that_is_no_count_is_a_value_error():
    p = torch.zeros(3, requires_grad=True)
    opt = adam_with_state(p)
    opt.state[p]["step"] = torch.tensor(-1.0)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"state \"step\" of parameter 0 of group 0 is -1"):
        opt.step()
    assert_unchanged(opt, before)
    opt.state[p]["step"] = torch.tensor(1.5)
    with pytest.raises(ValueError, match=r"not a step count"):
        opt.step()


def test_a_state_buffer_of_the_wrong_length_is_a_value_error():
    p = torch.zeros(6, requires_grad=True)
    opt = adam_with_state(p)
    opt.state[p]["exp_avg"] = torch.zeros(5)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"state \"exp_avg\" of parameter 0 of group 0 has 5"):
        opt.step()
    assert_unchanged(opt, before)


def test_nan_and_inf_gradients_follow_ieee():
    p = torch.zeros(4, requires_grad=True)
    opt = ot.SGD([p], lr=1.0)
    p.grad = torch.tensor([math.nan, math.inf, -math.inf, 1.0])
    opt.step()
    got = p.detach()
    assert math.isnan(got[0]) and got[1] == -math.inf and got[2] == math.inf and got[3] == -1.0


def test_a_bad_option_fails_at_construction():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"differentiable"):
        ot.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match=r"Invalid learning rate"):
        ot.Adam([p], lr=-1.0)
    with pytest.raises(TypeError):
        ot.Adam([p], no_such_option=1)
    with pytest.raises(ValueError, match=r"threads"):
        ot.Adam([p], threads=0)
    with pytest.raises(ValueError, match=r"has no hyperparameter 'nope'"):
        ot.from_text("optimizer s(lr = 0.1) { param = param - lr * grad }", [p], nope=1.0)


def test_malformed_text_is_a_value_error_with_its_position():
    with pytest.raises(ValueError, match=r"1:"):
        optjit.Program.from_text("optimizer x() { param = nope }")


def test_a_parameter_without_gradient_is_left_alone():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = ot.Adam([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert b not in opt.state and torch.equal(b.detach(), torch.ones(3))
    assert opt.state[a]["step"].item() == 1.0


def test_float32_state_for_bfloat16_parameters():
    p = torch.ones(9, dtype=torch.bfloat16, requires_grad=True)
    opt = ot.Adam([p], lr=0.1, state_dtype=torch.float32)
    p.grad = torch.ones(9, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    assert torch.equal(p.detach(), torch.full((9,), 0.9, dtype=torch.bfloat16))


def test_the_thread_count_changes_no_result():
    torch.manual_seed(1)
    ps = [torch.randn(100_003, requires_grad=True) for _ in range(2)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    one, many = ot.AdamW(ps, threads=1), ot.AdamW(qs, threads=4)
    for _ in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g, g.clone()
        one.step()
        many.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_the_program_prints_and_lists_its_hyperparameters():
    p = torch.zeros(2, requires_grad=True)
    opt = ot.Adam([p], betas=(0.8, 0.9))
    program = opt.program()
    assert [h for h, _ in program.hypers] == ["lr", "b1", "b2", "eps", "weight_decay"]
    assert dict(program.hypers)["b1"] == 0.8
    assert "exp_avg" in str(program)


def test_torch_sgd_state_without_a_step_continues_as_torch_does():
    """torch.optim.SGD keeps no `step`: its momentum buffers load and continue bit for bit,
    and a state holding no slot at all (momentum 0 in torch) counts as fresh."""
    import copy

    torch.manual_seed(0)
    p = torch.randn(10, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    theirs = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    for _ in range(3):
        p.grad = torch.randn(10)
        theirs.step()
    with torch.no_grad():
        q.copy_(p)
    ours = ot.SGD([q], lr=0.1, momentum=0.9)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for _ in range(3):
        g = torch.randn(10)
        p.grad, q.grad = g, g.clone()
        theirs.step()
        ours.step()
    assert torch.equal(p, q)
    assert set(ours.state[q]) == {"momentum_buffer"}  # PyTorch's format: no step

    r = torch.ones(3, requires_grad=True)
    fresh = ot.SGD([r], lr=0.5, momentum=0.9)
    fresh.state[r] = {"momentum_buffer": None}  # what torch.optim.SGD(momentum=0) saves
    r.grad = torch.ones(3)
    fresh.step()
    assert torch.equal(r.detach(), torch.full((3,), 0.5))
    assert torch.equal(fresh.state[r]["momentum_buffer"], torch.ones(3))


@pytest.mark.parametrize("bad", ["non_contiguous", "step_count", "shared_across_groups"])
def test_bad_input_in_a_later_group_changes_no_group(bad):
    a, b, c = (torch.zeros(4, 6, requires_grad=True) for _ in range(3))
    opt = ot.Adam([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    before = snapshot(opt)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    if bad == "non_contiguous":
        c.grad = torch.ones(6, 4).t()
        error = r"gradient of parameter 1 of group 1 is not contiguous"
    elif bad == "step_count":
        opt.state[c]["step"] = torch.tensor(-1.0)
        before = snapshot(opt)
        error = r"parameter 1 of group 1 is -1"
    else:
        # Group 1's second parameter's moment is group 0's parameter's: it would write it.
        opt.state[c]["exp_avg"] = a.detach()
        before = snapshot(opt)
        error = r"overlaps .* of parameter 0 of group 0"
    with pytest.raises(ValueError, match=error):
        opt.step()
    assert_unchanged(opt, before)


@pytest.mark.parametrize("param, state", [(torch.float32, torch.float64), (torch.bfloat16, torch.float64),
                                          (torch.float64, torch.float32)])
def test_float64_mixed_with_narrower_tensors_is_a_value_error_naming_the_tensor(param, state):
    p = torch.zeros(8, dtype=param, requires_grad=True)
    opt = ot.Adam([p], lr=0.1, state_dtype=state)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r'state "exp_avg" of parameter 0 of group 0 is float'):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(8, dtype=param)) and not opt.state

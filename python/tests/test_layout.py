"""The state optjit.torch creates: for a large parameter, each element slot starts at another
offset within a page than the parameter and the other slots (streams at one page offset
contend for the same cache sets), yet it is an ordinary contiguous tensor of the
parameter's shape that steps, saves and loads as PyTorch's."""

import io

import torch

import optjit.torch as ot

PAGE = 4096


def page_offset(t: torch.Tensor) -> int:
    """The cache line of the page `t`'s first element is in."""
    return t.data_ptr() % PAGE // 64


def twins(shape, dtype=torch.float32):
    torch.manual_seed(0)
    p = torch.randn(shape, dtype=dtype, requires_grad=True)
    return p, p.detach().clone().requires_grad_()


def step_both(ours, theirs, p, q, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()


def test_a_large_parameters_state_is_staggered_and_steps_as_torch():
    p, q = twins((256, 512))  # 512 KiB
    ours = ot.Adam([p], lr=1e-2)
    theirs = torch.optim.Adam([q], lr=1e-2, foreach=False)
    step_both(ours, theirs, p, q, 3, seed=1)
    st = ours.state[p]
    streams = [p, st["exp_avg"], st["exp_avg_sq"]]
    assert len({page_offset(t) for t in streams}) == 3
    for key in ("exp_avg", "exp_avg_sq"):
        t = st[key]
        assert t.shape == p.shape and t.dtype == p.dtype and t.is_contiguous()
        torch.testing.assert_close(t, theirs.state[q][key])
    torch.testing.assert_close(p, q)
    # A checkpoint of it loads into a fresh optjit optimizer and continues as torch's.
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    resumed = ot.Adam([p], lr=1e-2)
    resumed.load_state_dict(torch.load(buffer))
    step_both(resumed, theirs, p, q, 2, seed=2)
    torch.testing.assert_close(p, q)
    assert resumed.state[p]["step"].item() == 5


def test_a_large_parameters_state_in_another_dtype_is_staggered_and_aligned():
    p, _ = twins((1 << 18,))
    opt = ot.Adam([p], lr=1e-2, state_dtype=torch.bfloat16)
    p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[p]
    assert {st[k].dtype for k in ("exp_avg", "exp_avg_sq")} == {torch.bfloat16}
    assert len({page_offset(t) for t in (p, st["exp_avg"], st["exp_avg_sq"])}) == 3
    assert all(st[k].data_ptr() % 64 == 0 for k in ("exp_avg", "exp_avg_sq"))
    # The first moment after one step is (1 - beta1) * grad, rounded to bf16.
    assert torch.equal(st["exp_avg"], torch.full_like(st["exp_avg"], 0.1))


def test_a_small_parameters_state_is_a_tensor_of_its_own():
    p, _ = twins((10, 10))
    opt = ot.Adam([p], lr=1e-2)
    p.grad = torch.ones_like(p)
    opt.step()
    t = opt.state[p]["exp_avg"]
    assert t.untyped_storage().nbytes() == t.numel() * t.element_size()

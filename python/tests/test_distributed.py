"""optjit.torch inside PyTorch's distributed engines, on CPU with 2 processes (gloo):
ZeroRedundancyOptimizer under DDP, and FSDP2's ``fully_shard`` (plain and with
``CPUOffloadPolicy``), each run side by side with ``torch.optim.AdamW(foreach=False)``.

Every worker runs both optimizers in turn on the same model, data and seed, and sends its
results (as numpy arrays) to the test, which compares them. Workers are spawned processes
that rendezvous on a free localhost port; they always destroy their process group, and the
test terminates any that outlive their time limit.
"""

import datetime
import os
import queue
import socket
import time
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optjit.torch as ot

WORLD = 2
STEPS = 4
# Seconds for a whole run (both workers), including starting Python and importing torch.
TIMEOUT = 50.0
RTOL, ATOL = 1e-5, 1e-6
OPTIMIZERS = {"torch": torch.optim.AdamW, "optjit": ot.AdamW}


def make_model() -> torch.nn.Module:
    """A tiny MLP whose last layers have fewer rows than ranks × 2, so that FSDP2 shards
    them unevenly and rank 1 holds an empty shard of the last bias."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 1)
    )


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(6, 8, generator=torch.Generator().manual_seed(100 * step + rank))


def optimizer_kwargs(cls) -> dict:
    return {"foreach": False} if cls is torch.optim.AdamW else {}


def groups(model: torch.nn.Module) -> list[dict]:
    """Weights decayed, biases not: two param groups."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.1},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]


def numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def train(model, opt, rank: int, steps) -> None:
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for s in steps:
        model(batch(rank, s)).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


# ---- workers (module-level functions: spawn pickles them by name) ----


def _entry(rank: int, port: int, results) -> None:
    """Runs every part (one process start for all: importing torch is the slow part); a
    part that fails ends the run, its traceback is its result."""
    out = {}
    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group(
            "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30)
        )
        torch.set_num_threads(1)
        for name, part in PARTS.items():
            try:
                out[name] = (None, part(rank))
            except Exception:
                out[name] = (traceback.format_exc(), None)
                break
    except BaseException:
        out["setup"] = (traceback.format_exc(), None)
    finally:
        results.put((rank, out))
        if dist.is_initialized():
            dist.destroy_process_group()


def zero_worker(rank: int) -> dict:
    """Per (optimizer, parameters_as_bucket_view): DDP + ZeroRedundancyOptimizer, STEPS
    steps, a consolidated state_dict, then a fresh ZeroRedundancyOptimizer loading it and
    2 more steps."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    out = {}
    for bucket in (False, True):
        for name, cls in OPTIMIZERS.items():
            model = DistributedDataParallel(make_model())

            def zero():
                return ZeroRedundancyOptimizer(
                    groups(model.module), optimizer_class=cls, lr=1e-2,
                    parameters_as_bucket_view=bucket, **optimizer_kwargs(cls),
                )

            opt = zero()
            train(model, opt, rank, range(STEPS))
            local = opt.optim
            owned = [i for i, p in enumerate(model.parameters())
                     if any(p is q for g in local.param_groups for q in g["params"])]
            stepped = [numpy(p) for p in model.parameters()]
            opt.consolidate_state_dict(to=0)
            saved = opt.state_dict() if rank == 0 else None
            state = None if saved is None else {
                i: {k: numpy(v) for k, v in s.items()} for i, s in saved["state"].items()
            }
            # Every rank loads the full state dict (and ZeroRedundancyOptimizer clears the
            # entries other ranks own).
            box = [saved]
            dist.broadcast_object_list(box, src=0)
            opt = zero()
            opt.load_state_dict(box[0])
            train(model, opt, rank, range(STEPS, STEPS + 2))
            out[name, bucket] = {
                "local_class": type(local).__name__,
                "local_module": type(local).__module__,
                "owned": owned,
                "stepped": stepped,
                "final": [numpy(p) for p in model.parameters()],
                "state": state,
                "lr": None if saved is None else [g["lr"] for g in saved["param_groups"]],
            }
    return out


def fsdp_worker(rank: int) -> dict:
    """Per (optimizer, offload): fully_shard on every Linear and the root, STEPS steps; the
    full parameters (gathered), this rank's shards and its optimizer state."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    out = {}
    for offload in (False, True):
        for name, cls in OPTIMIZERS.items():
            model = make_model()
            # pin_memory=True, the default, needs a CUDA driver (see the report in the docs).
            policy = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}
            for layer in (model[0], model[2], model[3], model):
                fully_shard(layer, **policy)
            opt = cls(groups(model), lr=1e-2, **optimizer_kwargs(cls))
            train(model, opt, rank, range(STEPS))
            params = list(model.parameters())
            out[name, offload] = {
                "dtensor": all(isinstance(p, DTensor) for p in params),
                "full": [numpy(p.full_tensor()) for p in params],
                "local": [numpy(p.to_local()) for p in params],
                "state_types": sorted({
                    f"{k}:{type(v).__name__}" for p in params for k, v in opt.state[p].items()
                }),
                "state": [
                    {k: numpy(v.to_local() if isinstance(v, DTensor) else v)
                     for k, v in opt.state[p].items()}
                    for p in params
                ],
            }
    return out


PARTS = {"zero": zero_worker, "fsdp": fsdp_worker}


# ---- the test side ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers() -> list[dict]:
    """Runs every part in WORLD spawned processes; returns their results by rank (per part:
    (traceback or None, value)). No process outlives this call."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(rank, port, results), daemon=True)
        for rank in range(WORLD)
    ]
    got: dict[int, tuple] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + TIMEOUT
        while len(got) < WORLD:
            try:
                rank, out = results.get(timeout=0.5)
                got[rank] = out
                continue
            except queue.Empty:
                pass
            silent = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in got]
            if silent:
                pytest.fail(f"worker(s) {silent} died with exit codes "
                            f"{[procs[r].exitcode for r in silent]} and no result")
            if time.monotonic() > deadline:
                pytest.fail(f"workers timed out after {TIMEOUT} s; results from {sorted(got)}")
        for p in procs:
            p.join(timeout=10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
        results.join_thread()
    return [got[r] for r in range(WORLD)]


def part(results: list[dict], name: str) -> list:
    """Part `name`'s result on each rank, or a failure with the tracebacks of the ranks."""
    errors = []
    for rank, out in enumerate(results):
        for failed in ("setup", name):
            if failed in out and out[failed][0]:
                errors.append(f"rank {rank}, {failed}:\n{out[failed][0]}")
        if name not in out and not errors:
            errors.append(f"rank {rank}: {name} did not run (an earlier part failed)")
    if errors:
        pytest.fail("\n".join(errors))
    return [out[name][1] for out in results]


def assert_close(actual, expected, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{what} {i}"
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL, err_msg=f"{what} {i}")


@pytest.fixture(scope="module")
def results():
    return run_workers()


@pytest.fixture
def zero_results(results):
    return part(results, "zero")


@pytest.fixture
def fsdp_results(results):
    return part(results, "fsdp")


@pytest.mark.parametrize("bucket", [False, True], ids=["plain", "bucket_view"])
def test_zero_redundancy_optimizer_with_optjit_adamw_equals_torch_adamw(zero_results, bucket):
    n_params = len(list(make_model().parameters()))
    init = [numpy(p) for p in make_model().parameters()]
    for rank, out in enumerate(zero_results):
        ours, theirs = out["optjit", bucket], out["torch", bucket]
        # Each rank's local optimizer is optjit's, over its own part of the parameters.
        assert (ours["local_module"], ours["local_class"]) == ("optjit.torch", "AdamW")
        assert 0 < len(ours["owned"]) < n_params
        assert ours["owned"] == theirs["owned"]
        assert_close(ours["stepped"], theirs["stepped"], f"rank {rank}: parameter")
        assert_close(ours["final"], theirs["final"], f"rank {rank}, after load: parameter")
        assert not any(np.array_equal(a, b) for a, b in zip(ours["final"], init))
    # The ranks own disjoint parts that cover the model.
    owned = [out["optjit", bucket]["owned"] for out in zero_results]
    assert sorted(owned[0] + owned[1]) == list(range(n_params))
    # DDP + ZeRO's broadcast keep every rank's parameters identical.
    a, b = (out["optjit", bucket]["final"] for out in zero_results)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bucket", [False, True], ids=["plain", "bucket_view"])
def test_zero_consolidated_state_dict_has_every_parameter_state_as_torch(zero_results, bucket):
    ours, theirs = zero_results[0]["optjit", bucket], zero_results[0]["torch", bucket]
    n_params = len(list(make_model().parameters()))
    assert sorted(ours["state"]) == list(range(n_params))
    assert ours["lr"] == theirs["lr"] == [2.5e-3, 2.5e-3]  # StepLR halved it twice in 4 steps
    for i in range(n_params):
        a, e = ours["state"][i], theirs["state"][i]
        assert set(a) == set(e) == {"step", "exp_avg", "exp_avg_sq"}, i
        assert a["step"] == e["step"] == STEPS
        assert_close([a["exp_avg"], a["exp_avg_sq"]], [e["exp_avg"], e["exp_avg_sq"]],
                     f"state of parameter {i}: exp_avg, exp_avg_sq")


@pytest.mark.parametrize("offload", [False, True], ids=["cpu", "cpu_offload_policy"])
def test_fsdp2_fully_shard_with_optjit_adamw_equals_torch_adamw(fsdp_results, offload):
    init = [numpy(p) for p in make_model().parameters()]
    for rank, out in enumerate(fsdp_results):
        ours, theirs = out["optjit", offload], out["torch", offload]
        assert ours["dtensor"] and theirs["dtensor"]
        # The state is kept as torch keeps it: DTensor moments, a plain tensor step.
        assert ours["state_types"] == theirs["state_types"] == [
            "exp_avg:DTensor", "exp_avg_sq:DTensor", "step:Tensor"
        ]
        assert_close(ours["local"], theirs["local"], f"rank {rank}: shard of parameter")
        assert_close(ours["full"], theirs["full"], f"rank {rank}: parameter")
        assert not any(np.array_equal(a, b) for a, b in zip(ours["full"], init))
        for i, (a, e) in enumerate(zip(ours["state"], theirs["state"])):
            assert a["step"] == e["step"] == STEPS
            assert_close([a["exp_avg"], a["exp_avg_sq"]], [e["exp_avg"], e["exp_avg_sq"]],
                         f"rank {rank}: state of parameter {i}")
    # Sharded, unevenly: rank 1's shard of the last bias is empty.
    sizes = [[a.size for a in out["optjit", offload]["local"]] for out in fsdp_results]
    assert sum(map(sum, sizes)) == sum(a.size for a in init)
    assert sizes[1][-1] == 0 and sizes[0][-1] == 1

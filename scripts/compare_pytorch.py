"""Times PyTorch's fused CPU Adam, AdamW and SGD (momentum 0.9) at the sizes and thread counts
of an `optjit bench --json` run, and prints both side by side.

Usage: optjit bench --json --optimizer adam,adamw,sgd_momentum --impl jit,native > bench.jsonl
       python3 scripts/compare_pytorch.py bench.jsonl

Needs PyTorch (`pip install torch`); without it, says so and prints optjit's numbers alone.
"""

import json
import sys
import time

TORCH_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd_momentum": "SGD"}


def torch_time(torch, optimizer, n, threads, min_time=0.2):
    torch.set_num_threads(threads)
    p = torch.nn.Parameter(torch.ones(n, dtype=torch.float32))
    p.grad = torch.linspace(-0.5, 0.5, n, dtype=torch.float32)
    cls = getattr(torch.optim, TORCH_NAMES[optimizer])
    kwargs = {"lr": 1e-3, "fused": True}
    if optimizer == "sgd_momentum":
        kwargs["momentum"] = 0.9
    opt = cls([p], **kwargs)
    opt.step()  # warm-up: creates the state
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e9 / n


def main():
    records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed: printing optjit's numbers only (pip install torch).")
    print(f"{'optimizer':<13} {'n':>9} {'thr':>3} {'optjit jit':>11} {'native':>8} {'torch fused':>12}  ns/element")
    points = sorted({(r["optimizer"], r["n"], r["threads"]) for r in records
                     if r["optimizer"] in TORCH_NAMES and r["tensors"] == 1 and not r["impl"].startswith("compile")})
    for optimizer, n, threads in points:
        def get(impl):
            rows = [r for r in records if (r["optimizer"], r["n"], r["threads"], r["impl"], r["tensors"]) == (optimizer, n, threads, impl, 1)]
            return f"{rows[0]['ns_per_elem']:.3f}" if rows else "-"
        theirs = f"{torch_time(torch, optimizer, n, threads):.3f}" if torch else "-"
        print(f"{optimizer:<13} {n:>9} {threads:>3} {get('jit'):>11} {get('native'):>8} {theirs:>12}")


if __name__ == "__main__":
    main()

"""optjit.torch.Adam against torch.optim.Adam(fused=True) and Adam(foreach=True), on CPU.

Sizes (all float32): (a) one tensor of 2^26 elements; (b) the parameter list of a
GPT-2-small-shaped model (124M parameters in 148 tensors); (c) 10,000 tensors of 1,000
elements. Each runs on 1 thread and on all threads (``torch.set_num_threads``); the three
sides alternate within one run (round 1: fused, foreach, optjit; round 2: ...), and each
timing is the median of several steps after a warm-up. Ratios are optjit's time over
fused PyTorch's, per round and their median: absolute times drift, ratios measured side
by side in the same run much less.

Then the Python-side overhead of a step: ``opt.step()`` over K one-element tensors (K = 1,
10, 100, 1000), fitted as a + b·K.

    python python/bench.py                       # everything, 3 rounds (minutes, ~5 GB)
    python python/bench.py --sizes b,c --threads all --rounds 5
    python python/bench.py --quick               # small sizes, 1 round: checks that it runs

Targets (issue 15): (b) and (c) at least 2x faster than fused PyTorch on all threads
(ratio <= 0.5); (a) no slower than fused PyTorch on all threads (ratio <= 1.0); overhead at
most 20 us + 0.2 us per tensor.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import optjit
import optjit.torch as ot

SIDES = ("fused", "foreach", "optjit")
# Bytes an Adam step moves per element (float32): reads param, grad, exp_avg, exp_avg_sq;
# writes param, exp_avg, exp_avg_sq.
BYTES_PER_ELEMENT = 7 * 4
TARGETS = {"a": 1.0, "b": 0.5, "c": 0.5}
OVERHEAD_TARGET = (20.0, 0.2)  # us, us per tensor
OVERHEAD_K = (1, 10, 100, 1000)


def gpt2_small_shapes(scale: int = 1) -> list[tuple[int, ...]]:
    """GPT-2 small's parameter shapes (HF naming order); `scale` divides every width (for
    --quick)."""
    d, vocab, ctx, layers = 768 // scale, 50257 // scale, 1024 // scale, 12
    shapes = [(vocab, d), (ctx, d)]  # wte, wpe
    for _ in range(layers):
        shapes += [(d,), (d,)]  # ln_1
        shapes += [(d, 3 * d), (3 * d,)]  # attn.c_attn
        shapes += [(d, d), (d,)]  # attn.c_proj
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(d, 4 * d), (4 * d,)]  # mlp.c_fc
        shapes += [(4 * d, d), (d,)]  # mlp.c_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def size_shapes(name: str, quick: bool) -> tuple[str, list[tuple[int, ...]]]:
    if name == "a":
        n = 2**22 if quick else 2**26
        return f"(a) 1 x 2^{n.bit_length() - 1}", [(n,)]
    if name == "b":
        shapes = gpt2_small_shapes(4 if quick else 1)
        total = sum(_numel(s) for s in shapes)
        label = "GPT-2 small / 4" if quick else "GPT-2 small"
        return f"(b) {label} ({total / 1e6:.1f}M in {len(shapes)})", shapes
    if name == "c":
        count = 1000 if quick else 10_000
        return f"(c) {count:,} x 1,000", [(1000,)] * count
    raise SystemExit(f"unknown size {name!r} (a, b or c)")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_params(shapes, seed: int = 0) -> list[torch.Tensor]:
    """Parameters with gradients: params ~ N(0, 0.02^2), grads ~ N(0, 1e-2^2)."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.empty(shape).normal_(0, 0.02, generator=g).requires_grad_()
        p.grad = torch.empty(shape).normal_(0, 1e-2, generator=g)
        params.append(p)
    return params


def make_optimizer(side: str, params, lr: float = 1e-4):
    if side == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if side == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    return ot.Adam(params, lr=lr)


def median_time(f, reps: int, warmup: int) -> float:
    """Median seconds of `reps` calls of `f()` after `warmup` untimed calls."""
    for _ in range(warmup):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        f()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e9


def thread_counts(spec: str, all_threads: int) -> list[int]:
    out = []
    for t in spec.split(","):
        n = all_threads if t.strip() == "all" else int(t)
        if n not in out:
            out.append(n)
    return out


def thread_label(n: int, all_threads: int) -> str:
    return f"{n} (all)" if n == all_threads and n != 1 else str(n)


def bench_sizes(args, all_threads: int) -> list[dict]:
    rows = []
    for size in args.sizes.split(","):
        label, shapes = size_shapes(size.strip(), args.quick)
        params = make_params(shapes)
        n = sum(p.numel() for p in params)
        # One optimizer per side, its state created by a first step outside the timings
        # (the sides share the parameters and gradients: only the state is each one's own).
        opts = {}
        for side in SIDES:
            opts[side] = make_optimizer(side, params)
            opts[side].step()
        for threads in thread_counts(args.threads, all_threads):
            torch.set_num_threads(threads)
            rounds = []
            for r in range(args.rounds):
                secs = {side: median_time(opts[side].step, args.steps, args.warmup) for side in SIDES}
                rounds.append(secs)
                print(
                    f"{label}, {threads} thread(s), round {r + 1}: "
                    + ", ".join(f"{s} {secs[s] * 1e3:.2f} ms" for s in SIDES)
                    + f"; optjit/fused {secs['optjit'] / secs['fused']:.3f}"
                    + f", optjit/foreach {secs['optjit'] / secs['foreach']:.3f}",
                    flush=True,
                )
            rows.append({
                "size": size.strip(), "label": label, "threads": threads, "n": n,
                "rounds": rounds,
            })
        del opts, params
    torch.set_num_threads(all_threads)
    return rows


def fit_line(xs, ys) -> tuple[float, float]:
    """a, b of y = a + b·x by least squares on relative errors (weights 1/y²), so that the
    small K, which fix a, count as much as the large ones, which fix b."""
    w = [1.0 / (y * y) for y in ys]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs)) / sw
    my = sum(wi * y for wi, y in zip(w, ys)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    b = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys)) / sxx
    return my - b * mx, b


def bench_overhead(args, all_threads: int) -> list[dict]:
    """Per thread count and side: median µs of `opt.step()` over K one-element tensors, and
    the fitted a + b·K. The sides alternate per K."""
    reps = 30 if args.quick else 300
    rows = []
    for threads in thread_counts(args.threads, all_threads):
        torch.set_num_threads(threads)
        us = {side: [] for side in SIDES}
        for k in OVERHEAD_K:
            params = make_params([(1,)] * k, seed=k)
            opts = {side: make_optimizer(side, params) for side in SIDES}
            for opt in opts.values():
                opt.step()
            medians = {side: [] for side in SIDES}
            for _ in range(args.rounds):
                for side in SIDES:
                    medians[side].append(median_time(opts[side].step, reps, warmup=5) * 1e6)
            for side in SIDES:
                us[side].append(statistics.median(medians[side]))
        for side in SIDES:
            a, b = fit_line(OVERHEAD_K, us[side])
            rows.append({"threads": threads, "side": side, "us": us[side], "a": a, "b": b})
    torch.set_num_threads(all_threads)
    return rows


class _EmptyOptimizer(torch.optim.Optimizer):
    """A step that does nothing, wrapped as every optimizer's is (torch's profiling and
    hook wrapper, and ``torch.no_grad``): what torch.optim costs before any work."""

    def __init__(self, params):
        super().__init__(params, {"lr": 1.0})

    @torch.no_grad()
    def step(self, closure=None):
        return None


def bench_breakdown(args, all_threads: int) -> None:
    """Where optjit's step overhead goes, piece by piece (uses optjit.torch internals:
    ``_program``, ``hypers``, ``Program.step``)."""
    reps = 200 if args.quick else 2000
    ks = (1, 100)
    print()
    print("Breakdown of optjit's opt.step() over K one-element tensors (median us):")
    print()
    heads = ["threads", "K", "opt.step()", "torch's wrapper (empty step)", "_program(group)",
             "hypers(group)", "Program.step (Rust: checks + engine)", "increment_version",
             "rest (Python glue)"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    slopes = {}
    for threads in thread_counts(args.threads, all_threads):
        torch.set_num_threads(threads)
        for k in ks:
            params = make_params([(1,)] * k, seed=k)
            opt = ot.Adam(params, lr=1e-4)
            opt.step()
            group = opt.param_groups[0]
            compiled = opt._program(group)
            hypers = compiled.hypers(group)
            step_dtype = torch.float32
            empty = _EmptyOptimizer(params)

            def program_step():
                compiled.program.step(
                    group["params"], opt.state, hypers, threads, step_dtype, None, 0
                )

            parts = {
                "whole": opt.step,
                "wrapper": empty.step,
                "program": lambda: opt._program(group),
                "hypers": lambda: compiled.hypers(group),
                "rust": program_step,
                "version": lambda: torch.autograd.graph.increment_version(group["params"]),
            }
            us = {name: median_time(f, reps, warmup=20) * 1e6 for name, f in parts.items()}
            rest = us["whole"] - sum(v for n, v in us.items() if n != "whole")
            slopes.setdefault(threads, []).append(us["rust"])
            cells = [thread_label(threads, all_threads), str(k)]
            cells += [f"{us[n]:.2f}" for n in parts] + [f"{rest:.2f}"]
            print("| " + " | ".join(cells) + " |")
    torch.set_num_threads(all_threads)
    print()
    for threads, (u1, u100) in slopes.items():
        print(f"Program.step per tensor ({thread_label(threads, all_threads)} threads): "
              f"{(u100 - u1) / (ks[1] - ks[0]):.3f} us")


def cpu_flags() -> str:
    try:
        out = subprocess.run(
            ["grep", "-o", "-w", r"avx512f\|avx2", "/proc/cpuinfo"],
            capture_output=True, text=True, check=False,
        ).stdout.split()
    except OSError:
        return "?"
    return " ".join(sorted(set(out))) or "none"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_tables(rows, overhead, args, all_threads: int) -> None:
    print()
    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}; torch threads (all): {all_threads}; "
          f"os.cpu_count(): {os.cpu_count()}")
    print(f"torch {torch.__version__}, optjit {getattr(optjit, '__version__', '?')}, "
          f"Python {platform.python_version()}; {args.rounds} round(s), median of "
          f"{args.steps} steps after {args.warmup} warm-up, float32, Adam lr=1e-4"
          + (" (--quick: reduced sizes)" if args.quick else ""))
    if rows:
        print()
        heads = ["size", "threads", "fused ns/el", "foreach ns/el", "optjit ns/el",
                 "optjit GB/s"]
        heads += [f"optjit/fused r{r + 1}" for r in range(args.rounds)]
        heads += ["optjit/fused median", "optjit/foreach median", "target (all threads)"]
        print("| " + " | ".join(heads) + " |")
        print("|" + "---|" * len(heads))
        for row in rows:
            n, rounds = row["n"], row["rounds"]
            med = {s: statistics.median(r[s] for r in rounds) for s in SIDES}
            ratios = [r["optjit"] / r["fused"] for r in rounds]
            ratio = statistics.median(ratios)
            foreach_ratio = statistics.median(r["optjit"] / r["foreach"] for r in rounds)
            target = TARGETS[row["size"]]
            if row["threads"] == all_threads:
                verdict = "met" if ratio <= target else "NOT met"
                target_text = f"<= {target:.2f}: {verdict}"
            else:
                target_text = "-"
            cells = [row["label"], thread_label(row["threads"], all_threads)]
            cells += [f"{med[s] * 1e9 / n:.3f}" for s in SIDES]
            cells += [f"{BYTES_PER_ELEMENT * n / med['optjit'] / 1e9:.1f}"]
            cells += [f"{x:.3f}" for x in ratios]
            cells += [f"**{ratio:.3f}**", f"{foreach_ratio:.3f}", target_text]
            print("| " + " | ".join(cells) + " |")
    if overhead:
        print()
        print(f"Python-side overhead of opt.step() over K one-element tensors (median us, "
              f"median of {args.rounds} round(s)); fit a + b*K; target "
              f"<= {OVERHEAD_TARGET[0]:g} us + {OVERHEAD_TARGET[1]:g} us/tensor")
        print()
        heads = ["side", "threads"] + [f"K={k} us" for k in OVERHEAD_K]
        heads += ["a (us)", "b (us/tensor)", f"us/tensor K={OVERHEAD_K[-2]}..{OVERHEAD_K[-1]}",
                  "target"]
        print("| " + " | ".join(heads) + " |")
        print("|" + "---|" * len(heads))
        for row in overhead:
            cells = [row["side"], thread_label(row["threads"], all_threads)]
            cells += [f"{u:.1f}" for u in row["us"]]
            cells += [f"{row['a']:.1f}", f"{row['b']:.3f}"]
            marginal = (row["us"][-1] - row["us"][-2]) / (OVERHEAD_K[-1] - OVERHEAD_K[-2])
            cells.append(f"{marginal:.3f}")
            if row["side"] == "optjit":
                ok = row["a"] <= OVERHEAD_TARGET[0] and row["b"] <= OVERHEAD_TARGET[1]
                cells.append("met" if ok else "NOT met")
            else:
                cells.append("-")
            print("| " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="a,b,c", help="comma-separated: a, b, c")
    parser.add_argument("--threads", default="1,all", help="comma-separated: counts or 'all'")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (default 7; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes (a: 2^22, b: GPT-2 small / 4, c: 1,000 x 1,000)")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip the Python-side overhead measurement")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the Python-side overhead measurement")
    parser.add_argument("--breakdown", action="store_true",
                        help="also break optjit's step overhead down into its pieces")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.steps is None:
        args.steps = 3 if args.quick else 7
    all_threads = torch.get_num_threads()
    rows = [] if args.overhead_only else bench_sizes(args, all_threads)
    overhead = [] if args.no_overhead else bench_overhead(args, all_threads)
    print_tables(rows, overhead, args, all_threads)
    if args.breakdown:
        bench_breakdown(args, all_threads)


if __name__ == "__main__":
    sys.exit(main())

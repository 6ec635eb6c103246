"""Measures optjit and PyTorch's fused CPU optimizers in alternation, in one run, and prints a
Markdown table of both sides and their ratio.

For Adam, AdamW and SGD-momentum (momentum 0.9), f32, lr 1e-3: one tensor of 2^20 and of 2^26
elements, and 10,000 tensors of 1,000 elements; on 1 thread and on all (`os.cpu_count()`).
Every case is measured in rounds (default 5); each round times both sides, the order swapped
every round, so that both see the same moments of a noisy machine. Reported: the median over
rounds of each side (ns/element/step), and the per-round ratio optjit / PyTorch (below 1:
optjit is faster) with its median and range.

optjit's side is the release binary in a subprocess, one per round:
    optjit bench --json --quick --optimizer X --n N --threads T --impl jit,native128
    optjit bench --json --quick --optimizer X --tensors 10000x1000 --no-sizes --threads T
(the JIT's median step over at least 200 ms; for many tensors the `shared` layout, every
tensor at the same step as PyTorch's are; `native128` is the handwritten loop for the 128-bit
baseline, shown for reference). PyTorch's side runs in this process: `fused=True`,
`torch.set_num_threads(T)`, the median step over at least `--min-time` seconds after one
warm-up step.

Usage:
    cargo build --release
    python3 scripts/compare_pytorch.py                       # everything, 5 rounds
    python3 scripts/compare_pytorch.py --quick               # 3 rounds, 2^20 only
    python3 scripts/compare_pytorch.py --optimizers adam --sizes 2^26,10000x1000 --threads 1 --rounds 3
    python3 scripts/compare_pytorch.py --optimizers adam --sizes 2^26 --dtype bf16 --rounds 3

PyTorch's threads are OpenMP's, with its default wait policy unless OMP_WAIT_POLICY is set
(the header says which): on a VM whose idle vCPUs wake slowly, its multi-threaded steps can
then take milliseconds more. `OMP_WAIT_POLICY=active` avoids that, but its spinning threads
would also compete with optjit's runs, so the default is the fairer setting for alternation.

Needs PyTorch (`pip install torch`, e.g. in a virtualenv); without it, says so and exits with
status 2 (so does a missing optjit binary). Standard library and torch only.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

TORCH_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd_momentum": "SGD"}
DEFAULT_BINARY = Path(__file__).resolve().parent.parent / "target" / "release" / "optjit"


def parse_size(text):
    """`2^20`, `1048576` -> (1, n); `10000x1000` -> (count, each)."""
    text = text.strip()
    if "x" in text:
        count, each = text.split("x", 1)
        return int(count), int(each)
    if "^" in text:
        base, exp = text.split("^", 1)
        return 1, int(base) ** int(exp)
    return 1, int(text)


def size_label(size):
    count, each = size
    if count > 1:
        return f"{count:,} × {each:,}"
    if each & (each - 1) == 0:
        return f"2^{each.bit_length() - 1}"
    return f"{each:,}"


def parse_threads(text):
    all_threads = os.cpu_count() or 1
    threads = []
    for item in text.split(","):
        t = all_threads if item.strip() == "all" else int(item)
        if t not in threads:
            threads.append(t)
    return threads


IMPLS = {"plain": ("jit", "native128"), "clip": ("clip_fused", "clip_unfused"),
         "amp": ("amp_clip_fused", "amp_clip_unfused")}


def optjit_command(binary, optimizer, size, threads, mode="plain", dtype="f32"):
    count, each = size
    command = [str(binary), "bench", "--json", "--quick", "--optimizer", optimizer,
               "--threads", str(threads), "--dtype", dtype]
    if count > 1:
        return command + ["--tensors", f"{count}x{each}", "--no-sizes"]
    return command + ["--n", str(each), "--impl", ",".join(IMPLS[mode])]


def optjit_time(binary, optimizer, size, threads, mode="plain", dtype="f32"):
    """One optjit run: (jit ns/element, native128 ns/element or None, the jit's record); for
    `mode` clip or amp, the fused program's and the unfused sequence's instead."""
    command = optjit_command(binary, optimizer, size, threads, mode, dtype)
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: `{' '.join(command)}` failed (status {run.returncode}):\n{run.stderr}")
    records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    count, each = size

    def find(impl):
        for r in records:
            if r["impl"] != impl or r["threads"] != threads:
                continue
            if count > 1 and r["tensors"] == count and r.get("steps") == "shared":
                return r
            if count == 1 and r["tensors"] == 1 and r["n"] == each:
                return r
        return None

    main_impl, other_impl = IMPLS[mode]
    jit = find(main_impl)
    if jit is None:
        sys.exit(f"error: no {main_impl} record in the output of `{' '.join(command)}`:\n{run.stdout}")
    other = find(other_impl)
    return jit["ns_per_elem"], other and other["ns_per_elem"], jit


class TorchCase:
    """A fused PyTorch optimizer over `count` parameters of `each` elements, gradients set,
    stepped once (the warm-up creates the state)."""

    def __init__(self, torch, optimizer, size, threads, mode="plain", dtype="f32"):
        self.torch, self.threads, self.mode = torch, threads, mode
        # Scale 1 that never grows: unscaling leaves the gradients as they are every round.
        self.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=2**30)
        self.scaler.scale(torch.ones(1))  # creates its scale, as scaling the loss would
        torch.set_num_threads(threads)
        count, each = size
        self.elements = count * each
        params = []
        torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
        for _ in range(count):
            p = torch.nn.Parameter(torch.ones(each, dtype=torch_dtype))
            p.grad = torch.linspace(-0.5, 0.5, each, dtype=torch_dtype)
            params.append(p)
        kwargs = {"lr": 1e-3, "fused": True}
        if optimizer == "sgd_momentum":
            kwargs["momentum"] = 0.9
        self.params = params
        self.opt = getattr(torch.optim, TORCH_NAMES[optimizer])(params, **kwargs)
        self.opt.step()

    def time(self, min_time):
        """Median ns/element of steps repeated for at least `min_time` s and 3 times."""
        self.torch.set_num_threads(self.threads)
        times = []
        start = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < min_time:
            t = time.perf_counter()
            if self.mode == "amp":
                self.scaler.unscale_(self.opt)
                self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.scaler.step(self.opt)
                self.scaler.update()
            elif self.mode == "clip":
                self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.opt.step()
            else:
                self.opt.step()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e9 / self.elements


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(
        description="optjit against PyTorch's fused CPU optimizers, measured in alternation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python3 scripts/compare_pytorch.py\n"
               "  python3 scripts/compare_pytorch.py --quick\n"
               "  python3 scripts/compare_pytorch.py --optimizers adam --sizes 2^26 --threads all --rounds 3")
    parser.add_argument("--optjit", type=Path, default=DEFAULT_BINARY,
                        help="the optjit binary (default: target/release/optjit of this repository)")
    parser.add_argument("--optimizers", default="adam,adamw,sgd_momentum",
                        help="comma-separated, of adam, adamw, sgd_momentum (default: all three)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated: 2^K or N for one tensor, COUNTxEACH for many "
                             "(default: 2^20,2^26,10000x1000; --quick: 2^20)")
    parser.add_argument("--threads", default="1,all",
                        help="comma-separated thread counts, `all` for os.cpu_count() (default: 1,all)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per case, each timing both sides (default: 5; --quick: 3)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds of PyTorch steps per round (default: 0.2, as optjit's)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 2^20 only")
    parser.add_argument("--clip", action="store_true",
                        help="gradient clipping to a global 2-norm of 1 before each step: optjit's "
                             "fused clip (and its unfused one) against torch's clip_grad_norm_ + step")
    parser.add_argument("--amp", action="store_true",
                        help="a GradScaler and clipping: optjit's amp + clip fused into the step (and "
                             "unfused) against torch's scaler.unscale_, clip_grad_norm_, scaler.step, update")
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                        help="bf16: parameters, gradients and state in bfloat16 on both sides "
                             "(optjit --dtype bf16; torch's state follows its parameters)")
    args = parser.parse_args()
    mode = "amp" if args.amp else "clip" if args.clip else "plain"

    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = [o for o in optimizers if o not in TORCH_NAMES]
    if unknown:
        parser.error(f"unknown optimizer(s) {', '.join(unknown)} (expected {', '.join(TORCH_NAMES)})")
    sizes = [parse_size(s) for s in (args.sizes or ("2^20" if args.quick else "2^20,2^26,10000x1000")).split(",")]
    threads = parse_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Failed to initialize NumPy"
            import torch
    except ImportError:
        print(f"error: PyTorch is not installed for {sys.executable}: install it (pip install torch, "
              "e.g. in a virtualenv) and run this script with that Python.", file=sys.stderr)
        sys.exit(2)
    if not args.optjit.is_file():
        print(f"error: no optjit binary at {args.optjit}: build it with `cargo build --release` "
              "(or pass --optjit PATH).", file=sys.stderr)
        sys.exit(2)

    rows, jit_isa, host = [], None, None
    for optimizer in optimizers:
        for size in sizes:
            for t in threads:
                case = f"{optimizer} {size_label(size)} threads={t}"
                print(f"{case}: setting up PyTorch", file=sys.stderr, flush=True)
                theirs = TorchCase(torch, optimizer, size, t, mode, args.dtype)
                ours, native128, torch_times = [], [], []
                for r in range(rounds):
                    # Rotate the order: optjit first in even rounds, PyTorch first in odd ones.
                    for side in (("optjit", "torch") if r % 2 == 0 else ("torch", "optjit")):
                        print(f"{case}: round {r + 1}/{rounds} {side}", file=sys.stderr, flush=True)
                        if side == "torch":
                            torch_times.append(theirs.time(args.min_time))
                        else:
                            jit, n128, record = optjit_time(args.optjit, optimizer, size, t, mode,
                                                            args.dtype)
                            ours.append(jit)
                            if n128 is not None:
                                native128.append(n128)
                            jit_isa, host = record.get("isa"), record.get("host")
                del theirs
                ratios = [o / p for o, p in zip(ours, torch_times)]
                rows.append((optimizer, size, t, statistics.median(ours),
                             statistics.median(native128) if native128 else None,
                             statistics.median(torch_times), ratios))

    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()
    print(f"host: {cpu_model()}, {os.cpu_count()} logical CPUs; SIMD: {host or '?'}")
    print(f"optjit jit ISA: {jit_isa or '?'}")
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"torch {torch.__version__} (CPU capability {capability}, OMP_WAIT_POLICY {wait_policy}), "
          f"fused=True, lr 1e-3, {args.dtype}")
    print(f"{rounds} rounds per case, order swapped every round; ns/element/step, medians over rounds; "
          "ratio = optjit jit / torch per round (below 1: optjit faster), median [min–max]")
    print()
    if mode == "amp":
        print("AMP: optjit's amp + clip fused into the step (`amp_clip_fused`) and unfused "
              "(`amp_clip_unfused`); torch `scaler.unscale_`, `clip_grad_norm_(params, 1.0)`, "
              "`scaler.step`, `scaler.update` with the fused optimizer.")
        print("| optimizer | size | threads | optjit fused | optjit unfused | torch | optjit / torch |")
    elif mode == "clip":
        print("Clipped: optjit's fused clip (`clip_fused`) and unfused one (`clip_unfused`); torch "
              "`clip_grad_norm_(params, 1.0)` then the fused step.")
        print("| optimizer | size | threads | optjit clip fused | optjit clip unfused | torch clip + fused | optjit / torch |")
    else:
        print("| optimizer | size | threads | optjit jit | optjit native128 | torch fused | optjit / torch |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for optimizer, size, t, ours, n128, theirs, ratios in rows:
        n128_text = f"{n128:.3f}" if n128 is not None else "–"
        print(f"| {optimizer} | {size_label(size)} | {t} | {ours:.3f} | {n128_text} | {theirs:.3f} | "
              f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] |")
    if any(size[0] > 1 for size in sizes):
        print()
        print("Many tensors: optjit's `shared` layout (every tensor at the same step, as PyTorch's).")


if __name__ == "__main__":
    main()

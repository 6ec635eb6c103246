"""Checks an optjit checkpoint with Python's safetensors package.

Usage: cargo run --example checkpoint -- CKPT | python3 scripts/check_checkpoint.py CKPT

Reads the expected tensors (`name dtype shape` per line) from stdin, loads CKPT with
safetensors.numpy, and checks names, dtypes, shapes, and the optjit metadata (JSON with
per-parameter steps and the parameter groups).
"""

import json
import sys

from safetensors import safe_open
from safetensors.numpy import load_file


def main() -> int:
    path = sys.argv[1]
    expected = {}
    for line in sys.stdin.read().splitlines():
        name, dtype, shape = line.split(" ")
        expected[name] = (dtype, tuple(int(d) for d in shape.split(",") if d))
    tensors = load_file(path)
    got = {name: (str(t.dtype), t.shape) for name, t in tensors.items()}
    if got != expected:
        print(f"tensors differ:\n  file:     {sorted(got.items())}\n  expected: {sorted(expected.items())}")
        return 1
    with safe_open(path, framework="numpy") as f:
        meta = json.loads(f.metadata()["optjit"])
    steps = {int(k): v["step"] for k, v in meta["state"].items()}
    names = [n for g in meta["param_groups"] for n in g["param_names"]]
    indices = [i for g in meta["param_groups"] for i in g["params"]]
    if indices != list(range(len(names))) or not all(s > 0 for s in steps.values()):
        print(f"bad metadata: {meta}")
        return 1
    for index in steps:
        if not any(name.startswith(f"state.{index}.") for name in tensors):
            print(f"parameter {index} has a step but no tensors")
            return 1
    print(f"{path}: {len(tensors)} tensors, {len(names)} parameters in {len(meta['param_groups'])} groups: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

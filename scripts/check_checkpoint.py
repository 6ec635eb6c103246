"""Checks optjit checkpoints with Python's safetensors package.

Usage: cargo run --example checkpoint -- CKPT | python3 scripts/check_checkpoint.py CKPT

Reads from stdin, for each checkpoint the example wrote, a line `file PATH` and then one
line per tensor, `name dtype shape values` (safetensors dtype, comma-separated sizes and
values). Checks each file's tensors (names, dtypes, shapes, values decoded from the raw
little-endian bytes: BF16 as the top half of an f32) and its optjit metadata (JSON with
per-parameter steps and the parameter groups). Files without BF16 tensors must also load
with safetensors.numpy to the same values (numpy has no bfloat16). CKPT must be among the
files listed, with a checkpoint of bf16 parameters beside it (`*-bf16.safetensors`) whose
`exp_avg` is BF16 and `exp_avg_sq` F16.
"""

import json
import sys
from typing import Optional

import numpy as np
from safetensors import deserialize, safe_open
from safetensors.numpy import load_file

# The dtype of each slot in the checkpoint of bf16 parameters (named `*-bf16.safetensors`),
# whatever the example prints: bf16 state with `exp_avg_sq` in f16.
NARROW_SUFFIX = "-bf16.safetensors"
NARROW_SLOTS = {"exp_avg": "BF16", "exp_avg_sq": "F16"}

# Little-endian numpy dtypes of the safetensors dtypes optjit writes; BF16 is read as u16.
RAW = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2"}


def decode(dtype: str, data: bytes) -> np.ndarray:
    """The values of a tensor's raw bytes, widened to float64 (exactly)."""
    raw = np.frombuffer(bytes(data), dtype=RAW[dtype])
    if dtype == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float64)


def read_expected(lines):
    """{path: {name: (dtype, shape, values)}} from the example's output."""
    files, current = {}, None
    for line in lines:
        fields = line.split(" ")
        if fields[0] == "file":
            current = files.setdefault(fields[1], {})
            continue
        name, dtype, shape, values = fields
        shape = tuple(int(d) for d in shape.split(",") if d)
        values = np.array([float(v) for v in values.split(",") if v], dtype=np.float64)
        current[name] = (dtype, shape, values)
    return files


def check_file(path: str, expected) -> Optional[str]:
    """None when the file at `path` holds exactly `expected`, else what is wrong."""
    with open(path, "rb") as f:
        tensors = {name: t for name, t in deserialize(f.read())}
    got = {name: (t["dtype"], tuple(t["shape"])) for name, t in tensors.items()}
    want = {name: (dtype, shape) for name, (dtype, shape, _) in expected.items()}
    if got != want:
        return f"tensors differ:\n  file:     {sorted(got.items())}\n  expected: {sorted(want.items())}"
    if path.endswith(NARROW_SUFFIX):
        slots = {name: (dtype, NARROW_SLOTS.get(name.split(".", 2)[2])) for name, (dtype, _) in got.items()}
        if any(dtype != wanted for dtype, wanted in slots.values()):
            return f"slots not stored as {NARROW_SLOTS}: {sorted(slots.items())}"
    for name, (dtype, shape, values) in expected.items():
        decoded = decode(dtype, tensors[name]["data"])
        if decoded.size != int(np.prod(shape)) or not np.array_equal(decoded, values):
            return f"{name}: values {decoded.tolist()}, expected {values.tolist()}"
    if not any(dtype == "BF16" for dtype, _ in got.values()):
        for name, array in load_file(path).items():
            if array.shape != want[name][1] or not np.array_equal(array.astype(np.float64).reshape(-1), expected[name][2]):
                return f"{name}: safetensors.numpy reads {array.tolist()}"
    with safe_open(path, framework="numpy") as f:
        meta = json.loads(f.metadata()["optjit"])
    steps = {int(k): v["step"] for k, v in meta["state"].items()}
    names = [n for g in meta["param_groups"] for n in g["param_names"]]
    indices = [i for g in meta["param_groups"] for i in g["params"]]
    if indices != list(range(len(names))) or not all(s > 0 for s in steps.values()):
        return f"bad metadata: {meta}"
    for index in steps:
        if not any(name.startswith(f"state.{index}.") for name in tensors):
            return f"parameter {index} has a step but no tensors"
    dtypes = sorted({dtype for dtype, _ in got.values()})
    print(f"{path}: {len(tensors)} tensors ({', '.join(dtypes)}), {len(names)} parameters in {len(meta['param_groups'])} groups: OK")
    return None


def main() -> int:
    files = read_expected(sys.stdin.read().splitlines())
    if sys.argv[1] not in files or not any(p.endswith(NARROW_SUFFIX) for p in files):
        print(f"expected {sys.argv[1]} and a *{NARROW_SUFFIX} beside it, got {sorted(files)}")
        return 1
    for path, expected in files.items():
        error = check_file(path, expected)
        if error is not None:
            print(f"{path}: {error}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turns `optjit bench --json` output into the Markdown tables of BENCHMARKS.md.

Usage: python3 scripts/bench_markdown.py bench.jsonl
"""

import json
import sys


def main():
    rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    single = [r for r in rs if r["tensors"] == 1 and r["n"] > 16 and r["n"] & (r["n"] - 1) == 0 and not r["impl"].startswith("compile")]
    points = sorted({(r["optimizer"], r["n"], r["threads"]) for r in single},
                    key=lambda p: (["adam", "adamw", "sgd_momentum", "lion", "rmsprop"].index(p[0])
                                   if p[0] in ["adam", "adamw", "sgd_momentum", "lion", "rmsprop"] else 9, p[1], p[2]))
    print("| optimizer | n | thr | jit ns/el | jit GB/s | jit / floor | jit vs native | native | chunked | eager | interp | floor GB/s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for opt, n, t in points:
        row = {r["impl"]: r for r in single if (r["optimizer"], r["n"], r["threads"]) == (opt, n, t)}
        if "jit" not in row:
            continue
        j = row["jit"]
        floor = max((row[f]["gbps"] for f in ("copy", "axpy") if f in row), default=None)

        def ns(impl):
            return f"{row[impl]['ns_per_elem']:.3f}" if impl in row else "–"

        print(f"| {opt} | 2^{n.bit_length() - 1} | {t} | {j['ns_per_elem']:.3f} | {j['gbps']:.1f} | "
              f"{j['of_floor']:.2f} | {j['vs_native']:.2f} | {ns('native')} | {ns('chunked')} | {ns('eager')} | "
              f"{ns('interp')} | {floor:.1f} |" if floor else "")
    print()
    print("| optimizer | 10,000 × 1,000 ns/el | 1 × 10M ns/el | ratio | compile cold | cache hit | step overhead |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for opt in dict.fromkeys(r["optimizer"] for r in rs):
        many = [r for r in rs if r["optimizer"] == opt and r["tensors"] > 1]
        big = [r for r in rs if r["optimizer"] == opt and r["tensors"] == 1 and r["n"] == 10_000_000]
        get = lambda impl: next((r["ns_per_elem"] for r in rs if r["optimizer"] == opt and r["impl"] == impl), None)
        if many and big:
            m, b = many[0]["ns_per_elem"], big[0]["ns_per_elem"]
            print(f"| {opt} | {m:.3f} | {b:.3f} | {m / b:.2f} | {get('compile_cold') / 1e3:.0f} µs | "
                  f"{get('compile_hit') / 1e3:.2f} µs | {get('step_overhead') / 1e3:.2f} µs |")


if __name__ == "__main__":
    main()

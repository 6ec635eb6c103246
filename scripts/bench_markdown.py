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
    host = next((r["host"] for r in rs if r.get("host")), None)
    isas = {r["impl"]: r["isa"] for r in rs if r.get("isa")}
    if host:
        print(f"Host SIMD: {host}; JIT: {isas.get('jit', '?')}; native: {isas.get('native', '?')}; "
              f"native128: {isas.get('native128', '?')}.\n")
    print("| optimizer | n | thr | jit ns/el | jit GB/s | jit / floor | jit vs native | jit / native128 | native | native128 | chunked | eager | interp | floor GB/s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for opt, n, t in points:
        row = {r["impl"]: r for r in single if (r["optimizer"], r["n"], r["threads"]) == (opt, n, t)}
        if "jit" not in row:
            continue
        j = row["jit"]
        floor = max((row[f]["gbps"] for f in ("copy", "axpy") if f in row), default=None)

        def ns(impl):
            return f"{row[impl]['ns_per_elem']:.3f}" if impl in row else "–"

        def opt_ratio(key):
            return f"{j[key]:.2f}" if j.get(key) is not None else "–"

        # A run without the floor (`--impl jit`) or the native loop (`.opt` files) leaves dashes.
        print(f"| {opt} | 2^{n.bit_length() - 1} | {t} | {j['ns_per_elem']:.3f} | {j['gbps']:.1f} | "
              f"{opt_ratio('of_floor')} | {opt_ratio('vs_native')} | {opt_ratio('vs_native128')} | "
              f"{ns('native')} | {ns('native128')} | {ns('chunked')} | "
              f"{ns('eager')} | {ns('interp')} | {f'{floor:.1f}' if floor else '–'} |")
    print()
    many_small_table(rs)


def many_small_table(rs):
    """Many small tensors in both layouts beside one tensor of the same total, with compile
    times. Records without `steps` come from runs before the field: those measured the
    staggered layout."""
    many = [r for r in rs if r["impl"] == "jit" and r["tensors"] > 1]
    if many:
        count, each = many[0]["tensors"], many[0]["n"] // many[0]["tensors"]
        size, total = f"{count:,} × {each:,}", f"1 × {count * each / 1e6:g}M"
    else:
        size, total = "10,000 × 1,000", "1 × 10M"
    print(f"| optimizer | {size} shared ns/el | {size} staggered ns/el | {total} ns/el | "
          "shared / one | staggered / one | compile cold | cache hit | step overhead |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for opt in dict.fromkeys(r["optimizer"] for r in rs):
        def ns(steps):
            return next((r["ns_per_elem"] for r in many
                         if r["optimizer"] == opt and r.get("steps", "staggered") == steps), None)

        def us(impl, digits):
            t = next((r["ns_per_elem"] for r in rs if r["optimizer"] == opt and r["impl"] == impl), None)
            return f"{t / 1e3:.{digits}f} µs" if t is not None else "–"

        shared, staggered = ns("shared"), ns("staggered")
        points = {(r["n"], r["threads"]) for r in many if r["optimizer"] == opt}
        one = next((r["ns_per_elem"] for r in rs if r["optimizer"] == opt and r["impl"] == "jit"
                    and r["tensors"] == 1 and (r["n"], r["threads"]) in points), None)
        if one is None or (shared is None and staggered is None):
            continue
        fmt = lambda t: f"{t:.3f}" if t is not None else "–"
        ratio = lambda t: f"{t / one:.2f}" if t is not None else "–"
        print(f"| {opt} | {fmt(shared)} | {fmt(staggered)} | {one:.3f} | {ratio(shared)} | "
              f"{ratio(staggered)} | {us('compile_cold', 0)} | {us('compile_hit', 2)} | "
              f"{us('step_overhead', 2)} |")

if __name__ == "__main__":
    main()

"""Draws `optjit bench --json` output as an SVG chart: ns/element against the number of
elements (both on log scales), one line per implementation, one panel per thread count,
for one optimizer.

Usage: optjit bench --json > bench.jsonl
       python3 scripts/plot_bench.py bench.jsonl adam > bench-adam.svg

Standard library only.
"""

import json
import math
import sys

COLORS = {
    "jit": "#d62728",
    "native": "#1f77b4",
    "chunked": "#ff7f0e",
    "eager": "#9467bd",
    "interp": "#8c564b",
    "copy": "#7f7f7f",
    "axpy": "#2ca02c",
}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 320, 60, 20, 36, 46


def panel(records, threads, x0, title):
    rows = [r for r in records if r["threads"] == threads and r["tensors"] == 1]
    if not rows:
        return ""
    xs = [r["n"] for r in rows]
    ys = [r["ns_per_elem"] for r in rows]
    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
    ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(n):
        return x0 + PAD_L + (math.log10(n) - lx0) / max(lx1 - lx0, 1e-9) * pw

    def py(v):
        return PAD_T + (ly1 - math.log10(v)) / max(ly1 - ly0, 1e-9) * ph

    out = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    out.append(f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    for e in range(ly0, ly1 + 1):
        y = py(10**e)
        out.append(f'<line x1="{x0 + PAD_L}" y1="{y}" x2="{x0 + PAD_L + pw}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + PAD_L - 6}" y="{y + 4}" text-anchor="end" font-size="11">{10.0**e:g}</text>')
    for n in sorted(set(xs)):
        x = px(n)
        out.append(f'<text x="{x}" y="{PAD_T + ph + 16}" text-anchor="middle" font-size="11">2^{int(round(math.log2(n)))}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{H - 8}" text-anchor="middle" font-size="12">elements</text>')
    out.append(f'<text x="{x0 + 14}" y="{PAD_T + ph / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 {x0 + 14} {PAD_T + ph / 2})">ns / element / step</text>')
    legend_y = PAD_T + 12
    for impl, color in COLORS.items():
        pts = sorted((r["n"], r["ns_per_elem"]) for r in rows if r["impl"] == impl)
        if not pts:
            continue
        path = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in pts:
            out.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="2.5" fill="{color}"/>')
        out.append(f'<text x="{x0 + PAD_L + pw - 6}" y="{legend_y}" text-anchor="end" font-size="11" fill="{color}">{impl}</text>')
        legend_y += 13
    return "\n".join(out)


def main():
    path, optimizer = sys.argv[1], sys.argv[2]
    records = [json.loads(l) for l in open(path) if l.strip()]
    records = [r for r in records if r["optimizer"] == optimizer and not r["impl"].startswith("compile")]
    threads = sorted({r["threads"] for r in records})
    width = W * len(threads)
    body = [panel(records, t, i * W, f"{optimizer}, f32, {t} thread{'s' if t > 1 else ''}") for i, t in enumerate(threads)]
    print(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="sans-serif">')
    print('<rect width="100%" height="100%" fill="white"/>')
    print("\n".join(body))
    print("</svg>")


if __name__ == "__main__":
    main()

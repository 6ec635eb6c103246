#!/usr/bin/env bash
# Times `optjit check` (release build) on every hostile source of tests/common/hostile.rs and
# prints a Markdown table of wall time and peak resident memory: the README's "Limits" figures.
# Needs GNU time (/usr/bin/time). Usage: scripts/hostile_limits.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-$(mktemp -d)}"
cargo build --release --quiet --bin optjit
cargo run --release --quiet --example hostile_inputs -- "$dir" >/dev/null
grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/^/CPU flags: /'
echo
echo "| source | bytes | result | time | peak memory |"
echo "|---|--:|---|--:|--:|"
for f in "$dir"/*.opt; do
    stats="$(mktemp)"
    if /usr/bin/time -f "%e %M" -o "$stats" target/release/optjit check "$f" >/dev/null 2>"$stats.err"; then
        result=accepted
    else
        result="rejected: $(grep -o 'has [0-9]* [a-z]*\|smaller optimizer' "$stats.err" | head -1)"
    fi
    read -r secs kb < <(tail -1 "$stats")
    printf '| %s | %s | %s | %.2f s | %d MB |\n' "$(basename "$f" .opt)" "$(stat -c %s "$f")" \
        "$result" "$secs" "$((kb / 1024))"
    rm -f "$stats" "$stats.err"
done

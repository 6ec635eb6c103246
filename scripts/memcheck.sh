#!/usr/bin/env bash
# Runs tests/memcheck.rs (every built-in through the Optimizer and the Stepper at lengths
# 0..=1027 and a threaded size, random stages at every unroll) under valgrind memcheck: no
# invalid read or write, no use of uninitialised memory, no definite leak. Installs valgrind
# (Debian package) if missing. Exit status 1 on any error. Takes about 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq valgrind >/dev/null
fi
bin="$(cargo test --release --locked --no-run --test memcheck --message-format=json 2>/dev/null |
    grep '"name":"memcheck"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
[ -x "$bin" ] || { echo "memcheck: test binary not built" >&2; exit 1; }
# The kernels are generated at run time: check every code write (--smc-check).
valgrind --quiet --error-exitcode=1 --smc-check=all-non-file --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite "$bin" --test-threads=1

#!/usr/bin/env bash
# Runs every benchmark scenario at its default size with release builds and writes one JSON
# report per scenario into OUT_DIR (default target/bench). See docs/benchmarks.md.
# Extra arguments go to every claudemesh-bench run (for example --durability normal).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT_DIR:-target/bench}"
mkdir -p "$out"
cargo build --release -p broker-core -p claudemesh-bench --bins
bench=target/release/claudemesh-bench
for scenario in burst interactive fanout connections restart; do
  echo "== $scenario (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  # Exit code 3 (a delivery guarantee broken) still leaves its report; keep going.
  "$bench" "$scenario" --json "$@" >"$out/$scenario.json" || [ $? -eq 3 ]
done
echo "reports in $out/" >&2

#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first (system packages, tools).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi

#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first (system packages, tools).
# The desktop tests need a display, a D-Bus session, a keyring and a notification daemon: the
# Rust tests run inside scripts/desktop-session.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test

echo "== UI unit tests (node --test)"
(cd ui && node --test tests/)

echo "== packages (dev profile) for tests/tests/packages.rs: this version, and the next for the upgrade"
# (They include the headless build: the CLI and MCP bridge without GUI libraries.)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
bash scripts/package.sh --profile dev
bash scripts/package.sh --profile dev --version "$version+next" --out target/packages/next

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  exec bash scripts/desktop-session.sh cargo nextest run --workspace --no-fail-fast "$@"
else
  exec bash scripts/desktop-session.sh cargo test --workspace --no-fail-fast "$@"
fi

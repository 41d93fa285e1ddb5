#!/usr/bin/env bash
# Runs claudemesh's main job. With a display: the desktop app, with its embedded local broker
# (first run offers "Just this computer"). Without one: the broker alone on 127.0.0.1 with its
# embedded SQLite store; extra arguments go to `claudemesh-broker serve`.
# Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh run
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  cargo build --quiet -p claudemesh
  exec target/debug/claudemesh "$@"
fi
cargo build --quiet -p broker-core --bin claudemesh-broker
exec target/debug/claudemesh-broker serve --log-format text "$@"

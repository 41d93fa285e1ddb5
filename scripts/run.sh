#!/usr/bin/env bash
# Runs claudemesh's main job: the broker on 127.0.0.1 with its embedded SQLite store.
# Installs what is missing first. Extra arguments go to `claudemesh-broker serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh run
cargo build --quiet -p broker-core --bin claudemesh-broker
exec target/debug/claudemesh-broker serve --log-format text "$@"

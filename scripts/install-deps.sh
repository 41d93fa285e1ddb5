#!/usr/bin/env bash
# Installs what building and testing claudemesh needs on Debian/Ubuntu, skipping what is present.
# Usage: install-deps.sh run|package|test
#   run  — the build tools and the desktop app's libraries (WebKitGTK, GTK, the tray library).
#   package — also what scripts/package.sh uses: dpkg-dev (dpkg-shlibdeps), xz.
#   test — also what the desktop tests drive: Xvfb, a D-Bus session with gnome-keyring, the dunst
#          notification daemon, WebKitWebDriver and tauri-driver, ImageMagick, Node (UI tests),
#          iproute2 (`ip netns`: the other machines of tests/tests/other_machines.rs),
#          the packaging tools and systemd-analyze (tests/tests/packages.rs), PostgreSQL's
#          server binaries (the tests start servers of their own: broker_core::testing::postgres),
#          nginx (tests/tests/replicas.rs runs packaging/nginx/claudemesh.conf in a process of its own),
#          and the real Claude Code for tests/tests/claude_code.rs: the npm package
#          @anthropic-ai/claude-code at $CLAUDE_CODE_VERSION, cached in
#          ${XDG_CACHE_HOME:-~/.cache}/claudemesh/claude-code and reused by later runs.
set -euo pipefail
mode="${1:-run}"
# The Claude Code the tests were written against; raise it on purpose (its hooks and its stream
# format are what the tests check). Versions after it need Node 22.
CLAUDE_CODE_VERSION=2.1.197

packages=(build-essential pkg-config libssl-dev
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev
  libjavascriptcoregtk-4.1-dev libxdo-dev libsecret-1-dev)
if [ "$mode" = package ] || [ "$mode" = test ]; then
  packages+=(dpkg-dev xz-utils)
fi
if [ "$mode" = test ]; then
  packages+=(systemd man-db xvfb xauth dbus dbus-x11 at-spi2-core gnome-keyring dunst webkit2gtk-driver imagemagick
    fonts-inter fonts-dejavu-core nodejs npm iproute2 postgresql nginx)
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Node and npm may come from elsewhere than Debian's packages.
if command -v node >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs/}")
fi
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/npm/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  # The tests start PostgreSQL servers of their own; the package's default cluster would only
  # be one more server running.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  # Nor should installing nginx start the system's nginx on port 80: services the packages
  # would start stay stopped while they install (policy-rc.d), unless a policy is already set.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    own_policy=yes
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
if [ "$mode" = test ] && ! command -v tauri-driver >/dev/null 2>&1; then
  cargo install tauri-driver --version '^2' --locked --quiet
fi
if [ "$mode" = test ]; then
  claude_cache="${XDG_CACHE_HOME:-$HOME/.cache}/claudemesh/claude-code"
  installed=$(node -p "require('$claude_cache/node_modules/@anthropic-ai/claude-code/package.json').version" 2>/dev/null || true)
  if [ "$installed" != "$CLAUDE_CODE_VERSION" ]; then
    echo "installing Claude Code $CLAUDE_CODE_VERSION (npm @anthropic-ai/claude-code) into $claude_cache" >&2
    mkdir -p "$claude_cache"
    npm install --prefix "$claude_cache" --no-fund --no-audit --loglevel=error \
      "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >/dev/null
  fi
  # The package's install script puts the native binary in place; without it `claude` is a stub.
  if ! "$claude_cache/node_modules/.bin/claude" --version >/dev/null 2>&1; then
    echo "$claude_cache/node_modules/.bin/claude does not run (were npm install scripts disabled?)" >&2
    exit 1
  fi
fi

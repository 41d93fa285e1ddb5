#!/usr/bin/env bash
# Installs what building and testing claudemesh needs on Debian/Ubuntu, skipping what is present.
# Usage: install-deps.sh run|test
#   run  — the build tools and the desktop app's libraries (WebKitGTK, GTK, the tray library).
#   test — also what the desktop tests drive: Xvfb, a D-Bus session with gnome-keyring, the dunst
#          notification daemon, WebKitWebDriver and tauri-driver, ImageMagick, Node (UI tests).
set -euo pipefail
mode="${1:-run}"

packages=(build-essential pkg-config libssl-dev
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev
  libjavascriptcoregtk-4.1-dev libxdo-dev libsecret-1-dev)
if [ "$mode" = test ]; then
  packages+=(xvfb xauth dbus dbus-x11 at-spi2-core gnome-keyring dunst webkit2gtk-driver imagemagick
    fonts-inter fonts-dejavu-core nodejs)
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Node may come from elsewhere than Debian's package.
if command -v node >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
if [ "$mode" = test ] && ! command -v tauri-driver >/dev/null 2>&1; then
  cargo install tauri-driver --version '^2' --locked --quiet
fi

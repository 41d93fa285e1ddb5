#!/usr/bin/env bash
# Builds the Debian packages into target/packages/ (or --out DIR):
#   claudemesh_VERSION_ARCH.deb         the desktop app, with the CLI and the MCP bridge
#   claudemesh-cli_VERSION_ARCH.deb     the CLI and MCP bridge for servers and SSH boxes: no GUI library
#   claudemesh-broker_VERSION_ARCH.deb  the broker as a systemd service, with its operator commands
# Usage: scripts/package.sh [--profile release|dev] [--version VERSION] [--out DIR]
#   --profile  release (default; what people install) or dev (much faster to build, larger
#              binaries: what the tests use). Shipped binaries are stripped either way.
#   --version  the packages' and the binaries' version (default: the workspace's).
# The binaries' --version shows the version and the commit they were built from.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
version=""
out=target/packages
while (($#)); do
  case "$1" in
    --profile) profile="${2:?--profile needs release or dev}"; shift 2 ;;
    --version) version="${2:?--version needs a version}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see scripts/package.sh --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) echo "--profile is release or dev, not $profile" >&2; exit 2 ;;
esac
bash scripts/install-deps.sh package

version="${version:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)}"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  commit="$commit-modified"
fi
export CLAUDEMESH_VERSION="$version" CLAUDEMESH_COMMIT="$commit"
arch=$(dpkg --print-architecture)
built="${CARGO_TARGET_DIR:-target}/$profile_dir"
work="$out/.work"
rm -rf "$work"
mkdir -p "$work/bin" "$out"

echo "== building claudemesh $version (commit $commit), $profile profile" >&2
# The headless build first: both builds write the same file name.
cargo build --quiet --profile "$profile" -p claudemesh --no-default-features
install -m 0755 "$built/claudemesh" "$work/bin/claudemesh-headless"
cargo build --quiet --profile "$profile" -p claudemesh -p broker-core --bins
install -m 0755 "$built/claudemesh" "$work/bin/claudemesh"
install -m 0755 "$built/claudemesh-broker" "$work/bin/claudemesh-broker"
strip --strip-all "$work"/bin/*

# The Depends line for binaries: exactly the packages of the libraries they link. Called as
# `depends=$(linked_packages …)`, so a failure must show as an empty answer, checked by `control`.
linked_packages() {
  local dir binaries=() found
  dir=$(mktemp -d)
  mkdir "$dir/debian"
  printf 'Source: claudemesh\n\nPackage: claudemesh\nArchitecture: any\n' >"$dir/debian/control"
  for binary in "$@"; do binaries+=("$(realpath "$binary")"); done
  # (It warns that the binaries are not in a debian/PACKAGE tree; that does not matter here.)
  found=$(cd "$dir" && dpkg-shlibdeps -O "${binaries[@]}" 2> >(grep -v 'should already be installed' >&2)) || found=""
  rm -rf "$dir"
  printf '%s\n' "$found" | sed -n 's/^shlibs:Depends=//p'
}

# A man page from the binary's --help and each command's, run in a clean environment so no
# value of this machine's (a path, a secret in an environment variable) is written into it.
man_page() {
  local name=$1 summary=$2 binary=$3 page=$4
  mkdir -p "$(dirname "$page")"
  help() { env -i PATH=/usr/bin:/bin HOME='~' "${help_env[@]}" "$binary" "$@"; }
  {
    echo ".TH \"${name^^}\" 1 \"\" \"$name $version\" \"User Commands\""
    echo ".SH NAME"
    echo "$name \\- $summary"
    echo ".SH DESCRIPTION"
    echo ".nf"
    help --help | roff_text
    echo ".fi"
    echo ".SH COMMANDS"
    help --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && $1 != "help" && NF { print $1 }' |
      while read -r command; do
        echo ".SS $command"
        echo ".nf"
        help "$command" --help | roff_text
        echo ".fi"
      done
    echo ".SH VERSION"
    help --version
  } | gzip -9n >"$page"
}
roff_text() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

# The Claude Code plugin (the bridge and the status hooks), a marketplace of one plugin:
#   claude plugin marketplace add /usr/share/claudemesh/claude-plugin
#   claude plugin install claudemesh@claudemesh
claude_plugin() {
  local stage=$1
  for file in .claude-plugin/marketplace.json .claude-plugin/plugin.json hooks/hooks.json; do
    install -D -m 0644 "packaging/claude-plugin/$file" "$stage/usr/share/claudemesh/claude-plugin/$file"
  done
}

# control FILE PACKAGE DEPENDS EXTRA-FIELDS SUMMARY DESCRIPTION
control() {
  local stage=$1 package=$2 depends=$3 extra=$4 summary=$5 description=$6
  local size
  # Every binary links the C library, and dpkg-shlibdeps lists it first.
  if [[ "$depends" != libc6* ]]; then
    echo "$package: dpkg-shlibdeps found no libraries (Depends: '$depends'); see its messages above" >&2
    exit 1
  fi
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  {
    echo "Package: $package"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: claudemesh maintainers <packages@claudemesh.dev>"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    [ -z "$extra" ] || printf '%s\n' "$extra"
    echo "Section: net"
    echo "Priority: optional"
    echo "Description: $summary"
    printf '%s\n' "$description" | fold -s -w 78 | sed -e 's/ *$//' -e 's/^$/./' -e 's/^/ /'
  } >"$stage/DEBIAN/control"
}

build_deb() {
  local stage=$1 package=$2
  local file="$out/${package}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$file" >/dev/null
  echo "$file: $(du -h "$file" | cut -f1) (installs $(sed -n 's/^Installed-Size: //p' "$stage/DEBIAN/control") KiB)" >&2
}

common_description="claudemesh connects Claude Code sessions on any machine into one mesh: sessions see each \
other, message each other end-to-end encrypted, and work together; a person joins through the desktop app. \
The broker that routes the messages never holds a key that could open them."

# --- the desktop app ---------------------------------------------------------------------------
stage="$work/claudemesh"
install -D -m 0755 "$work/bin/claudemesh" "$stage/usr/bin/claudemesh"
install -D -m 0644 packaging/linux/claudemesh.desktop "$stage/usr/share/applications/claudemesh.desktop"
install -D -m 0644 icons/32x32.png "$stage/usr/share/icons/hicolor/32x32/apps/claudemesh.png"
install -D -m 0644 icons/128x128.png "$stage/usr/share/icons/hicolor/128x128/apps/claudemesh.png"
install -D -m 0644 icons/128x128@2x.png "$stage/usr/share/icons/hicolor/256x256/apps/claudemesh.png"
install -D -m 0644 icons/icon.png "$stage/usr/share/icons/hicolor/512x512/apps/claudemesh.png"
install -D -m 0644 packaging/debian/copyright "$stage/usr/share/doc/claudemesh/copyright"
claude_plugin "$stage"
help_env=()
man_page claudemesh "Claude Code sessions on any machine as one end-to-end encrypted mesh" \
  "$work/bin/claudemesh" "$stage/usr/share/man/man1/claudemesh.1.gz"
mkdir -p "$stage/DEBIAN"
# The tray library is loaded at run time (dlopen), so no linked library names it.
control "$stage" claudemesh "$(linked_packages "$work/bin/claudemesh"), libayatana-appindicator3-1" \
  "Conflicts: claudemesh-cli
Replaces: claudemesh-cli
Provides: claudemesh-cli" \
  "Claude Code sessions on any machine as one encrypted mesh (desktop app)" \
  "$common_description

This package holds the desktop tray app (sign in, meshes, approving other devices' logins, \
notifications, a local broker), the claudemesh command line, and the MCP bridge that makes \
each Claude Code session a peer (claudemesh install, or the Claude Code plugin in \
/usr/share/claudemesh/claude-plugin). For servers without a display, install claudemesh-cli \
instead."
build_deb "$stage" claudemesh

# --- the headless CLI --------------------------------------------------------------------------
stage="$work/claudemesh-cli"
install -D -m 0755 "$work/bin/claudemesh-headless" "$stage/usr/bin/claudemesh"
install -D -m 0644 packaging/debian/copyright "$stage/usr/share/doc/claudemesh-cli/copyright"
claude_plugin "$stage"
man_page claudemesh "Claude Code sessions on any machine as one end-to-end encrypted mesh" \
  "$work/bin/claudemesh-headless" "$stage/usr/share/man/man1/claudemesh.1.gz"
mkdir -p "$stage/DEBIAN"
control "$stage" claudemesh-cli "$(linked_packages "$work/bin/claudemesh-headless")" \
  "Conflicts: claudemesh
Replaces: claudemesh" \
  "Claude Code sessions on any machine as one encrypted mesh (command line)" \
  "$common_description

This package holds the claudemesh command line and the MCP bridge for servers and SSH boxes: \
no GUI library. The claudemesh package (the desktop app) includes all of it."
build_deb "$stage" claudemesh-cli

# --- the broker --------------------------------------------------------------------------------
stage="$work/claudemesh-broker"
install -D -m 0755 "$work/bin/claudemesh-broker" "$stage/usr/lib/claudemesh-broker/claudemesh-broker"
install -D -m 0755 packaging/debian/claudemesh-broker.sh "$stage/usr/bin/claudemesh-broker"
install -D -m 0644 packaging/debian/claudemesh-broker.service "$stage/lib/systemd/system/claudemesh-broker.service"
install -D -m 0640 packaging/debian/broker.env "$stage/etc/claudemesh-broker/broker.env"
install -D -m 0644 packaging/debian/copyright "$stage/usr/share/doc/claudemesh-broker/copyright"
help_env=(CLAUDEMESH_DATA_DIR=/var/lib/claudemesh-broker)
man_page claudemesh-broker "the claudemesh routing broker" \
  "$work/bin/claudemesh-broker" "$stage/usr/share/man/man1/claudemesh-broker.1.gz"
mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/claudemesh-broker.$script" "$stage/DEBIAN/$script"
done
echo /etc/claudemesh-broker/broker.env >"$stage/DEBIAN/conffiles"
control "$stage" claudemesh-broker "$(linked_packages "$work/bin/claudemesh-broker"), passwd, util-linux" "" \
  "routing-only broker for claudemesh meshes (systemd service)" \
  "$common_description

This package runs the broker as the systemd service claudemesh-broker under its own system \
user, with its state in /var/lib/claudemesh-broker and its settings in \
/etc/claudemesh-broker/broker.env. The operator commands (claudemesh-broker mesh, member, \
invite, device) work on that state by default. Removing the package keeps the state; purging \
deletes it."
build_deb "$stage" claudemesh-broker

rm -rf "$work"

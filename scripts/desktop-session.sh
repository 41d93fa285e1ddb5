#!/usr/bin/env bash
# Runs a command inside a headless desktop session: a virtual X display (Xvfb), its own D-Bus
# session bus with an unlocked gnome-keyring (the Secret Service `keyring` talks to) and the
# dunst notification daemon. Usage: desktop-session.sh COMMAND [ARGS…]
# The display is 1280x800 at 24-bit (xvfb-run's default is 640x480 at 8-bit).
set -euo pipefail
if [ -z "${CLAUDEMESH_DESKTOP_SESSION:-}" ]; then
  export CLAUDEMESH_DESKTOP_SESSION=1
  exec xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- "$0" "$@"
fi
# Inside the session: a keyring that is unlocked for the session, and a notification daemon.
# (Both end with the session bus.)
keyring_home="$(mktemp -d)"
export XDG_DATA_HOME="$keyring_home"
eval "$(printf 'claudemesh-session' | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL SSH_AUTH_SOCK
unset XDG_DATA_HOME
# dunst is started by D-Bus activation on the first call to org.freedesktop.Notifications
# (its service file); make that call now so the daemon is up before the tests run.
for _ in $(seq 1 100); do
  if dbus-send --session --print-reply --dest=org.freedesktop.Notifications /org/freedesktop/Notifications \
      org.freedesktop.Notifications.GetServerInformation >/dev/null 2>&1; then
    break
  fi
  sleep 0.05
done
status=0
"$@" || status=$?
rm -rf "$keyring_home"
exit "$status"

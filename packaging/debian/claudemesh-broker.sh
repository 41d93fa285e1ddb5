#!/bin/sh
# claudemesh-broker from the package: the service and the operator commands share the packaged
# state directory, and root runs them as the service's user so every file stays the service's.
set -e
: "${CLAUDEMESH_DATA_DIR:=/var/lib/claudemesh-broker}"
export CLAUDEMESH_DATA_DIR
binary=/usr/lib/claudemesh-broker/claudemesh-broker
if [ "$(id -u)" = 0 ] && getent passwd claudemesh-broker >/dev/null; then
  exec runuser -u claudemesh-broker -- "$binary" "$@"
fi
exec "$binary" "$@"

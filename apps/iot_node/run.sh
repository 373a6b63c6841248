#!/bin/sh
# Start the IoT node with the Python environment of the current edgekit deployment.
# Usage: sh run.sh [--config FILE] [--flags]   (EDGEKIT_ROOT: where `edgekit push` installs)
set -e
root=${EDGEKIT_ROOT:-/opt/edgekit}
here=$(cd "$(dirname "$0")" && pwd)
py="$root/current/env/bin/python"
if [ ! -x "$py" ]; then
  echo "iot_node: $py is missing: push a package first (edgekit push PKG DEVICE)" >&2
  exit 1
fi
# Outside systemd (which sets it from StateDirectory=), the same state folder.
export STATE_DIRECTORY="${STATE_DIRECTORY:-/var/lib/edgekit-iot-node}"
# paho-mqtt, copied next to the app by install.sh (devices are often offline).
export PYTHONPATH="$here/_vendor${PYTHONPATH:+:$PYTHONPATH}"
cd "$here/.."
if [ -n "${EDGEKIT_ROOT:-}" ]; then
  exec "$py" -m iot_node --package "$root/current" "$@"
fi
exec "$py" -m iot_node "$@"

#!/bin/sh
# Install the IoT node on a device over SSH, after `edgekit push PKG TARGET`:
#   apps/iot_node/install.sh TARGET [ssh options, e.g. -F build/ssh_config]
# Copies the app (with paho-mqtt from this host, no internet needed on the device) to
# /opt/edgekit/apps/iot_node, writes /etc/edgekit/iot-node.toml if it is missing, and where
# systemd runs, enables and starts edgekit-iot-node.service.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 TARGET [ssh options]" >&2; exit 2; }
target=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
[ -x "$here/../../.venv/bin/python" ] && py="$here/../../.venv/bin/python"
paho=$("$py" -c 'import os, paho; print(os.path.dirname(paho.__file__))') || {
  echo "install.sh: paho-mqtt is not installed here (pip install 'edgekit[iot]')" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/iot_node/_vendor"
cp "$here"/*.py "$here"/*.sh "$here"/*.service "$here"/*.toml "$here"/README.md "$stage/iot_node/"
cp -r "$paho" "$stage/iot_node/_vendor/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$stage" -czf - iot_node | ssh "$@" "$target" '
  set -e
  root=${EDGEKIT_ROOT:-/opt/edgekit}
  mkdir -p "$root/apps" && rm -rf "$root/apps/iot_node.new"
  mkdir "$root/apps/iot_node.new" && tar -xzf - -C "$root/apps/iot_node.new" --strip-components=1
  rm -rf "$root/apps/iot_node.old"
  [ -d "$root/apps/iot_node" ] && mv "$root/apps/iot_node" "$root/apps/iot_node.old"
  mv "$root/apps/iot_node.new" "$root/apps/iot_node" && rm -rf "$root/apps/iot_node.old"
  mkdir -p /etc/edgekit
  [ -f /etc/edgekit/iot-node.toml ] || cp "$root/apps/iot_node/iot-node.toml" /etc/edgekit/
  if [ -d /run/systemd/system ]; then
    cp "$root/apps/iot_node/edgekit-iot-node.service" /etc/systemd/system/
    systemctl daemon-reload && systemctl enable --now edgekit-iot-node.service
    systemctl restart edgekit-iot-node.service
    echo "iot_node: running (journalctl -u edgekit-iot-node -f)"
  else
    echo "iot_node: installed; no systemd here: start it with"
    echo "  sh $root/apps/iot_node/run.sh --config /etc/edgekit/iot-node.toml"
  fi'

#!/usr/bin/env bash
# Installs the Debian packages edgekit's demo and tests use, when they are missing.
set -euo pipefail
pkgs=(dataset-fashion-mnist)
# The virtual arm64 device (`edgekit device emulate`, the device tests) runs only as root.
if [ "$(id -u)" -eq 0 ]; then
  pkgs+=(qemu-user-static binfmt-support debootstrap debian-archive-keyring openssh-server
    openssh-client iproute2)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "edgekit: missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "edgekit: installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o Dpkg::Use-Pty=0 \
  --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs the Debian packages edgekit's demo and tests use, when they are missing.
set -euo pipefail
pkgs=(dataset-fashion-mnist chromium)  # chromium: the web-page tests of the apps, headless
# The smart camera's source tests: GStreamer pipelines (gst-launch-1.0: pip's OpenCV has no
# GStreamer backend) and a real RTSP server (GStreamer's, in Debian's python3-gi).
pkgs+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gir1.2-gst-rtsp-server-1.0 python3-gi)
# The IoT node's tests: a real MQTT broker, and systemd-analyze for its unit file.
pkgs+=(mosquitto systemd)
# The virtual arm64 device (`edgekit device emulate`, the device tests) runs only as root.
if [ "$(id -u)" -eq 0 ]; then
  pkgs+=(qemu-user-static binfmt-support debootstrap debian-archive-keyring openssh-server
    openssh-client iproute2)
fi
# LiteRT's aarch64 wheel crashes (SIGSEGV creating an interpreter) under bookworm's qemu 7.2;
# qemu 10 from bookworm-backports runs it. Add backports (Debian's own archive) for it.
backports=""
if [ "$(id -u)" -eq 0 ] && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  list=/etc/apt/sources.list.d/edgekit-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
    apt-get update -qq
  fi
  have=$(dpkg-query -W -f='${Version}' qemu-user-static 2>/dev/null || true)
  case "$have" in 1:[89].*|1:1[0-9].*) ;; *) backports=qemu-user-static ;; esac
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ -n "$backports" ]; then
  echo "edgekit: installing qemu-user-static from bookworm-backports (qemu 7.2 cannot run LiteRT)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends \
    -t bookworm-backports qemu-user-static binfmt-support >/dev/null
  # F-flag handlers hold the old interpreter open: register again to pick up the new one.
  if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "edgekit: missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "edgekit: installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o Dpkg::Use-Pty=0 \
  --no-install-recommends "${missing[@]}" >/dev/null

"""What a device is: architecture, OS, Python, glibc, CPU, memory, disk, accelerators.

The probe is a POSIX shell script (a device may have no Python yet), sent over SSH and
answered as ``key=value`` lines. :class:`DeviceInfo` turns them into a record and
:meth:`DeviceInfo.profile` into the settings edgekit uses on that device.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PROBE_SCRIPT", "DeviceInfo", "Profile", "parse_probe"]

# Each line: key=value. Missing tools just leave a key empty.
PROBE_SCRIPT = r"""
dir="${1:-/opt/edgekit}"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
echo "hostname=$(uname -n)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$PRETTY_NAME"; echo "os_id=$ID"; fi
py=""
for p in python3 python3.13 python3.12 python3.11 python3.10 python3.9 python; do
  if command -v "$p" >/dev/null 2>&1; then py=$(command -v "$p"); break; fi
done
echo "python_path=$py"
if [ -n "$py" ]; then
  echo "python=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
  echo "python_venv=$("$py" -c 'import venv, ensurepip; print(1)' 2>/dev/null)"
fi
g=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
[ -z "$g" ] && g=$(ldd --version 2>/dev/null | head -n1 | awk '{print $NF}')
echo "glibc=$g"
cpu=$(grep -m1 -E '^(model name|Model|Hardware|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)
echo "cpu_model=$(echo $cpu)"
feat=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | tr ' ' '\n' \
  | grep -E -x 'asimddp|asimd|i8mm|avx2|avx512_vnni|avx_vnni|neon|vfpv4' | sort -u)
echo "cpu_features=$(echo $feat)"
echo "cores=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
echo "mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
echo "mem_available_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)"
d="$dir"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "disk_path=$d"
echo "disk_free_kb=$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')"
model=""
for f in /proc/device-tree/model /sys/firmware/devicetree/base/model; do
  [ -r "$f" ] && model=$(tr -d '\000' < "$f") && break
done
echo "board=$model"
apex=$(ls /dev/apex_* 2>/dev/null | tr '\n' ' ')
echo "edgetpu_pcie=$apex"
usb=""
for v in /sys/bus/usb/devices/*/idVendor; do
  [ -r "$v" ] || continue
  id="$(cat "$v"):$(cat "$(dirname "$v")/idProduct" 2>/dev/null)"
  case "$id" in 1a6e:089a|18d1:9302) usb="$usb $id";; esac
done
echo "edgetpu_usb=$(echo $usb)"
lib=$(ldconfig -p 2>/dev/null | grep -m1 -o '/[^ ]*libedgetpu.so[.0-9]*')
[ -z "$lib" ] && lib=$(ls /usr/lib/*/libedgetpu.so* /usr/lib/libedgetpu.so* 2>/dev/null | head -n1)
echo "libedgetpu=$lib"
[ -r /etc/nv_tegra_release ] && echo "jetson=$(head -n1 /etc/nv_tegra_release)"
cuda=""
for f in /usr/local/cuda/version.json /usr/local/cuda/version.txt; do
  [ -r "$f" ] && cuda=$(grep -m1 -o '[0-9][0-9]*\.[0-9][0-9.]*' "$f") && break
done
echo "cuda=$cuda"
trt=$(dpkg-query -W -f='${Version}' libnvinfer8 2>/dev/null \
  || dpkg-query -W -f='${Version}' tensorrt 2>/dev/null)
echo "tensorrt=$trt"
echo "emulated=$( [ -e /etc/edgekit-virtual-device ] && cat /etc/edgekit-virtual-device)"
"""

_MIN_PYTHON = (3, 9)


@dataclass(frozen=True)
class Profile:
    """How edgekit runs on a kind of device: backend, threads and artifact format."""

    name: str  # rpi, jetson, coral, generic
    backend: str  # a runtime backend name (litert, tflite, onnxruntime, edgetpu)
    threads: int
    format: str  # tflite or onnx
    requirements: tuple[str, ...]  # what the device's environment installs besides edgekit


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the probe saw it."""

    target: str
    arch: str
    os: str = ""
    os_id: str = ""
    kernel: str = ""
    hostname: str = ""
    python: str = ""
    python_path: str = ""
    python_venv: bool = False
    glibc: str = ""
    cpu_model: str = ""
    cpu_features: tuple[str, ...] = ()
    cores: int = 1
    mem_total_mb: float = 0.0
    mem_available_mb: float = 0.0
    disk_path: str = ""
    disk_free_mb: float = 0.0
    board: str = ""
    accelerators: dict[str, Any] = field(default_factory=dict)
    emulated: str = ""

    @property
    def python_version(self) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in self.python.split(".")[:2])
        except ValueError:
            return ()

    @property
    def python_ok(self) -> bool:
        return bool(self.python_version) and self.python_version >= _MIN_PYTHON

    @property
    def glibc_version(self) -> tuple[int, int]:
        try:
            major, minor = self.glibc.split(".")[:2]
            return int(major), int(minor)
        except ValueError:
            return (0, 0)

    @property
    def kind(self) -> str:
        """coral, jetson, rpi or generic."""
        if self.accelerators.get("edgetpu"):
            return "coral"
        if self.accelerators.get("jetson"):
            return "jetson"
        if "raspberry pi" in self.board.lower():
            return "rpi"
        return "generic"

    def profile(self, backend: str | None = None) -> Profile:
        """The settings for this device; ``backend`` overrides the choice."""
        kind = self.kind
        threads = max(1, min(4, self.cores))
        if backend is None:
            if kind == "coral":
                backend = "edgetpu"
            elif kind == "jetson":
                backend = "onnxruntime"
            elif self.arch in ("armv7l", "armv6l"):
                backend = "tflite"  # tflite-runtime: LiteRT has no 32-bit ARM wheel
            else:
                backend = "litert"
        reqs = {
            "litert": ("ai-edge-litert",),
            "edgetpu": ("ai-edge-litert",),
            "tflite": ("tflite-runtime", "numpy<2"),
            "onnxruntime": ("onnxruntime",),
        }.get(backend)
        if reqs is None:
            raise ValueError(
                f"unknown device backend {backend!r} (litert, tflite, onnxruntime, edgetpu)"
            )
        fmt = "onnx" if backend == "onnxruntime" else "tflite"
        return Profile(kind, backend, threads, fmt, reqs)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind
        out["python_ok"] = self.python_ok
        out["profile"] = asdict(self.profile())
        return out

    def summary(self) -> str:
        py = f"Python {self.python}" if self.python else "no Python"
        acc = ", ".join(k for k, v in self.accelerators.items() if v) or "no accelerator"
        emu = " (emulated)" if self.emulated else ""
        return (
            f"{self.arch}{emu}, {self.os or 'unknown OS'}, {py}, glibc {self.glibc or '?'}, "
            f"{self.cores} cores, {self.mem_total_mb:.0f} MB RAM, "
            f"{self.disk_free_mb:.0f} MB free, {acc}"
        )


def parse_probe(target: str, text: str) -> DeviceInfo:
    """Build a :class:`DeviceInfo` from the probe script's output."""
    kv: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            kv[k.strip()] = v.strip()

    def num(key: str) -> float:
        try:
            return float(kv.get(key) or 0)
        except ValueError:
            return 0.0

    acc: dict[str, Any] = {}
    if kv.get("edgetpu_pcie") or kv.get("edgetpu_usb"):
        acc["edgetpu"] = {
            "pcie": kv.get("edgetpu_pcie", "").split(),
            "usb": kv.get("edgetpu_usb", "").split(),
            "libedgetpu": kv.get("libedgetpu", ""),
        }
    if kv.get("jetson"):
        acc["jetson"] = {
            "release": kv["jetson"],
            "cuda": kv.get("cuda", ""),
            "tensorrt": kv.get("tensorrt", ""),
        }
    elif kv.get("cuda"):
        acc["cuda"] = kv["cuda"]
    return DeviceInfo(
        target=target,
        arch=kv.get("arch", ""),
        os=kv.get("os", ""),
        os_id=kv.get("os_id", ""),
        kernel=kv.get("kernel", ""),
        hostname=kv.get("hostname", ""),
        python=kv.get("python", ""),
        python_path=kv.get("python_path", ""),
        python_venv=kv.get("python_venv") == "1",
        glibc=kv.get("glibc", ""),
        cpu_model=kv.get("cpu_model", ""),
        cpu_features=tuple(kv.get("cpu_features", "").split()),
        cores=int(num("cores") or 1),
        mem_total_mb=num("mem_total_kb") / 1024,
        mem_available_mb=num("mem_available_kb") / 1024,
        disk_path=kv.get("disk_path", ""),
        disk_free_mb=num("disk_free_kb") / 1024,
        board=kv.get("board", ""),
        accelerators=acc,
        emulated=kv.get("emulated", ""),
    )


def dumps(info: DeviceInfo) -> str:
    return json.dumps(info.to_json(), indent=2)

"""What the benchmark reports: each policy's summary, the bytes an offload sends, the
latency tables with the targets (printed) and the JSON they are written as."""

from __future__ import annotations

import io
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np


def summary(r: dict[str, Any], n_stages: int) -> dict[str, Any]:
    lat = r["lat"] * 1e3
    off = r["split"] >= 0
    return {
        "inputs": len(lat),
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "accuracy": float(r["correct"].mean()),
        "confidence": float(r["score"].mean()),
        "bytes_per_input": float(r["sent"].mean()),
        "bytes_per_offload": float(r["sent"][off].mean()) if off.any() else None,
        "offloaded": float(off.mean()),
        "by_split": [int((r["split"] == s).sum()) for s in range(n_stages)],
        "local": int((~off).sum()),
        "fallbacks": int(r["fallback"].sum()),
        "exit_histogram": np.bincount(r["exits"], minlength=n_stages).tolist(),
    }


def windows(r: dict[str, Any], w: int) -> list[dict[str, float]]:
    out = []
    for i in range(0, len(r["lat"]), w):
        sl = slice(i, i + w)
        out.append(
            {
                "start": i,
                "mean_ms": float(r["lat"][sl].mean() * 1e3),
                "offloaded": float((r["split"][sl] >= 0).mean()),
            }
        )
    return out


def input_bytes(pkg: Path, n: int = 200) -> dict[str, float]:
    """Raw, zlib and PNG sizes of test images (what sending the picture itself costs)."""
    from edgekit.data import load_dataset

    x = load_dataset("fashion-mnist").x_test[:n]
    img = np.clip(np.rint(x[..., 0] * 255.0), 0, 255).astype(np.uint8)
    raw = img[0].nbytes
    png = float(np.mean([len(_png(im)) for im in img]))
    z = float(np.mean([len(zlib.compress(im.tobytes(), 9)) for im in img]))
    return {"raw_bytes": raw, "png_bytes": png, "zlib_bytes": z}


def _png(img: np.ndarray) -> bytes:
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    except ImportError:  # a grayscale PNG by hand: signature, IHDR, IDAT, IEND
        import struct

        def chunk(kind: bytes, data: bytes) -> bytes:
            c = struct.pack(">I", len(data)) + kind + data
            return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        h, w = img.shape
        rows = b"".join(b"\x00" + img[i].tobytes() for i in range(h))
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b"")
        )


def tensor_bytes(pkg: Path) -> list[int]:
    man = json.loads((pkg / "manifest.json").read_text())
    return [int(np.prod(s["input"]["shape"][1:])) for s in man["stages"]]


def bytes_table(pkg: Path, result: dict[str, Any]) -> dict[str, Any]:
    inp = input_bytes(pkg)
    tensors = tensor_bytes(pkg)
    any_setting = next(iter(result["settings"].values()))["policies"]
    wire = [any_setting.get(f"split:{s}", {}).get("bytes_per_offload") for s in range(len(tensors))]
    chosen: dict[str, Any] = {}
    for rate, st in result["settings"].items():
        b = st["policies"]["bandit-split"]
        if b["offloaded"] >= 0.5:
            s = int(np.argmax(b["by_split"]))
            chosen[rate] = {"split": s, "bytes_per_offload": wire[s], "share": b["offloaded"]}
        else:
            chosen[rate] = {"split": "local", "bytes_per_offload": None, "share": b["offloaded"]}
    return {
        **inp,
        "tensor_bytes_by_split": tensors,
        "request_bytes_by_split": wire,
        "bandit_choice": chosen,
    }


def _row(name: str, value: float, target: str, ok: bool) -> dict[str, Any]:
    mark = "ok " if ok else "MISS"
    print(f"  [{mark}] {name:<66} {value:8.3f}   target {target}", flush=True)
    return {"name": name, "value": value, "target": target, "ok": ok}


def block_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Policy ``a``'s mean latency over ``b``'s, block by block (the worker runs every
    policy on the same inputs of each block, in turn): their median, quartiles, range."""
    ra, rb = a.get("round_means_ms"), b.get("round_means_ms")
    if not ra or not rb or len(ra) != len(rb):
        return None
    r = np.array(ra) / np.array(rb)
    q1, med, q3 = (float(v) for v in np.percentile(r, [25, 50, 75]))
    return {
        "ratios": r.tolist(),
        "median": med,
        "q1": q1,
        "q3": q3,
        "min": float(r.min()),
        "max": float(r.max()),
    }


def _objective(p: dict[str, Any], c: str, lam: float) -> float:
    return float(p[c]["confidence"] - lam * p[c]["mean_ms"] / p["local"]["mean_ms"])


def report_tables(
    result: dict[str, Any], rates: list[float], static: list[str]
) -> list[dict[str, Any]]:
    """Print the latency, bytes, accuracy and J tables and the targets; the target rows."""
    cols = [*static, "bandit-split", "local-bandit", "bandit"]
    lam = result["lambda"]
    print("\nmean end-to-end latency (ms) per input, as the caller sees it; bytes sent per input")
    print(f"  {'Mbit/s':>7} " + "".join(f"{c:>14}" for c in cols))
    for rate in rates:
        p = result["settings"][f"{rate:g}"]["policies"]
        print(f"  {rate:>7g} " + "".join(f"{p[c]['mean_ms']:>14.3f}" for c in cols))
        print(f"  {'bytes':>7} " + "".join(f"{p[c]['bytes_per_input']:>14.0f}" for c in cols))
        print(f"  {'acc':>7} " + "".join(f"{p[c]['accuracy']:>14.4f}" for c in cols))
        print(f"  {'J':>7} " + "".join(f"{_objective(p, c, lam):>14.4f}" for c in cols))
    print(
        f"  (J = mean confidence - {lam:g} x mean latency / local-only latency: the label-free "
        "objective the bandits maximise)"
    )
    rows = []
    print()
    for rate in rates:
        p = result["settings"][f"{rate:g}"]["policies"]
        best = min(static, key=lambda c: p[c]["mean_ms"])
        b = p["bandit-split"]
        where = "local" if b["offloaded"] < 0.5 else f"split {int(np.argmax(b['by_split']))}"
        print(
            f"  {rate:g} Mbit/s: best static {best} ({p[best]['mean_ms']:.3f} ms); bandit "
            f"chose {where} for {max(b['local'], max(b['by_split']))}/{b['inputs']} inputs, "
            f"{b['bytes_per_input']:.0f} B/input; with early exits: {p['bandit']['mean_ms']:.3f} "
            f"ms at accuracy {p['bandit']['accuracy']:.4f} (local-only bandit "
            f"{p['local-bandit']['mean_ms']:.3f} ms, {p['local-bandit']['accuracy']:.4f})"
        )
        r = b["mean_ms"] / p[best]["mean_ms"]
        rows.append(
            _row(f"{rate:g} Mbit/s: bandit / best static choice ({best})", r, "<= 1.10", r <= 1.1)
        )
        for other in ("local", "split:0"):
            r2 = b["mean_ms"] / p[other]["mean_ms"]
            rows.append(_row(f"{rate:g} Mbit/s: bandit / {other}", r2, "-", True))
        r3 = p["bandit"]["mean_ms"] / p["local-bandit"]["mean_ms"]
        rows.append(
            _row(
                f"{rate:g} Mbit/s: early-exit bandit with server / local-only bandit", r3, "-", True
            )
        )
        # Never worse than the better of its own parts (the local-only early-exit bandit, the
        # best static split or all-local): as fast, at that part's accuracy.
        part = min(("local-bandit", best), key=lambda c: p[c]["mean_ms"])
        r4 = p["bandit"]["mean_ms"] / p[part]["mean_ms"]
        rows.append(
            _row(
                f"{rate:g} Mbit/s: early-exit bandit with server / {part}",
                r4,
                "<= 1.02",
                r4 <= 1.02,
            )
        )
        spread = block_ratios(p["bandit"], p[part])
        rows[-1]["blocks"] = spread
        if spread:
            print(
                f"         per block (the {len(spread['ratios'])} interleaved blocks, same "
                f"inputs): median {spread['median']:.3f}, quartiles {spread['q1']:.3f}-"
                f"{spread['q3']:.3f}, range {spread['min']:.3f}-{spread['max']:.3f}",
                flush=True,
            )
        gap = 100.0 * (p[part]["accuracy"] - p["bandit"]["accuracy"])
        rows.append(
            _row(
                f"{rate:g} Mbit/s: its accuracy below {part}'s (points)",
                gap,
                "<= 0.5",
                gap <= 0.5,
            )
        )
        twin = p.get("local-bandit-twin")
        if twin is not None:  # the same local-only bandit twice: what one run varies by
            g2 = 100.0 * (p["local-bandit"]["accuracy"] - twin["accuracy"])
            r5 = twin["mean_ms"] / p["local-bandit"]["mean_ms"]
            rows.append(_row(f"{rate:g} Mbit/s: local-only bandit's twin / it", r5, "-", True))
            rows.append(_row(f"{rate:g} Mbit/s: twin's accuracy below its (points)", g2, "-", True))
    d = result.get("drift")
    if d:
        w = d["windows"]
        print(
            f"  drift {d['from_mbit']:g} -> {d['to_mbit']:g} Mbit/s, offloaded share per 100 "
            "inputs after the change: " + " ".join(f"{x['offloaded']:.2f}" for x in w)
        )
        after = d["static_after"]
        best = min(after, key=after.__getitem__)
        tail = [x["mean_ms"] for x in w[len(w) // 2 :]]
        r = float(np.mean(tail)) / after[best]
        rows.append(
            _row(
                f"drift: bandit:ducb, 2nd half after the change / best static there ({best})",
                r,
                "<= 1.20",
                r <= 1.2,
            )
        )
    by = result["bytes"]
    print(
        f"\n  bytes: raw input {by['raw_bytes']} B, PNG {by['png_bytes']:.0f} B, zlib "
        f"{by['zlib_bytes']:.0f} B; request on the wire per split "
        + ", ".join(
            f"{s}: {b:.0f} B (tensor {t} B)"
            for s, (b, t) in enumerate(
                zip(by["request_bytes_by_split"], by["tensor_bytes_by_split"])
            )
            if b is not None
        )
    )
    for rate, c in by["bandit_choice"].items():
        if c["bytes_per_offload"] is not None:
            print(
                f"  {rate} Mbit/s: the bandit's split {c['split']} sends "
                f"{c['bytes_per_offload']:.0f} B per offload = "
                f"{c['bytes_per_offload'] / by['raw_bytes']:.2f}x the raw input, "
                f"{c['bytes_per_offload'] / by['png_bytes']:.2f}x its PNG"
            )
        else:
            print(
                f"  {rate} Mbit/s: the bandit keeps inputs on the device (offloaded "
                f"{c['share']:.0%} while exploring)"
            )
    return rows


def demo_table(p: dict[str, Any], pkg: Path) -> None:
    """The demo's side-by-side table of local-only and the bandit with a server."""
    labels = {
        "local": "local only, full model",
        "local-bandit": "local only, bandit (exits)",
        "bandit-split": "bandit + server (splits)",
        "bandit": "bandit + server (splits, exits)",
    }
    print(f"\n  {'policy':<32} {'mean ms':>8} {'accuracy':>9} {'B/input':>8}  where inputs went")
    for name, label in labels.items():
        s = p[name]
        where = ", ".join(
            [f"device {s['local'] / s['inputs']:.0%}"]
            + [f"split {k} {c / s['inputs']:.0%}" for k, c in enumerate(s["by_split"]) if c]
        )
        print(
            f"  {label:<32} {s['mean_ms']:>8.3f} {s['accuracy']:>9.4f} "
            f"{s['bytes_per_input']:>8.0f}  {where}"
        )
        if "best_arm" in s and name != "local-bandit":
            b = s["best_arm"]
            print(f"  {'':<32} the bandit's choice: split {b['split']}, threshold {b['threshold']}")
    b = p["bandit-split"]
    if b["bytes_per_offload"]:
        inp = input_bytes(pkg)
        print(
            f"\n  bytes per offload {b['bytes_per_offload']:.0f} B on the wire (headers included; "
            f"raw input {inp['raw_bytes']} B, as PNG {inp['png_bytes']:.0f} B)"
        )


def jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)

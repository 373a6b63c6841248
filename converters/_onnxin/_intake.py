"""``convert`` for an ONNX model: load, cut, train heads, quantize per stage, validate,
report, and write an ordinary edge package (ONNX stages only; see README "From PyTorch")."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, DatasetError
from edgekit._package import (
    ExitSpec,
    InputSpec,
    Manifest,
    QuantParams,
    StageSpec,
    TensorSpec,
    write_manifest,
)
from edgekit._progress import say
from edgekit.data import Dataset, load_dataset
from edgekit.runtime import Quantizer
from edgekit.runtime.backends import onnxruntime as ort_backend

from .._report import dataset_entry, exit_entries, stage_rows, write_report
from .._stem import StemChoice, apply_float_stem
from .._validate import run_chain, run_full
from ._build import Head, feature_model, full_model, pool_kernel, stage_model
from ._graph import OnnxCut, analyse, pick_cuts
from ._heads import HeadConfig, accuracy, compute_features, head_logits, train_head
from ._load import OnnxSource, load_onnx
from ._quant import quantize_graph

STEM_SAMPLES = 256  # images compared between the INT8 and the float first conv

__all__ = ["convert_onnx", "is_onnx_model"]

DEFAULT_EXITS = (0.25, 0.5, 0.75)
# auto: heads learn from the labels; none: from the model's own logits (no labels);
# both: the package gets labelled heads, the report the label-free ones' accuracy too
LABEL_MODES = ("auto", "none", "both")
# pixel/255 in [0, 1] on the int8 grid: exact for uint8 images
PIXEL_QUANT = QuantParams(1 / 255, -128, "int8")
TFLITE_NOTE = (
    "ONNX-only package: no TFLite stages (no well-kept ONNX->TFLite converter keeps the "
    "stage contract reliably); the runtime runs it on onnxruntime"
)


def is_onnx_model(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``convert --model path`` goes through the ONNX intake (a ``.onnx`` file)."""
    return path is not None and str(path).lower().endswith(".onnx")


def _act(target: str) -> str:
    if target == "auto":
        target = "arm" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"
    return "int8" if target == "arm" else "uint8"


def _run_float(proto: Any, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        proto.SerializeToString(),
        ort_backend.session_options(os.cpu_count()),
        providers=["CPUExecutionProvider"],
    )
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(0, len(x), 256):
        for o, r in zip(outs, sess.run(names, {"input": np.ascontiguousarray(x[i : i + 256])})):
            o.append(r)
    return [np.concatenate(o) for o in outs]


class _Intake:
    def __init__(self, opts: Any, dataset: Any, root: Path, name: str) -> None:
        self.o = opts
        self.spec = dataset
        self.root = root
        self.name = name
        self.notes: list[str] = []
        self.stem: list[StemChoice] = []
        self.timing: dict[str, float] = {}
        self._t = time.monotonic()

    def say(self, msg: str) -> None:
        if self.o.verbose:
            say(msg)

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.timing[f"{what}_seconds"] = round(now - self._t, 2)
        self._t = now

    # ------------------------------------------------------------------------------------

    def data(self, src: OnnxSource) -> Dataset:
        o = self.o
        data = self.spec if isinstance(self.spec, Dataset) else load_dataset(self.spec, seed=o.seed)
        if o.fast:
            data = data.limit(min(len(data.x_train), 3000), min(len(data.x_test), 1000))
        if tuple(data.input_shape) != src.image_shape:
            h, w, c = src.image_shape
            raise DatasetError(
                f"{src.path.name} takes {src.layout} images of {h}x{w} with {c} channel(s) but "
                f"the dataset has {'x'.join(map(str, data.input_shape))} (HxWxC)",
                hint="resize the images (image folders: image_size=...) or pass --layout if "
                "the layout was guessed wrong",
                expected=src.image_shape,
                got=tuple(data.input_shape),
            )
        if data.num_classes != src.num_classes:
            raise DatasetError(
                f"{src.path.name} has {src.num_classes} output classes but the dataset has "
                f"{data.num_classes}",
                hint="use the dataset the model was trained on (same class order)",
                expected=src.num_classes,
                got=data.num_classes,
            )
        self.say(f"data: {data.describe()}")
        self.lap("data")
        return data

    def cuts(self, src: OnnxSource) -> tuple[Any, list[OnnxCut]]:
        info = analyse(src.proto, src.input, src.output)
        ex = self.o.exits
        if ex and all(isinstance(e, (int, float)) for e in ex):
            cuts = pick_cuts(info, fractions=[float(e) for e in ex])
        elif ex:
            cuts = pick_cuts(info, names=[str(e) for e in ex])
        else:
            cuts = pick_cuts(info, fractions=DEFAULT_EXITS)
        if ex and len(cuts) < len(ex):
            self.notes.append(
                f"{len(ex)} exits asked for, {len(cuts)} distinct valid cut points among them"
            )
        elif not ex and len(cuts) < len(DEFAULT_EXITS):
            self.notes.append(f"only {len(cuts)} distinct valid cut points near 25/50/75% MACs")
        if info.float_ops:
            self.notes.append(
                "operators kept in float between INT8 neighbours (ONNX Runtime does not "
                f"quantize them): {', '.join(info.float_ops)}"
            )
        self.say(
            f"model {src.path.name}: opset {src.opset}, {src.layout}, "
            f"{info.total_macs / 1e6:.2f} M MACs, exits after "
            + ", ".join(f"{c.tensor} ({c.fraction:.0%})" for c in cuts)
        )
        return info, cuts

    def heads(
        self, src: OnnxSource, data: Dataset, cuts: list[OnnxCut]
    ) -> tuple[list[Head], list[Head] | None, dict[str, Any], dict[str, Any]]:
        """The package's heads, the label-free comparison heads (``labels="both"``, else
        None), the training record and the float test accuracy per exit."""
        o = self.o
        fm = feature_model(src, cuts)
        n = len(cuts)
        tr = compute_features(fm, data.x_train, n, label="train", verbose=o.verbose)
        va = compute_features(fm, data.x_val, n, label="val", verbose=o.verbose)
        te = compute_features(fm, data.x_test, n, label="test", verbose=o.verbose)
        self.lap("features")
        mode = getattr(o, "labels", "auto")
        label_free = mode == "none"
        epochs = o.epochs if o.epochs is not None else (4 if o.fast else 8)
        cfg = HeadConfig(
            epochs=epochs,
            learning_rate=o.learning_rate,
            # numpy steps cost mostly overhead below a few hundred rows
            batch_size=max(o.batch_size, 256),
            distill=o.distill,
            seed=o.seed,
        )

        def train_all(without_labels: bool, tag: str) -> tuple[list[Head], list[list[Any]]]:
            heads, hists = [], []
            for k, c in enumerate(cuts):
                pool, _ = pool_kernel(c.shape)
                head, hist = train_head(
                    tr.pooled[k],
                    tr.logits,
                    None if without_labels else data.y_train,
                    va.pooled[k],
                    va.logits,
                    None if without_labels else data.y_val,
                    pool,
                    dataclasses.replace(cfg, seed=o.seed + k),
                    label=f"{tag}head {k}",
                    verbose=o.verbose,
                )
                heads.append(head)
                hists.append(hist)
            return heads, hists

        heads, hist_by_exit = train_all(label_free, "")
        free_heads = train_all(True, "label-free ")[0] if mode == "both" else None
        self.lap("train")
        epochs_run = max(len(h) for h in hist_by_exit)
        history = []
        for e in range(epochs_run):
            row: dict[str, float] = {"epoch": e + 1}
            for k, h in enumerate(hist_by_exit):
                if e < len(h):
                    row[f"val_acc_exit{k}"] = h[e]["val_acc"]
                    row[f"val_loss_exit{k}"] = h[e]["val_loss"]
            history.append(row)
        if label_free:
            self.notes.append(
                "label-free heads (--labels none): trained to match the model's own final "
                "logits; test accuracy still uses the test labels"
            )

        def float_acc(hs: list[Head]) -> list[float]:
            acc = [accuracy(head_logits(h, te.pooled[k]), data.y_test) for k, h in enumerate(hs)]
            # the final exit is the model's own output, whatever the heads learnt from
            return [*acc, accuracy(te.logits, data.y_test)]

        fl: dict[str, Any] = {"float": float_acc(heads)}
        if free_heads is not None:
            fl["float_label_free"] = float_acc(free_heads)
        training = {
            "mode": "heads",
            "labels": {"none": "none", "both": "dataset+label-free"}.get(mode, "dataset"),
            "distill": 1.0 if label_free else cfg.distill,
            "trainer": "numpy MLP heads on onnxruntime features (frozen backbone)",
            "epochs": epochs,
            "epochs_run": epochs_run,
            "history": history,
        }
        return heads, free_heads, training, fl

    def quantize(
        self, src: OnnxSource, data: Dataset, cuts: list[OnnxCut], full: Any, act: str
    ) -> dict[str, Any]:
        o = self.o
        rng = np.random.default_rng(o.seed)
        n_cal = min(o.calibration_size, len(data.x_train))
        calib = data.x_train[rng.choice(len(data.x_train), n_cal, replace=False)]
        d = self.root / "onnx"
        d.mkdir()
        self.say(
            f"quantizing {len(cuts) + 1} stages (QDQ INT8, {act} activations, "
            f"{n_cal} calibration images)"
        )
        paths, quants, files_quant = [], [], []
        feats = calib
        q_in = PIXEL_QUANT
        boundaries: dict[str, QuantParams] = {}
        for k in range(len(cuts) + 1):
            stage = stage_model(src, full, cuts, k)
            p = d / f"stage_{k}.onnx"
            used = quantize_graph(
                stage, p, feats, pinned={"input": q_in}, activation_type=act, what=f"stage {k}"
            )
            paths.append(p)
            files_quant.append(used)  # as the file holds it (uint8 or int8)
            quants.append({n: q.as_dtype("int8") for n, q in used.items()})
            if k < len(cuts):
                q_in = used["ek_features"]
                boundaries[f"ek_cut_{k}"] = q_in
                feats = _run_float(stage, feats, ["ek_features"])[0]
            self.say(f"stage {k}: {p.stat().st_size / 1024:.1f} KiB")
        fp = d / "full.onnx"
        pinned = {"input": PIXEL_QUANT, **boundaries}
        quantize_graph(full, fp, calib, pinned=pinned, activation_type=act, what="unsplit model")
        ff = d / "full_float.onnx"
        import onnx

        onnx.save(full, str(ff))
        self.lap("quantize")
        return {
            "stages": paths,
            "full": fp,
            "full_float": ff,
            "quant": quants,
            "file_quant": files_quant,
            "pinned": pinned,
            "calib": calib,
            "act": act,
        }

    def validate(
        self, data: Dataset, onx: dict[str, Any], n_exits: int
    ) -> tuple[list[dict[str, float]], dict[str, Any]]:
        self.say(f"validating on {len(data.x_test)} test images (onnxruntime)")
        y = data.y_test
        xo = self._test_input(data, onx["act"])
        chain = run_chain(ort_backend, onx["stages"], xo)
        full = run_full(ort_backend, onx["full"], xo, n_exits)
        acc = [
            {"onnx_int8": accuracy(c, y), "onnx_int8_unsplit": accuracy(f, y)}
            for c, f in zip(chain, full)
        ]
        agree = {
            "onnx_chain_vs_unsplit": float((chain[-1].argmax(1) == full[-1].argmax(1)).mean()),
            "onnx_chain_vs_unsplit_per_exit": [
                float((c.argmax(1) == f.argmax(1)).mean()) for c, f in zip(chain, full)
            ],
        }
        self.lap("validate")
        return acc, agree

    def label_free_check(
        self,
        src: OnnxSource,
        data: Dataset,
        cuts: list[OnnxCut],
        free_heads: list[Head],
        onx: dict[str, Any],
    ) -> list[float]:
        """INT8 test accuracy per exit of the label-free comparison heads (``labels="both"``).

        Their unsplit multi-exit model is quantized like the package's (same calibration
        images, the same pinned input and cut quantization) into a scratch folder and run on
        the test images; none of it goes into the package."""
        import tempfile

        self.say("label-free comparison heads: quantizing and validating the unsplit model")
        full = full_model(src, cuts, free_heads)
        with tempfile.TemporaryDirectory(prefix="edgekit-labelfree-") as tmp:
            fp = Path(tmp) / "full_label_free.onnx"
            quantize_graph(
                full,
                fp,
                onx["calib"],
                pinned=onx["pinned"],
                activation_type=onx["act"],
                what="label-free comparison model",
            )
            out = run_full(ort_backend, fp, self._test_input(data, onx["act"]), len(cuts) + 1)
        self.lap("label_free")
        return [accuracy(o, data.y_test) for o in out]

    def float_stem(self, data: Dataset, onx: dict[str, Any]) -> list[StemChoice]:
        """Stage 0 and the unsplit model with a float first conv where that is faster."""
        if self.o.float_stem == "off":
            return []
        x = data.x_val[:STEM_SAMPLES] if len(data.x_val) else data.x_train[:STEM_SAMPLES]
        x_q = Quantizer(InputSpec(tuple(data.input_shape)), PIXEL_QUANT).batch(x)
        samples = x_q.view(np.uint8) ^ np.uint8(0x80) if onx["act"] == "uint8" else x_q
        choice = apply_float_stem(
            "onnx", onx["stages"][0], onx["full"], samples, mode=self.o.float_stem
        )
        if choice is None:
            return []
        self.say(f"first conv ({choice.layer}): {choice.reason}")
        return [choice]

    @staticmethod
    def _test_input(data: Dataset, act: str) -> np.ndarray:
        """The test images as the 8-bit tensor stage 0's file takes."""
        x_q = Quantizer(InputSpec(tuple(data.input_shape)), PIXEL_QUANT).batch(data.x_test)
        return x_q.view(np.uint8) ^ np.uint8(0x80) if act == "uint8" else x_q

    def manifest(
        self,
        src: OnnxSource,
        data: Dataset,
        cuts: list[OnnxCut],
        exits_macs: list[int],
        onx: dict[str, Any],
        acc: list[dict[str, float]],
    ) -> Manifest:
        stages = []
        for k, q in enumerate(onx["quant"]):
            prev = data.input_shape if k == 0 else cuts[k - 1].shape
            feats = None
            if "ek_features" in q:
                feats = TensorSpec("ek_features", (-1, *cuts[k].shape), "int8", q["ek_features"])
            stages.append(
                StageSpec(
                    index=k,
                    files={"onnx": f"onnx/stage_{k}.onnx"},
                    input=TensorSpec("input", (-1, *prev), "int8", q["input"]),
                    logits=TensorSpec("ek_logits", (-1, data.num_classes), "int8", q["ek_logits"]),
                    features=feats,
                    macs=exits_macs[k] - (exits_macs[k - 1] if k else 0),
                )
            )
        total = exits_macs[-1]
        layers = [c.tensor for c in cuts] + ["final"]
        exits = [
            ExitSpec(
                index=i,
                stage=i,
                layer=layers[i],
                macs=m,
                macs_fraction=m / total,
                accuracy={k: v for k, v in acc[i].items() if k in ("float", "onnx_int8")},
            )
            for i, m in enumerate(exits_macs)
        ]
        return Manifest(
            name=self.name,
            labels=data.labels,
            input=_input_spec(src, data),
            stages=tuple(stages),
            exits=tuple(exits),
            full={"onnx": "onnx/full.onnx", "onnx_float": "onnx/full_float.onnx"},
            quantization="ptq",
            onnx_activation_type=onx["act"],
            tools=_tools(),
        )

    def run(self) -> tuple[Manifest, dict[str, Any]]:
        start = time.monotonic()
        o = self.o
        if getattr(o, "labels", "auto") not in LABEL_MODES:
            raise ConversionError(
                f"labels must be one of {', '.join(LABEL_MODES)}, not {o.labels!r}",
                hint="--labels none trains the exits on the model's own logits; both also "
                "trains such heads next to the labelled ones and reports their accuracy",
            )
        src = load_onnx(
            o.model,
            layout=getattr(o, "layout", "auto"),
            mean=getattr(o, "mean", None),
            std=getattr(o, "std", None),
        )
        self.notes.extend(src.notes)
        if "tflite" in o.formats:
            self.notes.append(TFLITE_NOTE)
        if o.quant == "qat":
            self.notes.append(
                "ONNX models are quantized after training (PTQ, calibrated per stage); "
                "QAT applies to Keras models"
            )
        data = self.data(src)
        self.lap("load")
        info, cuts = self.cuts(src)
        heads, free_heads, training, fl = self.heads(src, data, cuts)
        self.say("float test accuracy per exit: " + " ".join(f"{a:.4f}" for a in fl["float"]))
        full = full_model(src, cuts, heads)
        act = _act(o.target)
        onx = self.quantize(src, data, cuts, full, act)
        self.stem = self.float_stem(data, onx)
        n_exits = len(cuts) + 1
        acc, agree = self.validate(data, onx, n_exits)
        for i, a in enumerate(fl["float"]):
            acc[i]["float"] = a
        if free_heads is not None:
            free_int8 = self.label_free_check(src, data, cuts, free_heads, onx)
            for i, (f, q) in enumerate(zip(fl["float_label_free"], free_int8)):
                acc[i]["float_label_free"] = f
                acc[i]["onnx_int8_label_free"] = q
            self.notes.append(
                "--labels both: the package's heads learnt from the labels; label-free heads "
                "(distilled from the model's own logits, as --labels none trains them) were "
                "trained on the same features and quantized the same way, for comparison only. "
                "Final exit (the model's own output) INT8: "
                f"{acc[-1]['onnx_int8']:.2%} labelled, {free_int8[-1]:.2%} label-free; "
                "first exit: "
                f"{acc[0]['onnx_int8']:.2%} labelled, {free_int8[0]:.2%} label-free"
            )
        head_macs = [h.macs for h in heads]
        exits_macs = [c.macs + sum(head_macs[: i + 1]) for i, c in enumerate(cuts)]
        exits_macs.append(info.total_macs + sum(head_macs))
        manifest = self.manifest(src, data, cuts, exits_macs, onx, acc)
        src_bytes = src.path.stat().st_size + sum(
            p.stat().st_size for p in src.path.parent.glob(src.path.name + ".data")
        )
        sizes = {
            "onnx": {
                "float": onx["full_float"].stat().st_size,
                "int8": sum(p.stat().st_size for p in onx["stages"]),
                "int8_unsplit": onx["full"].stat().st_size,
                "source_model": src_bytes,
            }
        }
        total = time.monotonic() - start
        report = {
            "name": self.name,
            "dataset": dataset_entry(data),
            "model": {
                "source": str(src.path),
                "kind": "onnx",
                "opset": src.opset,
                "layout": src.layout,
                "mean": list(src.mean),
                "std": list(src.std),
                "softmax_removed": src.softmax_removed,
                "macs": exits_macs[-1],
                "backbone_macs": info.total_macs,
                "float_accuracy": fl["float"][-1],
                "valid_cuts": [
                    {"tensor": c.tensor, "fraction": round(c.fraction, 4)} for c in info.cuts
                ],
            },
            "quantization": "ptq",
            "formats": {"requested": list(o.formats), "written": ["onnx"]},
            "onnx_activation_type": act,
            "exits": exit_entries(manifest, acc),
            "agreement": agree,
            "float_stem": [c.as_dict() for c in self.stem],
            "sizes": sizes,
            "stages": _stage_rows(self.root, manifest, onx["file_quant"]),
            "training": training,
            "timing": {**self.timing, "total_seconds": round(total, 1)},
            "notes": self.notes,
            "tools": manifest.tools,
        }
        write_report(self.root, report)
        manifest = write_manifest(self.root, manifest)
        self.say(f"done in {total:.0f} s")
        return manifest, report


def _stage_rows(
    root: Path, manifest: Manifest, file_quant: list[dict[str, QuantParams]]
) -> list[dict[str, Any]]:
    """The report's stage rows. ``input_quant`` is the manifest's stage contract, always in
    int8 terms; ``onnx_input_quant`` is what the ONNX file's 8-bit input really is (uint8
    activations on x86: the same scale, zero point + 128, so uint8 = int8 + 128)."""
    rows = stage_rows(root, manifest)
    for row, fq in zip(rows, file_quant):
        row["onnx_input_quant"] = dataclasses.asdict(fq["input"])
    return rows


def _input_spec(src: OnnxSource, data: Dataset) -> InputSpec:
    """Stage 0 takes NHWC pixel/255 like a Keras package; the model's own layout and
    normalisation are folded into stage 0 (recorded in the manifest when it can hold them)."""
    fields = {f.name for f in dataclasses.fields(InputSpec)}
    extra: dict[str, Any] = {}
    if "mean" in fields and "std" in fields:
        extra = {"mean": tuple(src.mean), "std": tuple(src.std)}
    if "source_layout" in fields:
        extra["source_layout"] = src.layout
    return InputSpec(tuple(data.input_shape), **extra)


def _tools() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("edgekit", "onnx", "onnxruntime", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def convert_onnx(opts: Any, dataset: Any, root: Path, name: str) -> tuple[Manifest, dict[str, Any]]:
    """Convert ``opts.model`` (a ``.onnx`` file) into the package folder ``root``.

    ``opts`` is a :class:`~edgekit.converters.ConvertOptions`; the ONNX-specific fields are
    ``layout``, ``mean``, ``std`` and ``labels`` (``none``: label-free heads).
    """
    return _Intake(opts, dataset, root, name).run()

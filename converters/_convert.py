"""``convert``: a model and data in, a multi-exit INT8 edge package out."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._errors import ConversionError, DatasetError, EdgekitError
from edgekit._package import (
    ExitSpec,
    InputSpec,
    Manifest,
    StageSpec,
    TensorSpec,
    write_manifest,
)
from edgekit._progress import say
from edgekit.data import Dataset, load_dataset
from edgekit.runtime import Quantizer
from edgekit.runtime.backends import litert, onnxruntime

from ._exits import attach_exits, head_macs, split_trained, submodel
from ._fp16 import PRECISIONS as JETSON_PRECISIONS
from ._graph import CutPoint, cut_points, model_macs, pick_cuts
from ._keras import keras
from ._models import builtin_cnn, load_model
from ._onnxin import convert_onnx, is_onnx_model
from ._output import staged_output
from ._placement import PLACEMENTS, latency_costs, measure_cuts
from ._ptq import to_int8_tflite_stage
from ._quantize import (
    QATUnsupportedError,
    boundary_range,
    qat_failure,
    qat_model,
    tflite_io_quant,
    to_float_tflite,
    to_int8_tflite,
)
from ._report import dataset_entry, exit_entries, format_table, stage_rows, write_report
from ._stem import StemChoice, apply_float_stem
from ._train import TrainConfig, evaluate_exits, train_exits
from ._validate import run_chain, run_full

__all__ = ["ConvertOptions", "ConvertResult", "convert"]

BUILTIN_EXITS = (0.12, 0.4, 0.6)
USER_EXITS = (0.25, 0.5, 0.75)
FORMATS = ("tflite", "onnx")
# coral: TFLite stages checked for the Edge TPU (edgetpu/ holds the compiler's inputs);
# jetson: ONNX stages in TensorRT's explicit-quantization form (see converters/_jetson.py).
TARGETS = ("auto", "x86", "arm", "coral", "jetson")
STEM_MODES = ("auto", "measured", "off")
STEM_SAMPLES = 256  # validation images compared between INT8 and float first conv


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``convert`` can be told. Defaults reproduce ``make demo``.

    - ``model``: path to a tf-keras model file; None builds the built-in CNN.
    - ``exits``: fractions of cumulative MACs (``0.12, 0.4``) or layer names.
    - ``train``: ``joint`` (backbone and heads), ``heads`` (frozen backbone), ``none``,
      or ``auto`` (joint for the built-in model, heads for a user model).
    - ``quant``: ``qat`` or ``ptq``; QAT falls back to PTQ, with a note, for models
      tfmot cannot wrap.
    - ``target``: ``x86`` (ONNX uint8 activations), ``arm`` (int8), or ``auto`` (this
      machine's architecture); ``coral`` adds Edge TPU-checked static stages (``edgetpu/``),
      ``jetson`` writes TensorRT-ready symmetric INT8 ONNX stages.
    - ``jetson_precision``: ``int8`` (default) or ``fp16`` (``target="jetson"`` only): FP16
      ONNX stages (float16 inside, the same int8 stage I/O; ``converters/_fp16``) for a
      TensorRT FP16 engine instead of an INT8 one.
    - ``exit_weights``: loss weight per exit (final last); default grows with depth,
      ``max(0.3, MACs fraction)``, so early exits do not crowd out the final one.
    - ``fast``: a small run for tests and smoke checks (few epochs, small subsets).
    - ``layout`` (``auto``, ``NCHW``, ``NHWC``), ``mean``, ``std`` (per channel, pixel/255
      units), ``labels`` (``auto``, ``none`` for heads distilled from the model's own
      logits, or ``both``: labelled heads, the label-free ones' accuracy in the report):
      for ``.onnx`` models only.
    - ``place_exits``: ``macs`` matches ``exits`` fractions against cumulative MACs;
      ``latency`` against the INT8 latency of each candidate cut, measured on this host
      with LiteRT (``converters/_placement``; recorded in the report's ``exit_placement``).
    - ``float_stem``: ``auto`` (default) runs the first convolution, when it reads at most
      4 channels, in float (INT8 kernels are slow on so few channels; ``converters/_stem``),
      with the same outputs checked; both forms of stage 0 are timed on this host for the
      report's ``float_stem``. ``measured`` keeps it only where that timing says it is
      faster (convert on the device itself), ``off`` keeps everything INT8. Never for
      ``coral`` (the Edge TPU compiler takes INT8 only) nor for the ``jetson`` ONNX stages
      (TensorRT builds its own kernels).
    - ``keep_work``: keep the trained model (``OUT.work/trained.keras``) after a successful
      run too; after a failed one it is always kept. Passing it back as ``model`` reuses its
      exits and weights without training again (other formats, other quantization).
    """

    model: str | None = None
    exits: tuple[float, ...] | tuple[str, ...] | None = None
    train: str = "auto"
    quant: str = "qat"
    formats: tuple[str, ...] = FORMATS
    target: str = "auto"
    epochs: int | None = None
    qat_epochs: float = 0.5
    batch_size: int = 128
    learning_rate: float = 2e-3
    distill: float = 0.5
    exit_weights: tuple[float, ...] | None = None
    width: int = 32
    calibration_size: int = 500
    name: str | None = None
    fast: bool = False
    force: bool = False
    keep_work: bool = False
    seed: int = 0
    verbose: bool = True
    # ONNX intake (``model`` ending in .onnx); see converters/_onnxin and README "From PyTorch"
    layout: str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: str = "auto"
    place_exits: str = "macs"
    float_stem: str = "auto"
    jetson_precision: str = "int8"

    def __post_init__(self) -> None:
        if self.jetson_precision not in JETSON_PRECISIONS:
            raise ValueError(
                f"jetson_precision must be 'int8' or 'fp16', not {self.jetson_precision!r}"
            )
        if self.jetson_precision != "int8" and self.target != "jetson":
            raise ValueError(
                f"jetson_precision={self.jetson_precision!r} is for target='jetson', "
                f"not {self.target!r}"
            )
        if self.place_exits not in PLACEMENTS:
            raise ValueError(
                f"place_exits must be one of {', '.join(PLACEMENTS)}, not {self.place_exits!r}"
            )
        if self.quant not in ("qat", "ptq"):
            raise ValueError(f"quant must be 'qat' or 'ptq', not {self.quant!r}")
        if self.train not in ("auto", "joint", "heads", "none"):
            raise ValueError(f"train must be auto, joint, heads or none, not {self.train!r}")
        if self.float_stem not in STEM_MODES:
            raise ValueError(
                f"float_stem must be one of {', '.join(STEM_MODES)}, not {self.float_stem!r}"
            )
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(
                f"formats must be a non-empty subset of {FORMATS}, not {self.formats!r}"
            )


@dataclass(frozen=True)
class ConvertResult:
    """The package written, and what was measured on the way."""

    path: Path
    manifest: Manifest
    report: dict[str, Any] = field(repr=False)

    def table(self) -> str:
        """The report's per-exit table as Markdown."""
        return format_table(self.report)


def convert(
    dataset: str | os.PathLike[str] | Dataset,
    out: str | os.PathLike[str],
    *,
    options: ConvertOptions | None = None,
    **kwargs: Any,
) -> ConvertResult:
    """Convert a model into a multi-exit INT8 edge package at ``out`` (``NAME.edgepkg``).

    ``kwargs`` are :class:`ConvertOptions` fields (``model=``, ``exits=``, ``quant=``...).
    The package is written to a temporary folder next to ``out`` and renamed into place
    only when complete, so an interrupted run never leaves a package that looks whole.
    """
    opts = dataclasses.replace(options or ConvertOptions(), **kwargs)
    # The destination and the name are checked here, before any training.
    with staged_output(out, force=opts.force, name=opts.name) as staged:
        opts = dataclasses.replace(opts, name=staged.name)
        if is_onnx_model(opts.model):
            if opts.place_exits != "macs":
                raise ConversionError(
                    f"place_exits={opts.place_exits!r} is for Keras models; exits of an ONNX "
                    "model are placed by MACs",
                    hint="leave --place-exits out, or give the exits by name with --exits",
                )
            if opts.jetson_precision != "int8":
                raise ConversionError(
                    "jetson_precision='fp16' is for Keras models; the ONNX intake writes "
                    "INT8 stages only",
                    hint="leave --jetson-precision out",
                )
            if opts.target in ("jetson", "coral"):
                # The intake writes asymmetric uint8/int8 QDQ stages and no Edge TPU files:
                # a package that says jetson/coral would not be what those accelerators take.
                raise ConversionError(
                    f"target={opts.target!r} is for Keras models; the ONNX intake writes "
                    "stages for onnxruntime and LiteRT on a CPU (x86 or arm)",
                    hint="use --target auto, x86 or arm for a .onnx model",
                )
            manifest, report = convert_onnx(opts, dataset, staged.tmp, staged.name)
        else:
            manifest, report = _Conversion(opts, dataset, staged.tmp, staged.out.name).run()
    return ConvertResult(Path(out), manifest, report)


def _name_from(out_name: str) -> str:
    return out_name[: -len(".edgepkg")] if out_name.endswith(".edgepkg") else out_name


def _provider_report(paths: Sequence[Path]) -> dict[str, dict[str, int]]:
    """Per stage file: how many of its nodes each ORT execution provider runs on this host."""
    from ._providers import node_providers, provider_summary

    return {p.name: provider_summary(node_providers(p)) for p in paths}


def _onnx_activation_type(target: str) -> str:
    if target == "jetson":
        return "int8"
    if target in ("auto", "coral"):
        target = "arm" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"
    return "int8" if target == "arm" else "uint8"


class _Conversion:
    """One conversion run; holds the intermediate models between the steps."""

    def __init__(self, opts: ConvertOptions, dataset: Any, root: Path, out_name: str) -> None:
        self.opts = opts
        self.dataset_spec = dataset
        self.root = root
        self.name = opts.name or _name_from(out_name)
        self.notes: list[str] = []
        self.stem: list[StemChoice] = []
        self.timing: dict[str, float] = {}
        self.step = "reading the data"
        self.missing: dict[str, str] = {}  # format -> why it is not in the package
        self.onnx_providers: dict[str, dict[str, int]] = {}  # file -> provider -> nodes (CPU)
        self.qat_fallback: str | None = None
        # How the exits were placed (by MACs, or by latency measured here: what was timed)
        self.placement: dict[str, Any] = {
            "by": "macs"
            if not opts.exits or all(isinstance(e, (int, float)) for e in opts.exits)
            else "layers"
        }
        # The trained model is saved outside the package being written, and survives a
        # failed run as OUT.work/ next to the output folder.
        self.work = root.parent / f".{out_name}.work-{os.getpid()}"
        self.kept = root.parent / f"{out_name}.work"
        self.checkpoint: Path | None = None
        self._t = time.monotonic()

    def _lap(self, what: str) -> None:
        now = time.monotonic()
        self.timing[f"{what}_seconds"] = round(now - self._t, 2)
        self._t = now

    def _say(self, msg: str) -> None:
        if self.opts.verbose:
            say(msg)

    def run(self) -> tuple[Manifest, dict[str, Any]]:
        """Run every step; a failure names its step and keeps the trained model."""
        try:
            result = self._run()
        except Exception as exc:
            kept = self._keep_checkpoint()
            shutil.rmtree(self.work, ignore_errors=True)  # what was not kept
            again = (
                f"the trained model is kept at {kept}: rerun with --model {kept} to skip training"
                if kept
                else None
            )
            if again:
                self._say(again)
            if isinstance(exc, EdgekitError):
                if again:
                    _add_hint(exc, again)
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ConversionError(
                f"{self.step} failed ({type(exc).__name__}: {first})",
                hint="; ".join(h for h in (_what_to_do(self.step), again) if h),
                step=self.step,
            ) from exc
        except BaseException:  # an interrupt (Ctrl-C, SIGTERM) leaves nothing behind
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        if self.opts.keep_work and self.checkpoint is not None:
            self._say(f"the trained model is kept at {self._keep_checkpoint()}")
        shutil.rmtree(self.work, ignore_errors=True)
        return result

    def _keep_checkpoint(self) -> Path | None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        try:
            if self.kept.exists():
                shutil.rmtree(self.kept)
            shutil.move(str(self.work), str(self.kept))
        except OSError:
            return None
        return self.kept / self.checkpoint.name

    def _save_checkpoint(self, model: Any) -> None:
        self.step = "saving the trained model"
        self.work.mkdir(exist_ok=True)
        path = self.work / "trained.keras"
        try:
            model.save(path)
        except Exception as exc:  # a custom layer Keras cannot serialise: go on without
            self.notes.append(f"the trained model could not be saved ({type(exc).__name__})")
            return
        self.checkpoint = path

    def _run(self) -> tuple[Manifest, dict[str, Any]]:
        start = time.monotonic()
        o = self.opts
        data = self._data()
        # Same seed, same initial weights and batches: a conversion can be reproduced.
        keras().utils.set_random_seed(o.seed)
        self.step = "reading the model"
        backbone, source = self._model(data)
        self.step = "placing the exits"
        resumed = split_trained(backbone)
        if resumed is not None:
            model, (backbone, cut_layers) = backbone, resumed
            cuts = pick_cuts(backbone, layers=cut_layers)
            self.placement = {"by": "reused"}
            self.notes.append(
                f"{source} is a model edgekit trained: its exits and weights are reused"
                + (", --exits is ignored" if o.exits else "")
            )
        else:
            fractions = None
            layers = None
            if o.exits:
                if all(isinstance(e, (int, float)) for e in o.exits):
                    fractions = [float(e) for e in o.exits]
                else:
                    layers = [str(e) for e in o.exits]
            else:
                fractions = list(BUILTIN_EXITS if o.model is None else USER_EXITS)
            cost = None
            if o.place_exits == "latency" and fractions is not None:
                self.placement = measure_cuts(
                    backbone, cut_points(backbone), data.x_train, say=self._say
                )
                cost = latency_costs(self.placement)
            cuts = pick_cuts(backbone, fractions=fractions, layers=layers, cost=cost)
            model = attach_exits(backbone, cuts)
            self.placement["targets"] = fractions
        self.placement["chosen"] = [c.layer for c in cuts]
        if self.placement["by"] == "latency":
            costs = latency_costs(self.placement)
            self._say(
                "exits placed by latency measured here: "
                + ", ".join(f"{c.layer} ({costs[c.layer]:.0%} of the time)" for c in cuts)
            )
        self._say(
            f"model {source}: {model_macs(backbone) / 1e6:.2f} M MACs, exits after "
            + ", ".join(f"{c.layer} ({c.fraction:.0%})" for c in cuts)
        )
        self.exit_weights = o.exit_weights or tuple(
            [round(max(0.3, c.fraction), 2) for c in cuts] + [1.0]
        )
        self.step = "training"
        training = self._train(model, data, resumed=resumed is not None)
        if training["mode"] != "none":
            self._save_checkpoint(model)
        self.step = "evaluating the float model"
        float_acc = evaluate_exits(model, data.x_test, data.y_test)
        self._say("float test accuracy per exit: " + " ".join(f"{a:.4f}" for a in float_acc))
        self._lap("float_eval")

        rng = np.random.default_rng(o.seed)
        calib = data.x_train[
            rng.choice(len(data.x_train), min(o.calibration_size, len(data.x_train)), replace=False)
        ]
        quant = o.quant
        qmodel = None
        qat_info: dict[str, Any] = {}
        n_exits = len(cuts) + 1
        self.step = "cutting the model into stages"
        stages_float = self._stage_models(model, cuts, None)
        full_float = _full_model(model, n_exits)
        stages_int8, full_int8 = stages_float, full_float
        if quant == "qat":
            self.step = "quantization-aware training"
            try:
                qmodel, qat_info = self._qat(model, data, calib)
                self.step = "cutting the QAT model into stages"
                stages_int8 = self._stage_models(qmodel, cuts, qmodel)
                full_int8 = _full_model(qmodel, n_exits)
            except Exception as exc:  # any QAT failure leaves PTQ, which needs none of it
                self._fall_back(exc, model)
                quant, qmodel, qat_info = "ptq", None, {}
                stages_int8, full_int8 = stages_float, full_float
        if qmodel is not None:
            _copy_qat_weights(qmodel, model)  # ONNX is exported from the QAT-trained weights

        exits_macs = self._exit_macs(model, backbone, cuts)
        try:
            tfl = self._tflite(stages_float, stages_int8, full_float, full_int8, calib, quant)
        except Exception as exc:
            if quant != "qat":
                raise
            self._fall_back(exc, model, "its stages could not be converted to INT8 TFLite")
            quant = "ptq"
            shutil.rmtree(self.root / "tflite", ignore_errors=True)
            tfl = self._tflite(stages_float, stages_float, full_float, full_float, calib, quant)
        onnx_act = _onnx_activation_type(o.target) if "onnx" in o.formats else None
        onnx = self._onnx(stages_float, full_float, calib, tfl, onnx_act) if onnx_act else None
        if onnx is None:
            onnx_act = None
        self.stem = self._float_stem(data, tfl, onnx)
        self.step = "validating on the test split"
        report_acc, agreement, onnx = self._validate(data, tfl, onnx, n_exits)
        if onnx is None:
            onnx_act = None
        self.step = "writing the report"
        for i, a in enumerate(float_acc):
            report_acc[i]["float"] = a

        manifest = self._manifest(data, cuts, exits_macs, tfl, onnx_act, report_acc, quant)
        targets: dict[str, Any] = {}
        if o.target == "jetson" and onnx is not None:
            from ._jetson import compare_with_default

            self.step = "comparing the Jetson ONNX stages with the default ones"
            x_q = Quantizer(InputSpec(tuple(data.input_shape)), tfl["quant"][0]["input"]).batch(
                data.x_test
            )
            fp16 = o.jetson_precision == "fp16"
            targets["jetson"] = compare_with_default(
                stages_float,
                calib,
                tfl["quant"],
                onnx["stages"],
                x_q,
                data.y_test,
                self.work,
                precision=o.jetson_precision,
                float_onnx=onnx["full_float"],
                input_quant=tfl["quant"][0]["input"],
            )
            form = (
                "fp16 (float16 weights and tensors, no Q/DQ)"
                if fp16
                else "TensorRT explicit-quantization form (symmetric int8, zero point 0)"
            )
            manifest = dataclasses.replace(
                manifest,
                targets={
                    "jetson": f"onnx stages in {form}; stage I/O bytes on the TFLite parameters",
                    "jetson_precision": o.jetson_precision,
                },
            )
            if fp16:
                self.notes.append(
                    "the ONNX stages are the Jetson FP16 ones (float16 inside, int8 stage I/O): "
                    "the ONNX INT8 accuracy columns are theirs"
                )
            self._say("Jetson: " + targets["jetson"]["lines"][1])
        if o.target == "coral":
            from ._edgetpu import prepare_coral

            self.step = "checking the stages against the Edge TPU's constraints"
            targets["coral"], note = prepare_coral(self.root, len(manifest.stages))
            manifest = dataclasses.replace(manifest, targets={"coral": note})
            self._say("Edge TPU check: " + targets["coral"]["summary"])
        sizes = self._sizes(tfl, onnx)
        if sizes.get("tflite", {}).get("float"):
            ratio = sizes["tflite"]["int8"] / sizes["tflite"]["float"]
            self._say(f"INT8 TFLite stages are {ratio:.1%} of the float TFLite bytes")
        total = time.monotonic() - start
        report = {
            "name": self.name,
            "dataset": dataset_entry(data),
            "model": {
                "source": source,
                "macs": exits_macs[-1],
                "backbone_macs": model_macs(backbone),
            },
            "quantization": quant,
            "qat_fallback": self.qat_fallback,
            "formats": {
                "requested": list(o.formats),
                "written": ["tflite", *(["onnx"] if onnx_act else [])],
                "missing": dict(self.missing),
            },
            "onnx_activation_type": onnx_act,
            "onnx_providers": self.onnx_providers,
            "exits": exit_entries(manifest, report_acc),
            "exit_placement": self.placement,
            "float_stem": [c.as_dict() for c in self.stem],
            "agreement": agreement,
            "targets": targets,
            "sizes": sizes,
            "stages": stage_rows(self.root, manifest),
            "training": training,
            "qat": qat_info,
            "timing": {**self.timing, "total_seconds": round(total, 1)},
            "notes": self.notes,
            "tools": manifest.tools,
        }
        write_report(self.root, report)
        manifest = write_manifest(self.root, manifest)
        self._say(f"done in {total:.0f} s")
        return manifest, report

    # -- steps ------------------------------------------------------------------------

    def _data(self) -> Dataset:
        o = self.opts
        spec = self.dataset_spec
        data = spec if isinstance(spec, Dataset) else load_dataset(spec, seed=o.seed)
        if o.fast:
            data = data.limit(min(len(data.x_train), 4000), min(len(data.x_test), 2000))
        self._say(f"data: {data.describe()}")
        for note in data.notes:
            self.notes.append(note)
            self._say(note)
        self._lap("data")
        return data

    def _model(self, data: Dataset) -> tuple[Any, str]:
        o = self.opts
        if o.model is None:
            model = builtin_cnn(data.input_shape, data.num_classes, width=o.width)
            source = f"built-in CNN (width {o.width})"
        else:
            model = load_model(o.model)
            source = str(o.model)
        want = tuple(int(d) for d in model.inputs[0].shape[1:])
        if want != tuple(data.input_shape):
            raise DatasetError(
                f"the model takes images of shape {want} but the dataset has "
                f"{tuple(data.input_shape)}",
                hint="resize the images (image folders: image_size=...) or pick a model "
                "built for this input",
                expected=want,
                got=tuple(data.input_shape),
            )
        n_out = int(model.outputs[0].shape[-1])
        if n_out != data.num_classes:
            raise DatasetError(
                f"the model has {n_out} output classes but the dataset has {data.num_classes}",
                hint="rebuild the classifier layer for this dataset",
                expected=n_out,
                got=data.num_classes,
            )
        return model, source

    def _train(self, model: Any, data: Dataset, *, resumed: bool = False) -> dict[str, Any]:
        o = self.opts
        auto = "none" if resumed else ("joint" if o.model is None else "heads")
        mode = o.train if o.train != "auto" else auto
        if mode == "none":
            if not resumed:
                self.notes.append("no training: exits are untrained")
            return {"mode": "none"}
        epochs = o.epochs if o.epochs is not None else _default_epochs(len(data.x_train), o)
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=o.batch_size,
            learning_rate=o.learning_rate,
            distill=o.distill,
            exit_weights=self.exit_weights,
            heads_only=mode == "heads",
            seed=o.seed,
        )
        self._say(f"training ({mode}, up to {epochs} epochs, early stopping on validation loss)")
        res = train_exits(
            model,
            data.x_train,
            data.y_train,
            data.x_val,
            data.y_val,
            cfg,
            label="train",
            verbose=o.verbose,
        )
        self._lap("train")
        return {
            "mode": mode,
            "exit_weights": list(self.exit_weights),
            "epochs_run": res.epochs_run,
            "best_epoch": res.best_epoch,
            "seconds": round(res.seconds, 1),
            "history": res.history,
        }

    def _qat(self, model: Any, data: Dataset, calib: np.ndarray) -> tuple[Any, dict[str, Any]]:
        o = self.opts
        qmodel = qat_model(model, calib)
        epochs = o.qat_epochs if not o.fast else min(o.qat_epochs, 1.0)
        n = min(len(data.x_train), max(o.batch_size, int(len(data.x_train) * min(epochs, 1.0))))
        whole = max(1, int(np.ceil(epochs)))
        cfg = TrainConfig(
            epochs=whole,
            batch_size=o.batch_size,
            learning_rate=1e-4,
            min_learning_rate_factor=0.1,
            distill=o.distill,
            exit_weights=self.exit_weights,
            patience=whole + 1,
            seed=o.seed + 1,
        )
        self._say(f"quantization-aware fine-tuning ({whole} epoch(s) on {n} images)")
        res = train_exits(
            qmodel,
            data.x_train[:n],
            data.y_train[:n],
            data.x_val,
            data.y_val,
            cfg,
            label="qat",
            verbose=o.verbose,
        )
        self._lap("qat")
        return qmodel, {
            "epochs_run": res.epochs_run,
            "images": n,
            "seconds": round(res.seconds, 1),
            "history": res.history,
        }

    def _fall_back(self, exc: BaseException, model: Any, what: str = "failed") -> None:
        err = exc if isinstance(exc, QATUnsupportedError) else qat_failure(what, exc, model)
        self.qat_fallback = err.message
        msg = f"QAT not possible, fell back to PTQ: {err.message}"
        self.notes.append(msg)
        self._say(msg + (f" ({err.hint})" if err.hint else ""))

    def _stage_models(self, model: Any, cuts: Sequence[CutPoint], qmodel: Any) -> list[Any]:
        prefix = "quant_" if qmodel is not None else ""
        outs = [t._keras_history.layer.name for t in model.outputs]
        starts: list[str | None] = [None, *(prefix + c.layer for c in cuts)]
        stages = []
        for k, start in enumerate(starts):
            last = k == len(cuts)
            ends = [outs[k]] if last else [prefix + cuts[k].layer, outs[k]]
            names = ["ek_logits"] if last else ["ek_features", "ek_logits"]
            rng = None
            if qmodel is not None and start is not None:
                rng = boundary_range(qmodel, cuts[k - 1].layer)
            stages.append(
                submodel(model, start, ends, names=names, input_range=rng, name=f"stage_{k}")
            )
        return stages

    def _exit_macs(self, model: Any, backbone: Any, cuts: Sequence[CutPoint]) -> list[int]:
        heads = [head_macs(model, i) for i in range(len(cuts))]
        ends = [c.macs for c in cuts] + [model_macs(backbone)]
        return [ends[i] + sum(heads[: i + 1]) for i in range(len(ends))]

    def _tflite(
        self,
        stages_float: list[Any],
        stages_int8: list[Any],
        full_float: Any,
        full_int8: Any,
        calib: np.ndarray,
        quant: str,
    ) -> dict[str, Any]:
        self._say(f"converting {len(stages_int8)} stages to INT8 TFLite ({quant})")
        d = self.root / "tflite"
        d.mkdir()
        files: list[bytes] = []
        feats = calib
        for k, (sf, si) in enumerate(zip(stages_float, stages_int8)):
            self.step = f"INT8 TFLite conversion ({quant}) of stage {k}"
            prev = tflite_io_quant(files[-1])["ek_features"] if quant == "ptq" and k else None
            fb = to_int8_tflite_stage(si, feats if quant == "ptq" else None, prev)
            files.append(fb)
            (d / f"stage_{k}.tflite").write_bytes(fb)
            if k < len(stages_float) - 1:
                feats = np.asarray(sf.predict(feats, verbose=0, batch_size=256)[0])
        self.step = f"INT8 TFLite conversion ({quant}) of the unsplit model"
        full = to_int8_tflite(full_int8, calib if quant == "ptq" else None)
        (d / "full.tflite").write_bytes(full)
        full_f = to_float_tflite(full_float)
        (d / "full_float.tflite").write_bytes(full_f)
        quants = [tflite_io_quant(fb) for fb in files]
        for k in range(1, len(quants)):
            a, b = quants[k - 1]["ek_features"], quants[k]["input"]
            if not (np.isclose(a.scale, b.scale, rtol=1e-6) and a.zero_point == b.zero_point):
                raise ConversionError(
                    f"stage {k - 1} writes features with scale/zero point {a.scale:.6g}/"
                    f"{a.zero_point} but stage {k} reads {b.scale:.6g}/{b.zero_point}",
                    hint="this breaks the stage contract; report it with the model",
                )
        self._lap("tflite")
        return {
            "stages": files,
            "full": full,
            "full_float": full_f,
            "quant": quants,
            "full_quant": tflite_io_quant(full),
        }

    def _onnx(
        self,
        stages_float: list[Any],
        full_float: Any,
        calib: np.ndarray,
        tfl: dict[str, Any],
        act: str,
    ) -> dict[str, Any] | None:
        """The ONNX files, or None (with the reason in ``missing``) if a stage fails."""
        from ._onnx import export_float_onnx, export_int8_onnx

        export: Callable[..., Any] = export_int8_onnx
        if self.opts.target == "jetson":  # TensorRT's form: symmetric int8, zero point 0
            from ._jetson import export_jetson_onnx

            export = functools.partial(_drop_activation_type, export_jetson_onnx)
        if self.opts.target == "jetson" and self.opts.jetson_precision == "fp16":
            from ._fp16 import export_jetson_fp16_onnx

            export = functools.partial(_drop_activation_type, export_jetson_fp16_onnx)
            self._say(f"exporting {len(stages_float)} stages to ONNX FP16 (int8 stage I/O)")
        else:
            self._say(f"exporting {len(stages_float)} stages to ONNX QDQ INT8 ({act} activations)")
        d = self.root / "onnx"
        d.mkdir()
        feats = calib
        paths = []
        try:
            for k, sf in enumerate(stages_float):
                self.step = f"ONNX export of stage {k}"
                p = d / f"stage_{k}.onnx"
                export(sf, p, feats, io_quant=tfl["quant"][k], activation_type=act)
                _open_onnx(p)
                paths.append(p)
                if k < len(stages_float) - 1:
                    feats = np.asarray(sf.predict(feats, verbose=0, batch_size=256)[0])
            self.step = "ONNX export of the unsplit model"
            full = d / "full.onnx"
            export(full_float, full, calib, io_quant=tfl["full_quant"], activation_type=act)
            _open_onnx(full)
            full_f = d / "full_float.onnx"
            export_float_onnx(full_float, full_f)
        except Exception as exc:
            self._drop_onnx(exc)
            return None
        self._lap("onnx")
        try:
            self.onnx_providers = _provider_report(paths)
            self._say(f"ONNX Runtime providers per node here: {self.onnx_providers}")
        except ConversionError as exc:  # a report, never a reason to lose the package
            self.notes.append(f"no per-node provider report: {exc.message}")
        return {"stages": paths, "full": full, "full_float": full_f, "act": act}

    def _float_stem(
        self, data: Dataset, tfl: dict[str, Any], onnx: dict[str, Any] | None
    ) -> list[StemChoice]:
        """Stage 0 and the unsplit model with a float first conv where that is faster."""
        mode, target = self.opts.float_stem, self.opts.target
        if mode == "off":
            return []
        x_q = Quantizer(InputSpec(tuple(data.input_shape)), tfl["quant"][0]["input"]).batch(
            data.x_val[:STEM_SAMPLES]
        )
        d = self.root / "tflite"
        jobs: list[tuple[str, Path, Path, np.ndarray]] = []
        if target != "coral":
            jobs.append(("tflite", d / "stage_0.tflite", d / "full.tflite", x_q))
        if onnx is not None and target != "jetson":
            xo = x_q.view(np.uint8) ^ np.uint8(0x80) if onnx["act"] == "uint8" else x_q
            jobs.append(("onnx", onnx["stages"][0], onnx["full"], xo))
        out = []
        for fmt, stage0, full, samples in jobs:
            self.step = f"timing a float first conv in {fmt} stage 0"
            choice = apply_float_stem(fmt, stage0, full, samples, mode=mode)
            if choice is None:
                continue
            self._say(f"first conv ({choice.layer}), {fmt}: {choice.reason}")
            if choice.used and fmt == "tflite":
                tfl["stages"][0] = stage0.read_bytes()
                tfl["full"] = full.read_bytes()
            out.append(choice)
        return out

    def _drop_onnx(self, exc: BaseException) -> None:
        """Finish the package without ONNX, saying which step failed and why."""
        text = exc.message if isinstance(exc, EdgekitError) else str(exc)
        first = (text.strip().splitlines() or [""])[0][:300]
        why = f"{self.step} failed ({type(exc).__name__}: {first})"
        self.missing["onnx"] = why
        shutil.rmtree(self.root / "onnx", ignore_errors=True)
        msg = (
            f"ONNX is left out of the package: {why}. The TFLite stages are complete; "
            "--formats tflite skips ONNX next time"
        )
        self.notes.append(msg)
        self._say(msg)

    def _validate(
        self, data: Dataset, tfl: dict[str, Any], onnx: dict[str, Any] | None, n_exits: int
    ) -> tuple[list[dict[str, float]], dict[str, Any], dict[str, Any] | None]:
        self._say(f"validating on {len(data.x_test)} test images")
        y = data.y_test
        x_q = Quantizer(InputSpec(tuple(data.input_shape)), tfl["quant"][0]["input"]).batch(
            data.x_test
        )
        tdir = self.root / "tflite"
        chain = run_chain(litert, [tdir / f"stage_{k}.tflite" for k in range(n_exits)], x_q)
        full = run_full(litert, tdir / "full.tflite", x_q, n_exits)
        acc: list[dict[str, float]] = [
            {
                "tflite_int8": float((c.argmax(1) == y).mean()),
                "tflite_int8_unsplit": float((f.argmax(1) == y).mean()),
            }
            for c, f in zip(chain, full)
        ]
        agree: dict[str, Any] = {
            "tflite_chain_vs_unsplit": float((chain[-1].argmax(1) == full[-1].argmax(1)).mean()),
            "tflite_chain_vs_unsplit_per_exit": [
                float((c.argmax(1) == f.argmax(1)).mean()) for c, f in zip(chain, full)
            ],
        }
        if onnx is not None:
            xo = x_q.view(np.uint8) ^ np.uint8(0x80) if onnx["act"] == "uint8" else x_q
            try:
                self.step = "running the ONNX stages in onnxruntime"
                ochain = run_chain(onnxruntime, onnx["stages"], xo)
                ofull = run_full(onnxruntime, onnx["full"], xo, n_exits)
            except Exception as exc:
                self._drop_onnx(exc)
                self._lap("validate")
                return acc, agree, None
            for i, (c, f) in enumerate(zip(ochain, ofull)):
                acc[i]["onnx_int8"] = float((c.argmax(1) == y).mean())
                acc[i]["onnx_int8_unsplit"] = float((f.argmax(1) == y).mean())
            agree["onnx_chain_vs_unsplit"] = float(
                (ochain[-1].argmax(1) == ofull[-1].argmax(1)).mean()
            )
            agree["tflite_vs_onnx"] = float((chain[-1].argmax(1) == ochain[-1].argmax(1)).mean())
            agree["tflite_vs_onnx_per_exit"] = [
                float((c.argmax(1) == o.argmax(1)).mean()) for c, o in zip(chain, ochain)
            ]
        self._lap("validate")
        return acc, agree, onnx

    def _sizes(self, tfl: dict[str, Any], onnx: dict[str, Any] | None) -> dict[str, Any]:
        sizes: dict[str, Any] = {
            "tflite": {
                "float": len(tfl["full_float"]),
                "int8": sum(len(b) for b in tfl["stages"]),
                "int8_unsplit": len(tfl["full"]),
            }
        }
        if onnx is not None:
            sizes["onnx"] = {
                "float": onnx["full_float"].stat().st_size,
                "int8": sum(p.stat().st_size for p in onnx["stages"]),
                "int8_unsplit": onnx["full"].stat().st_size,
            }
        return sizes

    def _manifest(
        self,
        data: Dataset,
        cuts: Sequence[CutPoint],
        exits_macs: list[int],
        tfl: dict[str, Any],
        onnx_act: str | None,
        acc: list[dict[str, float]],
        quant: str,
    ) -> Manifest:
        total = exits_macs[-1]
        stages = []
        for k, q in enumerate(tfl["quant"]):
            files = {"tflite": f"tflite/stage_{k}.tflite"}
            if onnx_act:
                files["onnx"] = f"onnx/stage_{k}.onnx"
            prev = data.input_shape if k == 0 else cuts[k - 1].shape
            feats = None
            if "ek_features" in q:
                feats = TensorSpec("ek_features", (-1, *cuts[k].shape), "int8", q["ek_features"])
            stages.append(
                StageSpec(
                    index=k,
                    files=files,
                    input=TensorSpec("input", (-1, *prev), "int8", q["input"]),
                    logits=TensorSpec("ek_logits", (-1, data.num_classes), "int8", q["ek_logits"]),
                    features=feats,
                    macs=exits_macs[k] - (exits_macs[k - 1] if k else 0),
                )
            )
        layers = [c.layer for c in cuts] + ["final"]
        exits = [
            ExitSpec(
                index=i,
                stage=i,
                layer=layers[i],
                macs=m,
                macs_fraction=m / total,
                accuracy={
                    k: v for k, v in acc[i].items() if k in ("float", "tflite_int8", "onnx_int8")
                },
            )
            for i, m in enumerate(exits_macs)
        ]
        full = {"tflite": "tflite/full.tflite", "tflite_float": "tflite/full_float.tflite"}
        if onnx_act:
            full.update(onnx="onnx/full.onnx", onnx_float="onnx/full_float.onnx")
        return Manifest(
            name=self.name,
            labels=data.labels,
            input=InputSpec(tuple(data.input_shape)),
            stages=tuple(stages),
            exits=tuple(exits),
            full=full,
            quantization=quant,
            onnx_activation_type=onnx_act,
            tools=_tool_versions(),
        )


def _what_to_do(step: str) -> str:
    if "ONNX" in step:
        return "--formats tflite writes the package without ONNX"
    if "TFLite" in step or "QAT" in step or "quantization" in step:
        return "try --quant ptq; if that fails too, report it with the model"
    return "report it with the model and the command line"


def _add_hint(exc: EdgekitError, more: str) -> None:
    exc.hint = f"{exc.hint}; {more}" if exc.hint else more
    exc.args = (f"{exc.message}\n  hint: {exc.hint}",)


def _drop_activation_type(fn: Callable[..., Any], *a: Any, activation_type: str, **kw: Any) -> Any:
    del activation_type  # the Jetson export is int8 by definition
    return fn(*a, **kw)


def _open_onnx(path: Path) -> None:
    """Open an ONNX stage the way a device does, so a file onnxruntime refuses is caught here."""
    onnxruntime.open_stage(path, 1)


def _default_epochs(n_train: int, o: ConvertOptions) -> int:
    """6 epochs (3 with ``fast``), more on small datasets so training gets enough steps."""
    steps_per_epoch = max(1, n_train // o.batch_size)
    base, min_steps = (3, 300) if o.fast else (6, 800)
    return max(base, min(60, -(-min_steps // steps_per_epoch)))


def _full_model(model: Any, n_exits: int) -> Any:
    outs = [t._keras_history.layer.name for t in model.outputs]
    return submodel(model, None, outs, names=[f"exit_{i}" for i in range(n_exits)], name="full")


def _copy_qat_weights(qmodel: Any, model: Any) -> None:
    """Give the float model the QAT-trained weights (the wrappers keep the inner names)."""
    trained = {w.name: w for w in qmodel.weights}
    for w in model.weights:
        src = trained.get(w.name)
        if src is not None and tuple(src.shape) == tuple(w.shape):
            w.assign(src)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "edgekit",
        "tensorflow-cpu",
        "tf-keras",
        "tensorflow-model-optimization",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "ai-edge-litert",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out

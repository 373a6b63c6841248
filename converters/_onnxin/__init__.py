"""ONNX intake: a ``.onnx`` classifier (as ``torch.onnx.export`` writes it) in, an ordinary
multi-exit INT8 edge package out (ONNX QDQ stages; see DESIGN.md, "ONNX intake")."""

from ._graph import OnnxCut, valid_cuts
from ._intake import convert_onnx, is_onnx_model
from ._load import OnnxSource, load_onnx

__all__ = ["OnnxCut", "OnnxSource", "convert_onnx", "is_onnx_model", "load_onnx", "valid_cuts"]

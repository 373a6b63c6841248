"""edgekit.converters: Keras models in, multi-exit INT8 edge packages (TFLite, ONNX) out.

Needs the ``convert`` extra (TensorFlow, tf-keras, tfmot, tf2onnx, onnxruntime).
"""

from edgekit._errors import QATUnsupportedError
from edgekit._public import publish

from ._convert import ConvertOptions, ConvertResult, convert
from ._edgetpu import EdgeTPUCheck, OpCheck, check_edgetpu, ensure_compiled

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "EdgeTPUCheck",
    "OpCheck",
    "QATUnsupportedError",
    "check_edgetpu",
    "convert",
    "ensure_compiled",
]

publish(globals())

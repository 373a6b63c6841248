"""edgekit.converters: Keras models in, multi-exit INT8 edge packages (TFLite, ONNX) out.

Needs the ``convert`` extra (TensorFlow, tf-keras, tfmot, tf2onnx, onnxruntime).
"""

from ._convert import ConvertOptions, ConvertResult, convert

__all__ = ["ConvertOptions", "ConvertResult", "convert"]

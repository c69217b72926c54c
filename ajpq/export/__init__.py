"""Floor 3, export: the compressed model file (pruned channels removed, weights bit-packed per
channel) and its ONNX form for deployment runtimes. Plain PyTorch on top of :mod:`ajpq.core` and
:mod:`ajpq.task` (the zoo rebuilds a network's skeleton)."""

from ajpq.export.onnx import OnnxForm, check_onnx, export_onnx, with_plain_quantizers
from ajpq.export.packed import FORMAT, ExportReport, export_compressed, load_compressed
from ajpq.export.qdq import export_qdq, integer_ops

__all__ = [
    "FORMAT",
    "ExportReport",
    "OnnxForm",
    "check_onnx",
    "export_compressed",
    "export_onnx",
    "export_qdq",
    "integer_ops",
    "load_compressed",
    "with_plain_quantizers",
]

"""ONNX for deployment tools: the materialized (pruned, BatchNorm-folded) network.

Weights are stored dequantized (fp32 values on each channel's integer grid); a calibrated
activation quantizer becomes Mul, Round, Clip, Mul, the same arithmetic the PyTorch model does.
:func:`check_onnx` runs the file with onnxruntime and returns the largest output difference.
"""

from __future__ import annotations

import copy
import enum
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq.core.materialize import QuantizedInput
from ajpq.core.quantize import FLOAT_BITS, activation_grid

__all__ = ["export_onnx", "check_onnx", "with_plain_quantizers", "OnnxForm", "OPSET"]

logger = logging.getLogger(__name__)

OPSET = 17


class OnnxForm(str, enum.Enum):
    """The ONNX files ajpq writes of a compressed network."""

    # QDQ: int8 weights and activations, integer kernels in onnxruntime (ajpq.export.qdq)
    INTEGER = "integer"
    FLOAT = "float"  # dequantized fp32 weights, activation grids as Mul/Round/Clip (this module)
    # integer, every activation int8 at zero point 0: the form TensorRT takes
    TENSORRT = "tensorrt"


class _Grid(nn.Module):
    """clamp(round(x / scale), low, high) * scale with plain ops (exports as Mul/Round/Clip)."""

    def __init__(self, scale: float, low: int, high: int) -> None:
        super().__init__()
        self.inverse = 1.0 / scale
        self.scale = scale
        self.low, self.high = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x * self.inverse), self.low, self.high) * self.scale


def with_plain_quantizers(model: nn.Module) -> nn.Module:
    """A copy of a materialized network whose calibrated activation quantizers are plain ops
    with their ranges as constants (what ONNX and ``torch.export`` can capture)."""
    plain = copy.deepcopy(model).cpu().eval()
    for module in plain.modules():
        if not isinstance(module, QuantizedInput) or module.act.bits >= FLOAT_BITS:
            continue
        act = module.act
        if not bool(act.calibrated):
            raise ValueError(
                "an activation quantizer was never calibrated; export a finetuned or calibrated "
                "model (run a few batches in train mode first)"
            )
        module.act = _Grid(*activation_grid(act.bits, act.max_abs, bool(act.signed)))
    return plain


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = OPSET
) -> Path:
    """Write ``model`` (a materialized or loaded compressed network) as ONNX with a dynamic
    batch dimension; input ``input`` of shape (N, *input_shape), output ``logits``. A failed
    export leaves no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    example = torch.zeros((1, *input_shape))
    try:
        torch.onnx.export(
            with_plain_quantizers(model),
            (example,),
            str(partial),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("ONNX model: %s (%d bytes, opset %d)", path, path.stat().st_size, opset)
    return path


def check_onnx(path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |onnxruntime output - ``model`` output| on ``inputs`` (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.detach().cpu().float().numpy()})[0]
    with torch.no_grad():
        expected = model.cpu().eval()(inputs.cpu().float()).numpy()
    return float(np.abs(got - expected).max())

"""Requantize the outputs that no quantizer follows, so every integer layer fuses.

onnxruntime runs a Conv/Gemm as an integer kernel (QLinearConv, QGemm) only when its output goes
to a QuantizeLinear (directly, or through the ReLU or clip that the quantizer's range absorbs).
The search's simulation quantizes each layer's *input*; a layer whose output feeds a residual
``Add``, a pooling with several consumers or the logits has no such quantizer, so it would run
in float with its weights dequantized on every call. This pass puts an 8-bit
``QuantizeLinear -> DequantizeLinear`` on those outputs, over the range they take on
calibration inputs (uint8, at zero point 128 where they go negative): the rounding an integer
deployment makes there anyway, one 8-bit step of that tensor.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["requantize_outputs", "unfused_outputs"]

logger = logging.getLogger(__name__)

_ABSORBED = ("Relu", "Clip")  # onnxruntime folds these between a layer and its quantizer


def unfused_outputs(proto: onnx.ModelProto) -> list[str]:
    """The outputs of integer-weight Conv/Gemm nodes (weights from a DequantizeLinear) that
    no QuantizeLinear follows, graph outputs excluded."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    produced_by = {out: node for node in proto.graph.node for out in node.output}
    outputs = {o.name for o in proto.graph.output}

    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def absorbs(clip: onnx.NodeProto, quantizer: onnx.NodeProto) -> bool:
        """A ReLU always (the quantizer's zero point is its floor); a clip when the quantizer's
        whole range lies within its bounds."""
        if clip.op_type == "Relu":
            return True
        bounds = [constants.get(name) for name in clip.input[1:3]]
        scale = constants.get(quantizer.input[1])
        zero = constants.get(quantizer.input[2]) if len(quantizer.input) > 2 else None
        if any(b is None for b in bounds) or len(bounds) < 2 or scale is None or zero is None:
            return False
        info = np.iinfo(zero.dtype)
        low = (info.min - int(zero)) * float(scale)
        high = (info.max - int(zero)) * float(scale)
        return float(bounds[0]) <= low and high <= float(bounds[1])

    def quantized(name: str) -> bool:
        users = consumers.get(name, [])
        if not users or name in outputs:
            return False
        if all(u.op_type == "QuantizeLinear" for u in users):
            return True
        if len(users) != 1 or users[0].op_type not in _ABSORBED:
            return False
        after = consumers.get(users[0].output[0], [])
        return (
            bool(after)
            and users[0].output[0] not in outputs
            and all(u.op_type == "QuantizeLinear" and absorbs(users[0], u) for u in after)
        )

    found = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        weight = produced_by.get(node.input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        if node.output[0] not in outputs and not quantized(node.output[0]):
            found.append(node.output[0])
    return found


def requantize_outputs(
    proto: onnx.ModelProto, calibration: np.ndarray, symmetric: bool = False
) -> int:
    """Quantize each :func:`unfused_outputs` tensor to 8 bits over its range on
    ``calibration`` (a batch of inputs for the graph's one input), in place; how many.
    ``symmetric``: int8 at zero point 0 (TensorRT's form), else uint8."""
    import onnxruntime

    names = unfused_outputs(proto)
    if not names:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {proto.graph.input[0].name: calibration.astype(np.float32)}
    values = session.run(names, feed)
    for name, value in zip(names, values):
        _insert(proto, name, float(value.min()), float(value.max()), symmetric)
    logger.debug("requantized %d layer outputs to 8 bits (integer kernels for them)", len(names))
    return len(names)


def _insert(
    proto: onnx.ModelProto, name: str, low: float, high: float, symmetric: bool = False
) -> None:
    """Route ``name``'s consumers through an 8-bit Q -> DQ over [low, high]: uint8 throughout
    (see ajpq.export.qdq._Container), signed at zero point 128; ``symmetric``: int8 at 0."""
    signed = low < 0
    levels = 127.0 if signed or symmetric else 255.0
    scale = max(max(abs(low), abs(high)) / levels, 1e-8)
    if symmetric:
        zero = np.array(0, dtype=np.int8)
    else:
        zero = np.array(128 if signed else 0, dtype=np.uint8)
    tag = f"{name}_requantized"
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{tag}_scale"),
            numpy_helper.from_array(zero, f"{tag}_zero_point"),
        ]
    )
    for node in proto.graph.node:
        for index, value in enumerate(node.input):
            if value == name:
                node.input[index] = f"{tag}_dq"
    position = next(i for i, n in enumerate(proto.graph.node) if name in n.output) + 1
    pair = [
        helper.make_node(
            "QuantizeLinear", [name, f"{tag}_scale", f"{tag}_zero_point"], [f"{tag}_q"]
        ),
        helper.make_node(
            "DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zero_point"], [f"{tag}_dq"]
        ),
    ]
    for offset, node in enumerate(pair):
        proto.graph.node.insert(position + offset, node)

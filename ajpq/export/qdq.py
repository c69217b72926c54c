"""Integer ONNX in QDQ form: what onnxruntime, TensorRT and OpenVINO turn into integer kernels.

The pruned, BatchNorm-folded network (:func:`ajpq.core.materialize.materialize_with_scales`)
is written with

- weights of each layer with a quantized input as int8 codes with one scale per output channel
  (``DequantizeLinear``, axis 0; a layer with a float input keeps float weights): a
  channel at b <= 8 bits keeps its own b-bit codes and scale (the packed file's, exactly); a
  binary channel its signs x its magnitude; a float channel in an otherwise quantized layer is
  quantized to 8 bits (the only approximation: such layers are rare);
- each quantized activation as ``QuantizeLinear`` -> ``DequantizeLinear`` on its calibrated grid,
  uint8 (zero point 0 after a ReLU, 128 for a signed grid): a grid of fewer than 8 bits lies inside
  the 8-bit container, so it is exact up to the calibrated range and saturates at the
  container's end beyond it;
- the bias of a layer with a quantized input as int32 at scale (input scale x weight scale), the
  form integer kernels take.

:func:`integer_ops` lists the integer operators of onnxruntime's optimized graph (what the CPU
provider actually runs).
"""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ajpq.core.graph import ModelGraph
from ajpq.core.materialize import QuantizedInput, materialize_with_scales
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS, activation_grid
from ajpq.export.requantize import requantize_outputs

__all__ = ["export_qdq", "integer_ops", "INTEGER_OPS", "IntegerLayer", "qdq_network"]

logger = logging.getLogger(__name__)

OPSET = 17
SYMMETRIC_MAX = 127  # the largest code of an int8 activation at zero point 0 (TensorRT's form)
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "MatMulInteger",
        "QLinearMatMul",
        "QGemm",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearAdd",
    }
)


class _Container(nn.Module):
    """An activation grid in an 8-bit container: exports as QuantizeLinear/DequantizeLinear.

    onnxruntime's form: always uint8, a signed grid at zero point 128 (the same values as int8
    at 0): its integer convolutions take and give one type, so a layer between an unsigned and a
    signed tensor would otherwise stay in float. ``symmetric`` (TensorRT's form, which takes
    int8 at zero point 0 only): int8 at 0 throughout; exact for signed grids and unsigned grids
    of up to 7 bits, an 8-bit unsigned grid becomes 7 bits over the same range."""

    def __init__(self, scale: float, signed: bool, symmetric: bool = False) -> None:
        super().__init__()
        self.scale = scale
        if symmetric:
            self.zero_point, self.low, self.high = 0, -128, 127
        else:
            self.zero_point, self.low, self.high = (128 if signed else 0), 0, 255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.low, self.high
        )


@dataclass(frozen=True)
class IntegerLayer:
    """One layer's integers in the file: int8 weight codes and per-channel scales, and (when its
    input is quantized) int32 bias codes at scale input scale x weight scale."""

    codes: np.ndarray
    scales: np.ndarray
    bias_codes: np.ndarray | None = None
    bias_scales: np.ndarray | None = None


def qdq_network(
    model: nn.Module,
    policy: CompressionPolicy,
    graph: ModelGraph | None = None,
    symmetric: bool = False,
) -> tuple[nn.Module, dict[str, IntegerLayer]]:
    """The network the QDQ file holds, in torch: the materialized network with 8-bit activation
    containers (``symmetric``: TensorRT's int8 at zero point 0, see :class:`_Container`) and
    each integer bias at its int32 value; and per weight (its state-dict name) the layer's
    integers."""
    plain, scales = materialize_with_scales(model, policy, graph)
    plain = copy.deepcopy(plain).cpu().eval()
    layers: dict[str, IntegerLayer] = {}
    for layer_policy in policy.layers:
        bits = np.asarray(layer_policy.weight_bits)
        module = plain.get_submodule(layer_policy.name)
        input_scale = None
        if isinstance(module, QuantizedInput):
            input_scale = _contain(module, symmetric)
            module = module.layer
        if (bits >= FLOAT_BITS).all() or input_scale is None:
            # a float input runs a float kernel: dequantizing int8 codes on every call would
            # only slow it, so such a layer keeps its (grid-valued) weights in float
            continue
        channel_scales = scales[layer_policy.name].detach().cpu().double().numpy()[bits > 0]
        codes, weight_scales = _codes(
            module.weight.detach().cpu().double().numpy(), bits[bits > 0], channel_scales
        )
        layer = IntegerLayer(codes, weight_scales)
        if module.bias is not None:
            bias_scales = (np.float32(input_scale) * weight_scales).astype(np.float32)
            bias = module.bias.detach().cpu().double().numpy()
            bias_codes = np.clip(np.round(bias / bias_scales), -(2**31), 2**31 - 1)
            layer = IntegerLayer(codes, weight_scales, bias_codes.astype(np.int32), bias_scales)
            with torch.no_grad():  # what DequantizeLinear makes of it, in float32
                module.bias.copy_(
                    torch.from_numpy(layer.bias_codes.astype(np.float32) * bias_scales)
                )
        layers[f"{layer_policy.name}.layer.weight"] = layer  # the QuantizedInput's layer
    return plain, layers


def _contain(module: QuantizedInput, symmetric: bool = False) -> float | None:
    """Put a quantized input's activation grid in its 8-bit container; its scale (None: float)."""
    act = module.act
    if act.bits >= FLOAT_BITS:
        return None
    if not bool(act.calibrated):
        raise ValueError(
            "an activation quantizer was never calibrated; export a finetuned or calibrated "
            "model (ajpq export does)"
        )
    scale, low, high = activation_grid(act.bits, act.max_abs, bool(act.signed))
    if symmetric and high > SYMMETRIC_MAX:  # an 8-bit unsigned grid: 7 bits in int8
        scale = scale * high / SYMMETRIC_MAX
    module.act = _Container(scale, low < 0, symmetric)
    return scale


def _codes(
    weight: np.ndarray, bits: np.ndarray, scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and float32 scales per output channel of a materialized weight."""
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[0] != bits.size:
        raise ValueError(
            f"a layer has {rows.shape[0]} output channels but its policy keeps {bits.size}"
        )
    scales = scales.copy()
    floats = bits >= FLOAT_BITS
    scales[floats] = np.abs(rows[floats]).max(axis=1, initial=0.0) / 127.0
    binary = bits == 1
    scales[binary] = np.abs(rows[binary]).max(axis=1, initial=0.0)
    scales = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.round(rows / scales[:, None]), -127, 127)
    error = np.abs(codes * scales[:, None] - rows)[~floats].max(initial=0.0)
    if error > 1e-4 * max(np.abs(rows).max(initial=0.0), 1e-12):
        raise ValueError(f"a layer's weights are not on their grid (largest error {error:.3g})")
    return codes.astype(np.int8).reshape(weight.shape), scales.astype(np.float32)


def export_qdq(
    model: nn.Module,
    policy: CompressionPolicy,
    path: str | Path,
    graph: ModelGraph | None = None,
    calibration: torch.Tensor | None = None,
    opset: int = OPSET,
    symmetric: bool = False,
) -> Path:
    """Write ``policy``'s network (``model``: the simulated network, finetuned and calibrated,
    or the original with ``graph``) as QDQ ONNX: input ``input`` (N, *input_shape), output
    ``logits``, dynamic batch. With ``calibration`` (a batch of inputs), the layer outputs
    that no quantizer follows are requantized to 8 bits over their range on it, so that every
    integer layer runs as an integer kernel (:mod:`ajpq.export.requantize`). ``symmetric``
    writes every activation as int8 at zero point 0, the form TensorRT builds an int8 engine
    from (onnxruntime's CPU kernels run it too). A failed export leaves no file."""
    path = Path(path)
    network, layers = qdq_network(model, policy, graph, symmetric)
    buffer = io.BytesIO()
    torch.onnx.export(
        network,
        (torch.zeros((1, *policy.input_shape)),),
        buffer,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    _integer_weights(proto, layers)
    if calibration is not None:
        requantize_outputs(proto, calibration.detach().cpu().float().numpy(), symmetric)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx.save(proto, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    logger.debug("QDQ ONNX model: %s (%d bytes)", path, path.stat().st_size)
    return path


def _integer_weights(proto: onnx.ModelProto, layers: dict[str, IntegerLayer]) -> None:
    """Replace each quantized layer's float weight (and bias) initializer by int8 (int32)
    codes behind a per-channel DequantizeLinear."""
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    missing = set(layers) - set(initializers)
    if missing:
        raise ValueError(f"the ONNX graph lost the weights {sorted(missing)[:3]}")
    nodes = list(proto.graph.node)
    added: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in nodes:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in layers:
            continue
        name = node.input[1]
        layer = layers[name]
        replaced.add(name)
        node.input[1] = _dequantized(proto, added, name, layer.codes, layer.scales)
        bias = node.input[2] if len(node.input) > 2 else ""
        if layer.bias_codes is not None and bias in initializers:
            replaced.add(bias)
            node.input[2] = _dequantized(proto, added, bias, layer.bias_codes, layer.bias_scales)
    for name in replaced:
        if not any(name in n.input for n in [*nodes, *added]):
            proto.graph.initializer.remove(initializers[name])
    proto.graph.node.extend(added)
    _sort_topologically(proto)


def _dequantized(
    proto: onnx.ModelProto,
    added: list[onnx.NodeProto],
    name: str,
    codes: np.ndarray,
    scales: np.ndarray,
) -> str:
    """Add ``codes`` (int8 or int32) with per-channel ``scales`` behind a DequantizeLinear."""
    zero = np.zeros(scales.shape, dtype=codes.dtype)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(codes, f"{name}_quantized"),
            numpy_helper.from_array(scales.astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(zero, f"{name}_zero_point"),
        ]
    )
    out = f"{name}_dequantized"
    added.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [out],
            name=f"{name}_DequantizeLinear",
            axis=0,
        )
    )
    return out


def _sort_topologically(proto: onnx.ModelProto) -> None:
    """Order the graph's nodes so that each comes after the producers of its inputs."""
    produced = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    pending = list(proto.graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(not i or i in produced for i in n.input)]
        if not ready:
            raise ValueError("the ONNX graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            produced.update(node.output)
        pending = [n for n in pending if n not in ready]
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)


def integer_ops(path: str | Path, threads: int = 1) -> dict[str, int]:
    """How many of each integer operator onnxruntime's CPU provider runs for the file (its
    fully optimized graph)."""
    import tempfile

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # not the warning that an optimized graph is saved
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        if node.op_type in INTEGER_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts

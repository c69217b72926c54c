"""A real compressed artifact: pruned channels removed, weights stored at their bit widths.

:func:`export_compressed` materializes a (finetuned) simulated model and writes one file in
which every compressible layer's weight is bit-packed channel by channel: a channel at b bits
(2..8) stores b-bit integer codes and one fp32 scale, a binary channel one sign bit per weight
and its mean magnitude, a float channel its fp32 values. A BatchNorm right after a conv is
folded into those scales and an fp32 bias; everything else (other BatchNorms, biases, the
calibrated activation quantizers) stays fp32. The policy, shapes and index travel as one
zlib-compressed JSON header. The file's size is what :class:`ajpq.core.cost.CostModel` reports. :func:`load_compressed` rebuilds the
architecture from the model zoo, prunes it by the policy and unpacks the weights: the loaded
model computes exactly what :func:`ajpq.core.materialize.materialize` returns.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.apply import FakeQuantLayer, apply_policy
from ajpq.core.cost import CostModel
from ajpq.core.graph import ModelGraph, saved_size
from ajpq.core.materialize import materialize, materialize_with_scales
from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.core.quantize import FLOAT_BITS
from ajpq.task.models import build_model, is_user_model

__all__ = ["ExportReport", "export_compressed", "load_compressed", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "ajpq-compressed-v2"


@dataclass(frozen=True)
class ExportReport:
    path: str
    file_bytes: int  # the artifact on disk
    fp32_file_bytes: int  # the fp32 model's state dict saved the same way
    policy_size_bytes: float  # what the cost model counts (the file, by its format)
    architecture_bytes: int = 0  # the stored network graph (a user's model), not in the above

    @property
    def file_ratio(self) -> float:
        return self.fp32_file_bytes / self.file_bytes

    def to_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "file_ratio": self.file_ratio}


def _weight_key(layer_policy: LayerPolicy) -> str:
    """The layer's weight in the materialized state dict: materialize puts a quantized input's
    activation quantizer in front of the layer (:class:`ajpq.core.materialize.QuantizedInput`)."""
    if layer_policy.act_bits < FLOAT_BITS:
        return f"{layer_policy.name}.layer.weight"
    return f"{layer_policy.name}.weight"


def _pack(weight: torch.Tensor, bits: np.ndarray, scales: np.ndarray) -> dict[str, object]:
    """Codes of the kept channels of one layer, grouped by bit width; one fp32 scale per
    quantized channel (the bits themselves are in the policy)."""
    rows = weight.detach().reshape(weight.shape[0], -1).float().numpy()
    quantized = (bits > 0) & (bits < FLOAT_BITS)
    packed: dict[str, object] = {
        "shape": list(weight.shape),
        "scale": torch.from_numpy(scales[quantized].astype(np.float32)),
    }
    for width in sorted(set(bits.tolist())):
        chosen = rows[bits == width]
        if width >= FLOAT_BITS:
            packed[f"w{width}"] = torch.from_numpy(chosen.astype(np.float32).copy())
            continue
        scale = scales[bits == width][:, None].astype(np.float32)
        if width == 1:
            # one sign bit relative to the scale (a folded BatchNorm may make it negative)
            codes = (chosen / scale > 0).astype(np.uint8)
        else:
            qmax = 2 ** (width - 1) - 1
            codes = (np.rint(chosen / scale) + qmax).clip(0, 2 * qmax).astype(np.uint8)
        # keep the low `width` bits of every code, then pack 8 per byte
        code_bits = np.unpackbits(codes.reshape(-1, 1), axis=1)[:, 8 - width :]
        packed[f"w{width}"] = torch.from_numpy(np.packbits(code_bits.reshape(-1)))
    return packed


def _to_blob(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[object]]]:
    """All tensors in one byte tensor plus an index: one archive entry instead of one per
    tensor (torch.save's per-entry headers and alignment cost ~300 bytes each)."""
    index, chunks, offset = [], [], 0
    for key, tensor in tensors.items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        data = data.view(torch.uint8) if data.numel() else torch.zeros(0, dtype=torch.uint8)
        index.append([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset])
        chunks.append(data)
        offset += data.numel()
    blob = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    return blob, index


def _from_blob(blob: torch.Tensor, index: list[list[object]]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, dtype_name, shape, offset in index:
        dtype = getattr(torch, str(dtype_name))
        count = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        raw = blob[int(offset) : int(offset) + count].clone()
        tensors[str(key)] = raw.view(dtype).reshape([int(d) for d in shape])
    return tensors


def _unpack(packed: dict[str, object], bits: np.ndarray) -> torch.Tensor:
    shape = list(packed["shape"])
    quantized = (bits > 0) & (bits < FLOAT_BITS)
    scales = np.zeros(len(bits), dtype=np.float32)
    scales[quantized] = packed["scale"].numpy()
    per_row = int(np.prod(shape[1:]))
    rows = np.zeros((shape[0], per_row), dtype=np.float32)
    for width in sorted(set(bits.tolist())):
        chosen = bits == width
        data = packed[f"w{width}"].numpy()
        if width >= FLOAT_BITS:
            rows[chosen] = data
            continue
        count = int(chosen.sum()) * per_row
        code_bits = np.unpackbits(data)[: count * width].reshape(count, width)
        codes = (code_bits * (1 << np.arange(width - 1, -1, -1))).sum(axis=1)
        codes = codes.reshape(-1, per_row).astype(np.float32)
        scale = scales[chosen][:, None]
        if width == 1:
            rows[chosen] = (2.0 * codes - 1.0) * scale
        else:
            rows[chosen] = (codes - (2 ** (width - 1) - 1)) * scale
    return torch.from_numpy(rows).reshape(shape)


def export_compressed(
    model: nn.Module,
    policy: CompressionPolicy,
    path: str | Path,
    num_classes: int,
    graph: ModelGraph | None = None,
    self_contained: bool | None = None,
) -> ExportReport:
    """Write ``model`` (the original or its finetuned :func:`apply_policy` output) compressed
    by ``policy`` to ``path``. ``policy.model_name`` must name a model of :mod:`ajpq.task.models`."""
    simulated = model
    if not any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        traced = graph or analyze(model, torch.zeros(1, *policy.input_shape))
        simulated = apply_policy(model, policy, traced)
    # a copy (the caller's model stays put) and the scales its codes are multiplied by
    small, layer_scales = materialize_with_scales(simulated, policy)
    small = small.cpu().eval()
    scales = {name: scale.detach().cpu().numpy() for name, scale in layer_scales.items()}
    state = small.state_dict()
    packed = {}
    for layer_policy in policy.layers:
        bits = np.asarray(layer_policy.weight_bits)
        kept = bits != 0
        key = _weight_key(layer_policy)
        weight = state.pop(key)
        if weight.shape[0] != int(kept.sum()):
            raise ValueError(
                f"{layer_policy.name}: {weight.shape[0]} channels after pruning, the policy keeps "
                f"{int(kept.sum())}; export the model the policy was built for"
            )
        packed[key] = _pack(weight, bits[kept], scales[layer_policy.name][kept])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"state/{key}": value for key, value in state.items()}
    layouts = {}
    for key, fields in packed.items():
        layouts[key] = fields.pop("shape")
        flat.update({f"packed/{key}/{name}": tensor for name, tensor in fields.items()})
    blob, index = _to_blob(flat)
    header = {
        "policy": policy.to_dict(),
        "num_classes": int(num_classes),
        "shapes": layouts,
        "index": index,
    }
    artifact = {"format": FORMAT, "header": _compress(header), "blob": blob}
    if self_contained is None:
        self_contained = is_user_model(policy.model_name)
    if self_contained:
        architecture = _architecture(small, policy.input_shape)
        if architecture is not None:
            artifact["architecture"] = architecture
    # everything that can fail happens before the file appears: a failed export leaves nothing
    if graph is None:
        graph = analyze(_skeleton(policy, num_classes), torch.zeros(1, *policy.input_shape))
    # the fp32 reference: the same architecture's state dict as torch.save writes it (a graph
    # saved before the analysis measured it is measured here)
    fp32_file_bytes = graph.fp32_file_bytes or saved_size(
        _skeleton(policy, num_classes).state_dict()
    )
    size = CostModel(graph).cost(policy).size_bytes
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(artifact, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    stored = artifact.get("architecture")
    report = ExportReport(
        str(path),
        path.stat().st_size,
        fp32_file_bytes,
        size,
        int(stored.numel()) if stored is not None else 0,
    )
    logger.info(
        "exported %s: %d bytes, %.1fx smaller than the fp32 state dict (%d bytes)",
        path,
        report.file_bytes,
        report.file_ratio,
        report.fp32_file_bytes,
    )
    return report


def _skeleton(policy: CompressionPolicy, num_classes: int) -> nn.Module:
    """The policy's architecture, fp32, untrained (its weights are overwritten or measured)."""
    return build_model(policy.model_name, int(num_classes), int(policy.input_shape[0])).eval()


def load_compressed(path: str | Path) -> nn.Module:
    """Rebuild the compressed model written by :func:`export_compressed` (CPU, eval mode).

    Never unpickles code (``weights_only``); a truncated, corrupted or foreign file raises a
    ValueError that says so."""
    try:
        artifact = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged zip
        raise ValueError(
            f"{path} is not a readable ajpq compressed model (truncated or corrupted? "
            f"{type(error).__name__}); export it again with ajpq export"
        ) from None
    if not isinstance(artifact, dict) or artifact.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ajpq compressed model ({FORMAT})")
    try:
        return _rebuild(
            _decompress(artifact["header"]), artifact["blob"], artifact.get("architecture")
        )
    except (KeyError, RuntimeError, ValueError, zlib.error) as error:
        raise ValueError(
            f"{path} is damaged: its contents do not fit together ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120]}); export it again with ajpq export"
        ) from None


def _compress(header: dict) -> torch.Tensor:
    """The header as zlib-compressed JSON in a byte tensor (a per-channel bit list compresses
    to almost nothing; pickled lists would not)."""
    raw = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _decompress(data: torch.Tensor) -> dict:
    return json.loads(zlib.decompress(data.numpy().tobytes()).decode())


class ExportedNetwork(nn.Module):
    """A compressed network loaded from its stored graph (no model code needed). The graph was
    captured in inference mode; ``train()`` / ``eval()`` only set the flag."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> ExportedNetwork:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _architecture(small: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor | None:
    """The network's graph as ``torch.export`` saves it, weights zeroed, zlib-compressed; None
    (the file then needs the model's code to load) when the network cannot be exported."""
    from ajpq.export.onnx import with_plain_quantizers

    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        example = torch.zeros((2, *input_shape))
        program = torch.export.export(
            with_plain_quantizers(small), (example,), dynamic_shapes=({0: batch},)
        )
        for key, value in list(program.state_dict.items()):
            zeros = torch.zeros_like(value)
            if isinstance(value, nn.Parameter):
                zeros = nn.Parameter(zeros, requires_grad=value.requires_grad)
            program.state_dict[key] = zeros
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as error:  # noqa: BLE001 - the file stays loadable with the model's code
        logger.warning(
            "the compressed network could not be captured with torch.export (%s: %s); loading "
            "the file will need the model's code",
            type(error).__name__,
            str(error).splitlines()[0][:160] if str(error) else "",
        )
        return None
    raw = zlib.compress(buffer.getvalue(), 9)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _rebuild(
    header: dict, blob: torch.Tensor, architecture: torch.Tensor | None = None
) -> nn.Module:
    policy = CompressionPolicy.from_dict(header["policy"])
    tensors = _from_blob(blob, header["index"])
    state = {k[len("state/") :]: v for k, v in tensors.items() if k.startswith("state/")}
    bits_of = {}
    for layer_policy in policy.layers:
        bits = np.asarray(layer_policy.weight_bits)
        bits_of[_weight_key(layer_policy)] = bits[bits > 0]
    for key, shape in header["shapes"].items():
        prefix = f"packed/{key}/"
        fields = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        state[key] = _unpack({**fields, "shape": shape}, bits_of[key])
    if architecture is not None:
        program = torch.export.load(io.BytesIO(zlib.decompress(architecture.numpy().tobytes())))
        net = program.module()
        # the activation quantizers' ranges are constants of the graph
        net.load_state_dict({key: state[key] for key in net.state_dict()})
        return ExportedNetwork(net)
    skeleton = _skeleton(policy, header["num_classes"])
    small = materialize(skeleton, policy, analyze(skeleton, torch.zeros(1, *policy.input_shape)))
    small.load_state_dict(state)
    return small.eval()

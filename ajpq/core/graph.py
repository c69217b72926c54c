"""The layer table: a model's compressible layers and the groups of layers that share one channel
decision (the types :func:`ajpq.core.analysis.analyze` fills), plus the byte counts they need.

One forward pass with an example input records, per Conv2d / Linear, its shapes and MACs.
Torch-Pruning's DependencyGraph finds coupling (residual adds, concatenations, a depthwise conv
and its producer) and, for every group, which input channels of downstream layers consume each
of the group's channels. Everything that follows (policy building, fake quantization, costs,
budgets, physical pruning) reads this table instead of re-tracing the model.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "LayerKind",
    "LayerInfo",
    "CouplingGroup",
    "ModelGraph",
    "bytes_per_channel",
    "channel_count",
    "layer_kind",
    "state_bytes",
    "compressible_modules",
    "saved_size",
]

logger = logging.getLogger(__name__)


class LayerKind(str, enum.Enum):
    CONV = "conv"
    DEPTHWISE_CONV = "depthwise_conv"
    GROUPED_CONV = "grouped_conv"
    LINEAR = "linear"


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one compressible layer, as seen in one traced forward pass."""

    index: int
    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    params: int
    input_hw: tuple[int, int]
    output_positions: int
    macs: int
    has_bias: bool
    # the BatchNorm that directly follows this conv and folds into its weights and bias
    bn: str | None = None

    @property
    def stores_bias(self) -> bool:
        """A bias per kept channel is stored: its own, or the one a folded BatchNorm leaves."""
        return self.has_bias or self.bn is not None

    @property
    def weights_per_channel(self) -> int:
        return (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class CouplingGroup:
    """Layers whose output channels are pruned together, and who consumes those channels.

    ``members[0]`` is as wide as the group (``channels``); a member one block wide is coupled
    with one part of a channel split (:meth:`member_unit`).

    ``consumers`` maps a consuming layer index to an int array of shape (channels, k): channel c
    of the group feeds input indices ``consumers[layer][c]`` of that layer (k > 1 after a flatten;
    entries of -1 where a channel split sends the channel elsewhere).
    """

    index: int
    members: tuple[int, ...]
    channels: int
    prunable: bool
    consumers: dict[int, np.ndarray]
    # bytes of other state (an unfolded BatchNorm's weight, bias and statistics, ...) stored
    # per channel of this group, pruned with it
    passenger_bytes: int = 0
    # a grouped conv among the members or consumers splits the channels into this many equal
    # blocks; pruning removes the same positions from every block (a "unit" of channels)
    blocks: int = 1
    # its channels pass a channel split (chunk / split): proven by pruning it at analysis
    split: bool = False

    @property
    def block_size(self) -> int:
        return self.channels // self.blocks

    def unit(self, position: int) -> np.ndarray:
        """The channels pruned together with ``position`` (one per block)."""
        return position % self.block_size + self.block_size * np.arange(self.blocks)

    def member_unit(self, width: int, position: int) -> np.ndarray:
        """:meth:`unit` in a member of ``width`` channels: a member one block wide (coupled
        with one part of a split) holds only the position itself."""
        if width == self.channels:
            return self.unit(position)
        return np.array([position % width])

    def member_mask(self, width: int, keep: np.ndarray) -> np.ndarray:
        """The group's keep mask (``channels`` long) as a member of ``width`` channels sees it."""
        keep = np.asarray(keep)  # a narrower member sees the first part (all parts agree)
        return keep if width == self.channels else keep.reshape(-1, width)[0]


@dataclass(frozen=True)
class ModelGraph:
    """Compressible layers of one model, their coupling groups, and the model's signature."""

    layers: tuple[LayerInfo, ...]
    groups: tuple[CouplingGroup, ...]
    layer_group: tuple[int, ...]
    input_shape: tuple[int, ...]
    signature: str
    # state outside the compressible layers stored whatever is pruned (bytes), and the fp32
    # model's state dict as torch.save writes it (the reference for size ratios)
    fixed_state_bytes: int = 0
    fp32_file_bytes: int = 0

    def layer_by_name(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"model has no compressible layer named {name!r}")

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)


def compressible_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by qualified name, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def layer_kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if module.groups == 1:
        return LayerKind.CONV
    if module.groups == module.in_channels == module.out_channels:
        return LayerKind.DEPTHWISE_CONV
    return LayerKind.GROUPED_CONV


class _ByteCounter:
    """A write-only sink that only counts what torch.save writes."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def saved_size(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``torch.save(state)`` (the file a user compares with), without keeping a copy."""
    counter = _ByteCounter()
    torch.save(state, counter)
    return counter.count


def _state_rows(module: nn.Module) -> list[torch.Tensor]:
    """The module's own stored tensors (parameters and persistent buffers)."""
    skip = getattr(module, "_non_persistent_buffers_set", set())
    buffers = [b for n, b in module.named_buffers(recurse=False) if n not in skip]
    return [*module.parameters(recurse=False), *buffers]


def state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _state_rows(module))


def bytes_per_channel(module: nn.Module, channels: int) -> int:
    """Bytes the module stores per channel (its tensors whose first dimension is ``channels``)."""
    return sum(
        t.numel() // channels * t.element_size()
        for t in _state_rows(module)
        if t.dim() >= 1 and t.shape[0] == channels
    )


def channel_count(module: nn.Module) -> int:
    """The channel count of a normalization-like module (0 when it has none)."""
    for attr in ("num_features", "num_channels", "num_parameters"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0

"""Apply a policy: a model whose forward simulates the joint pruning + quantization policy.

Each compressible layer is wrapped in a :class:`FakeQuantLayer` that masks the input channels
pruned upstream (so a 0-bit channel is removed in effect, exactly as physical removal would,
BatchNorm shifts and residual paths included), fake-quantizes the input activation, and
fake-quantizes the weights channel by channel. Gradients pass straight through, so the
simulated model finetunes like the original.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ajpq.core.graph import ModelGraph
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS, ActivationQuantizer, fake_quantize_weight, weight_qmax
from ajpq.core.validation import validate_policy

__all__ = [
    "FakeQuantLayer",
    "apply_policy",
    "input_keep_masks",
    "example_input_for",
    "set_submodule",
]

logger = logging.getLogger(__name__)


class FakeQuantLayer(nn.Module):
    """A Conv2d or Linear that runs with per-channel weight bits, activation bits, input mask."""

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        weight_bits: torch.Tensor,
        act_bits: int,
        input_mask: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.layer = layer
        # the BatchNorm that folds into this layer when it is materialized (ajpq.core.graph)
        self.fold_bn: str | None = None
        device = layer.weight.device
        self.register_buffer("weight_bits", weight_bits.to(device=device, dtype=torch.float32))
        self.register_buffer("input_mask", None if input_mask is None else input_mask.to(device))
        self.act = ActivationQuantizer(act_bits)
        self.quantize_weights = bool((self.weight_bits != FLOAT_BITS).any())
        self.has_special_bits = bool(
            ((self.weight_bits < 2) | (self.weight_bits >= FLOAT_BITS)).any()
        )
        self.register_buffer("weight_qmax", weight_qmax(self.weight_bits), persistent=False)
        # the weights that read a pruned input are zeros: they neither count for a channel's
        # grid (so the physically pruned network quantizes identically) nor train
        weight_mask = _column_mask(layer, input_mask)
        self.register_buffer("weight_mask", weight_mask, persistent=False)
        live = None if weight_mask is None else weight_mask.reshape(weight_mask.shape[0], -1)
        self.register_buffer(
            "live_weights",
            None if live is None else (live.sum(dim=1) * _kernel_size(layer)),
            persistent=False,
        )
        # set by ajpq.core.pruned: this layer's kept output channels of the original network
        self.kept_out: torch.Tensor | None = None
        self.original_out = int(layer.weight.shape[0])

    def _mask_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mask is None:
            return x
        if isinstance(self.layer, nn.Linear):
            return x * self.input_mask.to(x.dtype)
        return x * self.input_mask.to(x.dtype).view(1, -1, 1, 1)

    def masked_weight(self) -> torch.Tensor:
        """The float weight with the weights of pruned inputs at zero."""
        if self.weight_mask is None:
            return self.layer.weight
        return self.layer.weight * self.weight_mask.to(self.layer.weight.dtype)

    def quantized_weight(self) -> torch.Tensor:
        weight = self.masked_weight()
        if not self.quantize_weights:
            return weight
        return fake_quantize_weight(
            weight, self.weight_bits, self.weight_qmax, self.has_special_bits, self.live_weights
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._mask_input(x))
        weight = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


def _kernel_size(layer: nn.Module) -> int:
    return int(np.prod(layer.weight.shape[2:])) if layer.weight.dim() > 2 else 1


def _column_mask(layer: nn.Module, input_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(out, in / groups, 1, ...) mask of the weights that read a kept input (grouped and
    depthwise convs: output channel o reads the inputs of its group)."""
    if input_mask is None:
        return None
    weight = layer.weight
    out, per_group = weight.shape[0], weight.shape[1]
    groups = getattr(layer, "groups", 1)
    outs_per_group = out // groups
    group = torch.arange(out) // outs_per_group
    index = group[:, None] * per_group + torch.arange(per_group)[None, :]
    mask = input_mask.float().cpu()[index]
    return mask.reshape(out, per_group, *([1] * (weight.dim() - 2))).to(weight.device)


def example_input_for(model: nn.Module, policy: CompressionPolicy) -> torch.Tensor:
    """A zero batch of one with the policy's input shape on the model's device."""
    param = next(model.parameters())
    return torch.zeros((1, *policy.input_shape), device=param.device, dtype=param.dtype)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def input_keep_masks(policy: CompressionPolicy, graph: ModelGraph) -> dict[int, np.ndarray]:
    """Per layer index, a boolean mask of its input features that survive upstream pruning.

    Layers whose inputs lose nothing are absent.
    """
    masks: dict[int, np.ndarray] = {}
    for group in graph.groups:
        lead = policy.layers[group.members[0]]
        pruned = np.array([b == 0 for b in lead.weight_bits])
        if not pruned.any():
            continue
        for consumer, index_map in group.consumers.items():
            layer = graph.layers[consumer]
            mask = masks.setdefault(consumer, np.ones(layer.in_channels, dtype=bool))
            inputs = index_map[pruned].ravel()
            mask[inputs[inputs >= 0]] = False  # -1: the channel does not reach this consumer
    return masks


def apply_policy(model: nn.Module, policy: CompressionPolicy, graph: ModelGraph) -> nn.Module:
    """Return a copy of ``model`` whose forward simulates ``policy`` (the original is untouched).

    ``graph`` is the model's analysis (:func:`ajpq.core.analysis.analyze`), made once for many policies.
    """
    if any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        raise ValueError("model already has a policy applied; apply policies to the original model")
    if graph.signature != policy.signature:
        raise ValueError(
            f"policy was built for model {policy.model_name!r} with another layer structure "
            f"(signature {policy.signature} != {graph.signature}); build a policy for this model"
        )
    validate_policy(policy, graph)
    simulated = copy.deepcopy(model)
    masks = input_keep_masks(policy, graph)
    for layer, layer_policy in zip(graph.layers, policy.layers):
        module = simulated.get_submodule(layer.name)
        mask = masks.get(layer.index)
        wrapped = FakeQuantLayer(
            module,
            torch.tensor(layer_policy.weight_bits),
            layer_policy.act_bits,
            None if mask is None else torch.from_numpy(mask.astype(np.float32)),
        )
        wrapped.fold_bn = layer.bn
        set_submodule(simulated, layer.name, wrapped)
    return simulated

"""Turn a simulated (policy-applied, possibly finetuned) model into a physically smaller one.

Weights are replaced by their dequantized values, 0-bit channels are really removed with
Torch-Pruning (BatchNorm, depthwise convs, residual partners and consumers follow), and layers
with quantized activations keep their calibrated activation quantizer in front. The outputs
equal the simulated model's up to float rounding.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ajpq.apply import FakeQuantLayer, apply_policy, example_input_for, set_submodule
from ajpq.graph import ModelGraph, build_dependency_graph
from ajpq.policy import CompressionPolicy
from ajpq.quantize import FLOAT_BITS, ActivationQuantizer

__all__ = ["QuantizedInput", "materialize"]

logger = logging.getLogger(__name__)


class QuantizedInput(nn.Module):
    """A physically pruned layer preceded by its calibrated activation quantizer."""

    def __init__(self, act: ActivationQuantizer, layer: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.act(x))


def materialize(
    model: nn.Module, policy: CompressionPolicy, graph: ModelGraph | None = None
) -> nn.Module:
    """Return a physically pruned copy of ``model`` with quantized weights baked in.

    ``model`` is either the output of :func:`apply_policy` (finetuned or not) or the original
    model, in which case the policy is applied first.
    """
    if not any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        model = apply_policy(model, policy, graph)
    plain = copy.deepcopy(model)
    quantizers: dict[str, ActivationQuantizer] = {}
    for name, module in list(plain.named_modules()):
        if not isinstance(module, FakeQuantLayer):
            continue
        with torch.no_grad():
            module.layer.weight.copy_(module.quantized_weight())
        if module.act.bits < FLOAT_BITS:
            quantizers[name] = module.act
        set_submodule(plain, name, module.layer)
    if not any(0 in lp.weight_bits for lp in policy.layers):  # nothing to remove
        for name, quantizer in quantizers.items():
            set_submodule(plain, name, QuantizedInput(quantizer, plain.get_submodule(name)))
        return plain
    example = example_input_for(plain, policy)
    dep_graph = build_dependency_graph(plain, example)
    done: set[int] = set()  # ids of modules whose output channels are already pruned
    for layer_policy in policy.layers:
        pruned = [c for c, bits in enumerate(layer_policy.weight_bits) if bits == 0]
        module = plain.get_submodule(layer_policy.name)
        if not pruned or id(module) in done:
            continue
        out_fn = dep_graph.get_pruner_of_module(module).prune_out_channels
        group = dep_graph.get_pruning_group(module, out_fn, pruned)
        done.update(
            id(item.dep.target.module)
            for item in group.items
            if dep_graph.is_out_channel_pruning_fn(item.dep.handler)
        )
        group.prune()
    for name, quantizer in quantizers.items():
        set_submodule(plain, name, QuantizedInput(quantizer, plain.get_submodule(name)))
    return plain

"""Turn a simulated (policy-applied, possibly finetuned) model into a physically smaller one.

Weights are replaced by their dequantized values, a BatchNorm that directly follows a conv is
folded into it (per-channel scales and a bias: exact for per-channel symmetric quantization, the
integer codes do not change), 0-bit channels are really removed with Torch-Pruning (other
BatchNorms, depthwise convs, residual partners and consumers follow), and layers with quantized
activations keep their calibrated activation quantizer in front. The outputs equal the simulated
model's up to float rounding.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ajpq.core.apply import FakeQuantLayer, apply_policy, example_input_for, set_submodule
from ajpq.core.dependency import build_dependency_graph
from ajpq.core.graph import ModelGraph
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS, ActivationQuantizer, weight_scales

__all__ = ["QuantizedInput", "materialize", "materialize_with_scales", "prune_zero_channels"]

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
    return materialize_with_scales(model, policy, graph)[0]


def _fold(module: FakeQuantLayer, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Fold ``bn`` into the layer's quantized weight and bias; return the per-channel factor.
    A quantized channel's weight becomes its integer codes times (scale x factor), the same
    product an exported file decodes."""
    layer = module.layer
    with torch.no_grad():
        std = torch.sqrt(bn.running_var.float() + bn.eps)
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        bias = layer.bias.float() if layer.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean.float()) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
        else:
            layer.bias.copy_(new_bias)
    return factor


def materialize_with_scales(
    model: nn.Module, policy: CompressionPolicy, graph: ModelGraph | None = None
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """:func:`materialize`, plus per layer and output channel (before pruning) the scale its
    integer codes are multiplied by (a folded BatchNorm's factor included)."""
    if not any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        if graph is None:
            raise ValueError(
                "materialize needs the graph of an original model: materialize(model, policy, "
                "analyze(model, example_input)), or pass apply_policy's output"
            )
        model = apply_policy(model, policy, graph)
    wrapped = [m for m in model.modules() if isinstance(m, FakeQuantLayer)]
    kept = None
    if wrapped and all(m.kept_out is not None for m in wrapped):
        kept = {
            n: (m.kept_out, m.original_out)
            for n, m in model.named_modules()
            if isinstance(m, FakeQuantLayer)
        }
    plain = copy.deepcopy(model)
    quantizers: dict[str, ActivationQuantizer] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, module in list(plain.named_modules()):
        if not isinstance(module, FakeQuantLayer):
            continue
        with torch.no_grad():
            weight = module.quantized_weight().detach()
            bits = module.weight_bits
            scale = weight_scales(module.masked_weight(), bits, module.live_weights)
            if module.fold_bn is not None:
                factor = _fold(module, plain.get_submodule(module.fold_bn))
                set_submodule(plain, module.fold_bn, nn.Identity())
                shape = (-1,) + (1,) * (weight.dim() - 1)
                quantized = ((bits > 0) & (bits < FLOAT_BITS)).view(shape)
                codes = torch.where(
                    (bits == 1).view(shape),
                    torch.sign(weight),
                    torch.round(weight / scale.view(shape)),
                )
                scale = scale * factor
                weight = torch.where(
                    quantized, codes * scale.view(shape), weight * factor.view(shape)
                )
            module.layer.weight.copy_(weight)
        scales[name] = scale
        if module.act.bits < FLOAT_BITS:
            quantizers[name] = module.act
        set_submodule(plain, name, module.layer)
    if kept is None:
        prune_zero_channels(plain, policy)
    else:  # already pruned (ajpq.core.pruned): scales per channel of the original network
        scales = {name: _spread(scale, *kept[name]) for name, scale in scales.items()}
    for name, quantizer in quantizers.items():
        set_submodule(plain, name, QuantizedInput(quantizer, plain.get_submodule(name)))
    return plain, scales


def _spread(scale: torch.Tensor, kept: torch.Tensor, original: int) -> torch.Tensor:
    """Scales of the kept channels placed at their original positions (removed ones: 0)."""
    full = torch.zeros(original, dtype=scale.dtype, device=scale.device)
    full[kept.to(scale.device)] = scale
    return full


def prune_zero_channels(model: nn.Module, policy: CompressionPolicy) -> nn.Module:
    """Remove ``policy``'s 0-bit output channels from the plain (unwrapped) ``model`` in place
    with Torch-Pruning; BatchNorms, depthwise convs, residual partners and consumers follow."""
    if not any(0 in lp.weight_bits for lp in policy.layers):
        return model
    example = example_input_for(model, policy)
    dep_graph = build_dependency_graph(model, example)
    done: set[int] = set()  # ids of modules whose output channels are already pruned
    for layer_policy in policy.layers:
        pruned = [c for c, bits in enumerate(layer_policy.weight_bits) if bits == 0]
        module = model.get_submodule(layer_policy.name)
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
    return model

"""The policy's network as it will be deployed, for finetuning: 0-bit channels physically
removed (BatchNorm kept, not folded) and fake quantization on what is kept, so a finetune step
costs in proportion to the MACs the policy keeps.

:func:`apply_policy` (masks on the full network) stays the reference: for every topology the
two compute the same outputs, gradients and weight updates (``tests/core/test_pruned.py``).
:func:`simulate` builds the pruned one and falls back to the masked one, with one log line,
when a network cannot be pruned physically.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from ajpq.core.apply import FakeQuantLayer, apply_policy, set_submodule
from ajpq.core.graph import ModelGraph
from ajpq.core.materialize import prune_zero_channels
from ajpq.core.policy import CompressionPolicy
from ajpq.core.validation import validate_policy

__all__ = ["apply_pruned", "simulate", "is_pruned"]

logger = logging.getLogger(__name__)


def apply_pruned(model: nn.Module, policy: CompressionPolicy, graph: ModelGraph) -> nn.Module:
    """A copy of ``model`` with ``policy``'s 0-bit channels removed and every compressible
    layer fake-quantized at its kept channels' bits (raises when it cannot be built)."""
    if any(isinstance(m, FakeQuantLayer) for m in model.modules()):
        raise ValueError("model already has a policy applied; apply policies to the original model")
    if graph.signature != policy.signature:
        raise ValueError(
            f"policy was built for model {policy.model_name!r} with another layer structure; "
            "build a policy for this model"
        )
    validate_policy(policy, graph)
    plain = prune_zero_channels(copy.deepcopy(model), policy)
    for layer, layer_policy in zip(graph.layers, policy.layers):
        module = plain.get_submodule(layer.name)
        bits = np.asarray(layer_policy.weight_bits)
        kept = np.flatnonzero(bits != 0)
        if module.weight.shape[0] != len(kept):
            raise ValueError(
                f"{layer.name}: {module.weight.shape[0]} channels after pruning, the policy "
                f"keeps {len(kept)}"
            )
        wrapped = FakeQuantLayer(module, torch.tensor(bits[kept]), layer_policy.act_bits, None)
        wrapped.fold_bn = layer.bn
        wrapped.kept_out = torch.from_numpy(kept)
        wrapped.original_out = len(bits)
        set_submodule(plain, layer.name, wrapped)
    return plain


def is_pruned(simulated: nn.Module) -> bool:
    """Whether ``simulated`` came from :func:`apply_pruned`."""
    wrapped = [m for m in simulated.modules() if isinstance(m, FakeQuantLayer)]
    return bool(wrapped) and all(m.kept_out is not None for m in wrapped)


def simulate(
    model: nn.Module, policy: CompressionPolicy, graph: ModelGraph, pruned: bool = True
) -> nn.Module:
    """The network a policy is finetuned and scored on: physically pruned when ``pruned`` and
    it can be built, else masked (:func:`apply_policy`)."""
    if pruned and any(0 in lp.weight_bits for lp in policy.layers):
        try:
            return apply_pruned(model, policy, graph)
        except Exception as error:  # noqa: BLE001 - Torch-Pruning raises many kinds
            logger.info(
                "the pruned network of this policy cannot be built (%s: %s); scoring it masked",
                type(error).__name__,
                str(error)[:160],
            )
    return apply_policy(model, policy, graph)

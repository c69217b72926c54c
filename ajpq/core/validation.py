"""Check a policy against the model it is applied to; every error says what to change."""

from __future__ import annotations

import numpy as np

from ajpq.core.graph import ModelGraph
from ajpq.core.policy import ACT_BITS, WEIGHT_BITS, CompressionPolicy

__all__ = ["validate_policy"]


def validate_policy(policy: CompressionPolicy, graph: ModelGraph) -> None:
    """Raise ValueError when ``policy`` cannot be applied to the model described by ``graph``."""
    if len(policy.layers) != len(graph.layers):
        raise ValueError(
            f"policy has {len(policy.layers)} layers but the model has {len(graph.layers)} "
            f"compressible layers; build the policy for this model (policy model: {policy.model_name!r})"
        )
    if tuple(policy.input_shape) != tuple(graph.input_shape):
        raise ValueError(
            f"policy was built for input shape {policy.input_shape}, the model was traced with "
            f"{graph.input_shape}"
        )
    for lp, layer in zip(policy.layers, graph.layers):
        if lp.name != layer.name:
            raise ValueError(
                f"policy layer {lp.name!r} does not match model layer {layer.name!r} at index "
                f"{layer.index}; the policy was built for another model ({policy.model_name!r})"
            )
        if len(lp.weight_bits) != layer.out_channels:
            raise ValueError(
                f"layer {layer.name}: policy gives bits for {len(lp.weight_bits)} channels, "
                f"the layer has {layer.out_channels} output channels"
            )
        bad = sorted({b for b in lp.weight_bits if b not in WEIGHT_BITS})
        if bad:
            raise ValueError(
                f"layer {layer.name}: weight bits {bad} not allowed; use 0 (pruned), 1..8, or 32 (float)"
            )
        if lp.act_bits not in ACT_BITS:
            raise ValueError(
                f"layer {layer.name}: activation bits {lp.act_bits} not allowed; use 2..8 or 32 (float)"
            )
        if lp.kept == 0:
            raise ValueError(
                f"layer {layer.name}: every output channel is pruned (0 bits); keep at least one"
            )
    for group in graph.groups:
        masks = {
            graph.layers[m].name: tuple(b > 0 for b in policy.layers[m].weight_bits)
            for m in group.members
        }
        first_name, first = next(iter(masks.items()))
        for name, mask in masks.items():
            if mask != tuple(group.member_mask(len(mask), np.asarray(first)).tolist()):
                raise ValueError(
                    f"layers {first_name} and {name} are coupled (they share channels) but prune "
                    "different channels; give them the same 0-bit channels"
                )
        if group.prunable and group.blocks > 1:
            kept = np.asarray(first).reshape(group.blocks, group.block_size)
            if not (kept == kept[0]).all():
                raise ValueError(
                    f"layer {first_name}: its channels pass a grouped conv or a channel split "
                    f"({group.blocks} groups of {group.block_size}); prune the same positions in "
                    "every group"
                )
        if not group.prunable and not all(first):
            raise ValueError(
                f"layer {first_name} feeds the model output (or an op that cannot be pruned); "
                "its channels cannot be pruned, give them bits >= 1"
            )

"""The agent's view: one step per coupling group, observation features, action -> knobs."""

from __future__ import annotations

import numpy as np

from ajpq.core.builder import LayerKnobs
from ajpq.core.graph import LayerKind, ModelGraph
from ajpq.search.config import SpaceSection

__all__ = ["ACTION_DIM", "group_order", "group_features", "action_to_knobs"]

ACTION_DIM = 4  # sparsity, weight bits, activation bits, spread


def group_order(graph: ModelGraph) -> list[int]:
    """Coupling groups in the order of their first layer in the network."""
    return sorted(range(len(graph.groups)), key=lambda g: min(graph.groups[g].members))


def group_features(graph: ModelGraph) -> np.ndarray:
    """Per group (in step order) static features, min-max normalised over the model."""
    rows = []
    order = group_order(graph)
    for step, g in enumerate(order):
        group = graph.groups[g]
        layers = [graph.layers[m] for m in group.members]
        rows.append(
            [
                step / max(1, len(order) - 1),
                np.log1p(group.channels),
                np.log1p(sum(layer.params for layer in layers)),
                np.log1p(sum(layer.macs for layer in layers)),
                max(layer.kernel[0] for layer in layers),
                max(layer.stride[0] for layer in layers),
                float(any(layer.kind is LayerKind.DEPTHWISE_CONV for layer in layers)),
                float(any(layer.kind is LayerKind.LINEAR for layer in layers)),
                float(group.prunable),
                len(layers),
            ]
        )
    table = np.array(rows, dtype=np.float64)
    low, high = table.min(axis=0), table.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((table - low) / span).astype(np.float32)


def action_to_knobs(action: np.ndarray, space: SpaceSection) -> LayerKnobs:
    """Map an action in [0, 1]^4 onto sparsity, weight bits, activation bits and spread."""
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"expected an action of {ACTION_DIM} values, got shape {a.shape}")
    w_bits = int(
        round(space.min_weight_bits + a[1] * (space.max_weight_bits - space.min_weight_bits))
    )
    a_bits = int(round(space.min_act_bits + a[2] * (space.max_act_bits - space.min_act_bits)))
    return LayerKnobs(
        sparsity=float(a[0] * space.max_sparsity),
        weight_bits=w_bits,
        act_bits=a_bits,
        spread=float(a[3] * space.max_spread),
        min_bits=space.min_weight_bits,
        max_bits=space.max_weight_bits,
    )

"""Build a joint policy from per-layer knobs: sparsity, weight bits, activation bits, spread.

AJPQ's two-level controller: a layer group's sparsity s sends the share s of its channels with
the lowest importance to 0 bits; the kept channels get bits by rank, the most important
``spread`` bits above the layer's weight bits and the least important ``spread`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from ajpq.core.graph import ModelGraph
from ajpq.core.importance import (
    ImportanceCriterion,
    ImportanceFn,
    group_importance,
    layer_importance,
)
from ajpq.core.policy import ACT_BITS, CompressionPolicy, LayerPolicy
from ajpq.core.quantize import FLOAT_BITS

__all__ = ["LayerKnobs", "build_policy", "uniform_policy", "channel_bits_by_rank"]

MIN_QUANT_BITS = 1
MAX_QUANT_BITS = 8


@dataclass(frozen=True)
class LayerKnobs:
    """What the agent chooses per layer (or per coupling group)."""

    sparsity: float = 0.0
    weight_bits: int = 8
    act_bits: int = 8
    spread: float = 0.0
    # the range the spread may reach (the search space's weight bits)
    min_bits: int = MIN_QUANT_BITS
    max_bits: int = MAX_QUANT_BITS

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity {self.sparsity} must lie in [0, 1)")
        if (
            self.weight_bits != FLOAT_BITS
            and not MIN_QUANT_BITS <= self.weight_bits <= MAX_QUANT_BITS
        ):
            raise ValueError(f"weight_bits {self.weight_bits} must be 1..8 or 32 (float)")
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"act_bits {self.act_bits} must be 2..8 or 32 (float)")
        if self.spread < 0:
            raise ValueError(f"spread {self.spread} must be >= 0 bits")
        if not MIN_QUANT_BITS <= self.min_bits <= self.max_bits <= MAX_QUANT_BITS:
            raise ValueError(
                f"bit range {self.min_bits}..{self.max_bits} must lie within "
                f"{MIN_QUANT_BITS}..{MAX_QUANT_BITS}"
            )


def channel_bits_by_rank(
    importance: np.ndarray,
    bits: int,
    spread: float,
    low: int = MIN_QUANT_BITS,
    high: int = MAX_QUANT_BITS,
) -> np.ndarray:
    """Bits for kept channels: linear in importance rank, from bits+spread (best) to
    bits-spread, within ``low``..``high`` (the search space's range)."""
    count = len(importance)
    if bits == FLOAT_BITS:
        return np.full(count, FLOAT_BITS, dtype=np.int64)
    if count == 1 or spread == 0:
        return np.full(count, bits, dtype=np.int64)
    order = np.argsort(-importance, kind="stable")
    rank = np.empty(count, dtype=np.float64)
    rank[order] = np.arange(count)
    offsets = spread * (1.0 - 2.0 * rank / (count - 1))
    return np.clip(np.round(bits + offsets), low, high).astype(np.int64)


def build_policy(
    model: nn.Module,
    graph: ModelGraph,
    knobs: Sequence[LayerKnobs] | LayerKnobs,
    importance: ImportanceCriterion
    | str
    | ImportanceFn
    | list[np.ndarray] = ImportanceCriterion.L2,
    model_name: str = "model",
) -> CompressionPolicy:
    """Turn per-layer knobs (one per layer of ``graph``, or one for all) into a policy.

    ``importance`` is a criterion, or the per-layer scores it already gave
    (:func:`ajpq.core.importance.layer_importance`), which saves recomputing them per policy.

    Coupled layers share one pruning decision: the group's sparsity is the mean of its
    members' knobs. Groups that feed the model's output are never pruned.
    """
    if isinstance(knobs, LayerKnobs):
        knobs = [knobs] * len(graph.layers)
    if len(knobs) != len(graph.layers):
        raise ValueError(
            f"got {len(knobs)} layer knobs for a model with {len(graph.layers)} compressible layers"
        )
    if isinstance(importance, list):
        per_layer = importance
    else:
        per_layer = layer_importance(model, graph, importance)
    per_group = group_importance(graph, per_layer)
    keep_masks: list[np.ndarray] = []
    for group, score in zip(graph.groups, per_group):
        mask = np.ones(group.channels, dtype=bool)
        if group.prunable:
            sparsity = float(np.mean([knobs[m].sparsity for m in group.members]))
            size = group.block_size
            pruned = min(int(round(sparsity * size)), size - 1)
            if pruned > 0:
                # the same positions in every block (one block unless a grouped conv splits them)
                by_position = np.asarray(score).reshape(group.blocks, size).sum(axis=0)
                weak = np.argsort(by_position, kind="stable")[:pruned]
                mask[(weak[None, :] + size * np.arange(group.blocks)[:, None]).ravel()] = False
        keep_masks.append(mask)
    layers = []
    for layer, knob in zip(graph.layers, knobs):
        group = graph.groups[graph.layer_group[layer.index]]
        keep = group.member_mask(layer.out_channels, keep_masks[group.index])
        bits = np.zeros(layer.out_channels, dtype=np.int64)
        bits[keep] = channel_bits_by_rank(
            per_layer[layer.index][keep],
            knob.weight_bits,
            knob.spread,
            knob.min_bits,
            knob.max_bits,
        )
        layers.append(LayerPolicy(layer.name, tuple(int(b) for b in bits), knob.act_bits))
    return CompressionPolicy(model_name, graph.input_shape, graph.signature, tuple(layers))


def uniform_policy(
    graph: ModelGraph, weight_bits: int = 8, act_bits: int = 8, model_name: str = "model"
) -> CompressionPolicy:
    """Every channel at ``weight_bits``, every activation at ``act_bits``; nothing pruned."""
    LayerKnobs(weight_bits=weight_bits, act_bits=act_bits)
    layers = tuple(
        LayerPolicy(layer.name, (weight_bits,) * layer.out_channels, act_bits)
        for layer in graph.layers
    )
    return CompressionPolicy(model_name, graph.input_shape, graph.signature, layers)

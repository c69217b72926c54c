"""Channel importance: one criterion ranks channels both for pruning and for bit allocation.

A criterion maps a layer's weight (out, ...) to one non-negative score per output channel.
Scores are normalised per layer to mean 1 so that layers of different scale compare; a
coupling group's score is the mean over its member layers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ajpq.core.graph import ModelGraph, compressible_modules

__all__ = ["ImportanceCriterion", "ImportanceFn", "layer_importance", "group_importance"]

ImportanceFn = Callable[[torch.Tensor], torch.Tensor]


class ImportanceCriterion(str, enum.Enum):
    L2 = "l2"
    L1 = "l1"

    def fn(self) -> ImportanceFn:
        return _CRITERIA[self]


def _l2(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).norm(p=2, dim=1)


def _l1(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).abs().sum(dim=1)


_CRITERIA: dict[ImportanceCriterion, ImportanceFn] = {
    ImportanceCriterion.L2: _l2,
    ImportanceCriterion.L1: _l1,
}


def _resolve(criterion: ImportanceCriterion | str | ImportanceFn) -> ImportanceFn:
    if callable(criterion) and not isinstance(criterion, (str, ImportanceCriterion)):
        return criterion
    try:
        return ImportanceCriterion(criterion).fn()
    except ValueError:
        options = ", ".join(c.value for c in ImportanceCriterion)
        raise ValueError(
            f"unknown importance criterion {criterion!r}; use one of: {options}"
        ) from None


def layer_importance(
    model: nn.Module,
    graph: ModelGraph,
    criterion: ImportanceCriterion | str | ImportanceFn = ImportanceCriterion.L2,
) -> list[np.ndarray]:
    """Per layer, one score per output channel, normalised to mean 1 (all ones if all zero)."""
    fn = _resolve(criterion)
    modules = compressible_modules(model)
    scores: list[np.ndarray] = []
    for layer in graph.layers:
        raw = fn(modules[layer.name].weight).double().cpu().numpy()
        if raw.shape != (layer.out_channels,):
            raise ValueError(
                f"importance criterion returned shape {raw.shape} for layer {layer.name}; "
                f"expected ({layer.out_channels},)"
            )
        mean = raw.mean()
        scores.append(raw / mean if mean > 0 else np.ones_like(raw))
    return scores


def group_importance(graph: ModelGraph, per_layer: list[np.ndarray]) -> list[np.ndarray]:
    """Per coupling group, the mean of its members' normalised channel scores (members of
    another width, in a group that is therefore not prunable, do not count)."""
    return [
        np.mean(
            [per_layer[m] for m in group.members if len(per_layer[m]) == group.channels], axis=0
        )
        for group in graph.groups
    ]

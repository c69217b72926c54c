"""Prove at analysis time that a group whose channels pass a split really prunes.

Torch-Pruning's split handling has been wrong before (see :mod:`ajpq.core.dependency`), and a split
written with literal sizes (``split((64, 64))``) cannot shrink at all. So every such group is
pruned once for real: a float policy that removes a quarter of its units is simulated (masks)
and materialized (channels removed); when the materialized network fails to run or its outputs
differ, the group stays quantizable and is not pruned, with one log line.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from ajpq.core.apply import apply_policy
from ajpq.core.builder import uniform_policy
from ajpq.core.graph import CouplingGroup, ModelGraph
from ajpq.core.materialize import materialize
from ajpq.core.quantize import FLOAT_BITS

__all__ = ["check_split_groups"]

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # relative to the output scale


def _prunes_exactly(
    model: nn.Module, graph: ModelGraph, group: CouplingGroup, example: torch.Tensor
) -> bool:
    policy = uniform_policy(graph, FLOAT_BITS, FLOAT_BITS)
    positions = range(max(1, group.block_size // 4))
    layers = list(policy.layers)
    for member in group.members:
        bits = np.array(layers[member].weight_bits)
        for position in positions:
            bits[group.member_unit(len(bits), position)] = 0
        layers[member] = dataclasses.replace(
            layers[member], weight_bits=tuple(int(b) for b in bits)
        )
    policy = policy.replace_layers(layers)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(example.shape, generator=generator, dtype=example.dtype).to(example.device)
    try:
        simulated = apply_policy(model, policy, graph).eval()
        small = materialize(simulated, policy, graph).eval()
        with torch.no_grad():
            reference, output = simulated(x), small(x)
    except Exception as error:  # noqa: BLE001 - any failure means: do not prune this group
        logger.debug("group %d: pruning failed: %s", group.index, error)
        return False
    if not isinstance(reference, torch.Tensor) or reference.shape != output.shape:
        return False
    scale = max(reference.abs().max().item(), 1.0)
    return (output - reference).abs().max().item() <= TOLERANCE * scale


def check_split_groups(model: nn.Module, graph: ModelGraph, example: torch.Tensor) -> ModelGraph:
    """``graph`` with every prunable group through a split that does not prune exactly made
    unprunable (each is tried on its own)."""
    groups = list(graph.groups)
    for group in graph.groups:
        if not (group.prunable and group.split):
            continue
        if _prunes_exactly(model, graph, group, example):
            continue
        names = ", ".join(graph.layers[m].name for m in group.members)
        logger.warning(
            "layers %s: their channels pass a channel split that does not shrink consistently "
            "(e.g. split with literal sizes); they stay quantizable and are not pruned",
            names,
        )
        groups[group.index] = dataclasses.replace(group, prunable=False, blocks=1)
    return dataclasses.replace(graph, groups=tuple(groups))

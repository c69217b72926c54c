"""Kept channels in whole multiples: runtimes' convolution kernels work on channel blocks
(onnxruntime's CPU kernels on 8 or 16 at a time, TensorRT's int8 on multiples of 8 or 32), and a
layer whose kept width is not a multiple falls back to a slower path: on this CPU the
Fashion-MNIST CNN pruned to 26/51/102 channels ran in float about 2x slower in onnxruntime than
unpruned (32/64/128) and than at 24/48/96 (``results/deploy.md``). So a policy meant to be fast
keeps multiples.

:func:`snap_channels` rounds every prunable coupling group's kept channels (per block) down to
a multiple, pruning the weakest of the kept channels by the group's importance, as the policy
builder ranks them. It only prunes, so a policy inside a size or BitOps budget stays inside;
a group that keeps fewer channels than the multiple is left as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from torch import nn

from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.graph import ModelGraph
from ajpq.core.importance import group_importance
from ajpq.core.policy import CompressionPolicy

__all__ = ["snap_channels", "build_snapped"]


def build_snapped(
    model: nn.Module,
    graph: ModelGraph,
    knobs: Sequence[LayerKnobs] | LayerKnobs,
    importance: list[np.ndarray],
    multiple: int,
    model_name: str = "model",
) -> CompressionPolicy:
    """:func:`ajpq.core.builder.build_policy` of ``knobs``, then :func:`snap_channels`."""
    policy = build_policy(model, graph, knobs, importance, model_name)
    return snap_channels(policy, graph, importance, multiple)


def snap_channels(
    policy: CompressionPolicy,
    graph: ModelGraph,
    importance: list[np.ndarray],
    multiple: int,
) -> CompressionPolicy:
    """``policy`` with every prunable group's kept channels per block a multiple of
    ``multiple`` (rounded down; the weakest kept channels go). ``importance`` holds the
    per-layer channel scores (:func:`ajpq.core.importance.layer_importance`)."""
    if multiple <= 1:
        return policy
    bits = [np.asarray(lp.weight_bits) for lp in policy.layers]
    changed = False
    for group, score in zip(graph.groups, group_importance(graph, importance)):
        if not group.prunable:
            continue
        size = group.block_size
        kept = bits[group.members[0]].reshape(group.blocks, size)[0] > 0
        count = int(kept.sum())
        drop = count % multiple if count >= multiple else 0
        if drop == 0:
            continue
        by_position = np.asarray(score).reshape(group.blocks, size).sum(axis=0)
        candidates = np.flatnonzero(kept)
        weakest = candidates[np.argsort(by_position[candidates], kind="stable")[:drop]]
        for member in group.members:
            width = len(bits[member])
            channels = np.concatenate([group.member_unit(width, int(p)) for p in weakest])
            bits[member][channels] = 0
        changed = True
    if not changed:
        return policy
    layers = tuple(
        dataclasses.replace(lp, weight_bits=tuple(int(b) for b in layer_bits))
        for lp, layer_bits in zip(policy.layers, bits)
    )
    return dataclasses.replace(policy, layers=layers)

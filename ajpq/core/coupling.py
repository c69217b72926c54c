"""Coupling groups from Torch-Pruning's dependency graph: which layers share one channel
decision, which BatchNorms fold into a conv, and which input channels of downstream layers
consume each of a group's channels (splits, concatenations and grouped convs included)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch_pruning as tp
from torch import nn

from ajpq.core.dependency import UNMAPPABLE, channel_split, split_layout
from ajpq.core.graph import (
    CouplingGroup,
    LayerInfo,
    LayerKind,
    bytes_per_channel,
    channel_count,
)

__all__ = ["coupling_group", "foldable_batchnorms"]

logger = logging.getLogger(__name__)


def foldable_batchnorms(
    model: nn.Module,
    dep_graph: tp.DependencyGraph,
    layers: tuple[LayerInfo, ...],
    modules: dict[str, nn.Module],
) -> dict[int, str]:
    """Layer index -> name of the BatchNorm2d that is the conv's only consumer and has no other
    input: it folds into the conv's per-channel scales and bias exactly (inference)."""
    names = {module: name for name, module in model.named_modules()}
    folds = {}
    for layer in layers:
        module = modules[layer.name]
        node = dep_graph.module2node.get(module)
        if not isinstance(module, nn.Conv2d) or node is None or len(node.outputs) != 1:
            continue
        after = node.outputs[0]
        bn = after.module
        if (
            isinstance(bn, nn.BatchNorm2d)
            and len(after.inputs) == 1
            and bn.num_features == layer.out_channels
            and bn.track_running_stats
            and bn in names
        ):
            folds[layer.index] = names[bn]
    return folds


def _refuse_reshaped_channels(tp_group: tp.Group, layer: LayerInfo) -> None:
    """Channels that pass a reshape on their way to a conv (a channel shuffle, a split into
    heads) are permuted or mixed in ways the index maps do not follow: refuse to prune them.
    A reshape that only feeds Linear layers (flatten before a classifier) is fine."""
    edges: dict[int, list[tp.Node]] = {}
    nodes: dict[int, tp.Node] = {}
    for item in tp_group.items:
        source, target = item.dep.source, item.dep.target
        edges.setdefault(id(source), []).append(target)
        nodes[id(source)], nodes[id(target)] = source, target
    frontier = [n for n in nodes.values() if n.type == tp.ops.OPTYPE.RESHAPE]
    for node in frontier:
        if getattr(node.module, UNMAPPABLE, False):
            raise ValueError(f"its channels are reshaped (e.g. shuffled) at {node.name}")
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.DEPTHWISE_CONV):
            raise ValueError(f"its channels are reshaped (e.g. shuffled) before {node.name}")
        frontier.extend(edges.get(id(node), []))


def coupling_group(
    dep_graph: tp.DependencyGraph,
    layers: tuple[LayerInfo, ...],
    modules: dict[str, nn.Module],
    index_of: dict[nn.Module, int],
    layer: LayerInfo,
    group_index: int,
    folded: set[nn.Module] = frozenset(),
) -> CouplingGroup:
    """The group of layers pruned together with ``layer``'s output channels, and who consumes
    them. Raises when Torch-Pruning cannot trace it or the coupling is irregular."""
    module = modules[layer.name]
    out_fn = dep_graph.get_pruner_of_module(module).prune_out_channels
    channels = layer.out_channels
    tp_group = dep_graph.get_pruning_group(module, out_fn, list(range(channels)))
    members: list[int] = []
    consumer_idx: dict[int, list[list[int]]] = {}
    passengers: dict[nn.Module, set[int]] = {}
    aligned: dict[int, list[tuple[int, int]]] = {}  # member: (its channel, group channel)
    for item in tp_group.items:
        target = item.dep.target.module
        if target not in index_of:
            if isinstance(target, nn.Module) and target not in folded:
                passengers.setdefault(target, set()).update(int(i) for i in item.idxs)
            continue
        idx = index_of[target]
        if dep_graph.is_out_channel_pruning_fn(item.dep.handler):
            if idx not in members:
                members.append(idx)
            aligned.setdefault(idx, []).extend(
                (int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)
            )
            continue
        if layers[idx].kind == LayerKind.DEPTHWISE_CONV:  # a member: its channel = its input
            aligned.setdefault(idx, []).extend(
                (int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)
            )
        per_channel = consumer_idx.setdefault(idx, [[] for _ in range(channels)])
        for idx_in, root in zip(item.idxs, item.root_idxs):
            per_channel[int(root)].append(int(idx_in))
    _refuse_reshaped_channels(tp_group, layer)
    if layer.index not in members:
        members.insert(0, layer.index)
    split_blocks = _split_blocks(tp_group)
    consumers = {}
    for idx, per_channel in consumer_idx.items():
        if layers[idx].kind == LayerKind.DEPTHWISE_CONV:
            if idx not in members:
                members.append(idx)
            continue
        rows = [sorted(set(c)) for c in per_channel]
        width = max(len(r) for r in rows)
        if len({len(r) for r in rows}) > 1 and split_blocks == 1:
            raise ValueError(f"irregular channel coupling into layer {layers[idx].name}")
        # after a split a consumer reads only some parts: rows padded with -1
        consumers[idx] = np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)
    blocks = split_blocks
    for index in (*members, *consumers):
        if layers[index].kind is LayerKind.GROUPED_CONV:
            blocks = math.lcm(blocks, layers[index].groups)
    if channels % blocks:
        raise ValueError(f"{channels} channels do not divide into {blocks} equal parts")
    # the full-width layers first (the group's lead), then layers coupled with one part of a
    # split (C2f's bottlenecks added to the second half): their channel p is position p
    members_sorted = tuple(
        sorted(set(members), key=lambda m: (layers[m].out_channels != channels, m))
    )
    part = channels // split_blocks if split_blocks > 1 else 0  # no split: no narrower member
    _check_part_members(layers, members_sorted, aligned, channels, part, channels // blocks)
    for idx, index_map in consumers.items():  # every unit must cost every consumer alike
        feeds = (index_map >= 0).sum(axis=1).reshape(blocks, -1)
        if (feeds != feeds[:, :1]).any():
            raise ValueError(f"irregular channel coupling into layer {layers[idx].name}")
    prunable = bool(consumers) and channels // blocks >= 2  # blocks divide channels (above)
    passenger_bytes = sum(
        bytes_per_channel(module, channel_count(module)) * len(idxs) / channels
        for module, idxs in passengers.items()
        if channel_count(module)
    )
    return CouplingGroup(
        index=group_index,
        members=members_sorted,
        channels=channels,
        prunable=prunable,
        consumers=consumers,
        passenger_bytes=int(round(passenger_bytes)),
        blocks=blocks if prunable else 1,
        split=split_blocks > 1,
    )


def _check_part_members(
    layers: tuple[LayerInfo, ...],
    members: tuple[int, ...],
    aligned: dict[int, list[tuple[int, int]]],
    channels: int,
    part: int,
    block_size: int,
) -> None:
    """Members narrower than the group must be one part of its split wide, one block wide, and
    see position p of a block as their channel p; anything else is coupling of different
    widths that is refused."""
    for m in members:
        width = layers[m].out_channels
        if width == channels:
            continue
        pairs = aligned.get(m, [])
        fits = width == part == block_size and pairs
        if not fits or any(i != r % block_size for i, r in pairs):
            widths = {layers[k].name: layers[k].out_channels for k in members}
            raise ValueError(f"coupled layers of different widths {widths}")


def _split_blocks(tp_group: tp.Group) -> int:
    """How many equal parts the group's channels are split into on their way (1: no split).
    A split into unequal parts, or one whose parts cannot be told apart, is refused: pruning
    keeps a split's parts equal by removing the same positions from each."""
    blocks = 1
    seen: set[int] = set()
    for item in tp_group.items:
        for node in (item.dep.source, item.dep.target):
            if node.type != tp.ops.OPTYPE.SPLIT or id(node) in seen or not channel_split(node):
                continue
            seen.add(id(node))
            if getattr(node.module, UNMAPPABLE, True):
                raise ValueError(f"the channel split {node.name} cannot be followed")
            layout = split_layout(node)
            if not layout or len({end - start for start, end in layout}) != 1:
                raise ValueError(f"the channel split {node.name} has unequal parts")
            blocks = math.lcm(blocks, len(layout))
    return blocks

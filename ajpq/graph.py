"""Find a model's compressible layers and the groups of layers that share one channel decision.

One forward pass with an example input records, per Conv2d / Linear, its shapes and MACs.
Torch-Pruning's DependencyGraph finds coupling (residual adds, concatenations, a depthwise conv
and its producer) and, for every group, which input channels of downstream layers consume each
of the group's channels. Everything that follows (policy building, fake quantization, costs,
budgets, physical pruning) reads this table instead of re-tracing the model.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ajpq.dependency import UNMAPPABLE, build_dependency_graph, channel_split, split_layout

__all__ = [
    "LayerKind",
    "LayerInfo",
    "CouplingGroup",
    "ModelGraph",
    "analyze",
    "compressible_modules",
    "saved_size",
]

logger = logging.getLogger(__name__)


class LayerKind(str, enum.Enum):
    CONV = "conv"
    DEPTHWISE_CONV = "depthwise_conv"
    GROUPED_CONV = "grouped_conv"
    LINEAR = "linear"


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one compressible layer, as seen in one traced forward pass."""

    index: int
    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    params: int
    input_hw: tuple[int, int]
    output_positions: int
    macs: int
    has_bias: bool
    # the BatchNorm that directly follows this conv and folds into its weights and bias
    bn: str | None = None

    @property
    def stores_bias(self) -> bool:
        """A bias per kept channel is stored: its own, or the one a folded BatchNorm leaves."""
        return self.has_bias or self.bn is not None

    @property
    def weights_per_channel(self) -> int:
        return (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class CouplingGroup:
    """Layers whose output channels are pruned together, and who consumes those channels.

    ``members[0]`` is as wide as the group (``channels``); a member one block wide is coupled
    with one part of a channel split (:meth:`member_unit`).

    ``consumers`` maps a consuming layer index to an int array of shape (channels, k): channel c
    of the group feeds input indices ``consumers[layer][c]`` of that layer (k > 1 after a flatten;
    entries of -1 where a channel split sends the channel elsewhere).
    """

    index: int
    members: tuple[int, ...]
    channels: int
    prunable: bool
    consumers: dict[int, np.ndarray]
    # bytes of other state (an unfolded BatchNorm's weight, bias and statistics, ...) stored
    # per channel of this group, pruned with it
    passenger_bytes: int = 0
    # a grouped conv among the members or consumers splits the channels into this many equal
    # blocks; pruning removes the same positions from every block (a "unit" of channels)
    blocks: int = 1
    # its channels pass a channel split (chunk / split): proven by pruning it at analysis
    split: bool = False

    @property
    def block_size(self) -> int:
        return self.channels // self.blocks

    def unit(self, position: int) -> np.ndarray:
        """The channels pruned together with ``position`` (one per block)."""
        return position % self.block_size + self.block_size * np.arange(self.blocks)

    def member_unit(self, width: int, position: int) -> np.ndarray:
        """:meth:`unit` in a member of ``width`` channels: a member one block wide (coupled
        with one part of a split) holds only the position itself."""
        if width == self.channels:
            return self.unit(position)
        return np.array([position % width])

    def member_mask(self, width: int, keep: np.ndarray) -> np.ndarray:
        """The group's keep mask (``channels`` long) as a member of ``width`` channels sees it."""
        keep = np.asarray(keep)  # a narrower member sees the first part (all parts agree)
        return keep if width == self.channels else keep.reshape(-1, width)[0]


@dataclass(frozen=True)
class ModelGraph:
    """Compressible layers of one model, their coupling groups, and the model's signature."""

    layers: tuple[LayerInfo, ...]
    groups: tuple[CouplingGroup, ...]
    layer_group: tuple[int, ...]
    input_shape: tuple[int, ...]
    signature: str
    # state outside the compressible layers stored whatever is pruned (bytes), and the fp32
    # model's state dict as torch.save writes it (the reference for size ratios)
    fixed_state_bytes: int = 0
    fp32_file_bytes: int = 0

    def layer_by_name(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"model has no compressible layer named {name!r}")

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)


def compressible_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by qualified name, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def _kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if module.groups == 1:
        return LayerKind.CONV
    if module.groups == module.in_channels == module.out_channels:
        return LayerKind.DEPTHWISE_CONV
    return LayerKind.GROUPED_CONV


def _trace_shapes(
    model: nn.Module, modules: dict[str, nn.Module], example_input: torch.Tensor
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for name, module in modules.items():

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            shapes.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise ValueError(_input_mismatch(modules, example_input, error)) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return shapes


def _input_mismatch(
    modules: dict[str, nn.Module], example_input: torch.Tensor, error: Exception
) -> str:
    """What is wrong with the example input, as far as the first layer tells."""
    given = tuple(example_input.shape)
    reason = str(error).splitlines()[0][:160]
    first_name, first = next(iter(modules.items()))
    if isinstance(first, nn.Conv2d):
        expected = f"(N, {first.in_channels}, H, W)"
        if example_input.dim() == 3 and given[0] == first.in_channels:
            return (
                f"example input of shape {given} has no batch dimension; the model expects "
                f"{expected}: use example_input.unsqueeze(0)"
            )
        if example_input.dim() == 4 and given[1] != first.in_channels:
            return (
                f"example input of shape {given} has {given[1]} channels, the first layer "
                f"{first_name} expects {first.in_channels}: give {expected}"
            )
        return (
            f"the model cannot run on an example input of shape {given} ({reason}); give {expected}"
        )
    return f"the model cannot run on an example input of shape {given} ({reason})"


def _layer_info(index: int, name: str, module: nn.Module, shapes: tuple) -> LayerInfo:
    in_shape, out_shape = shapes
    kind = _kind(module)
    if isinstance(module, nn.Linear):
        in_ch, out_ch, kernel, stride, groups = (
            module.in_features,
            module.out_features,
            (1, 1),
            (1, 1),
            1,
        )
        positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        input_hw = (1, 1)
    else:
        in_ch, out_ch, groups = module.in_channels, module.out_channels, module.groups
        kernel, stride = tuple(module.kernel_size), tuple(module.stride)
        positions = int(out_shape[2] * out_shape[3])
        input_hw = (int(in_shape[2]), int(in_shape[3]))
    params = sum(p.numel() for p in module.parameters(recurse=False))
    macs = (in_ch // groups) * kernel[0] * kernel[1] * out_ch * positions
    return LayerInfo(
        index=index,
        name=name,
        kind=kind,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel=(int(kernel[0]), int(kernel[1])),
        stride=(int(stride[0]), int(stride[1])),
        groups=groups,
        params=params,
        input_hw=input_hw,
        output_positions=positions,
        macs=int(macs),
        has_bias=getattr(module, "bias", None) is not None,
    )


def _signature(layers: tuple[LayerInfo, ...]) -> str:
    text = ";".join(
        f"{lay.name}:{lay.kind.value}:{lay.in_channels}:{lay.out_channels}:{lay.kernel}:{lay.groups}"
        for lay in layers
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def analyze(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Trace ``model`` once and return its compressible layers and coupling groups."""
    modules = compressible_modules(model)
    if not modules:
        raise ValueError("model has no Conv2d or Linear layer to compress")
    shapes = _trace_shapes(model, modules, example_input)
    unused = [name for name in modules if name not in shapes]
    if unused:
        logger.info("layers not reached by the example input are left alone: %s", unused)
    layers = tuple(
        _layer_info(i, name, modules[name], shapes[name])
        for i, name in enumerate(n for n in modules if n in shapes)
    )
    index_of = {modules[layer.name]: layer.index for layer in layers}
    try:
        dep_graph = build_dependency_graph(model, example_input)
    except Exception as error:  # noqa: BLE001 - the analysis never fails: quantize, do not prune
        logger.warning(
            "channel coupling of this model could not be traced (%s: %s); every layer stays "
            "quantizable, none is pruned",
            type(error).__name__,
            str(error).splitlines()[0][:160] if str(error) else "",
        )
        dep_graph = None

    folds = _foldable_batchnorms(model, dep_graph, layers, modules) if dep_graph else {}
    layers = tuple(dataclasses.replace(lay, bn=folds.get(lay.index)) for lay in layers)
    folded = {model.get_submodule(name) for name in folds.values()}
    groups: list[CouplingGroup] = []
    layer_group = [-1] * len(layers)
    for layer in layers:
        if layer_group[layer.index] >= 0:
            continue
        group = None
        if dep_graph is not None:
            try:
                group = _coupling_group(
                    dep_graph, layers, modules, index_of, layer, len(groups), folded
                )
            except Exception as error:  # noqa: BLE001 - this group only: quantize, do not prune
                logger.warning(
                    "layer %s: its channel coupling cannot be handled (%s: %s); it stays "
                    "quantizable and is not pruned",
                    layer.name,
                    type(error).__name__,
                    str(error).splitlines()[0][:160] if str(error) else "",
                )
        if group is not None and any(layer_group[m] >= 0 for m in group.members):
            logger.warning(
                "layer %s: coupled with layers analysed before it in another way; not pruned",
                layer.name,
            )
            group = None
        if group is None:
            group = CouplingGroup(len(groups), (layer.index,), layer.out_channels, False, {})
        for m in group.members:
            layer_group[m] = group.index
        groups.append(group)
    other = sum(_state_bytes(m) for m in model.modules() if m not in index_of and m not in folded)
    per_channel = sum(g.passenger_bytes * g.channels for g in groups)
    graph = ModelGraph(
        layers=layers,
        groups=tuple(groups),
        layer_group=tuple(layer_group),
        input_shape=tuple(example_input.shape[1:]),
        signature=_signature(layers),
        fixed_state_bytes=max(0, other - per_channel),
        fp32_file_bytes=saved_size(model.state_dict()),
    )
    if any(g.split and g.prunable for g in groups):
        from ajpq.coupling_check import check_split_groups  # it prunes with the upper core

        graph = check_split_groups(model, graph, example_input)
    return graph


class _ByteCounter:
    """A write-only sink that only counts what torch.save writes."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def saved_size(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``torch.save(state)`` (the file a user compares with), without keeping a copy."""
    counter = _ByteCounter()
    torch.save(state, counter)
    return counter.count


def _state_rows(module: nn.Module) -> list[torch.Tensor]:
    """The module's own stored tensors (parameters and persistent buffers)."""
    skip = getattr(module, "_non_persistent_buffers_set", set())
    buffers = [b for n, b in module.named_buffers(recurse=False) if n not in skip]
    return [*module.parameters(recurse=False), *buffers]


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in _state_rows(module))


def _bytes_per_channel(module: nn.Module, channels: int) -> int:
    """Bytes the module stores per channel (its tensors whose first dimension is ``channels``)."""
    return sum(
        t.numel() // channels * t.element_size()
        for t in _state_rows(module)
        if t.dim() >= 1 and t.shape[0] == channels
    )


def _foldable_batchnorms(
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


def _coupling_group(
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
        _bytes_per_channel(module, _channel_count(module)) * len(idxs) / channels
        for module, idxs in passengers.items()
        if _channel_count(module)
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


def _channel_count(module: nn.Module) -> int:
    """The channel count of a normalization-like module (0 when it has none)."""
    for attr in ("num_features", "num_channels", "num_parameters"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0

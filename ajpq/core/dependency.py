"""Torch-Pruning's dependency graph, with the channel maps it gets wrong on this torch fixed.

Two things are patched while a graph is built and while it forms pruning groups:

- A reshape whose channel mapping Torch-Pruning cannot infer (ShuffleNet's 5-D channel shuffle
  divides by zero) no longer fails the whole trace: channels stop there (so a group does not
  spread over every unit of a stage, which made the analysis 10x slower once splits were
  mapped), the reshape is marked unmappable, and every group that reaches it is refused.
- A channel split (``chunk``, ``split``): Torch-Pruning looks for autograd's pre-2.0 attribute
  names, falls back to guessing the part sizes from the concat that follows (a 16-channel
  ``chunk(2)`` becomes parts [16, 8]) and assigns parts to consumers in the order its trace met
  them. Here the parts come from autograd's saved split sizes and every consumer gets the part
  it really reads (``output_nr``). A split whose part a consumer reads twice, or whose layout
  is unknown, is marked unmappable; groups through it are refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn

__all__ = [
    "build_dependency_graph",
    "channel_split",
    "check_patched_internals",
    "split_layout",
    "split_parts",
    "UNMAPPABLE",
]

logger = logging.getLogger(__name__)

UNMAPPABLE = "ajpq_unmappable"  # attribute set on a split op whose parts cannot be followed


def channel_split(node: tp.Node) -> bool:
    """Whether a split node cuts the channel dimension (dim 1). A split along another dim (a
    spatial chunk) passes every channel to every part: Torch-Pruning's identity is right."""
    dim = getattr(node.grad_fn, "_saved_dim", None)
    shape = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if dim is None or shape is None:
        return True  # unknown: treated as a channel split that cannot be followed
    dim = int(dim)
    if dim >= 2**63:  # a negative dim, saved as unsigned
        dim -= 2**64
    return (dim + len(shape) if dim < 0 else dim) == 1


def split_layout(node: tp.Node) -> list[tuple[int, int]] | None:
    """(start, end) of every part of a channel split (read or not), from autograd's saved
    attributes."""
    grad_fn = node.grad_fn
    shape = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if shape is None or len(shape) < 2:
        return None
    total = int(shape[1])
    if hasattr(grad_fn, "_saved_split_sizes"):
        sizes = [int(s) for s in grad_fn._saved_split_sizes]
    elif hasattr(grad_fn, "_saved_split_size"):
        size = int(grad_fn._saved_split_size)
        count = max(1, -(-total // size))
        sizes = [size] * (count - 1) + [total - size * (count - 1)]
    else:
        return None
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def split_parts(node: tp.Node) -> list[tuple[int, int]] | None:
    """Per entry of ``node.outputs`` (a split node), the (start, end) channels of the part it
    reads, or None when they cannot be told (then the split is unmappable). A consumer that
    reads several parts (C2f's ``cat(y)``) has one entry per part, in its input order."""
    layout = split_layout(node)
    if layout is None:
        return None
    parts = []
    seen: dict[int, int] = {}
    for out in node.outputs:
        edges = getattr(out.grad_fn, "next_functions", ())
        numbers = [nr for fn, nr in edges if fn is node.grad_fn]
        if node.outputs.count(out) != len(numbers) or max(numbers, default=len(layout)) >= len(
            layout
        ):
            return None
        occurrence = seen.get(id(out), 0)
        seen[id(out)] = occurrence + 1
        parts.append(layout[numbers[occurrence]])
    return parts


def _fix_split(node: tp.Node) -> list[tuple[int, int]] | None:
    if not channel_split(node):
        setattr(node.module, UNMAPPABLE, False)
        return None
    parts = split_parts(node)
    setattr(node.module, UNMAPPABLE, parts is None)
    if parts is not None:
        node.module.split_sizes = [end - start for start, end in parts]
        offsets = [0]
        for size in node.module.split_sizes:
            offsets.append(offsets[-1] + size)
        node.module.offsets = offsets  # bookkeeping only: the index maps below use the bounds
    return parts


def _stop(indices: list) -> list:
    """An index mapping no channel passes."""
    return []


# Torch-Pruning's private names the patches below replace or call (written for 1.6.x; pyproject
# pins that range): check_patched_internals() fails loudly when an upgrade moves one
PATCHED_INTERNALS = {
    "torch_pruning.dependency.index_mapping": (
        "update_split_index_mapping",
        "update_reshape_index_mapping",
        "_SplitIndexMapping",
    ),
    "torch_pruning.dependency.shape_infer": ("init_shape_information",),
    "torch_pruning.dependency.graph": ("DependencyGraph",),
}


def check_patched_internals() -> None:
    """Raise RuntimeError naming every Torch-Pruning internal the patches need that is gone."""
    import importlib
    import inspect

    missing = []
    for module_name, names in PATCHED_INTERNALS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        missing += [f"{module_name}.{name}" for name in names if not hasattr(module, name)]
    if not missing:
        mapping = importlib.import_module("torch_pruning.dependency.index_mapping")
        parameters = inspect.signature(mapping._SplitIndexMapping).parameters
        if not {"offset", "reverse"} <= set(parameters):
            missing.append("_SplitIndexMapping(offset=, reverse=)")
        if not hasattr(tp.ops.OPTYPE, "SPLIT"):
            missing.append("torch_pruning.ops.OPTYPE.SPLIT")
    if missing:
        raise RuntimeError(
            f"torch-pruning {getattr(tp, '__version__', '?')} changed the internals ajpq patches "
            f"({', '.join(missing)}); install torch-pruning 1.6.x (pyproject's pin)"
        )


@contextlib.contextmanager
def _patched_torch_pruning() -> Iterator[None]:
    from torch_pruning.dependency import index_mapping, shape_infer

    original_split = index_mapping.update_split_index_mapping
    original_reshape = index_mapping.update_reshape_index_mapping
    original_shapes = shape_infer.init_shape_information

    def tolerant_reshape(graph: tp.DependencyGraph, node: tp.Node) -> None:
        try:
            original_reshape(graph, node)
        except ZeroDivisionError:
            logger.debug("channels cannot be followed through reshape %s", node.name)
            setattr(node.module, UNMAPPABLE, True)
            for dep in node.dependencies:  # channels stop here (groups reaching it are refused)
                if dep.target in node.outputs:
                    dep.index_mapping[0] = _stop
            for out in node.outputs:
                for dep in out.dependencies:
                    if dep.target is node:
                        dep.index_mapping[0] = _stop

    def shapes(graph: tp.DependencyGraph) -> None:
        original_shapes(graph)
        for node in graph.module2node.values():
            if node.type == tp.ops.OPTYPE.SPLIT:
                _fix_split(node)

    def split_mapping(graph: tp.DependencyGraph, node: tp.Node) -> None:
        if node.type != tp.ops.OPTYPE.SPLIT:
            return
        parts = _fix_split(node)
        if parts is None:
            return
        mapping = index_mapping._SplitIndexMapping
        # the k-th dependency on a consumer stands for its k-th entry in node.outputs
        pending = {id(out): [] for out in node.outputs}
        for out, bounds in zip(node.outputs, parts):
            pending[id(out)].append(list(bounds))
        forward = {key: list(value) for key, value in pending.items()}
        for dep in node.dependencies:
            if id(dep.target) in forward and forward[id(dep.target)]:
                dep.index_mapping[0] = mapping(offset=forward[id(dep.target)].pop(0), reverse=False)
        for out in {id(o): o for o in node.outputs}.values():
            backward = list(pending[id(out)])
            for dep in out.dependencies:
                if dep.target is node and backward:
                    dep.index_mapping[0] = mapping(offset=backward.pop(0), reverse=True)

    index_mapping.update_reshape_index_mapping = tolerant_reshape
    index_mapping.update_split_index_mapping = split_mapping
    shape_infer.init_shape_information = shapes
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = original_reshape
        index_mapping.update_split_index_mapping = original_split
        shape_infer.init_shape_information = original_shapes


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph with the patches above (it maps indices again for every pruning
    group, so they hold there too)."""

    def get_pruning_group(self, *args: object, **kwargs: object) -> tp.Group:
        with _patched_torch_pruning():
            return super().get_pruning_group(*args, **kwargs)


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (traced in eval mode; it traces through
    autograd, so gradients are enabled for the trace even under a caller's ``torch.no_grad``)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _patched_torch_pruning():
            return _DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        model.train(was_training)

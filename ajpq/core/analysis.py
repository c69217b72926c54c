"""Analyze a model once: trace its compressible layers with an example input, find their
coupling groups, and prove every group through a channel split by pruning it for real.

Everything that follows (policy building, fake quantization, costs, budgets, physical pruning)
reads the resulting :class:`~ajpq.core.graph.ModelGraph` instead of re-tracing the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import torch
from torch import nn

from ajpq.core.coupling import coupling_group, foldable_batchnorms
from ajpq.core.dependency import build_dependency_graph
from ajpq.core.graph import (
    CouplingGroup,
    LayerInfo,
    ModelGraph,
    compressible_modules,
    layer_kind,
    saved_size,
    state_bytes,
)
from ajpq.core.split_check import check_split_groups

__all__ = ["analyze"]

logger = logging.getLogger(__name__)


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
    kind = layer_kind(module)
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

    folds = foldable_batchnorms(model, dep_graph, layers, modules) if dep_graph else {}
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
                group = coupling_group(
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
    other = sum(state_bytes(m) for m in model.modules() if m not in index_of and m not in folded)
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
        graph = check_split_groups(model, graph, example_input)
    return graph
